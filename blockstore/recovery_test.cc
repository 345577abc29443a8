// Every command that changes a chain first finishes or rolls back what an interrupted one
// left (recovery.h). The interrupted states are built by doing the steps of snapshot_files.h
// by hand and stopping where a crash would.
#include "blockstore/recovery.h"

#include "blockstore/chain.h"
#include "blockstore/commit.h"
#include "blockstore/file.h"
#include "blockstore/layer.h"
#include "blockstore/revert.h"
#include "blockstore/snapshot_files.h"
#include "blockstore/test_util.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

constexpr uint64_t kDisk = 1 << 20;

class RecoveryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::WriteFileBytes(base_, testing::PatternBytes(kDisk, 3));
    ASSERT_TRUE(CreateLayer(top_, {.parent = base_, .parent_format = ParentFormat::kRaw}).ok());
  }
  void Write(uint64_t offset, char fill, const std::string& snapshot = "") {
    auto chain = Chain::Open(top_);
    ASSERT_TRUE(chain.ok()) << chain.status();
    ASSERT_TRUE((*chain)->Write(offset, std::string(65536, fill)).ok());
    if (!snapshot.empty()) {
      ASSERT_TRUE((*chain)->Snapshot(snapshot).ok());
    }
  }
  // Snapshot `name` of the disk stopped before step 4 (past_commit_point: after step 3, the
  // frozen header durable; else after step 2, the link made).
  void InterruptSnapshot(const std::string& name, bool past_commit_point) {
    auto layer = Layer::Open(env_, top_, Layer::Mode::kWritable);
    ASSERT_TRUE(layer.ok()) << layer.status();
    ASSERT_TRUE(PrepareNextLayer(env_, **layer, top_, name).ok());
    if (past_commit_point) {
      ASSERT_TRUE((*layer)->WriteFrozenHeader(name, 1).ok());
    }
  }
  std::string ReadAll(const std::string& top) { return testing::ReadDisk(top, kDisk); }
  size_t Depth() {
    auto chain = Chain::Open(top_, {.writable = false});
    return chain.ok() ? (*chain)->Layers().size() : 0;
  }
  bool Exists(const std::string& name) { return env_->Exists(dir_.File(name)); }

  Env* env_ = Env::Default();
  testing::TempDir dir_;
  std::string base_ = dir_.File("base.raw");
  std::string top_ = dir_.File("disk.strata");
};

// The review's case: a merge over a snapshot interrupted past its commit point renamed over
// disk.strata, and the snapshot's own recovery then unlinked the merged layer with s1's data.
TEST_F(RecoveryTest, DeleteSnapshotFinishesASnapshotInterruptedPastItsCommitPoint) {
  Write(0, 'a', "s1");
  Write(65536, 'b');
  const std::string disk = ReadAll(top_);
  InterruptSnapshot("s2", /*past_commit_point=*/true);
  auto deleted = DeleteSnapshot(env_, top_, "s1");
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_FALSE(Exists("disk@s1.strata"));
  EXPECT_FALSE(Exists(".disk.strata.new"));
  // What `strata serve` does next: a writable open, which recovers again.
  ASSERT_TRUE(Chain::Open(top_).ok());
  EXPECT_EQ(ReadAll(top_), disk);
  EXPECT_EQ(ReadAll(dir_.File("disk@s2.strata")), disk);
  EXPECT_EQ(Depth(), 3u);  // base, s2 (s1 merged into it), the empty active layer
}

TEST_F(RecoveryTest, CommitFinishesASnapshotInterruptedPastItsCommitPoint) {
  Write(0, 'a', "s1");
  Write(65536, 'b');
  const std::string disk = ReadAll(top_);
  InterruptSnapshot("s2", /*past_commit_point=*/true);
  auto committed = CommitLayer(env_, top_);
  ASSERT_TRUE(committed.ok()) << committed.status();
  ASSERT_TRUE(Chain::Open(top_).ok());
  EXPECT_EQ(ReadAll(top_), disk);
  EXPECT_TRUE(Exists("disk@s1.strata"));
  EXPECT_FALSE(Exists("disk@s2.strata"));  // the new empty layer was committed into s2
  EXPECT_EQ(Depth(), 3u);
}

