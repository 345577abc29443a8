// Issue 14, frozen layers on shared storage: several hosts open the same frozen layers (a golden
// image on NFS or CephFS) while each keeps its own active layer. The golden directory here
// refuses, with EROFS as a read-only mount does, every write, every open for writing or
// creating, every rename, removal and directory sync: a disk on it must still be created,
// opened for writing, written, read and snapshotted, and strata must never even try to change
// a frozen layer (only the child registry, which is allowed to fail, is tried).
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "blockstore/chain.h"
#include "blockstore/check.h"
#include "blockstore/children.h"
#include "blockstore/commit.h"
#include "blockstore/fail_env.h"
#include "blockstore/file.h"
#include "blockstore/stream.h"
#include "blockstore/test_util.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

using testing::PatternBytes;
using testing::TempDir;

constexpr uint64_t kDisk = 4 << 20;

// Every file of `dir`, with its size and a hash of its bytes.
std::map<std::string, std::string> DirContents(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string bytes = ReadWholeFile(Env::Default(), entry.path()).value_or("?");
    out[entry.path().filename()] =
        absl::StrCat(bytes.size(), " bytes, hash ", std::hash<std::string>()(bytes));
  }
  return out;
}

class SharedFrozenLayersTest : public ::testing::Test {
 protected:
  // The golden image: base.raw with a frozen layer gold.strata on it (and nothing else).
  void SetUp() override {
    testing::WriteFileBytes(base_, PatternBytes(kDisk, 1));
    const std::string tmp = golden_.File("g.strata");
    ASSERT_TRUE(CreateLayer(tmp, {.parent = base_, .parent_format = ParentFormat::kRaw}).ok());
    {
      auto chain = Chain::Open(tmp);
      ASSERT_TRUE(chain.ok()) << chain.status();
      ASSERT_TRUE((*chain)->Write(64 << 10, PatternBytes(256 << 10, 2)).ok());
      ASSERT_TRUE((*chain)->Snapshot("gold").ok());
    }
    ASSERT_TRUE(Env::Default()->Remove(tmp).ok());
    ASSERT_TRUE(Env::Default()->Rename(golden_.File("g@gold.strata"), gold_).ok());
    std::filesystem::remove(golden_.File(kChildRegistryFile));
    golden_data_ = testing::ReadDisk(gold_, kDisk);
    before_ = DirContents(golden_.path());
  }

  // An Env on which golden_'s directory is read-only (errno `err`); every attempt is recorded.
  std::unique_ptr<testing::FailEnv> ReadOnlyGolden(int err) {
    return std::make_unique<testing::FailEnv>(
        [this](absl::string_view op, const std::string& path) {
          if (op == "open" || (path != golden_.path() && DirName(path) != golden_.path())) {
            return false;
          }
          attempts_.push_back(absl::StrCat(op, " ", path));
          return true;
        },
        err);
  }

  // The attempts to change golden_ other than the child registry's.
  std::vector<std::string> WritesTried() const {
    std::vector<std::string> out;
    for (const std::string& a : attempts_) {
      if (!absl::StrContains(a, kChildRegistryFile)) out.push_back(a);
    }
    return out;
  }

  // A disk on the golden layer, in host_a_, created through `env`, with some data.
  std::string MakeDisk(Env* env) {
    const std::string top = host_a_.File("vm.strata");
    auto h = CreateLayer(top, {.parent = gold_, .parent_format = ParentFormat::kStrata,
                               .env = env});
    EXPECT_TRUE(h.ok()) << h.status();
    auto chain = Chain::Open(top, {.env = env, .allowed_parent_dirs = {golden_.path()}});
    EXPECT_TRUE(chain.ok()) << chain.status();
    if (chain.ok()) EXPECT_TRUE((*chain)->Write(0, PatternBytes(64 << 10, 5)).ok());
    return top;
  }

  std::string Read(Chain* chain, uint64_t offset, uint64_t length) {
    std::string out(length, '\0');
    EXPECT_TRUE(chain->Read(offset, absl::MakeSpan(out)).ok());
    return out;
  }

