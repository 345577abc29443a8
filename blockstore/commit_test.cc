#include "blockstore/commit.h"

#include "blockstore/chain.h"
#include "blockstore/check.h"
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "absl/strings/str_cat.h"

#include "blockstore/fail_env.h"
#include "blockstore/file.h"
#include "blockstore/layer.h"
#include "blockstore/recovery.h"
#include "blockstore/test_util.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

using testing::FailEnv;
using testing::FailNth;
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
  std::string ReadAll(const std::string& top, std::vector<std::string> allowed = {}) {
    return testing::ReadDisk(top, kDisk, std::move(allowed));
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

TEST_F(CommitTest, ReadOnlyOpenRefusesAnInterruptedMergeAndAWritableOneFinishesIt) {
  WriteAndSnapshot(0, 'a', "s1");
  WriteAndSnapshot(0, 'b', "");
  std::string before = ReadAll(top_);
  // The copy's progress update fails: the merge journal stays behind.
  FailEnv dying(FailNth("rename", ".merge", 2));
  ASSERT_FALSE(CommitLayer(&dying, top_).ok());
  ASSERT_TRUE(Env::Default()->Exists(MergeJournalPath(top_)));
  auto open = Chain::Open(top_, {.writable = false});
  ASSERT_FALSE(open.ok());
  EXPECT_NE(open.status().message().find("interrupted commit"), absl::string_view::npos);
  ASSERT_TRUE(Chain::Open(top_).ok());  // as `strata serve` opens it
  EXPECT_FALSE(Env::Default()->Exists(MergeJournalPath(top_)));
  EXPECT_EQ(ReadAll(top_), before);
  EXPECT_EQ(Depth(), 2u);
  ExpectClean();
}

// Finding: killed between its journal renames, a merge left P frozen, so `info`, `export` and
// `serve --read-only` of the snapshot read a mix of both layers. P now says `merging`.
TEST_F(CommitTest, MergeTargetIsFencedUntilTheMergeFinishes) {
  WriteAndSnapshot(0, 'a', "s1");
  for (uint64_t off = 0; off < kDisk; off += 4 * 65536) WriteAndSnapshot(off, 'b', "");
  const std::string before = ReadAll(top_);
  const std::string snap = dir_.File("disk@s1.strata");
  // The journal's first progress update (after the first 64 KiB batch) fails: the copy has
  // started and P holds some of C's clusters.
  FailEnv dying(FailNth("rename", ".merge", 2));
  ASSERT_FALSE(CommitLayer(&dying, top_, nullptr, 65536).ok());
  auto h = ReadLayerHeader(Env::Default(), snap);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->state, LayerState::kMerging);
  auto layer = Layer::Open(Env::Default(), snap, Layer::Mode::kReadOnly);
  ASSERT_FALSE(layer.ok());
  EXPECT_NE(layer.status().message().find("interrupted merge"), absl::string_view::npos);
  EXPECT_FALSE(Chain::Open(snap, {.writable = false, .lock = false}).ok());
  {
    LockSet locks;
    auto resumed = RecoverChain(Env::Default(), top_, &locks);
    ASSERT_TRUE(resumed.ok()) << resumed.status();
  }
  EXPECT_EQ(ReadAll(top_), before);
  EXPECT_EQ(Depth(), 2u);
  ExpectClean();
}

// Finding: a merge only searched C's directory for C's children, so a top layer in another
// directory kept C's UUID as its parent's and the chain no longer opened.
TEST_F(CommitTest, CrossDirectoryMergeRelinksAChildInAThirdDirectory) {
  TempDir b, c;
  const std::vector<std::string> trusted = {dir_.path(), b.path()};  // parents elsewhere
  WriteAndSnapshot(0, 'a', "s1");
  ASSERT_EQ(unlink(top_.c_str()), 0);  // only the branch below stays on s1
  const std::string mid = b.File("vm.strata"), top = c.File("top.strata");
  ASSERT_TRUE(CreateLayer(mid, {.parent = dir_.File("disk@s1.strata"),
                                .parent_format = ParentFormat::kStrata})
                  .ok());
  {
    auto chain = Chain::Open(mid, {.allowed_parent_dirs = trusted});
    ASSERT_TRUE(chain.ok()) << chain.status();
    ASSERT_TRUE((*chain)->Write(65536, std::string(65536, 'b')).ok());
    ASSERT_TRUE((*chain)->Snapshot("s2").ok());
  }
  ASSERT_EQ(unlink(mid.c_str()), 0);
  ASSERT_TRUE(CreateLayer(top, {.parent = b.File("vm@s2.strata"),
                                .parent_format = ParentFormat::kStrata})
                  .ok());
  const std::string before = ReadAll(top, trusted);
  auto deleted = DeleteSnapshot(Env::Default(), top, "s1");
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(ReadAll(top, trusted), before);
  EXPECT_FALSE(Env::Default()->Exists(dir_.File("disk@s1.strata")));
  ASSERT_TRUE(Chain::Open(top, {.allowed_parent_dirs = trusted}).ok());
}

