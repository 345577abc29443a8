// Logging for the server: one line per event on stderr, written with a single write(2) so lines
// from several threads never interleave. Levels as the serve command's --log-level.
#ifndef STRATA_SERVER_LOG_H_
#define STRATA_SERVER_LOG_H_

#include <string>

#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace strata {

enum class LogLevel { kError = 0, kInfo = 1, kDebug = 2 };
absl::string_view Name(LogLevel level);
// Parses "error" / "info" / "debug".
bool ParseLogLevel(absl::string_view text, LogLevel* level);

void SetLogLevel(LogLevel level);
bool LogEnabled(LogLevel level);
void LogLine(LogLevel level, absl::string_view message);

}  // namespace strata

// STRATA_LOG(kInfo, "conn %d opened", id): formats only when the level is enabled.
#define STRATA_LOG(level, ...)                                                 \
  do {                                                                         \
    if (::strata::LogEnabled(::strata::LogLevel::level)) {                     \
      ::strata::LogLine(::strata::LogLevel::level, absl::StrFormat(__VA_ARGS__)); \
    }                                                                          \
  } while (0)

#endif  // STRATA_SERVER_LOG_H_