  TempDir golden_, host_a_, host_b_;
  std::string base_ = golden_.File("base.raw");
  std::string gold_ = golden_.File("gold.strata");
  std::string golden_data_;
  std::map<std::string, std::string> before_;
  std::vector<std::string> attempts_;
};

TEST_F(SharedFrozenLayersTest, TwoDisksServeAndSnapshotOnAReadOnlyGoldenImage) {
  auto env = ReadOnlyGolden(EROFS);
  const std::string a = host_a_.File("vm.strata"), b = host_b_.File("vm.strata");
  for (const std::string& top : {a, b}) {
    auto h = CreateLayer(top, {.parent = gold_, .parent_format = ParentFormat::kStrata,
                               .env = env.get()});
    ASSERT_TRUE(h.ok()) << h.status();
  }
  // Both open for writing at once: the golden layers are only ever locked shared.
  const ChainOptions options{.env = env.get(), .allowed_parent_dirs = {golden_.path()}};
  auto chain_a = Chain::Open(a, options);
  ASSERT_TRUE(chain_a.ok()) << chain_a.status();
  auto chain_b = Chain::Open(b, options);
  ASSERT_TRUE(chain_b.ok()) << chain_b.status();
  EXPECT_EQ(Read(chain_a->get(), 0, kDisk), golden_data_);

  const std::string data_a = PatternBytes(128 << 10, 3), data_b = PatternBytes(128 << 10, 4);
  ASSERT_TRUE((*chain_a)->Write(96 << 10, data_a).ok());
  ASSERT_TRUE((*chain_b)->Write(96 << 10, data_b).ok());
  auto snap_a = (*chain_a)->Snapshot("s1");
  ASSERT_TRUE(snap_a.ok()) << snap_a.status();
  auto snap_b = (*chain_b)->Snapshot("s1");
  ASSERT_TRUE(snap_b.ok()) << snap_b.status();
  ASSERT_TRUE((*chain_a)->Write(0, data_b).ok());
  ASSERT_TRUE((*chain_a)->Flush().ok());
  ASSERT_TRUE((*chain_b)->Flush().ok());

  std::string expect_a = golden_data_, expect_b = golden_data_;
  expect_a.replace(96 << 10, data_a.size(), data_a);
  expect_b.replace(96 << 10, data_b.size(), data_b);
  EXPECT_EQ(Read(chain_b->get(), 0, kDisk), expect_b);
  expect_a.replace(0, data_b.size(), data_b);
  EXPECT_EQ(Read(chain_a->get(), 0, kDisk), expect_a);
  chain_a->reset();
  chain_b->reset();
  EXPECT_EQ(testing::ReadDisk(a, kDisk, {golden_.path()}), expect_a);

  EXPECT_EQ(DirContents(golden_.path()), before_);
  EXPECT_EQ(WritesTried(), std::vector<std::string>{});
  EXPECT_FALSE(attempts_.empty());  // the registry was tried, refused, and skipped
}

// Only a directory that refuses writes (EROFS, EACCES) lets a child go unregistered: any other
// failure (a busy file, an I/O error, a full volume) refuses the create, saying where.
TEST_F(SharedFrozenLayersTest, RegistrySkippedOnlyForReadOnlyErrors) {
  for (int err : {EROFS, EACCES, EBUSY, ENOTDIR, EIO, ENOSPC}) {
    SCOPED_TRACE(strerror(err));
    auto env = ReadOnlyGolden(err);
    const std::string top = host_a_.File(absl::StrCat("vm", err, ".strata"));
    auto h = CreateLayer(top, {.parent = gold_, .parent_format = ParentFormat::kStrata,
                               .env = env.get()});
    if (err == EROFS || err == EACCES) {
      EXPECT_TRUE(h.ok()) << h.status();
      EXPECT_TRUE(Env::Default()->Exists(top));
    } else {
      ASSERT_FALSE(h.ok());
      EXPECT_TRUE(absl::StrContains(h.status().message(), "cannot register " + top))
          << h.status();
      EXPECT_TRUE(absl::StrContains(h.status().message(), kChildRegistryFile)) << h.status();
      EXPECT_FALSE(Env::Default()->Exists(top));
    }
    EXPECT_EQ(WritesTried(), std::vector<std::string>{});
  }
  EXPECT_EQ(DirContents(golden_.path()), before_);
}

