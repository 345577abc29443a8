#include "blockstore/commit.h"

#include "blockstore/chain.h"
#include "blockstore/check.h"
#include "blockstore/crash_env.h"
#include "blockstore/file.h"
#include "blockstore/layer.h"
#include "blockstore/test_util.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

using testing::PatternBytes;
using testing::TempDir;

constexpr uint64_t kDisk = 4 << 20;

class CommitTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::WriteFileBytes(base_, PatternBytes(kDisk, 5));
    ASSERT_TRUE(CreateLayer(top_, {.parent = base_, .parent_format = ParentFormat::kRaw}).ok());
  }
  // Writes `fill` at `offset` (64 KiB) then snapshots as `name`.
  void WriteAndSnapshot(uint64_t offset, char fill, const std::string& name) {
    auto chain = Chain::Open(top_);
    ASSERT_TRUE(chain.ok()) << chain.status();
    ASSERT_TRUE((*chain)->Write(offset, std::string(65536, fill)).ok());
    if (!name.empty()) {
      ASSERT_TRUE((*chain)->Snapshot(name).ok());
    }
  }
  std::string ReadAll(const std::string& top) {
    auto chain = Chain::Open(top, {.writable = false});
    EXPECT_TRUE(chain.ok()) << chain.status();
    if (!chain.ok()) return "";
    std::string out(kDisk, '\0');
    EXPECT_TRUE((*chain)->Read(0, absl::MakeSpan(out)).ok());
    return out;
  }
  size_t Depth() {
    auto chain = Chain::Open(top_, {.writable = false, .lock = false});
    return chain.ok() ? (*chain)->Layers().size() : 0;
  }
  void ExpectClean() {
    auto report = CheckChain(Env::Default(), top_, false);
    ASSERT_TRUE(report.ok());
    for (const auto& p : report->problems) ADD_FAILURE() << p;
    for (const auto& p : report->repairable) ADD_FAILURE() << p;
  }

  TempDir dir_;
  std::string base_ = dir_.File("base.raw");
  std::string top_ = dir_.File("disk.strata");
};

TEST_F(CommitTest, CommitTopMakesParentTheActiveLayer) {
  WriteAndSnapshot(0, 'a', "s1");
  WriteAndSnapshot(32768, 'b', "");
  std::string before = ReadAll(top_);
  auto result = CommitLayer(Env::Default(), top_);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->merged_into, top_);
  EXPECT_EQ(result->bytes_copied, 65536u);
  EXPECT_EQ(ReadAll(top_), before);
  EXPECT_EQ(Depth(), 2u);  // base + the merged layer
  EXPECT_FALSE(Env::Default()->Exists(dir_.File("disk@s1.strata")));
  auto h = ReadLayerHeader(Env::Default(), top_);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->state, LayerState::kActive);
  ExpectClean();
  auto chain = Chain::Open(top_);  // writable again
  ASSERT_TRUE(chain.ok()) << chain.status();
}

TEST_F(CommitTest, DeleteMiddleSnapshotKeepsNewerOne) {
  WriteAndSnapshot(0, 'a', "s1");
  WriteAndSnapshot(65536, 'b', "s2");
  WriteAndSnapshot(0, 'c', "");
  std::string before = ReadAll(top_);
  std::string s2_before = ReadAll(dir_.File("disk@s2.strata"));
  auto result = DeleteSnapshot(Env::Default(), top_, "s1");
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(ReadAll(top_), before);
  EXPECT_EQ(ReadAll(dir_.File("disk@s2.strata")), s2_before);
  EXPECT_FALSE(Env::Default()->Exists(dir_.File("disk@s1.strata")));
  EXPECT_EQ(Depth(), 3u);
  ExpectClean();
}

TEST_F(CommitTest, RefusesWhenTheParentHasAnotherChild) {
  WriteAndSnapshot(0, 'a', "s1");
  ASSERT_TRUE(CreateLayer(dir_.File("branch.strata"),
                          {.parent = dir_.File("disk@s1.strata"),
                           .parent_format = ParentFormat::kStrata})
                  .ok());
  auto result = CommitLayer(Env::Default(), top_);
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.status().message().find("branch.strata"), absl::string_view::npos);
  EXPECT_FALSE(Env::Default()->Exists(MergeJournalPath(top_)));
}

TEST_F(CommitTest, RefusesWhileTheDiskIsServed) {
  WriteAndSnapshot(0, 'a', "s1");
  auto served = Chain::Open(top_);
  ASSERT_TRUE(served.ok());
  auto result = CommitLayer(Env::Default(), top_);
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.status().message().find("in use"), absl::string_view::npos);
}

TEST_F(CommitTest, RefusesWithoutAStrataParent) {
  auto result = CommitLayer(Env::Default(), top_);
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.status().message().find("raw"), absl::string_view::npos);
}

TEST_F(CommitTest, ChainWithMergeJournalRefusesToOpenUntilResumed) {
  WriteAndSnapshot(0, 'a', "s1");
  WriteAndSnapshot(0, 'b', "");
  std::string before = ReadAll(top_);
  // The disk dies during the copy: the merge journal stays behind.
  CrashEnv dying(1);
  dying.FailSyncsAfter(3);
  ASSERT_FALSE(CommitLayer(&dying, top_).ok());
  ASSERT_TRUE(Env::Default()->Exists(MergeJournalPath(top_)));
  auto open = Chain::Open(top_);
  ASSERT_FALSE(open.ok());
  EXPECT_NE(open.status().message().find("interrupted commit"), absl::string_view::npos);
  auto resumed = ResumeInterruptedCommit(Env::Default(), top_);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_NE(resumed->find("completed the interrupted commit"), std::string::npos);
  EXPECT_EQ(ReadAll(top_), before);
  EXPECT_EQ(Depth(), 2u);
  ExpectClean();
}

TEST_F(CommitTest, RevertDiscardsChanges) {
  WriteAndSnapshot(0, 'a', "s1");
  std::string s1 = ReadAll(top_);
  WriteAndSnapshot(0, 'b', "s2");
  WriteAndSnapshot(0, 'c', "");
  std::string s2 = ReadAll(dir_.File("disk@s2.strata"));
  ASSERT_TRUE(Revert(Env::Default(), top_).ok());
  EXPECT_EQ(ReadAll(top_), s2);
  ASSERT_TRUE(Revert(Env::Default(), top_, "s1").ok());
  EXPECT_EQ(ReadAll(top_), s1);
  EXPECT_EQ(Revert(Env::Default(), top_, "nope").code(), absl::StatusCode::kNotFound);
  ExpectClean();
}

}  // namespace
}  // namespace strata
