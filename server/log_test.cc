#include "server/log.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
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


constexpr int64_t kSecond = 1000000000;

TEST(LogLimiterTest, PassesTheFirstLinesOfEachSecondOnly) {
  LogLimiter limiter;
  uint64_t suppressed = 99;
  for (int i = 0; i < LogLimiter::kLinesPerSecond; ++i) {
    ASSERT_TRUE(limiter.Allow(5 * kSecond + i, &suppressed)) << i;
    EXPECT_EQ(suppressed, 0u);
  }
  for (int i = 0; i < 200000; ++i) EXPECT_FALSE(limiter.Allow(5 * kSecond + kSecond / 2, &suppressed));
}

TEST(LogLimiterTest, NextLineAllowedCountsTheSuppressedOnes) {
  LogLimiter limiter;
  uint64_t suppressed = 0;
  for (int i = 0; i < LogLimiter::kLinesPerSecond + 7; ++i) limiter.Allow(kSecond, &suppressed);
  ASSERT_TRUE(limiter.Allow(2 * kSecond, &suppressed));
  EXPECT_EQ(suppressed, 7u);
  ASSERT_TRUE(limiter.Allow(2 * kSecond + 1, &suppressed));
  EXPECT_EQ(suppressed, 0u);  // told once
}

TEST(LogLimiterTest, EachLimiterCountsAlone) {
  LogLimiter a, b;
  uint64_t suppressed = 0;
  for (int i = 0; i < LogLimiter::kLinesPerSecond; ++i) a.Allow(kSecond, &suppressed);
  EXPECT_FALSE(a.Allow(kSecond, &suppressed));
  EXPECT_TRUE(b.Allow(kSecond, &suppressed));
}

// What a log file holds after `write` ran with the log sent to it.
template <typename Fn>
std::string LoggedBy(Fn write) {
  char path[] = "/tmp/strata-log-test-XXXXXX";
  int fd = mkstemp(path);
  EXPECT_GE(fd, 0);
  LogToFile(fd);
  write();
  LogToFile(STDERR_FILENO);
  lseek(fd, 0, SEEK_SET);
  std::string text(1 << 20, '\0');
  text.resize(std::max<ssize_t>(0, read(fd, text.data(), text.size())));
  close(fd);
  unlink(path);
  return text;
}

TEST(LogLimiterTest, MacroWritesAtMostTheLimitOfLinesPerSecond) {
  std::string text = LoggedBy([] {
    for (int i = 0; i < 200000; ++i) STRATA_LOG_LIMITED(kError, "bad request %d", i);
  });
  const long lines = std::count(text.begin(), text.end(), '\n');
  // The loop may cross a few second boundaries on a slow machine.
  EXPECT_GE(lines, LogLimiter::kLinesPerSecond);
  EXPECT_LE(lines, 5 * LogLimiter::kLinesPerSecond) << text;
  EXPECT_NE(text.find("error: bad request 0\n"), std::string::npos);
}

TEST(LogLimiterTest, LineAfterSuppressedOnesSaysHowMany) {
  std::string text = LoggedBy([] { LogLineLimited(LogLevel::kError, "conn 3: closed", 1234); });
  EXPECT_NE(text.find("conn 3: closed (and 1234 similar lines suppressed before this one"),
            std::string::npos)
      << text;
  text = LoggedBy([] { LogLineLimited(LogLevel::kInfo, "conn 4: opened", 0); });
  EXPECT_NE(text.find("info: conn 4: opened\n"), std::string::npos) << text;
}

}  // namespace
}  // namespace strata