// The working directory the merge ran in, and the one it is resumed from.
class CwdGuard {
 public:
  explicit CwdGuard(const std::string& dir) : saved_(std::filesystem::current_path()) {
    std::filesystem::current_path(dir);
  }
  ~CwdGuard() { std::filesystem::current_path(saved_); }

 private:
  std::filesystem::path saved_;
};

// Finding: the journal stored paths relative to the working directory, and a resume from
// vm2/ of vm1's interrupted merge renamed vm2's snapshot over vm2's active layer.
TEST_F(CommitTest, JournalResolvesFromItsOwnDirectory) {
  for (const char* vm : {"vm1", "vm2"}) {
    std::filesystem::create_directory(dir_.File(vm));
    const std::string disk = dir_.File(std::string(vm) + "/disk.strata");
    ASSERT_TRUE(CreateLayer(disk, {.parent = base_, .parent_format = ParentFormat::kRaw}).ok());
    auto chain = Chain::Open(disk, {.allowed_parent_dirs = {dir_.path()}});  // the base is above
    ASSERT_TRUE(chain.ok());
    ASSERT_TRUE((*chain)->Write(0, std::string(65536, vm[2])).ok());
    ASSERT_TRUE((*chain)->Snapshot("s1").ok());
    ASSERT_TRUE((*chain)->Write(65536, std::string(65536, vm[2])).ok());
  }
  const std::string vm1 = dir_.File("vm1/disk.strata"), vm2 = dir_.File("vm2/disk.strata");
  const std::string vm1_before = ReadAll(vm1, {dir_.path()});
  const std::string vm2_before = ReadAll(vm2, {dir_.path()});
  {
    CwdGuard cwd(dir_.File("vm1"));
    FailEnv dying(FailNth("remove", "disk.strata.merge", 1));  // just before the unlink
    ASSERT_FALSE(DeleteSnapshot(&dying, "disk.strata", "s1").ok());
  }
  ASSERT_TRUE(Env::Default()->Exists(MergeJournalPath(vm1)));
  {
    CwdGuard cwd(dir_.File("vm2"));
    LockSet locks;
    auto resumed = RecoverChain(Env::Default(), "../vm1/disk.strata", &locks);
    ASSERT_TRUE(resumed.ok()) << resumed.status();
  }
  EXPECT_FALSE(Env::Default()->Exists(MergeJournalPath(vm1)));
  EXPECT_TRUE(Env::Default()->Exists(dir_.File("vm2/disk@s1.strata")));
  EXPECT_EQ(ReadAll(vm2, {dir_.path()}), vm2_before);
  EXPECT_EQ(ReadAll(vm1, {dir_.path()}), vm1_before);
}