// A merge into the golden layer would write it: refused before its journal is written (one
// written first would leave a disk no `commit --resume` can finish), the disk as it was.
TEST_F(SharedFrozenLayersTest, CommitIntoReadOnlyLayerRefusedBeforeItsJournal) {
  auto env = ReadOnlyGolden(EROFS);
  const std::string top = MakeDisk(env.get());
  const std::string disk = testing::ReadDisk(top, kDisk, {golden_.path()});
  auto committed = CommitLayer(env.get(), top);
  ASSERT_FALSE(committed.ok());
  EXPECT_TRUE(absl::StrContains(committed.status().message(),
                                "cannot commit " + top + " into " + gold_))
      << committed.status();
  EXPECT_FALSE(Env::Default()->Exists(MergeJournalPath(top)));
  EXPECT_EQ(testing::ReadDisk(top, kDisk, {golden_.path()}), disk);
  EXPECT_EQ(DirContents(golden_.path()), before_);
}

// Golden files chmod a-w stay as they are even for root, who could open them for writing.
TEST_F(SharedFrozenLayersTest, CommitIntoLayerMarkedReadOnlyRefused) {
  const std::string top = MakeDisk(Env::Default());
  before_ = DirContents(golden_.path());  // with the registry entry of `top`
  std::filesystem::permissions(gold_, std::filesystem::perms::owner_write |
                                          std::filesystem::perms::group_write |
                                          std::filesystem::perms::others_write,
                               std::filesystem::perm_options::remove);
  auto committed = CommitLayer(Env::Default(), top);
  ASSERT_FALSE(committed.ok());
  EXPECT_TRUE(absl::StrContains(committed.status().message(), "marked read-only"))
      << committed.status();
  EXPECT_FALSE(Env::Default()->Exists(MergeJournalPath(top)));
  EXPECT_EQ(DirContents(golden_.path()), before_);
}

// Deleting the golden layer through a server would remove a file other hosts' disks stand on:
// refused before the deletion's journal, saying why.
TEST_F(SharedFrozenLayersTest, OnlineDeletionOfReadOnlyLayerRefused) {
  auto env = ReadOnlyGolden(EACCES);
  const std::string top = MakeDisk(env.get());
  auto chain = Chain::Open(top, {.env = env.get(), .allowed_parent_dirs = {golden_.path()}});
  ASSERT_TRUE(chain.ok()) << chain.status();
  auto plan = PlanStream(env.get(), **chain, "gold", 0);
  ASSERT_TRUE(plan.ok()) << plan.status();
  absl::Status begun = BeginStream(env.get(), *plan);
  EXPECT_TRUE(absl::IsFailedPrecondition(begun)) << begun;
  EXPECT_TRUE(absl::StrContains(begun.message(), "never changed or removed")) << begun;
  EXPECT_EQ(DirContents(golden_.path()), before_);
}

// `check --repair` of a disk on the golden image repairs the disk, and checks the golden layers
// without a problem: they are not its to write.
TEST_F(SharedFrozenLayersTest, RepairChecksReadOnlyLayersWithoutProblems) {
  auto env = ReadOnlyGolden(EROFS);
  const std::string top = MakeDisk(env.get());
  auto report = CheckChain(env.get(), top, /*repair=*/true, {golden_.path()});
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->problems, std::vector<std::string>{});
  EXPECT_EQ(DirContents(golden_.path()), before_);
}

TEST(StatusErrnoTest, ErrnoStatusCarriesItsErrno) {
  EXPECT_EQ(StatusErrno(ErrnoStatus(EROFS, "open", "/g/x")), EROFS);
  EXPECT_EQ(StatusErrno(ErrnoStatus(ENOSPC, "write", "/g/x", 4096)), ENOSPC);
  EXPECT_EQ(StatusErrno(absl::FailedPreconditionError("open /g/x: Read-only file system")), 0);
  EXPECT_TRUE(IsWriteRefused(ErrnoStatus(EACCES, "open", "/g/x")));
  EXPECT_FALSE(IsWriteRefused(ErrnoStatus(EBUSY, "open", "/g/x")));
}

}  // namespace
}  // namespace strata
