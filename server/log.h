// Logging for the server: one line per event, written with a single write(2) so lines from
// several threads never interleave. Lines go to stderr until the serve command sends them to a
// file (LogToFile) or to syslog (LogToSyslog). Levels as the serve command's --log-level.
#ifndef STRATA_SERVER_LOG_H_
#define STRATA_SERVER_LOG_H_

#include <sys/time.h>
#include <sys/types.h>

#include <string>

#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

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

}  // namespace strata

// STRATA_LOG(kInfo, "conn %d opened", id): formats only when the level is enabled.
#define STRATA_LOG(level, ...)                                                 \
  do {                                                                         \
    if (::strata::LogEnabled(::strata::LogLevel::level)) {                     \
      ::strata::LogLine(::strata::LogLevel::level, absl::StrFormat(__VA_ARGS__)); \
    }                                                                          \
  } while (0)

#endif  // STRATA_SERVER_LOG_H_