// A journal acts only on the layers whose UUIDs it recorded: here vm1's journal is put beside
// another disk's layers of the same names.
TEST_F(CommitTest, JournalRefusesLayersWithOtherUuids) {
  WriteAndSnapshot(0, 'a', "s1");
  WriteAndSnapshot(65536, 'b', "");
  FailEnv dying(FailNth("rename", ".merge", 2));
  ASSERT_FALSE(CommitLayer(&dying, top_, nullptr, 65536).ok());
  TempDir other;
  const std::string other_top = other.File("disk.strata");
  ASSERT_TRUE(CreateLayer(other_top, {.parent = base_, .parent_format = ParentFormat::kRaw}).ok());
  {
    auto chain = Chain::Open(other_top, {.allowed_parent_dirs = {dir_.path()}});
    ASSERT_TRUE(chain.ok());
    ASSERT_TRUE((*chain)->Snapshot("s1").ok());
  }
  std::filesystem::copy_file(MergeJournalPath(top_), MergeJournalPath(other_top));
  LockSet locks;
  auto resumed = RecoverChain(Env::Default(), other_top, &locks);
  ASSERT_FALSE(resumed.ok());
  EXPECT_NE(resumed.status().message().find("refusing to touch"), absl::string_view::npos);
  auto h = ReadLayerHeader(Env::Default(), other.File("disk@s1.strata"));
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->state, LayerState::kFrozen);
}

// Finding: a branch in another directory was silently changed by a merge into its parent.
TEST_F(CommitTest, RefusesWhenARecordedBranchElsewhereUsesTheParent) {
  WriteAndSnapshot(0, 'a', "s1");
  TempDir other;
  const std::string snap = dir_.File("disk@s1.strata"), branch = other.File("b2.strata");
  // Registered beside s1 by CreateLayer.
  ASSERT_TRUE(CreateLayer(branch, {.parent = snap, .parent_format = ParentFormat::kStrata}).ok());
  auto result = DeleteSnapshot(Env::Default(), top_, "s1");
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.status().message().find("b2.strata"), absl::string_view::npos);
  EXPECT_TRUE(Chain::Open(branch, {.writable = false, .allowed_parent_dirs = {dir_.path()}}).ok());
}

// --- Into the raw base (issue 12) ---

std::string FileBytes(const std::string& path) {
  auto bytes = ReadWholeFile(Env::Default(), path);
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  return bytes.ok() ? *bytes : "";
}

uint64_t AllocatedBytes(const std::string& path) {
  auto file = Env::Default()->Open(path, {});
  EXPECT_TRUE(file.ok());
  return file.ok() ? (*file)->AllocatedBytes().value_or(0) : 0;
}

// EXPECT_EQ would print megabytes.
void ExpectSameBytes(const std::string& got, const std::string& want) {
  auto diff = std::mismatch(got.begin(), got.end(), want.begin(), want.end());
  EXPECT_TRUE(got == want) << "sizes " << got.size() << " and " << want.size()
                           << ", first difference at byte " << diff.first - got.begin();
}

class IntoBaseTest : public CommitTest {
 protected:
  // The active layer with data (unaligned, across clusters) and zeroed ranges, trimmed or not.
  void WriteDataAndZeros() {
    auto chain = Chain::Open(top_);
    ASSERT_TRUE(chain.ok()) << chain.status();
    ASSERT_TRUE((*chain)->Write(4096 + 700, PatternBytes(3 * 65536, 7)).ok());
    ASSERT_TRUE((*chain)->Write(3 * (1 << 20), PatternBytes(8192, 8)).ok());
    ASSERT_TRUE((*chain)->WriteZeroes(1 << 20, 1 << 20, /*may_trim=*/true).ok());
    ASSERT_TRUE((*chain)->WriteZeroes(2 * (1 << 20) + 4096, 65536, /*may_trim=*/false).ok());
  }
  void ExpectNoJournal() { EXPECT_FALSE(Env::Default()->Exists(MergeJournalPath(base_))); }
  const std::string snap_ = dir_.File("disk@s1.strata");
};

TEST_F(IntoBaseTest, TopBecomesAnEmptyLayerOnTheBaseThatHoldsTheDisk) {
  WriteDataAndZeros();
  const std::string before = ReadAll(top_);
  ASSERT_FALSE(before == FileBytes(base_));
  const uint64_t allocated = AllocatedBytes(base_);
  auto result = CommitIntoBase(Env::Default(), top_);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->merged_into, base_);
  ExpectSameBytes(FileBytes(base_), before);
  ExpectSameBytes(ReadAll(top_), before);
  EXPECT_LT(AllocatedBytes(base_), allocated);  // the zeroed MiB was punched out
  auto layer = Layer::Open(Env::Default(), top_, Layer::Mode::kReadOnly);
  ASSERT_TRUE(layer.ok()) << layer.status();
  EXPECT_EQ((*layer)->header().state, LayerState::kActive);
  EXPECT_EQ((*layer)->header().parent_format, ParentFormat::kRaw);
  EXPECT_EQ((*layer)->header().parent_path, "base.raw");
  EXPECT_EQ((*layer)->referenced_slots(), 0u);
  EXPECT_EQ(Depth(), 2u);
  ExpectNoJournal();
  ExpectClean();
  ASSERT_TRUE(Chain::Open(top_).ok());  // `strata serve disk.strata` works on
}

