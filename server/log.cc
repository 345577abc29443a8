#include "server/log.h"

#include <syslog.h>
#include <unistd.h>

#include <atomic>
#include <ctime>

namespace strata {
namespace {
std::atomic<int> g_level{static_cast<int>(LogLevel::kInfo)};
// The descriptor lines are written to, or -1 for syslog. Atomic: it is switched once while
// the server's threads may already log.
std::atomic<int> g_fd{STDERR_FILENO};

// Indexed by the enums' values (which are 0, 1, 2 in order).
constexpr absl::string_view kLevelNames[] = {"error", "info", "debug"};
constexpr int kSyslogPriorities[] = {LOG_ERR, LOG_INFO, LOG_DEBUG};
constexpr absl::string_view kLogToNames[] = {"stderr", "syslog", "file"};

template <typename Enum, size_t N>
bool ParseName(absl::string_view text, const absl::string_view (&names)[N], Enum* out) {
  for (size_t i = 0; i < N; i++) {
    if (text == names[i]) {
      *out = static_cast<Enum>(i);
      return true;
    }
  }
  return false;
}
}  // namespace

absl::string_view Name(LogLevel level) { return kLevelNames[static_cast<int>(level)]; }
bool ParseLogLevel(absl::string_view text, LogLevel* level) {
  return ParseName(text, kLevelNames, level);
}

absl::string_view Name(LogTo to) { return kLogToNames[static_cast<int>(to)]; }
bool ParseLogTo(absl::string_view text, LogTo* to) { return ParseName(text, kLogToNames, to); }

void SetLogLevel(LogLevel level) { g_level.store(static_cast<int>(level)); }

bool LogEnabled(LogLevel level) {
  return static_cast<int>(level) <= g_level.load(std::memory_order_relaxed);
}

std::string FormatLogLine(const timeval& when, pid_t pid, LogLevel level,
                          absl::string_view message) {
  struct tm tm;
  gmtime_r(&when.tv_sec, &tm);
  char stamp[32];
  strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
  return absl::StrFormat("%s.%03dZ strata[%d] %s: %s\n", stamp,
                         static_cast<int>(when.tv_usec / 1000), pid, Name(level), message);
}

void LogLine(LogLevel level, absl::string_view message) {
  int fd = g_fd.load(std::memory_order_relaxed);
  if (fd < 0) {
    // syslog adds its own time stamp, ident and pid; the level stays in the text so that the
    // same grep (" error: ") works on every destination.
    syslog(kSyslogPriorities[static_cast<int>(level)], "%s: %.*s", std::string(Name(level)).c_str(),
           static_cast<int>(message.size()), message.data());
    return;
  }
  struct timeval now;
  gettimeofday(&now, nullptr);
  std::string line = FormatLogLine(now, getpid(), level, message);
  // One write per line: lines from different threads stay whole. A failed log write has
  // nowhere to be reported.
  ssize_t ignored = write(fd, line.data(), line.size());
  (void)ignored;
}

void LogToFile(int fd) { g_fd.store(fd); }

void LogToSyslog() {
  // LOG_NDELAY: connect now, so that the first line does not pay for the connection.
  openlog("strata", LOG_PID | LOG_NDELAY, LOG_DAEMON);
  g_fd.store(-1);
}

bool LogLimiter::Allow(int64_t now_ns, uint64_t* suppressed) {
  const int64_t second = now_ns / 1000000000;
  MutexLock lock(&mu_);
  if (second != second_) {
    second_ = second;
    in_second_ = 0;
  }
  if (in_second_ >= kLinesPerSecond) {
    ++suppressed_;
    return false;
  }
  ++in_second_;
  *suppressed = suppressed_;
  suppressed_ = 0;
  return true;
}

int64_t LogLimiter::Now() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

void LogLineLimited(LogLevel level, absl::string_view message, uint64_t suppressed) {
  if (suppressed == 0) {
    LogLine(level, message);
    return;
  }
  LogLine(level, absl::StrFormat("%s (and %d similar lines suppressed before this one: at most "
                                 "%d a second)",
                                 message, suppressed, LogLimiter::kLinesPerSecond));
}

bool LogRedirected() { return g_fd.load(std::memory_order_relaxed) != STDERR_FILENO; }

}  // namespace strata
