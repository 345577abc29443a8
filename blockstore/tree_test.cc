#include "blockstore/tree.h"

#include <filesystem>
#include <fstream>
#include <iterator>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

#include "blockstore/chain.h"
#include "blockstore/check.h"
#include "blockstore/children.h"
#include "blockstore/commit.h"
#include "blockstore/file.h"
#include "blockstore/layer.h"
#include "blockstore/revert.h"
#include "blockstore/test_util.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

using testing::PatternBytes;
using testing::TempDir;

constexpr uint64_t kDisk = 4 << 20;

class TreeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::WriteFileBytes(base_, PatternBytes(kDisk, 9));
    ASSERT_TRUE(CreateLayer(top_, {.parent = base_, .parent_format = ParentFormat::kRaw}).ok());
  }
  void WriteAndSnapshot(uint64_t offset, char fill, const std::string& name) {
    auto chain = Chain::Open(top_);
    ASSERT_TRUE(chain.ok()) << chain.status();
    ASSERT_TRUE((*chain)->Write(offset, std::string(65536, fill)).ok());
    if (!name.empty()) ASSERT_TRUE((*chain)->Snapshot(name).ok());
  }
  std::string Snap(const std::string& name) { return dir_.File("disk@" + name + ".strata"); }
  // A branch on snapshot `name`, in another directory (registered by CreateLayer).
  std::string Branch(const std::string& name, const TempDir& where) {
    std::string path = where.File("b-" + name + ".strata");
    EXPECT_TRUE(
        CreateLayer(path, {.parent = Snap(name), .parent_format = ParentFormat::kStrata}).ok());
    return path;
  }
  SnapshotTree Tree() {
    auto tree = ReadSnapshotTree(Env::Default(), top_);
    EXPECT_TRUE(tree.ok()) << tree.status();
    return tree.ok() ? *tree : SnapshotTree{};
  }

  TempDir dir_;
  std::string base_ = dir_.File("base.raw");
  std::string top_ = dir_.File("disk.strata");
};

// "path:name:on_chain" of every node, depth first, to compare whole trees.
void Flatten(const std::vector<TreeNode>& nodes, int depth, std::vector<std::string>* out) {
  for (const TreeNode& n : nodes) {
    out->push_back(absl::StrCat(std::string(depth, ' '), BaseName(n.path), ":",
                                n.header.snapshot_name, n.on_chain ? ":on" : ":off"));
    Flatten(n.children, depth + 1, out);
  }
}
std::vector<std::string> Flat(const SnapshotTree& tree) {
  std::vector<std::string> out;
  Flatten(tree.roots, 0, &out);
  return out;
}

TEST_F(TreeTest, ShowsTheChainAsOneBranch) {
  WriteAndSnapshot(0, 'a', "s1");
  WriteAndSnapshot(0, 'b', "s2");
  SnapshotTree tree = Tree();
  EXPECT_EQ(tree.raw_base, base_);
  EXPECT_EQ(Flat(tree), (std::vector<std::string>{"disk@s1.strata:s1:on", " disk@s2.strata:s2:on",
                                                  "  disk.strata::on"}));
}