TEST_F(IntoBaseTest, DropLeavesTheBaseAloneAsTheDisk) {
  WriteDataAndZeros();
  const std::string before = ReadAll(top_);
  auto result = CommitIntoBase(Env::Default(), top_, {.drop = true});
  ASSERT_TRUE(result.ok()) << result.status();
  ExpectSameBytes(FileBytes(base_), before);
  EXPECT_FALSE(Env::Default()->Exists(top_));
  ExpectNoJournal();
}

TEST_F(IntoBaseTest, FrozenLayerLeavesAndItsChildStandsOnTheBase) {
  WriteAndSnapshot(0, 'a', "s1");
  WriteAndSnapshot(32768, 'b', "");
  const std::string before = ReadAll(top_), s1 = ReadAll(snap_);
  auto result = CommitIntoBase(Env::Default(), snap_);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->bytes_copied, 65536u);
  ExpectSameBytes(FileBytes(base_), s1);
  ExpectSameBytes(ReadAll(top_), before);
  EXPECT_FALSE(Env::Default()->Exists(snap_));
  auto h = ReadLayerHeader(Env::Default(), top_);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->parent_format, ParentFormat::kRaw);
  EXPECT_EQ(h->parent_path, "base.raw");
  EXPECT_EQ(h->parent_size, kDisk);
  EXPECT_TRUE(IsNil(h->parent_uuid));
  EXPECT_EQ(Depth(), 2u);
  ExpectNoJournal();
  ExpectClean();
}

// Run from the disk's directory with bare names, as a user types them: the child's new link
// is still the base's file name, and the journal resolves from its own directory.
TEST_F(IntoBaseTest, BareNamesFromTheDiskDirectoryKeepTheLinkByName) {
  WriteAndSnapshot(0, 'a', "s1");
  const std::string before = ReadAll(top_);
  {
    CwdGuard cwd(dir_.path());
    auto result = CommitIntoBase(Env::Default(), "disk@s1.strata");
    ASSERT_TRUE(result.ok()) << result.status();
  }
  auto h = ReadLayerHeader(Env::Default(), top_);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->parent_path, "base.raw");
  ExpectSameBytes(ReadAll(top_), before);
  ExpectNoJournal();
}

// A base whose size is not a multiple of the sub-block: the layer's last sub-block reaches
// past the disk's end, and the base must keep its size (the chain checks it).
TEST_F(IntoBaseTest, PartialLastSubBlockKeepsTheBaseSize) {
  const uint64_t size = kDisk - 512;
  testing::WriteFileBytes(base_, PatternBytes(size, 6));
  ASSERT_TRUE(Env::Default()->Remove(top_).ok());
  ASSERT_TRUE(CreateLayer(top_, {.parent = base_, .parent_format = ParentFormat::kRaw}).ok());
  {
    auto chain = Chain::Open(top_);
    ASSERT_TRUE(chain.ok()) << chain.status();
    ASSERT_TRUE((*chain)->Write(size - 1024, std::string(1024, 'e')).ok());
    ASSERT_TRUE((*chain)->WriteZeroes(size - 8192, 4096, /*may_trim=*/true).ok());
  }
  const std::string before = testing::ReadDisk(top_, size);
  auto result = CommitIntoBase(Env::Default(), top_);
  ASSERT_TRUE(result.ok()) << result.status();
  ExpectSameBytes(FileBytes(base_), before);
  ExpectSameBytes(testing::ReadDisk(top_, size), before);
}

