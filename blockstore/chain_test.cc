#include "blockstore/chain.h"

#include <thread>

#include "blockstore/crash_env.h"
#include "blockstore/file.h"
#include "blockstore/layer.h"
#include "blockstore/test_util.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

using testing::PatternBytes;
using testing::TempDir;

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

TEST_F(ChainTest, ExtentsTellLayerZeroAndData) {
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

TEST_F(ChainTest, SnapshotThatCouldNotBeMadeDurableIsRetriedByEachFlush) {
  CrashEnv env(7);
  auto chain = Open({.env = &env});
  ASSERT_TRUE(chain->Write(0, std::string(4096, 'a')).ok());
  ASSERT_TRUE(chain->PrepareSnapshot("s1").ok());
  ASSERT_TRUE(chain->SwitchSnapshot("s1").ok());
  ASSERT_TRUE(chain->Write(4096, std::string(4096, 'b')).ok());
  env.FailSyncsAfter(0);  // the disk refuses every sync for a while
  absl::Status s = chain->CompleteSnapshot();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("'s1'"), absl::string_view::npos) << s;
  EXPECT_NE(s.message().find("not durable yet"), absl::string_view::npos) << s;
  // No flush may acknowledge the writes above it meanwhile, nor a new snapshot start.
  EXPECT_FALSE(chain->Flush().ok());
  EXPECT_FALSE(chain->PrepareSnapshot("s2").ok());
  auto layers = chain->Layers();
  ASSERT_EQ(layers.size(), 3u);
  EXPECT_TRUE(layers[1].freezing);
  EXPECT_EQ(layers[1].header.snapshot_name, "s1");
  EXPECT_EQ(layers[1].header.state, LayerState::kActive);  // as on disk
  env.FailSyncsAfter(-1);
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

}  // namespace
}  // namespace strata
