// A full host volume must corrupt nothing (Hyper-V pauses the VM: "Paused-Critical"): writes
// that need new space fail with kResourceExhausted (NBD ENOSPC), reads, rewrites of allocated
// space and flushes keep working, and writes work again once space returns.
#include <sys/mount.h>
#include <unistd.h>

#include "blockstore/chain.h"
#include "blockstore/check.h"
#include "blockstore/file.h"
#include "blockstore/test_util.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

class FullVolumeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // A 48 MiB tmpfs is a volume we can fill in a second.
    if (mount("strata-test", dir_.path().c_str(), "tmpfs", 0, "size=48m") != 0) {
      GTEST_SKIP() << "cannot mount a small tmpfs (needs root): " << strerror(errno);
    }
    mounted_ = true;
  }
  void TearDown() override {
    if (mounted_) umount2(dir_.path().c_str(), MNT_DETACH);
  }
  testing::TempDir dir_;
  bool mounted_ = false;
};

TEST_F(FullVolumeTest, EnospcIsCleanAndRecoverable) {
  std::string top = dir_.File("disk.strata");
  CreateOptions options;
  options.size = 1 << 30;
  ASSERT_TRUE(CreateLayer(top, options).ok());
  auto chain = Chain::Open(top);
  ASSERT_TRUE(chain.ok()) << chain.status();
  Chain& c = **chain;
  std::string block(65536, 'd');
  uint64_t written = 0;
  absl::Status s;
  while ((s = c.Write(written, block)).ok()) written += block.size();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_NE(s.message().find("full"), absl::string_view::npos) << s;
  ASSERT_GT(written, 0u);
  // Still working: rewrites of allocated space, reads, flushes.
  ASSERT_TRUE(c.Write(0, std::string(65536, 'r')).ok());
  ASSERT_TRUE(c.Flush().ok());
  std::string back(65536, '\0');
  ASSERT_TRUE(c.Read(0, absl::MakeSpan(back)).ok());
  EXPECT_EQ(back, std::string(65536, 'r'));
  ASSERT_TRUE(c.Read(written - 65536, absl::MakeSpan(back)).ok());
  EXPECT_EQ(back, block);
  // Space returns (the guest trims): new writes work again.
  ASSERT_TRUE(c.Trim(0, written / 2).ok());
  ASSERT_TRUE(c.Flush().ok());
  EXPECT_TRUE(c.Write(written, block).ok());
  ASSERT_TRUE(c.Flush().ok());
  chain->reset();
  auto report = CheckChain(Env::Default(), top, false);
  ASSERT_TRUE(report.ok());
  for (const auto& p : report->problems) ADD_FAILURE() << p;
}

// A disk whose server stopped (or crashed) on a full volume must open again on it: the open's
// new journal epoch needs a checkpoint table, which needs space the volume does not have. The
// open succeeds anyway (the next flush is the checkpoint), reads work, a flush fails with
// ENOSPC without failing the disk, and all works again once space returns.
TEST_F(FullVolumeTest, OpensAgainOnTheFullVolumeItFilled) {
  std::string top = dir_.File("disk.strata");
  std::string ballast = dir_.File("ballast");
  testing::WriteFileBytes(ballast, std::string(8 << 20, 'b'));
  CreateOptions options;
  options.size = 1 << 30;
  ASSERT_TRUE(CreateLayer(top, options).ok());
  std::string block(65536, 'd');
  uint64_t written = 0;
  {
    auto chain = Chain::Open(top);
    ASSERT_TRUE(chain.ok()) << chain.status();
    while ((*chain)->Write(written, block).ok()) written += block.size();
    ASSERT_GT(written, 0u);
    // Not flushed: the journal holds records, so the next open must start a new epoch with a
    // checkpoint. The chain is dropped as a killed server would leave it.
  }
  auto chain = Chain::Open(top);
  ASSERT_TRUE(chain.ok()) << "a full volume refused the open: " << chain.status();
  std::string back(65536, '\0');
  ASSERT_TRUE((*chain)->Read(written - 65536, absl::MakeSpan(back)).ok());
  EXPECT_EQ(back, block);
  absl::Status flush = (*chain)->Flush();
  EXPECT_EQ(flush.code(), absl::StatusCode::kResourceExhausted) << flush;
  EXPECT_TRUE((*chain)->failure().ok()) << "ENOSPC must not fail the disk: " << (*chain)->failure();
  ASSERT_EQ(unlink(ballast.c_str()), 0);
  ASSERT_TRUE((*chain)->Flush().ok());
  ASSERT_TRUE((*chain)->Write(written, block).ok());
  ASSERT_TRUE((*chain)->Flush().ok());
  chain->reset();
  auto report = CheckChain(Env::Default(), top, false);
  ASSERT_TRUE(report.ok());
  for (const auto& p : report->problems) ADD_FAILURE() << p;
}

}  // namespace
}  // namespace strata