TEST_F(IntoBaseTest, RefusesWhenARecordedLayerElsewhereStandsOnTheBase) {
  WriteDataAndZeros();
  const std::string base_before = FileBytes(base_);
  TempDir other;
  const std::string branch = other.File("b2.strata");
  // Registered beside the base by CreateLayer.
  ASSERT_TRUE(CreateLayer(branch, {.parent = base_, .parent_format = ParentFormat::kRaw}).ok());
  auto result = CommitIntoBase(Env::Default(), top_);
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.status().message().find("b2.strata"), absl::string_view::npos)
      << result.status();
  ExpectSameBytes(FileBytes(base_), base_before);
  ExpectNoJournal();
}

TEST_F(IntoBaseTest, RefusesAReadOnlyBase) {
  WriteDataAndZeros();
  ASSERT_EQ(chmod(base_.c_str(), 0444), 0);
  auto result = CommitIntoBase(Env::Default(), top_);
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.status().message().find("read-only"), absl::string_view::npos)
      << result.status();
  ExpectNoJournal();
}

TEST_F(IntoBaseTest, RefusesWhileTheLayerOrTheBaseIsInUse) {
  WriteDataAndZeros();
  {
    auto served = Chain::Open(top_);
    ASSERT_TRUE(served.ok());
    auto result = CommitIntoBase(Env::Default(), top_);
    ASSERT_FALSE(result.ok());
    EXPECT_NE(result.status().message().find("in use"), absl::string_view::npos);
  }
  // Another process reading the base (a strata chain on it holds it shared).
  auto reader = Env::Default()->Open(base_, {});
  ASSERT_TRUE(reader.ok());
  ASSERT_TRUE(TryLock(**reader, LockMode::kShared).ok());
  auto result = CommitIntoBase(Env::Default(), top_);
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.status().message().find("base.raw is in use"), absl::string_view::npos)
      << result.status();
  ExpectNoJournal();
}

TEST_F(IntoBaseTest, RefusesALayerNotOnTheBaseOrASnapshotWithTwoChildren) {
  WriteAndSnapshot(0, 'a', "s1");
  auto above = CommitIntoBase(Env::Default(), top_);
  ASSERT_FALSE(above.ok());
  EXPECT_NE(above.status().message().find("its parent is strata"), absl::string_view::npos)
      << above.status();
  ASSERT_TRUE(CreateLayer(dir_.File("branch.strata"),
                          {.parent = snap_, .parent_format = ParentFormat::kStrata})
                  .ok());
  auto two = CommitIntoBase(Env::Default(), snap_);
  ASSERT_FALSE(two.ok());
  EXPECT_NE(two.status().message().find("branch.strata"), absl::string_view::npos)
      << two.status();
  EXPECT_EQ(CommitIntoBase(Env::Default(), snap_, {.drop = true}).status().code(),
            absl::StatusCode::kInvalidArgument);
  ExpectNoJournal();
}

TEST_F(IntoBaseTest, RefusesABaseSmallerThanTheData) {
  LayerCreateParams p;
  p.virtual_size = 2 * kDisk;
  p.parent_size = kDisk;
  p.parent_format = ParentFormat::kRaw;
  p.parent_path = "base.raw";
  const std::string big = dir_.File("big.strata");
  ASSERT_TRUE(Layer::Create(Env::Default(), big, p).ok());
  {
    auto chain = Chain::Open(big);
    ASSERT_TRUE(chain.ok()) << chain.status();
    ASSERT_TRUE((*chain)->Write(kDisk + 65536, std::string(4096, 'x')).ok());
  }
  ASSERT_TRUE(Env::Default()->Remove(top_).ok());  // the base's only other user
  auto result = CommitIntoBase(Env::Default(), big);
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.status().message().find("needs"), absl::string_view::npos) << result.status();
  ExpectNoJournal();
}

// While the journal exists every chain on the base refuses a read-only open (the base is half
// written, and once a frozen layer left, the journal is not beside any layer of the chain); a
// writable open finishes the commit.
TEST_F(IntoBaseTest, ReadOnlyOpenRefusesAnInterruptedOneAndAWritableOneFinishesIt) {
  WriteDataAndZeros();
  const std::string before = ReadAll(top_);
  FailEnv dying(FailNth("rename", "base.raw.merge", 2));  // the first progress record
  ASSERT_FALSE(CommitIntoBase(&dying, top_, {.batch_bytes = 65536}).ok());
  ASSERT_TRUE(Env::Default()->Exists(MergeJournalPath(base_)));
  auto open = Chain::Open(top_, {.writable = false});
  ASSERT_FALSE(open.ok());
  EXPECT_NE(open.status().message().find("interrupted commit"), absl::string_view::npos);
  ASSERT_TRUE(Chain::Open(top_).ok());  // as `strata serve` opens it
  ExpectNoJournal();
  ExpectSameBytes(FileBytes(base_), before);
  ExpectSameBytes(ReadAll(top_), before);
  ExpectClean();
}