// Problem 4 of issue 12: after a revert to an older snapshot, the newer one stayed on disk
// where neither `info` nor `list` showed it, blocked deleting the older one, and its name.
TEST_F(TreeTest, RevertLeavesADeadBranchTheTreeShowsAndDeleteRemoves) {
  WriteAndSnapshot(0, 'a', "before-upgrade");
  WriteAndSnapshot(65536, 'b', "nightly-2");
  WriteAndSnapshot(0, 'c', "");
  ASSERT_TRUE(Revert(Env::Default(), top_, "before-upgrade").ok());
  EXPECT_EQ(Flat(Tree()), (std::vector<std::string>{
                              "disk@before-upgrade.strata:before-upgrade:on",
                              " disk@nightly-2.strata:nightly-2:off", " disk.strata::on"}));
  EXPECT_TRUE(IsOffChainSnapshot(Env::Default(), top_, "nightly-2"));
  EXPECT_FALSE(IsOffChainSnapshot(Env::Default(), top_, "before-upgrade"));

  // The dead branch blocks merging its parent, and says where to look.
  auto blocked = DeleteSnapshot(Env::Default(), top_, "before-upgrade");
  ASSERT_FALSE(blocked.ok());
  EXPECT_NE(blocked.status().message().find("disk@nightly-2.strata"), std::string::npos)
      << blocked.status();
  EXPECT_NE(blocked.status().message().find("strata tree"), std::string::npos);

  auto removed = DeleteOffChainSnapshot(Env::Default(), top_, "nightly-2");
  ASSERT_TRUE(removed.ok()) << removed.status();
  EXPECT_EQ(removed->path, Snap("nightly-2"));
  EXPECT_EQ(removed->merged_into, "");
  EXPECT_FALSE(std::filesystem::exists(Snap("nightly-2")));

  // The name is free again, and the older snapshot can go.
  WriteAndSnapshot(0, 'd', "nightly-2");
  const std::string disk = testing::ReadDisk(top_, kDisk);
  auto merged = DeleteSnapshot(Env::Default(), top_, "before-upgrade");
  ASSERT_TRUE(merged.ok()) << merged.status();
  EXPECT_EQ(testing::ReadDisk(top_, kDisk), disk);
}

TEST_F(TreeTest, DeletingAnOffChainSnapshotWithOneChildMergesTheChildIntoIt) {
  WriteAndSnapshot(0, 'a', "s1");
  WriteAndSnapshot(0, 'b', "s2");
  WriteAndSnapshot(65536, 'c', "s3");
  ASSERT_TRUE(Revert(Env::Default(), top_, "s1").ok());
  // s2 <- s3 is a dead branch; s3 reads s2's data through it.
  const std::string s3 = testing::ReadDisk(Snap("s3"), kDisk);
  auto done = DeleteOffChainSnapshot(Env::Default(), top_, "s2");
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->merged_into, Snap("s3"));
  EXPECT_FALSE(std::filesystem::exists(Snap("s2")));
  EXPECT_EQ(testing::ReadDisk(Snap("s3"), kDisk), s3);
  EXPECT_EQ(Flat(Tree()), (std::vector<std::string>{"disk@s1.strata:s1:on",
                                                    " disk@s3.strata:s3:off",
                                                    " disk.strata::on"}));
}

TEST_F(TreeTest, OffChainDeletionRefusesASnapshotOnTheChainOrNowhere) {
  WriteAndSnapshot(0, 'a', "s1");
  EXPECT_TRUE(absl::IsNotFound(DeleteOffChainSnapshot(Env::Default(), top_, "s1").status()));
  auto none = DeleteOffChainSnapshot(Env::Default(), top_, "nope");
  EXPECT_TRUE(absl::IsNotFound(none.status()));
  EXPECT_NE(none.status().message().find("strata tree"), std::string::npos);
}

TEST_F(TreeTest, BranchesInOtherDirectoriesAreInTheTreeAndBlockTheMerge) {
  WriteAndSnapshot(0, 'a', "s1");
  WriteAndSnapshot(0, 'b', "");
  TempDir other;
  const std::string branch = Branch("s1", other);
  std::vector<std::string> flat = Flat(Tree());
  EXPECT_NE(std::find(flat.begin(), flat.end(), " b-s1.strata::off"), flat.end())
      << absl::StrJoin(flat, "\n");
  auto blocked = DeleteSnapshot(Env::Default(), top_, "s1");
  ASSERT_FALSE(blocked.ok());
  EXPECT_NE(blocked.status().message().find(branch), std::string::npos) << blocked.status();
}