// A revert over a snapshot stopped before its commit point used to leave the snapshot's link
// as the only name of the discarded layer: an active `disk@s2.strata` that blocked `snapshot
// s2` for good.
TEST_F(RecoveryTest, RevertOverAnUnfinishedSnapshotLeavesNoOrphan) {
  Write(0, 'a', "s1");
  Write(65536, 'b');
  InterruptSnapshot("s2", /*past_commit_point=*/false);
  ASSERT_TRUE(Revert(env_, top_).ok());
  EXPECT_FALSE(Exists("disk@s2.strata"));
  EXPECT_FALSE(Exists(".disk.strata.new"));
  auto chain = Chain::Open(top_);
  ASSERT_TRUE(chain.ok()) << chain.status();
  EXPECT_TRUE((*chain)->Snapshot("s2").ok());
}

// The same orphan made by an older strata (a revert that did not recover first): the
// rollback recognises the link by the pending layer's parent, not only by the top.
TEST_F(RecoveryTest, RollbackRemovesTheOrphanLinkOfARevertedTop) {
  Write(0, 'a', "s1");
  InterruptSnapshot("s2", /*past_commit_point=*/false);
  const std::string fresh = RevertPendingPath(top_);
  ASSERT_TRUE(CreateLayer(fresh, {.parent = dir_.File("disk@s1.strata"),
                                  .parent_format = ParentFormat::kStrata})
                  .ok());
  ASSERT_TRUE(env_->Rename(fresh, top_).ok());
  LockSet locks;
  auto recovered = RecoverChain(env_, top_, &locks);
  ASSERT_TRUE(recovered.ok()) << recovered.status();
  EXPECT_NE(recovered->find("rolled back an interrupted snapshot"), std::string::npos);
  EXPECT_FALSE(Exists("disk@s2.strata"));
  EXPECT_FALSE(Exists(".disk.strata.new"));
}

TEST_F(RecoveryTest, WritableOpenRemovesAnInterruptedRevertsLayer) {
  Write(0, 'a', "s1");
  ASSERT_TRUE(CreateLayer(RevertPendingPath(top_), {.parent = dir_.File("disk@s1.strata"),
                                                    .parent_format = ParentFormat::kStrata})
                  .ok());
  ASSERT_TRUE(Chain::Open(top_).ok());
  EXPECT_FALSE(Exists(".disk.strata.revert"));
}

TEST_F(RecoveryTest, RefusesWhileTheDiskIsInUse) {
  Write(0, 'a', "s1");
  auto served = Chain::Open(top_);
  ASSERT_TRUE(served.ok());
  ASSERT_TRUE(CreateLayer(RevertPendingPath(top_), {.parent = dir_.File("disk@s1.strata"),
                                                    .parent_format = ParentFormat::kStrata})
                  .ok());
  LockSet locks;
  auto recovered = RecoverChain(env_, top_, &locks);
  ASSERT_FALSE(recovered.ok());
  EXPECT_NE(recovered.status().message().find("in use"), absl::string_view::npos);
  EXPECT_TRUE(Exists(".disk.strata.revert"));
}

TEST_F(RecoveryTest, FindsWithoutChanging) {
  Write(0, 'a', "s1");
  InterruptSnapshot("s2", /*past_commit_point=*/true);
  auto found = FindInterruptedOperations(env_, top_);
  ASSERT_EQ(found.size(), 1u);
  EXPECT_NE(found[0].what.find(".disk.strata.new"), std::string::npos);
  EXPECT_TRUE(found[0].recoverable);
  EXPECT_TRUE(Exists(".disk.strata.new"));
}

}  // namespace
}  // namespace strata