// Each step of the commit fails in turn (the process dies there); recovery from the disk's top
// then finishes it, and the disk reads the same.
// A step of the commit, as FailNth picks it.
struct Step {
  const char* op;
  const char* suffix;
  int n;
};

TEST_F(IntoBaseTest, InterruptedAtEachStepRecoveryFinishesIt) {
  // The journal's first write (nothing happens), its progress and relink records, the
  // successor's rename over the top, the journal's removal.
  const Step top_steps[] = {{"rename", "base.raw.merge", 1}, {"rename", "base.raw.merge", 2},
                            {"rename", "base.raw.merge", 3}, {"rename", "/disk.strata", 1},
                            {"remove", "base.raw.merge", 1}};
  const std::string pattern = FileBytes(base_);
  for (const Step& step : top_steps) {
    SCOPED_TRACE(absl::StrCat("top: ", step.op, " ", step.suffix, " #", step.n));
    testing::WriteFileBytes(base_, pattern);
    ASSERT_TRUE(Env::Default()->Remove(top_).ok());
    ASSERT_TRUE(CreateLayer(top_, {.parent = base_, .parent_format = ParentFormat::kRaw}).ok());
    WriteDataAndZeros();
    const std::string before = ReadAll(top_);
    FailEnv dying(FailNth(step.op, step.suffix, step.n));
    ASSERT_FALSE(CommitIntoBase(&dying, top_, {.batch_bytes = 65536}).ok());
    {
      LockSet locks;
      auto recovered = RecoverChain(Env::Default(), top_, &locks);
      ASSERT_TRUE(recovered.ok()) << recovered.status();
    }
    ExpectSameBytes(ReadAll(top_), before);
    ExpectNoJournal();
    ExpectClean();
  }
}

TEST_F(IntoBaseTest, FrozenInterruptedAtEachStepRecoveryFinishesIt) {
  // The journal's progress record, its relink record, C's removal, the journal's removal.
  const Step steps[] = {{"rename", "base.raw.merge", 2}, {"rename", "base.raw.merge", 3},
                        {"remove", "disk@s1.strata", 1}, {"remove", "base.raw.merge", 1}};
  for (const auto& [op, suffix, n] : steps) {
    SCOPED_TRACE(absl::StrCat("frozen: ", op, " ", suffix, " #", n));
    TempDir dir;
    const std::string base = dir.File("base.raw"), top = dir.File("disk.strata");
    testing::WriteFileBytes(base, PatternBytes(kDisk, 5));
    ASSERT_TRUE(CreateLayer(top, {.parent = base, .parent_format = ParentFormat::kRaw}).ok());
    {
      auto chain = Chain::Open(top);
      ASSERT_TRUE(chain.ok());
      ASSERT_TRUE((*chain)->Write(0, std::string(65536, 'a')).ok());
      ASSERT_TRUE((*chain)->Snapshot("s1").ok());
      ASSERT_TRUE((*chain)->Write(32768, std::string(65536, 'b')).ok());
    }
    const std::string before = ReadAll(top);
    FailEnv dying(FailNth(op, suffix, n));
    ASSERT_FALSE(CommitIntoBase(&dying, dir.File("disk@s1.strata")).ok());
    {
      LockSet locks;
      auto recovered = RecoverChain(Env::Default(), top, &locks);
      ASSERT_TRUE(recovered.ok()) << recovered.status();
    }
    ExpectSameBytes(ReadAll(top), before);
    EXPECT_FALSE(Env::Default()->Exists(dir.File("disk@s1.strata")));
    EXPECT_FALSE(Env::Default()->Exists(MergeJournalPath(base)));
  }
}

}  // namespace
}  // namespace strata