// A child registered from elsewhere that was deleted or moved: merges refuse (a moved child
// would break) until `check --repair` forgets it, or `rebase -u` says where it went.
TEST_F(TreeTest, AGoneRegisteredChildBlocksMergesUntilRepairedOrRebased) {
  WriteAndSnapshot(0, 'a', "s1");
  WriteAndSnapshot(0, 'b', "");
  TempDir other, moved_to;
  const std::string branch = Branch("s1", other);
  const std::string moved = moved_to.File("moved.strata");
  std::filesystem::rename(branch, moved);

  auto blocked = DeleteSnapshot(Env::Default(), top_, "s1");
  ASSERT_FALSE(blocked.ok());
  EXPECT_NE(blocked.status().message().find("no longer where they were created"),
            std::string::npos)
      << blocked.status();
  ASSERT_EQ(Tree().roots.size(), 1u);
  ASSERT_EQ(Tree().roots[0].gone.size(), 1u);
  EXPECT_EQ(Tree().roots[0].gone[0].path, branch);

  // Rebased where it is now: registered there, and the merge sees it as a child again.
  ASSERT_TRUE(RebaseLayer(moved, {.parent = Snap("s1")}).ok());
  EXPECT_TRUE(Tree().roots[0].gone.empty());
  blocked = DeleteSnapshot(Env::Default(), top_, "s1");
  ASSERT_FALSE(blocked.ok());
  EXPECT_NE(blocked.status().message().find(moved), std::string::npos) << blocked.status();

  // Deleted: check reports it, --repair forgets it, and the merge goes ahead.
  std::filesystem::remove(moved);
  auto report = CheckChain(Env::Default(), top_, false);
  ASSERT_TRUE(report.ok());
  ASSERT_EQ(report->repairable.size(), 1u) << absl::StrJoin(report->repairable, "\n");
  EXPECT_NE(report->repairable[0].find(moved), std::string::npos);
  report = CheckChain(Env::Default(), top_, true);
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->repaired.size(), 1u);
  for (const RegisteredChild& c : ReadChildRegistry(Env::Default(), dir_.path())) {
    EXPECT_NE(c.path, moved);  // only the disk's own entry on its raw base stays
  }
  EXPECT_TRUE(DeleteSnapshot(Env::Default(), top_, "s1").ok());
}

TEST_F(TreeTest, RegistryLinesThatDoNotParseAreSkipped) {
  WriteAndSnapshot(0, 'a', "s1");
  TempDir other;
  const std::string branch = Branch("s1", other);
  const std::string registry = dir_.File(kChildRegistryFile);
  std::string text;
  {
    std::ifstream in(registry);
    text.assign(std::istreambuf_iterator<char>(in), {});
  }
  testing::WriteFileBytes(registry, "garbage\n" + text + "0000 1111 relative/path\n");
  auto entries = ReadChildRegistry(Env::Default(), dir_.path());
  ASSERT_EQ(entries.size(), 2u);  // the disk on its raw base, and the branch
  EXPECT_EQ(entries[0].path, AbsolutePath(top_));
  EXPECT_TRUE(IsNil(entries[0].parent_uuid));
  EXPECT_EQ(entries[1].path, AbsolutePath(branch));
}

// A directory copied whole (a template, a backup) must name its own files: its layers have
// the original's UUIDs, and a merge in the copy relinks the children its registry names.
TEST_F(TreeTest, ACopiedDirectorysRegistryNamesItsOwnFiles) {
  WriteAndSnapshot(0, 'a', "s1");
  ASSERT_TRUE(
      CreateLayer(dir_.File("b.strata"), {.parent = Snap("s1"), .parent_format = ParentFormat::kStrata})
          .ok());
  TempDir copy;
  std::filesystem::copy(dir_.path(), copy.path(), std::filesystem::copy_options::recursive);
  std::vector<RegisteredChild> entries = ReadChildRegistry(Env::Default(), copy.path());
  ASSERT_EQ(entries.size(), 2u);
  for (const RegisteredChild& c : entries) EXPECT_EQ(DirName(c.path), copy.path()) << c.path;
}

// Disks made before the registry recorded a branch's directory in `.strata-branches`.
TEST_F(TreeTest, DirectoriesRecordedByOlderVersionsAreStillSearched) {
  WriteAndSnapshot(0, 'a', "s1");
  WriteAndSnapshot(0, 'b', "");
  TempDir other;
  const std::string branch = Branch("s1", other);
  std::filesystem::remove(dir_.File(kChildRegistryFile));
  testing::WriteFileBytes(dir_.File(kBranchDirsFile), other.path() + "\n");
  auto blocked = DeleteSnapshot(Env::Default(), top_, "s1");
  ASSERT_FALSE(blocked.ok());
  EXPECT_NE(blocked.status().message().find(branch), std::string::npos) << blocked.status();
}

}  // namespace
}  // namespace strata
