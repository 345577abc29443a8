// NbdBase against real NBD servers (nbdkit, with its error and delay filters standing in for
// a failing or hung base): reads, identity, allocation, faults and reconnection.
#include "server/remote/nbd_base.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

class NbdBaseTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (system("command -v nbdkit >/dev/null 2>&1") != 0) GTEST_SKIP() << "nbdkit not installed";
    char tmpl[] = "/tmp/strata-nbdbase-XXXXXX";
    dir_ = mkdtemp(tmpl);
    sock_ = dir_ + "/base.sock";
    uri_ = "nbd+unix:///?socket=" + sock_;
  }
  void TearDown() override {
    StopServer();
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  // nbdkit -f -U SOCK ARGS..., until its socket exists.
  void StartServer(std::vector<std::string> args) {
    std::filesystem::remove(sock_);
    args.insert(args.begin(), {"nbdkit", "-f", "-U", sock_});
    pid_ = fork();
    if (pid_ == 0) {
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execvp("nbdkit", argv.data());
      _exit(127);
    }
    for (int i = 0; i < 200 && !std::filesystem::exists(sock_); ++i)
      absl::SleepFor(absl::Milliseconds(20));
    ASSERT_TRUE(std::filesystem::exists(sock_)) << "nbdkit did not start";
  }
  void StopServer(int sig = SIGTERM) {
    if (pid_ <= 0) return;
    kill(pid_, sig);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  absl::StatusOr<std::unique_ptr<NbdBase>> Connect(NbdBaseOptions options = {}) {
    return NbdBase::Connect(uri_, dir_ + "/vm.strata", options);
  }
  // A 4 KiB read that must fail (kUnavailable) within 5 s.
  static void ExpectReadFailsSoon(NbdBase* base) {
    std::string buf(4096, '\0');
    const absl::Time start = absl::Now();
    absl::Status s = base->Read(0, absl::MakeSpan(buf));
    EXPECT_TRUE(absl::IsUnavailable(s)) << s;
    EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  }
  // The pattern plugin: the 8 bytes at offset 8k hold 8k, big-endian.
  static std::string Pattern(uint64_t offset, uint64_t length) {
    std::string out;
    for (uint64_t at = offset / 8 * 8; at < offset + length; at += 8) {
      for (int i = 7; i >= 0; --i) out.push_back(static_cast<char>((at >> (8 * i)) & 0xff));
    }
    return out.substr(offset % 8, length);
  }

  std::string dir_, sock_, uri_;
  pid_t pid_ = -1;
};

TEST_F(NbdBaseTest, ReadsWhatTheExportHoldsInPiecesOfAnySize) {
  StartServer({"-r", "pattern", "size=64M"});
  auto base = Connect();
  ASSERT_TRUE(base.ok()) << base.status();
  EXPECT_EQ((*base)->size(), 64u << 20);
  std::string small(100, '\0');
  ASSERT_TRUE((*base)->Read(8003, absl::MakeSpan(small)).ok());
  EXPECT_EQ(small, Pattern(8003, 100));
  std::string big((40 << 20) + 5, '\0');  // past the largest request: split and joined
  ASSERT_TRUE((*base)->Read(3, absl::MakeSpan(big)).ok());
  EXPECT_TRUE(big == Pattern(3, big.size()));
  const RemoteBaseState state = (*base)->State();
  EXPECT_TRUE(state.connected);
  EXPECT_EQ(state.failed_reads, 0u);
}

TEST_F(NbdBaseTest, AWritableExportIsRefusedUnlessAllowed) {
  StartServer({"memory", "size=1M"});
  auto base = Connect();
  ASSERT_FALSE(base.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(base.status())) << base.status();
  EXPECT_NE(base.status().message().find("--allow-writable-base"), std::string::npos);
  EXPECT_NE(base.status().message().find(uri_), std::string::npos);
  EXPECT_TRUE(Connect({.allow_writable = true}).ok());
}

TEST_F(NbdBaseTest, TheAllocationMapComesFromBaseAllocation) {
  const std::string file = dir_ + "/base.raw";
  {
    std::ofstream f(file);
    f.seekp(1 << 20);
    f << std::string(65536, 'x');
  }
  std::filesystem::resize_file(file, 4 << 20);
  StartServer({"-r", "file", file});
  auto base = Connect();
  ASSERT_TRUE(base.ok()) << base.status();
  bool covered = false;
  for (auto [start, end] : (*base)->DataRanges(0, 4 << 20)) {
    EXPECT_FALSE(start < (3u << 20) && end > (2u << 20)) << start << ".." << end << " is a hole";
    covered |= start <= (1u << 20) && end >= (1u << 20) + 65536;
  }
  EXPECT_TRUE(covered) << "the written range is not data";
}

TEST_F(NbdBaseTest, AnErrorFromTheServerFailsThatReadAtOnce) {
  StartServer({"-r", "--filter=error", "pattern", "size=1M", "error-rate=100%", "error=EIO"});
  auto base = Connect();
  ASSERT_TRUE(base.ok()) << base.status();
  ExpectReadFailsSoon(base->get());
  EXPECT_EQ((*base)->State().failed_reads, 1u);
}

TEST_F(NbdBaseTest, AHungServerFailsTheReadAfterTheTimeoutAndIsDropped) {
  StartServer({"-r", "--filter=delay", "pattern", "size=1M", "delay-read=30"});
  auto base = Connect({.read_timeout = absl::Seconds(1)});
  ASSERT_TRUE(base.ok()) << base.status();
  ExpectReadFailsSoon(base->get());
  EXPECT_NE((*base)->State().last_error.find("no reply"), std::string::npos)
      << (*base)->State().last_error;
}

TEST_F(NbdBaseTest, ALostServerFailsReadsUntilItIsBackThenReconnects) {
  StartServer({"-r", "pattern", "size=1M"});
  auto base = Connect({.read_timeout = absl::Seconds(1)});
  ASSERT_TRUE(base.ok()) << base.status();
  std::string buf(4096, '\0');
  ASSERT_TRUE((*base)->Read(0, absl::MakeSpan(buf)).ok());
  StopServer(SIGKILL);
  EXPECT_TRUE(absl::IsUnavailable((*base)->Read(4096, absl::MakeSpan(buf))));
  EXPECT_FALSE((*base)->State().connected);
  StartServer({"-r", "pattern", "size=1M"});
  absl::Status s;
  for (int i = 0; i < 50; ++i) {
    s = (*base)->Read(4096, absl::MakeSpan(buf));
    if (s.ok()) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(buf, Pattern(4096, 4096));
  EXPECT_GE((*base)->State().reconnects, 1u);
}

TEST_F(NbdBaseTest, AServerThatComesBackWithAnotherImageIsNotUsed) {
  StartServer({"-r", "pattern", "size=1M"});
  auto base = Connect({.read_timeout = absl::Seconds(2)});
  ASSERT_TRUE(base.ok()) << base.status();
  StopServer(SIGKILL);
  StartServer({"-r", "pattern", "size=2M"});
  std::string buf(4096, '\0');
  absl::Status s;
  for (int i = 0; i < 2; ++i) s = (*base)->Read(0, absl::MakeSpan(buf));
  EXPECT_FALSE(s.ok());
  EXPECT_NE((*base)->State().last_error.find("changed"), std::string::npos)
      << (*base)->State().last_error;
}

}  // namespace
}  // namespace strata
