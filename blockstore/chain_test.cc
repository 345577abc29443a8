#include "blockstore/chain.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include "absl/strings/str_cat.h"
#include "blockstore/mutex.h"

#include "blockstore/fail_env.h"
#include "blockstore/file.h"
#include "blockstore/layer.h"
#include "blockstore/test_util.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

using testing::PatternBytes;
using testing::TempDir;

// The real file system, except that every Sync() fails while set_fail_syncs(true): a disk
// whose writeback fails for a while, then works again.
class SyncFailingEnv : public Env {
 public:
  void set_fail_syncs(bool fail) { fail_ = fail; }
  absl::StatusOr<std::unique_ptr<File>> Open(const std::string& path,
                                             const OpenOptions& options) override {
    auto real = Env::Default()->Open(path, options);
    if (!real.ok()) return real.status();
    return std::make_unique<SyncFailingFile>(std::move(*real), &fail_);
  }
  absl::Status Rename(const std::string& from, const std::string& to) override {
    return Env::Default()->Rename(from, to);
  }
  absl::Status Link(const std::string& from, const std::string& to) override {
    return Env::Default()->Link(from, to);
  }
  absl::Status Remove(const std::string& path) override { return Env::Default()->Remove(path); }
  bool Exists(const std::string& path) override { return Env::Default()->Exists(path); }
  absl::Status SyncDir(const std::string& dir) override { return Env::Default()->SyncDir(dir); }
  absl::StatusOr<std::vector<std::string>> ListDir(const std::string& dir) override {
    return Env::Default()->ListDir(dir);
  }

 private:
  class SyncFailingFile final : public testing::ForwardingFile {
   public:
    SyncFailingFile(std::unique_ptr<File> real, const bool* fail)
        : ForwardingFile(std::move(real)), fail_(fail) {}
    absl::Status Sync() override {
      if (*fail_) return absl::DataLossError(absl::StrCat("injected fdatasync failure: ", path()));
      return ForwardingFile::Sync();
    }

   private:
    const bool* fail_;
  };
  bool fail_ = false;
};

constexpr uint64_t kDisk = 8 << 20;

class ChainTest : public ::testing::Test {
 protected:
  void SetUp() override {
    base_data_ = PatternBytes(kDisk, 1);
    testing::WriteFileBytes(base_, base_data_);
    auto h = CreateLayer(top_, {.parent = base_, .parent_format = ParentFormat::kRaw});
    ASSERT_TRUE(h.ok()) << h.status();
  }
  std::unique_ptr<Chain> Open(ChainOptions options = {}) {
    auto chain = Chain::Open(top_, options);
    EXPECT_TRUE(chain.ok()) << chain.status();
    return chain.ok() ? std::move(*chain) : nullptr;
  }
  std::string Read(Chain* chain, uint64_t offset, uint64_t length) {
    std::string out(length, '\0');
    absl::Status s = chain->Read(offset, absl::MakeSpan(out.data(), length));
    EXPECT_TRUE(s.ok()) << s;
    return out;
  }

  TempDir dir_;
  std::string base_ = dir_.File("base.raw");
  std::string top_ = dir_.File("disk.strata");
  std::string base_data_;
};

TEST_F(ChainTest, FreshLayerReadsTheBase) {
  auto chain = Open();
  EXPECT_EQ(chain->size(), kDisk);
  EXPECT_EQ(Read(chain.get(), 12345, 100000), base_data_.substr(12345, 100000));
}

TEST_F(ChainTest, AlignedSubBlockWriteNeverReadsBelow) {
  auto chain = Open();
  auto plan = chain->PrepareWrite(64 << 10, 4096);  // first 4 KiB of a fresh cluster
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_FALSE(plan->widened());
  ASSERT_EQ(plan->targets.size(), 1u);
  EXPECT_EQ(plan->targets[0].length, 4096u);  // 4 KiB of data, not the 64 KiB cluster
  chain->FinishWrite(*plan, false);
}

TEST_F(ChainTest, WriteOverlaysBaseAtSubBlockGranularity) {
  auto chain = Open();
  std::string data = PatternBytes(4096, 2);
  ASSERT_TRUE(chain->Write(65536 + 8192, data).ok());
  std::string expect = base_data_.substr(65536, 65536);
  expect.replace(8192, 4096, data);
  EXPECT_EQ(Read(chain.get(), 65536, 65536), expect);
}

TEST_F(ChainTest, UnalignedWriteIsWidenedWithCurrentContents) {
  auto chain = Open();
  auto plan = chain->PrepareWrite(1000, 100);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->start, 0u);
  EXPECT_EQ(plan->end, 4096u);
  EXPECT_TRUE(plan->widened());
  chain->FinishWrite(*plan, false);
  ASSERT_TRUE(chain->Write(1000, std::string(100, 'x')).ok());
  std::string expect = base_data_.substr(0, 8192);
  expect.replace(1000, 100, std::string(100, 'x'));
  EXPECT_EQ(Read(chain.get(), 0, 8192), expect);
}

