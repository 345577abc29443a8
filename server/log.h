// Logging for the server: one line per event, written with a single write(2) so lines from
// several threads never interleave. Lines go to stderr until the serve command sends them to a
// file (LogToFile) or to syslog (LogToSyslog). Levels as the serve command's --log-level.
#ifndef STRATA_SERVER_LOG_H_
#define STRATA_SERVER_LOG_H_

#include <sys/time.h>
#include <sys/types.h>

#include <cstdint>
#include <string>

#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "blockstore/mutex.h"

namespace strata {

enum class LogLevel { kError = 0, kInfo = 1, kDebug = 2 };
absl::string_view Name(LogLevel level);
// Parses "error" / "info" / "debug".
bool ParseLogLevel(absl::string_view text, LogLevel* level);

// Where the lines go: the serve command's --log.
enum class LogTo { kStderr = 0, kSyslog = 1, kFile = 2 };
absl::string_view Name(LogTo to);
// Parses "stderr" / "syslog" / "file".
bool ParseLogTo(absl::string_view text, LogTo* to);

void SetLogLevel(LogLevel level);
bool LogEnabled(LogLevel level);
void LogLine(LogLevel level, absl::string_view message);
// "2026-12-02T04:55:01.123Z strata[123] info: message\n": ISO 8601 in UTC, so lines from
// machines in other time zones (or before and after a DST change) sort and compare as text.
std::string FormatLogLine(const timeval& when, pid_t pid, LogLevel level,
                          absl::string_view message);

// Later lines go to `fd` (opened O_APPEND; the log keeps it open) instead of stderr.
void LogToFile(int fd);
// Later lines go to syslog(3), ident "strata" with the pid, facility daemon.
void LogToSyslog();
// False while lines go to stderr.
bool LogRedirected();

// Bounds one kind of line: a client sending 200 000 bad requests wrote 32 MB of log in 1.5 s,
// one line per request. At most kLinesPerSecond lines pass in each second of the monotonic clock;
// the rest are counted, and the next line let through says how many were dropped (as the
// kernel's printk_ratelimit does; a burst that simply stops leaves its count untold).
// Thread-safe.
class LogLimiter {
 public:
  static constexpr int kLinesPerSecond = 10;
  // Whether a line at `now_ns` may be written; if so, *suppressed gets the number of lines
  // refused since the last one that was.
  bool Allow(int64_t now_ns, uint64_t* suppressed);
  // CLOCK_MONOTONIC in nanoseconds.
  static int64_t Now();

 private:
  Mutex mu_;
  int64_t second_ ABSL_GUARDED_BY(mu_) = -1;  // the second the count is for
  int in_second_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t suppressed_ ABSL_GUARDED_BY(mu_) = 0;
};
// `message`, followed by how many similar lines were dropped before it, when any were.
void LogLineLimited(LogLevel level, absl::string_view message, uint64_t suppressed);

}  // namespace strata

// STRATA_LOG(kInfo, "conn %d opened", id): formats only when the level is enabled.
#define STRATA_LOG(level, ...)                                                 \
  do {                                                                         \
    if (::strata::LogEnabled(::strata::LogLevel::level)) {                     \
      ::strata::LogLine(::strata::LogLevel::level, absl::StrFormat(__VA_ARGS__)); \
    }                                                                          \
  } while (0)

// STRATA_LOG_LIMITED(kError, "conn %d: ...", id): as STRATA_LOG, for a line that a client can
// cause once per request or connection: each call site has its own LogLimiter.
#define STRATA_LOG_LIMITED(level, ...)                                                 \
  do {                                                                                 \
    if (::strata::LogEnabled(::strata::LogLevel::level)) {                             \
      static ::strata::LogLimiter strata_log_limiter;                                  \
      uint64_t strata_log_suppressed = 0;                                              \
      if (strata_log_limiter.Allow(::strata::LogLimiter::Now(), &strata_log_suppressed)) { \
        ::strata::LogLineLimited(::strata::LogLevel::level, absl::StrFormat(__VA_ARGS__),  \
                                 strata_log_suppressed);                               \
      }                                                                                \
    }                                                                                  \
  } while (0)

#endif  // STRATA_SERVER_LOG_H_
