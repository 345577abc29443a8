#include "server/log.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <regex>
#include <string>

#include "gtest/gtest.h"

namespace strata {
namespace {

TEST(LogTest, LineHasIsoDateTimeInUtcThenPidAndLevel) {
  timeval when{.tv_sec = 1796187301, .tv_usec = 123456};  // 2026-12-02 04:55:01.123456 UTC
  EXPECT_EQ(FormatLogLine(when, 123, LogLevel::kInfo, "serving x"),
            "2026-12-02T04:55:01.123Z strata[123] info: serving x\n");
  timeval epoch{.tv_sec = 0, .tv_usec = 7000};
  EXPECT_EQ(FormatLogLine(epoch, 9, LogLevel::kError, "e"),
            "1970-01-01T00:00:00.007Z strata[9] error: e\n");
}

TEST(LogTest, NamesRoundTrip) {
  for (LogLevel level : {LogLevel::kError, LogLevel::kInfo, LogLevel::kDebug}) {
    LogLevel parsed = LogLevel::kInfo;
    ASSERT_TRUE(ParseLogLevel(Name(level), &parsed)) << Name(level);
    EXPECT_EQ(parsed, level);
  }
  EXPECT_EQ(Name(LogLevel::kDebug), "debug");
  EXPECT_EQ(Name(LogTo::kSyslog), "syslog");
  for (LogTo to : {LogTo::kStderr, LogTo::kSyslog, LogTo::kFile}) {
    LogTo parsed = LogTo::kStderr;
    ASSERT_TRUE(ParseLogTo(Name(to), &parsed)) << Name(to);
    EXPECT_EQ(parsed, to);
  }
  LogTo unused;
  EXPECT_FALSE(ParseLogTo("journal", &unused));
  LogLevel unused_level;
  EXPECT_FALSE(ParseLogLevel("loud", &unused_level));
}

TEST(LogTest, LogToFileAppendsWholeDatedLines) {
  char path[] = "/tmp/strata-log-test-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  close(fd);
  fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  EXPECT_FALSE(LogRedirected());
  LogToFile(fd);
  EXPECT_TRUE(LogRedirected());
  STRATA_LOG(kInfo, "first %d", 1);
  STRATA_LOG(kError, "second");
  LogToFile(STDERR_FILENO);
  close(fd);
  FILE* f = fopen(path, "r");
  ASSERT_NE(f, nullptr);
  char buf[4096];
  size_t n = fread(buf, 1, sizeof(buf), f);
  fclose(f);
  unlink(path);
  std::string text(buf, n);
  std::regex line(
      R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z strata\[\d+\] info: first 1\n)"
      R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z strata\[\d+\] error: second\n)");
  EXPECT_TRUE(std::regex_match(text, line)) << text;
}

}  // namespace
}  // namespace strata