TEST_F(ChainTest, ConflictingWidenedWriteIsUnavailable) {
  auto chain = Open();
  auto a = chain->PrepareWrite(0, 512);  // widened: owns sub-block 0
  ASSERT_TRUE(a.ok());
  auto b = chain->PrepareWrite(512, 512);
  EXPECT_EQ(b.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(IsWriteConflict(b.status())) << b.status();
  EXPECT_FALSE(NeedsSlots(b.status()));
  auto c = chain->PrepareWrite(4096, 4096);  // another sub-block: fine
  EXPECT_TRUE(c.ok());
  chain->FinishWrite(*a, true);
  chain->FinishWrite(*c, true);
  EXPECT_TRUE(chain->PrepareWrite(512, 512).ok());
}

TEST_F(ChainTest, ZeroAndTrimReadAsZerosAndFreeSpace) {
  auto chain = Open();
  ASSERT_TRUE(chain->Write(0, PatternBytes(1 << 20, 3)).ok());
  ASSERT_TRUE(chain->WriteZeroes(100, 200000).ok());  // unaligned edges written as data
  std::string expect = PatternBytes(1 << 20, 3);
  expect.replace(100, 200000, std::string(200000, '\0'));
  EXPECT_EQ(Read(chain.get(), 0, 1 << 20), expect);
  ASSERT_TRUE(chain->Trim(0, 1 << 20).ok());
  EXPECT_EQ(Read(chain.get(), 0, 1 << 20), std::string(1 << 20, '\0'));
  ASSERT_TRUE(chain->Flush().ok());
  EXPECT_EQ(chain->Layers().back().allocated_bytes, 0u) << "trim left slots allocated";
}

TEST_F(ChainTest, ExtentsTellLayerZeroDataAndFileOffset) {
  auto chain = Open();
  ASSERT_TRUE(chain->Write(0, std::string(65536, 'a')).ok());
  ASSERT_TRUE(chain->WriteZeroes(65536, 65536).ok());
  std::vector<Extent> extents;
  ASSERT_TRUE(chain->Extents(0, 3 * 65536, &extents).ok());
  ASSERT_EQ(extents.size(), 3u);
  EXPECT_EQ(extents[0].layer, 1);
  EXPECT_TRUE(extents[0].data);
  EXPECT_EQ(extents[1].layer, 1);
  EXPECT_TRUE(extents[1].zero);
  EXPECT_FALSE(extents[1].data);
  EXPECT_EQ(extents[2].layer, 0);  // the raw base
  EXPECT_EQ(extents[2].length, 65536u);
  // Where the data lies: one cluster's slot, past the layer's headers., past the layer's headers.
  EXPECT_GE(extents[0].file_offset, static_cast<int64_t>(kHeaderBlockSize));
  std::string in_file(65536, '\0');
  const int fd = open(top_.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  EXPECT_EQ(pread(fd, in_file.data(), in_file.size(), extents[0].file_offset), 65536);
  close(fd);
  EXPECT_EQ(in_file, std::string(65536, 'a'));
  EXPECT_EQ(extents[1].file_offset, -1);  // zeros live nowhere
  EXPECT_EQ(extents[2].file_offset, 2 * 65536);  // a raw base: the virtual offset
}

// A sparse raw base: its holes are zeros and no data (as qemu-img map says of a raw file), its
// data is data; what a layer holds over a hole is the layer's.
TEST_F(ChainTest, ExtentsReportTheRawBasesHoles) {
  ASSERT_EQ(truncate(base_.c_str(), 0), 0);
  ASSERT_EQ(truncate(base_.c_str(), kDisk), 0);  // all hole
  const int fd = open(base_.c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  const std::string data(1 << 20, 'b');
  ASSERT_EQ(pwrite(fd, data.data(), data.size(), 2 << 20), static_cast<ssize_t>(data.size()));
  close(fd);
  auto chain = Open();
  ASSERT_TRUE(chain->Write(6 << 20, std::string(65536, 'a')).ok());
  std::vector<Extent> extents;
  ASSERT_TRUE(chain->Extents(0, kDisk, &extents).ok());
  auto at = [&](uint64_t offset) {
    for (const Extent& e : extents) {
      if (offset >= e.offset && offset < e.offset + e.length) return e;
    }
    return Extent{};
  };
  for (uint64_t hole : {uint64_t{0}, uint64_t{1} << 20, uint64_t{4} << 20, kDisk - 1}) {
    const Extent e = at(hole);
    EXPECT_EQ(e.layer, 0) << hole;
    EXPECT_TRUE(e.zero) << hole;
    EXPECT_FALSE(e.data) << hole;
  }
  const Extent base_data = at(2 << 20);
  EXPECT_EQ(base_data.layer, 0);
  EXPECT_TRUE(base_data.data);
  EXPECT_FALSE(base_data.zero);
  EXPECT_EQ(base_data.offset, uint64_t{2} << 20);
  EXPECT_EQ(base_data.length, uint64_t{1} << 20);
  EXPECT_EQ(base_data.file_offset, 2 << 20);
  EXPECT_EQ(at(6 << 20).layer, 1);
  EXPECT_TRUE(at(6 << 20).data);
  // The runs tile the disk in order, and the reads agree with them.
  uint64_t next = 0;
  for (const Extent& e : extents) {
    EXPECT_EQ(e.offset, next);
    next = e.offset + e.length;
  }
  EXPECT_EQ(next, kDisk);
  EXPECT_EQ(Read(chain.get(), (2 << 20) - 4096, 8192), std::string(4096, '\0') + std::string(4096, 'b'));
}

TEST_F(ChainTest, OutOfRangeIsRejected) {
  auto chain = Open();
  std::string buf(10, '\0');
  EXPECT_EQ(chain->Read(kDisk - 5, absl::MakeSpan(buf)).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(chain->PrepareWrite(kDisk, 1).status().code(), absl::StatusCode::kOutOfRange);
}

TEST_F(ChainTest, SnapshotFreezesAndKeepsReading) {
  auto chain = Open();
  ASSERT_TRUE(chain->Write(0, std::string(4096, 'a')).ok());
  auto snap = chain->Snapshot("s1");
  ASSERT_TRUE(snap.ok()) << snap.status();
  EXPECT_EQ(snap->frozen_path, dir_.File("disk@s1.strata"));
  ASSERT_TRUE(chain->Write(0, std::string(2048, 'b')).ok());
  EXPECT_EQ(Read(chain.get(), 0, 4096), std::string(2048, 'b') + std::string(2048, 'a'));
  auto layers = chain->Layers();
  ASSERT_EQ(layers.size(), 3u);
  EXPECT_EQ(layers[1].header.snapshot_name, "s1");
  EXPECT_EQ(layers[1].header.state, LayerState::kFrozen);
  EXPECT_EQ(chain->Snapshot("s1").status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(chain->Snapshot("../evil").status().code(), absl::StatusCode::kInvalidArgument);
  chain.reset();
  // The snapshot itself still reads as it was.
  auto frozen = Chain::Open(dir_.File("disk@s1.strata"), {.writable = false});
  ASSERT_TRUE(frozen.ok()) << frozen.status();
  EXPECT_EQ(Read(frozen->get(), 0, 4096), std::string(4096, 'a'));
}

TEST_F(ChainTest, DeepChainSplitClustersResolvePerSubBlock) {
  auto chain = Open();
  std::string expect = base_data_.substr(0, 65536);
  for (int i = 0; i < 20; ++i) {
    std::string data(4096, static_cast<char>('a' + i));
    ASSERT_TRUE(chain->Write(uint64_t(i % 16) * 4096, data).ok());
    expect.replace((i % 16) * 4096, 4096, data);
    ASSERT_TRUE(chain->Snapshot("s" + std::to_string(i)).ok());
  }
  EXPECT_EQ(Read(chain.get(), 0, 65536), expect);
  chain.reset();
  auto reopened = Open();
  EXPECT_EQ(Read(reopened.get(), 0, 65536), expect);
  EXPECT_EQ(reopened->Layers().size(), 22u);
}

TEST_F(ChainTest, SecondWriterIsRefusedByTheLock) {
  auto chain = Open();
  auto second = Chain::Open(top_);
  ASSERT_FALSE(second.ok());
  EXPECT_NE(second.status().message().find("in use"), absl::string_view::npos);
  EXPECT_TRUE(Chain::Open(top_, {.writable = false, .lock = false}).ok());
}

TEST_F(ChainTest, InspectingAServedDiskNeverTouchesASnapshotInProgress) {
  // A live snapshot prepares the next layer before pausing I/O; `strata info` (a read-only,
  // unlocked open) in that window must not mistake it for a crash's leftovers and remove it.
  auto chain = Open();
  ASSERT_TRUE(chain->PrepareSnapshot("live").ok());
  std::string pending = dir_.File(".disk.strata.new");
  ASSERT_TRUE(Env::Default()->Exists(pending));
  ASSERT_TRUE(Chain::Open(top_, {.writable = false, .lock = false}).ok());
  EXPECT_TRUE(Env::Default()->Exists(pending));
  EXPECT_FALSE(Chain::Open(top_).ok());  // a second writer is refused before any recovery
  EXPECT_TRUE(Env::Default()->Exists(pending));
  ASSERT_TRUE(chain->Snapshot("live").ok());
  EXPECT_FALSE(Env::Default()->Exists(pending));
}

TEST_F(ChainTest, SwitchedSnapshotTakesNewWritesAndBecomesDurableAtTheNextFlush) {
  auto chain = Open();
  ASSERT_TRUE(chain->Write(0, std::string(4096, 'a')).ok());
  ASSERT_TRUE(chain->PrepareSnapshot("s1").ok());
  auto switched = chain->SwitchSnapshot("s1");
  ASSERT_TRUE(switched.ok()) << switched.status();
  // Memory only so far: the disk's path still names the old, active layer.
  auto on_disk = ReadLayerHeader(Env::Default(), switched->frozen_path);
  ASSERT_TRUE(on_disk.ok());
  EXPECT_EQ(on_disk->state, LayerState::kActive);
  ASSERT_TRUE(chain->Write(0, std::string(1024, 'b')).ok());
  EXPECT_EQ(Read(chain.get(), 0, 4096), std::string(1024, 'b') + std::string(3072, 'a'));
  // A flush of the new layer first makes the snapshot durable.
  ASSERT_TRUE(chain->Flush().ok());
  on_disk = ReadLayerHeader(Env::Default(), switched->frozen_path);
  ASSERT_TRUE(on_disk.ok());
  EXPECT_EQ(on_disk->state, LayerState::kFrozen);
  EXPECT_EQ(on_disk->snapshot_name, "s1");
  EXPECT_FALSE(Env::Default()->Exists(dir_.File(".disk.strata.new")));
  EXPECT_TRUE(chain->CompleteSnapshot().ok());  // nothing left to do
  EXPECT_EQ(chain->Layers()[1].header.state, LayerState::kFrozen);
  chain.reset();
  auto reopened = Open();
  EXPECT_EQ(Read(reopened.get(), 0, 4096), std::string(1024, 'b') + std::string(3072, 'a'));
  auto frozen = Chain::Open(dir_.File("disk@s1.strata"), {.writable = false});
  ASSERT_TRUE(frozen.ok()) << frozen.status();
  EXPECT_EQ(Read(frozen->get(), 0, 4096), std::string(4096, 'a'));
}

TEST_F(ChainTest, CancelledSnapshotLeavesNoFiles) {
  auto chain = Open();
  ASSERT_TRUE(chain->PrepareSnapshot("gone").ok());
  EXPECT_TRUE(Env::Default()->Exists(dir_.File("disk@gone.strata")));
  EXPECT_EQ(chain->SwitchSnapshot("other").status().code(),
            absl::StatusCode::kFailedPrecondition);
  chain->CancelSnapshot();
  EXPECT_FALSE(Env::Default()->Exists(dir_.File("disk@gone.strata")));
  EXPECT_FALSE(Env::Default()->Exists(dir_.File(".disk.strata.new")));
  EXPECT_EQ(chain->Layers().size(), 2u);
  ASSERT_TRUE(chain->Write(0, std::string(512, 'c')).ok());
  ASSERT_TRUE(chain->Flush().ok());
  EXPECT_TRUE(chain->Snapshot("gone").ok());
}

TEST_F(ChainTest, FailedSyncIsStickyAndTheReopenedDiskHasItsLastDurableState) {
  SyncFailingEnv env;
  auto chain = Open({.env = &env});
  ASSERT_TRUE(chain->Write(0, std::string(4096, 'a')).ok());
  ASSERT_TRUE(chain->Flush().ok());
  ASSERT_TRUE(chain->Write(4096, std::string(4096, 'b')).ok());
  env.set_fail_syncs(true);
  EXPECT_FALSE(chain->Flush().ok());
  // The disk works again, but the pages whose writeback failed may be gone: no later flush
  // may acknowledge them, and nothing new is taken.
  env.set_fail_syncs(false);
  absl::Status again = chain->Flush();
  EXPECT_EQ(again.code(), absl::StatusCode::kDataLoss) << again;
  EXPECT_NE(again.message().find("a sync failed"), absl::string_view::npos) << again;
  EXPECT_NE(again.message().find("injected fdatasync failure"), absl::string_view::npos) << again;
  EXPECT_EQ(chain->failure().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(chain->Write(8192, std::string(4096, 'c')).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(chain->WriteZeroes(0, 4096).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(Read(chain.get(), 0, 4096), std::string(4096, 'a'));  // reads go on
  chain.reset();
  auto reopened = Open();
  EXPECT_TRUE(reopened->failure().ok());
  EXPECT_EQ(Read(reopened.get(), 0, 4096), std::string(4096, 'a'));
  EXPECT_EQ(Read(reopened.get(), 8192, 4096), base_data_.substr(8192, 4096));
}

TEST_F(ChainTest, SnapshotWhoseFreezeSyncFailedIsNeverCompletedLater) {
  SyncFailingEnv env;
  auto chain = Open({.env = &env});
  ASSERT_TRUE(chain->Write(0, std::string(4096, 'a')).ok());
  ASSERT_TRUE(chain->Flush().ok());
  ASSERT_TRUE(chain->PrepareSnapshot("s1").ok());
  ASSERT_TRUE(chain->SwitchSnapshot("s1").ok());
  ASSERT_TRUE(chain->Write(4096, std::string(4096, 'b')).ok());
  env.set_fail_syncs(true);
  absl::Status s = chain->CompleteSnapshot();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("'s1'"), absl::string_view::npos) << s;
  EXPECT_NE(s.message().find("not durable yet"), absl::string_view::npos) << s;
  auto layers = chain->Layers();
  ASSERT_EQ(layers.size(), 3u);
  EXPECT_TRUE(layers[1].freezing);
  EXPECT_EQ(layers[1].header.state, LayerState::kActive);  // as on disk
  // The frozen layer's data sync failed: a successful retry would prove nothing about it.
  env.set_fail_syncs(false);
  EXPECT_EQ(chain->Flush().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(chain->CompleteSnapshot().code(), absl::StatusCode::kDataLoss);
  EXPECT_FALSE(chain->PrepareSnapshot("s2").ok());
  chain.reset();
  // Reopened: the snapshot never reached its commit point, so it is rolled back, and the
  // disk reads as its last durable state (the unflushed write above it is gone).
  auto reopened = Open();
  ASSERT_EQ(reopened->Layers().size(), 2u);
  EXPECT_EQ(Read(reopened.get(), 0, 8192), std::string(4096, 'a') + base_data_.substr(4096, 4096));
}

TEST_F(ChainTest, SnapshotWhoseRenameFailedIsCompletedByTheNextFlush) {
  // A failed rename (step 4) touches no data: each flush retries it before acknowledging.
  int renames_to_fail = 3;
  testing::FailEnv env([&](absl::string_view op, const std::string& path) {
    return op == "rename" && path == top_ && renames_to_fail-- > 0;
  });
  auto chain = Open({.env = &env});
  ASSERT_TRUE(chain->Write(0, std::string(4096, 'a')).ok());
  ASSERT_TRUE(chain->PrepareSnapshot("s1").ok());
  ASSERT_TRUE(chain->SwitchSnapshot("s1").ok());
  ASSERT_TRUE(chain->Write(4096, std::string(4096, 'b')).ok());
  EXPECT_FALSE(chain->CompleteSnapshot().ok());
  // No flush may acknowledge the writes above it meanwhile.
  EXPECT_FALSE(chain->Flush().ok());
  EXPECT_TRUE(chain->Layers()[1].freezing);
  EXPECT_FALSE(chain->Flush().ok());
  ASSERT_TRUE(chain->Flush().ok());
  EXPECT_FALSE(chain->Layers()[1].freezing);
  EXPECT_EQ(chain->Layers()[1].header.state, LayerState::kFrozen);
  EXPECT_EQ(chain->Layers()[1].header.snapshot_name, "s1");
  chain.reset();
  auto frozen = Chain::Open(dir_.File("disk@s1.strata"), {.writable = false});
  ASSERT_TRUE(frozen.ok()) << frozen.status();
  EXPECT_EQ(Read(frozen->get(), 0, 8192), std::string(4096, 'a') + base_data_.substr(4096, 4096));
  auto reopened = Open();
  EXPECT_EQ(Read(reopened.get(), 0, 8192), std::string(4096, 'a') + std::string(4096, 'b'));
}

TEST_F(ChainTest, MissingParentNamesTheFile) {
  ASSERT_EQ(unlink(base_.c_str()), 0);
  auto chain = Chain::Open(top_);
  ASSERT_FALSE(chain.ok());
  EXPECT_NE(chain.status().message().find("base.raw"), absl::string_view::npos);
}

TEST_F(ChainTest, ResizedBaseIsRefused) {
  testing::WriteFileBytes(base_, base_data_.substr(0, kDisk / 2));
  auto chain = Chain::Open(top_);
  ASSERT_FALSE(chain.ok());
  EXPECT_NE(chain.status().message().find("base changed"), absl::string_view::npos);
}

TEST_F(ChainTest, ReplacedParentIsRefusedByUuid) {
  {
    auto chain = Open();
    ASSERT_TRUE(chain->Snapshot("s1").ok());
  }
  std::string snap = dir_.File("disk@s1.strata");
  std::string other = dir_.File("other.strata");
  ASSERT_TRUE(CreateLayer(other, {.parent = base_, .parent_format = ParentFormat::kRaw}).ok());
  {
    auto o = Chain::Open(other);
    ASSERT_TRUE(o.ok());
    ASSERT_TRUE((*o)->Snapshot("x").ok());
  }
  ASSERT_EQ(rename(dir_.File("other@x.strata").c_str(), snap.c_str()), 0);
  auto chain = Chain::Open(top_);
  ASSERT_FALSE(chain.ok());
  EXPECT_NE(chain.status().message().find("UUID"), absl::string_view::npos);
}

TEST_F(ChainTest, RelativeParentIsRelativeToTheLayersDirectory) {
  // As qemu-img create -b: "base.raw" means the file beside the new layer, whatever the cwd.
  auto h = CreateLayer(dir_.File("second.strata"),
                       {.parent = "base.raw", .parent_format = ParentFormat::kRaw});
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->parent_path, "base.raw");
  auto chain = Chain::Open(dir_.File("second.strata"));
  ASSERT_TRUE(chain.ok()) << chain.status();
  EXPECT_EQ(Read(chain->get(), 0, 4096), base_data_.substr(0, 4096));
}

TEST_F(ChainTest, CreateOnActiveParentIsRefused) {
  auto h = CreateLayer(dir_.File("child.strata"),
                       {.parent = top_, .parent_format = ParentFormat::kStrata});
  ASSERT_FALSE(h.ok());
  EXPECT_NE(h.status().message().find("active"), absl::string_view::npos);
}

TEST_F(ChainTest, DiskWithoutBaseReadsZeros) {
  std::string path = dir_.File("empty.strata");
  CreateOptions options;
  options.size = 1000000;
  ASSERT_TRUE(CreateLayer(path, options).ok());
  auto chain = Chain::Open(path);
  ASSERT_TRUE(chain.ok());
  EXPECT_EQ((*chain)->size(), 1000448u);  // rounded up to 512
  EXPECT_EQ(Read(chain->get(), 0, 4096), std::string(4096, '\0'));
  ASSERT_TRUE((*chain)->Write((*chain)->size() - 512, std::string(512, 'z')).ok());
  EXPECT_EQ(Read(chain->get(), (*chain)->size() - 512, 512), std::string(512, 'z'));
}

TEST_F(ChainTest, ConcurrentWritersKeepEveryBlock) {
  auto chain = Open();
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        uint64_t block = uint64_t(i) * 4 + t;  // disjoint 4 KiB blocks
        ASSERT_TRUE(chain->Write(block * 4096, std::string(4096, char('A' + t))).ok());
      }
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_TRUE(chain->Flush().ok());
  for (int i = 0; i < 200; ++i) {
    for (int t = 0; t < 4; ++t) {
      uint64_t block = uint64_t(i) * 4 + t;
      ASSERT_EQ(Read(chain.get(), block * 4096, 4096), std::string(4096, char('A' + t)));
    }
  }
}

// Reads what `segments` name, the way the server's ring does: pread on each segment's fd.
std::string PreadSegments(const std::vector<Segment>& segments) {
  std::string out;
  for (const Segment& seg : segments) {
    std::string piece(seg.length, '\0');
    if (seg.kind == Segment::Kind::kData) {
      EXPECT_EQ(pread(seg.fd, piece.data(), piece.size(), static_cast<off_t>(seg.file_offset)),
                static_cast<ssize_t>(piece.size()));
    }
    out += piece;
  }
  return out;
}

TEST_F(ChainTest, TrimmedSlotIsNotReusedUnderAReadMappedBeforeTheTrim) {
  constexpr uint64_t kCluster = kDefaultClusterSize;
  auto chain = Open();
  ASSERT_TRUE(chain->Write(0, std::string(kCluster, 'x')).ok());
  ASSERT_TRUE(chain->Flush().ok());
  std::vector<Segment> mapped;
  ReadPin pin;
  ASSERT_TRUE(chain->MapRead(0, kCluster, &mapped, &pin).ok());
  // Before the pread is issued: the cluster is trimmed, the trim made durable, and another
  // cluster written, which wants a slot.
  ASSERT_TRUE(chain->Trim(0, kCluster).ok());
  ASSERT_TRUE(chain->Flush().ok());
  ASSERT_TRUE(chain->Write(5 * kCluster, std::string(kCluster, 'y')).ok());
  const std::string got = PreadSegments(mapped);
  // Old bytes, or zeros (the freed slot is punched): never the other cluster's bytes.
  EXPECT_TRUE(got == std::string(kCluster, 'x') || got == std::string(kCluster, '\0'))
      << "read cluster 0 got '" << got.substr(0, 8) << "...'";
  pin.Release();
  // Once no read can still use it, the slot is reused.
  ASSERT_TRUE(chain->Write(7 * kCluster, std::string(kCluster, 'z')).ok());
  std::vector<Segment> z;
  ASSERT_TRUE(chain->MapRead(7 * kCluster, kCluster, &z, &pin).ok());
  ASSERT_EQ(z.size(), 1u);
  EXPECT_EQ(z[0].file_offset, mapped[0].file_offset);
  EXPECT_EQ(Read(chain.get(), 5 * kCluster, kCluster), std::string(kCluster, 'y'));
}

TEST_F(ChainTest, LayersDuringCheckpointsAndSnapshotsIsRaceFree) {
  // `list` (Layers()) beside flushes that checkpoint (a header switch) and live snapshots:
  // run under ThreadSanitizer in CI. A two-block journal: every other flush checkpoints.
  ASSERT_EQ(unlink(top_.c_str()), 0);
  ASSERT_TRUE(CreateLayer(top_, {.parent = base_, .parent_format = ParentFormat::kRaw,
                                 .journal_size = 2 * kJournalBlockSize})
                  .ok());
  auto chain = Open();
  std::atomic<bool> done{false};
  std::thread lister([&] {
    while (!done.load()) {
      for (const LayerInfo& info : chain->Layers()) ASSERT_FALSE(info.path.empty());
    }
  });
  std::thread reader([&] {
    std::string buf(4096, '\0');
    while (!done.load()) {
      ASSERT_TRUE(chain->Read(0, absl::MakeSpan(buf.data(), buf.size())).ok());
    }
  });
  for (int round = 0; round < 6; ++round) {
    // More dirty clusters than the journal's share per flush: every flush checkpoints.
    for (uint64_t c = 0; c < 96; ++c) {
      ASSERT_TRUE(chain->Write(c * kDefaultClusterSize, std::string(4096, char('a' + round))).ok());
    }
    ASSERT_TRUE(chain->Flush().ok());
    if (round % 2 == 1) {
      ASSERT_TRUE(chain->Snapshot(absl::StrCat("s", round)).ok());
    }
  }
  done = true;
  lister.join();
  reader.join();
  EXPECT_EQ(Read(chain.get(), 0, 1), "f");
}

// The reserve of ready slots (slot_allocator.h), seen through a FailEnv that counts every
// Allocate and can fail it (a full volume) or hold it (an allocation in progress).
class ReplenishTest : public ChainTest {
 protected:
  void SetUp() override {
    ChainTest::SetUp();
    // "Full" spares the header and journal (a writable open allocates them again).
    constexpr uint64_t kDataStart = 65536 + kDefaultJournalSize;
    env_.set_allocate_hook([this](const std::string& path, uint64_t offset, uint64_t) {
      allocations_.fetch_add(1);
      if (offset < kDataStart) return absl::OkStatus();
      if (hold_.load()) {
        entered_.Notify();
        release_.WaitForNotification();
      }
      return full_.load() ? absl::ResourceExhaustedError(path + ": host volume full")
                          : absl::OkStatus();
    });
  }
  // Opened while the volume is full: the active layer has no ready slot.
  std::unique_ptr<Chain> OpenWithEmptyReserve() {
    full_ = true;
    auto chain = Open({.env = &env_});
    full_ = false;
    return chain;
  }

  testing::FailEnv env_{[](absl::string_view, const std::string&) { return false; }};
  std::atomic<int> allocations_{0};
  std::atomic<bool> full_{false};
  std::atomic<bool> hold_{false};
  Notification entered_, release_;
};

TEST_F(ReplenishTest, EmptyReserveNeedsSlotsWithoutIo) {
  auto chain = OpenWithEmptyReserve();
  const int before = allocations_.load();
  auto plan = chain->PrepareWrite(0, 4096);
  EXPECT_TRUE(NeedsSlots(plan.status())) << plan.status();
  EXPECT_FALSE(IsWriteConflict(plan.status()));
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(plan.status().message().find(top_), absl::string_view::npos) << plan.status();
  EXPECT_EQ(allocations_.load(), before) << "PrepareWrite allocated on the write path";
}

TEST_F(ReplenishTest, ReplenishThenPrepareWriteSucceeds) {
  auto chain = OpenWithEmptyReserve();
  ASSERT_TRUE(NeedsSlots(chain->PrepareWrite(0, 4096).status()));
  const int before = allocations_.load();
  ASSERT_TRUE(chain->ReplenishSlots().ok());
  EXPECT_GT(allocations_.load(), before);
  const int after = allocations_.load();
  auto plan = chain->PrepareWrite(0, 4096);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_FALSE(plan->replenish) << "a fresh extent is above the low-water mark";
  chain->FinishWrite(*plan, true);
  EXPECT_EQ(allocations_.load(), after);
}

TEST_F(ReplenishTest, FullVolumeIsEnospcAfterReplenish) {
  auto chain = OpenWithEmptyReserve();
  full_ = true;
  absl::Status s = chain->ReplenishSlots();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_NE(s.message().find(top_), absl::string_view::npos) << s;
  // A synchronous write replenishes itself and fails as it did when it allocated inline.
  s = chain->Write(0, std::string(4096, 'w'));
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_NE(s.message().find("full"), absl::string_view::npos) << s;
  full_ = false;
  EXPECT_TRUE(chain->Write(0, std::string(4096, 'w')).ok());
}

TEST_F(ReplenishTest, ReadsAndWritesGoOnWhileReplenishAllocates) {
  auto chain = OpenWithEmptyReserve();
  hold_ = true;
  absl::Status replenished;
  std::thread replenisher([&] { replenished = chain->ReplenishSlots(); });
  entered_.WaitForNotification();  // inside fallocate now
  // On another thread, so that a replenish holding the chain's mutex fails the test instead
  // of hanging it.
  Notification mapped;
  std::thread ring([&] {
    std::vector<Segment> segments;
    ReadPin pin;
    EXPECT_TRUE(chain->MapRead(0, 65536, &segments, &pin).ok());
    pin.Release();
    EXPECT_TRUE(NeedsSlots(chain->PrepareWrite(0, 4096).status())) << "ready before publish";
    mapped.Notify();
  });
  EXPECT_TRUE(mapped.WaitForNotificationWithTimeout(absl::Seconds(20)))
      << "MapRead waited for the fallocate";
  hold_ = false;
  release_.Notify();
  ring.join();
  replenisher.join();
  ASSERT_TRUE(replenished.ok()) << replenished;
  auto plan = chain->PrepareWrite(0, 4096);
  ASSERT_TRUE(plan.ok()) << plan.status();
  chain->FinishWrite(*plan, false);
}

TEST_F(ReplenishTest, FreedSlotsAskForAReplenishAndAreReusedAfterIt) {
  auto chain = Open({.env = &env_});
  ASSERT_TRUE(chain->Write(0, std::string(65536, 'a')).ok());
  std::vector<Segment> old;
  ReadPin pin;
  ASSERT_TRUE(chain->MapRead(0, 65536, &old, &pin).ok());
  pin.Release();
  ASSERT_TRUE(chain->Trim(0, 65536).ok());
  ASSERT_TRUE(chain->Flush().ok());
  // The freed slot's space was punched: not ready, so the tail serves and a refill is asked.
  auto plan = chain->PrepareWrite(5 * 65536, 65536);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_TRUE(plan->replenish);
  EXPECT_NE(plan->targets[0].file_offset, old[0].file_offset);
  chain->FinishWrite(*plan, true);
  ASSERT_TRUE(chain->ReplenishSlots().ok());
  plan = chain->PrepareWrite(6 * 65536, 65536);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_FALSE(plan->replenish);
  EXPECT_EQ(plan->targets[0].file_offset, old[0].file_offset) << "freed slot reused first";
  chain->FinishWrite(*plan, true);
}

TEST_F(ChainTest, SegmentsAndExtentsNameTheLayerThatAnswers) {
  auto chain = Open();
  ASSERT_TRUE(chain->Write(0, std::string(4096, 'a')).ok());
  ASSERT_TRUE(chain->Snapshot("s1").ok());
  ASSERT_TRUE(chain->Write(4096, std::string(4096, 'b')).ok());
  ASSERT_TRUE(chain->WriteZeroes(8192, 4096).ok());
  std::vector<Segment> segments;
  ReadPin pin;
  ASSERT_TRUE(chain->MapRead(0, 4 * 4096, &segments, &pin).ok());
  ASSERT_EQ(segments.size(), 4u);
  EXPECT_EQ(segments[0].layer, 1);  // the snapshot
  EXPECT_EQ(segments[1].layer, 2);  // the active layer
  EXPECT_EQ(segments[2].layer, 2);
  EXPECT_EQ(segments[2].kind, Segment::Kind::kZero);
  EXPECT_EQ(segments[3].layer, 0);  // the raw base
  std::vector<Extent> extents;
  ASSERT_TRUE(chain->Extents(0, 4 * 4096, &extents).ok());
  ASSERT_EQ(extents.size(), segments.size());  // the same walk
  for (size_t i = 0; i < extents.size(); ++i) EXPECT_EQ(extents[i].layer, segments[i].layer);
  EXPECT_EQ(chain->DescribeLayer(0), "base (" + base_ + ")");
  EXPECT_EQ(chain->DescribeLayer(1), "layer 1 (" + dir_.File("disk@s1.strata") + ")");
  EXPECT_EQ(chain->DescribeLayer(2), "layer 2 (" + top_ + ")");
  EXPECT_NE(chain->DescribeLayer(3).find("not in the chain"), std::string::npos);
  EXPECT_NE(chain->DescribeLayer(-1).find("zeros"), std::string::npos);
}

TEST_F(ChainTest, DescribeLayerNamesTheFileOfASnapshotNotDurableYet) {
  auto chain = Open();
  ASSERT_TRUE(chain->PrepareSnapshot("s1").ok());
  ASSERT_TRUE(chain->SwitchSnapshot("s1").ok());
  // The new active layer is still at its pending name until CompleteSnapshot renames it.
  EXPECT_EQ(chain->DescribeLayer(2), "layer 2 (" + dir_.File(".disk.strata.new") + ")");
  ASSERT_TRUE(chain->CompleteSnapshot().ok());
  EXPECT_EQ(chain->DescribeLayer(2), "layer 2 (" + top_ + ")");
}

TEST_F(ChainTest, EveryFinishedWriteEndsItsInflightRange) {
  auto chain = Open();
  // Two aligned writes of the same range: each finish removes one of the two ranges.
  auto a = chain->PrepareWrite(0, 4096);
  auto b = chain->PrepareWrite(0, 4096);
  ASSERT_TRUE(a.ok() && b.ok());
  chain->FinishWrite(*a, true);
  chain->FinishWrite(*b, false);
  // A widened write owns its edge sub-block until it finishes, and no longer.
  auto widened = chain->PrepareWrite(100, 10);
  ASSERT_TRUE(widened.ok());
  EXPECT_EQ(chain->PrepareWrite(0, 4096).status().code(), absl::StatusCode::kUnavailable);
  chain->FinishWrite(*widened, true);
  auto after = chain->PrepareWrite(0, 4096);
  ASSERT_TRUE(after.ok());
  chain->FinishWrite(*after, true);
  // No range is left behind: a snapshot's switch refuses while any write is in flight.
  EXPECT_TRUE(chain->Snapshot("drained").ok());
}

TEST_F(ChainTest, FinishingAWriteTwiceAbortsBeforeItCanCorruptData) {
  auto chain = Open();
  auto plan = chain->PrepareWrite(100, 10);
  ASSERT_TRUE(plan.ok());
  chain->FinishWrite(*plan, true);
  EXPECT_DEATH(chain->FinishWrite(*plan, true), "no write in flight holds");
  WritePlan never_prepared;
  never_prepared.start = 8192;
  never_prepared.end = 12288;
  EXPECT_DEATH(chain->FinishWrite(never_prepared, false), "internal error");
}

}  // namespace
}  // namespace strata
