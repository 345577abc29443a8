// --read-only exports (also how frozen snapshots are served): the flag is advertised, every
// command that would change the disk is refused with EPERM as the spec asks, the session goes
// on, reads work, and the layer file is not modified.
#include <sys/stat.h>

#include <cerrno>
#include <vector>

#include "server_fixture.h"

namespace strata_test {
namespace {

class ReadOnlyTest : public ServerTest {
 protected:
  // Served writable first: data goes into the active layer, so reads through it are checked
  // too.
  ReadOnlyTest() : ServerTest({.up_to = Stage::kServing}) {}

  void SetUp() override {
    ServerTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    {
      NbdHandle h = server_.Connect();
      ASSERT_TRUE(h);
      ASSERT_TRUE(WritePattern(h.get(), 1 * kMiB, 64 * kKiB, 1));
      ASSERT_EQ(nbd_flush(h.get(), 0), 0);
    }
    ASSERT_TRUE(server_.Stop());
    ASSERT_EQ(stat(server_.layer_path().c_str(), &before_), 0);
    ASSERT_TRUE(server_.Start({.read_only = true}));
    // libnbd refuses writes to a read-only export by itself; strict mode off, the requests
    // reach the server.
    h_ = server_.Connect({.strict = false});
    ASSERT_TRUE(h_);
  }

  struct stat before_ {};
};

TEST_F(ReadOnlyTest, ReadOnlyFlagIsAdvertised) {
  EXPECT_EQ(nbd_is_read_only(h_.get()), 1);
  EXPECT_TRUE(ReadsBase(h_.get(), 0, 64 * kKiB));
  EXPECT_TRUE(ReadsPattern(h_.get(), 1 * kMiB, 64 * kKiB, 1));
}

TEST_F(ReadOnlyTest, WriteIsRefusedWithEperm) {
  auto data = Pattern(0, 4096, 2);
  EXPECT_EQ(nbd_pwrite(h_.get(), data.data(), data.size(), 0, 0), -1);
  EXPECT_EQ(nbd_get_errno(), EPERM) << nbd_get_error();
  EXPECT_EQ(nbd_pwrite(h_.get(), data.data(), data.size(), 1 * kMiB, LIBNBD_CMD_FLAG_FUA), -1);
  EXPECT_EQ(nbd_get_errno(), EPERM) << nbd_get_error();
  EXPECT_TRUE(ReadsBase(h_.get(), 0, 4096));
  EXPECT_TRUE(ReadsPattern(h_.get(), 1 * kMiB, 64 * kKiB, 1));
}

TEST_F(ReadOnlyTest, TrimAndZeroAreRefusedWithEperm) {
  EXPECT_EQ(nbd_trim(h_.get(), 64 * kKiB, 1 * kMiB, 0), -1);
  EXPECT_EQ(nbd_get_errno(), EPERM) << nbd_get_error();
  EXPECT_EQ(nbd_zero(h_.get(), 64 * kKiB, 1 * kMiB, 0), -1);
  EXPECT_EQ(nbd_get_errno(), EPERM) << nbd_get_error();
  EXPECT_EQ(nbd_zero(h_.get(), 64 * kKiB, 0, LIBNBD_CMD_FLAG_NO_HOLE), -1);
  EXPECT_EQ(nbd_get_errno(), EPERM) << nbd_get_error();
  EXPECT_TRUE(ReadsPattern(h_.get(), 1 * kMiB, 64 * kKiB, 1));
  EXPECT_TRUE(ReadsBase(h_.get(), 0, 64 * kKiB));
}

// A refused write on one connection does not leak through another, and the layer file is not
// touched (size and content of the write never reach it).
TEST_F(ReadOnlyTest, NothingReachesTheLayerFile) {
  NbdHandle other = server_.Connect();
  ASSERT_TRUE(other);
  auto data = Pattern(2 * kMiB, 1 * kMiB, 3);
  EXPECT_EQ(nbd_pwrite(h_.get(), data.data(), data.size(), 2 * kMiB, 0), -1);
  // FLUSH is allowed on a read-only export (nothing to do) and must not fail.
  EXPECT_EQ(nbd_flush(h_.get(), 0), 0) << nbd_get_error();
  EXPECT_TRUE(ReadsBase(other.get(), 2 * kMiB, 1 * kMiB));
  h_.reset();
  other.reset();
  ASSERT_TRUE(server_.Stop());
  struct stat after {};
  ASSERT_EQ(stat(server_.layer_path().c_str(), &after), 0);
  EXPECT_EQ(after.st_size, before_.st_size);
  EXPECT_EQ(after.st_blocks, before_.st_blocks);
  std::string out;
  EXPECT_TRUE(server_.Check(&out)) << out;
}

}  // namespace
}  // namespace strata_test
