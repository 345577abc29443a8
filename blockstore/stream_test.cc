#include "blockstore/stream.h"

#include <atomic>
#include <thread>

#include "absl/strings/str_cat.h"
#include "blockstore/chain.h"
#include "blockstore/file.h"
#include "blockstore/layer.h"
#include "blockstore/snapshot_files.h"
#include "blockstore/test_util.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

using testing::PatternBytes;
using testing::ReadDisk;
using testing::TempDir;

constexpr uint32_t kCluster = 64 << 10;
constexpr uint64_t kDisk = 8 << 20;

class StreamTest : public ::testing::Test {
 protected:
  // base.raw (pattern), snapshots s1 and s2 each with data, the active disk with data.
  void SetUp() override {
    testing::WriteFileBytes(dir_.File("base.raw"), PatternBytes(kDisk, 1));
    ASSERT_TRUE(CreateLayer(top_, {.parent = "base.raw", .parent_format = ParentFormat::kRaw}).ok());
    auto chain = Chain::Open(top_);
    ASSERT_TRUE(chain.ok()) << chain.status();
    ASSERT_TRUE((*chain)->Write(0, PatternBytes(3 << 20, 2)).ok());
    ASSERT_TRUE((*chain)->WriteZeroes(3 << 20, 256 << 10).ok());
    ASSERT_TRUE((*chain)->Snapshot("s1").ok());
    ASSERT_TRUE((*chain)->Write((2 << 20) + 1000, PatternBytes(3 << 20, 3)).ok());
    ASSERT_TRUE((*chain)->Snapshot("s2").ok());
    ASSERT_TRUE((*chain)->Write(4 << 20, PatternBytes(1 << 20, 4)).ok());
    ASSERT_TRUE((*chain)->WriteZeroes((1 << 20) + 4096, 64 << 10).ok());
  }

  std::unique_ptr<Chain> OpenServed() {
    auto chain = Chain::Open(top_, {.serve_streams = true});
    EXPECT_TRUE(chain.ok()) << chain.status();
    return chain.ok() ? std::move(*chain) : nullptr;
  }
  std::string Snapshot(const std::string& name) { return ReadDisk(SnapshotPath(top_, name), kDisk); }

  // Plans, journals and runs the deletion of `name` on `chain`.
  absl::StatusOr<StreamResult> Delete(Chain* chain, const std::string& name,
                                      const StreamOptions& options = {}, uint64_t rate = 0) {
    auto plan = PlanStream(Env::Default(), *chain, name, rate);
    if (!plan.ok()) return plan.status();
    if (auto s = BeginStream(Env::Default(), *plan); !s.ok()) return s;
    return RunStream(Env::Default(), chain, StreamJournalPath(plan->layer_path), options);
  }

  std::string ReadAll(Chain* chain) {
    std::string out(kDisk, '\0');
    EXPECT_TRUE(chain->Read(0, absl::MakeSpan(out)).ok());
    return out;
  }

  TempDir dir_;
  const std::string top_ = dir_.File("disk.strata");
};

TEST_F(StreamTest, DeletesTheNewestSnapshotIntoTheActiveLayer) {
  const std::string disk = ReadDisk(top_, kDisk), s1 = Snapshot("s1");
  auto chain = OpenServed();
  ASSERT_NE(chain, nullptr);
  ASSERT_EQ(chain->top_position(), 3);
  auto done = Delete(chain.get(), "s2");
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_GT(done->copied, 0u);
  EXPECT_EQ(chain->top_position(), 2);
  EXPECT_EQ(ReadAll(chain.get()), disk);
  EXPECT_FALSE(std::filesystem::exists(SnapshotPath(top_, "s2")));
  EXPECT_FALSE(std::filesystem::exists(StreamJournalPath(SnapshotPath(top_, "s2"))));
  EXPECT_EQ(Snapshot("s1"), s1);
  // The active layer now stands on s1, on disk too.
  auto header = ReadLayerHeader(Env::Default(), top_);
  ASSERT_TRUE(header.ok());
  EXPECT_EQ(header->parent_path, BaseName(SnapshotPath(top_, "s1")));
  chain.reset();
  EXPECT_EQ(ReadDisk(top_, kDisk), disk);
  // The name is free again.
  chain = OpenServed();
  EXPECT_TRUE(chain->Snapshot("s2").ok());
}

TEST_F(StreamTest, DeletesAnOlderSnapshotIntoTheFrozenOneAbove) {
  const std::string disk = ReadDisk(top_, kDisk), s2 = Snapshot("s2");
  auto chain = OpenServed();
  ASSERT_NE(chain, nullptr);
  auto done = Delete(chain.get(), "s1");
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(chain->top_position(), 2);
  EXPECT_EQ(ReadAll(chain.get()), disk);
  EXPECT_EQ(Snapshot("s2"), s2);
  EXPECT_FALSE(std::filesystem::exists(SnapshotPath(top_, "s1")));
  auto header = ReadLayerHeader(Env::Default(), SnapshotPath(top_, "s2"));
  ASSERT_TRUE(header.ok());
  EXPECT_EQ(header->parent_format, ParentFormat::kRaw);
  EXPECT_EQ(header->state, LayerState::kFrozen);
  EXPECT_EQ(header->snapshot_name, "s2");
  chain.reset();
  EXPECT_EQ(ReadDisk(top_, kDisk), disk);
  EXPECT_EQ(Snapshot("s2"), s2);
}

TEST_F(StreamTest, AReaderOfTheDeletedSnapshotKeepsReadingItsContent) {
  const std::string s1 = Snapshot("s1");
  auto reader = Chain::Open(SnapshotPath(top_, "s1"), {.writable = false});
  ASSERT_TRUE(reader.ok());
  auto chain = OpenServed();
  ASSERT_TRUE(Delete(chain.get(), "s1").ok());
  EXPECT_EQ(ReadAll(reader->get()), s1);
}

// Writers run beside the copy; every write lands (the newer data always wins), and the disk
// matches a model of them.
TEST_F(StreamTest, WritesDuringTheStreamWin) {
  auto chain = OpenServed();
  ASSERT_NE(chain, nullptr);
  std::string model = ReadAll(chain.get());
  std::atomic<bool> stop{false};
  std::vector<std::thread> writers;
  std::vector<std::vector<std::pair<uint64_t, std::string>>> writes(2);
  for (int t = 0; t < 2; ++t) {
    writers.emplace_back([&, t] {
      std::mt19937_64 rng(t);
      for (int i = 0; !stop.load() || i < 50; ++i) {
        // Unaligned, so that some widen and read margins from the layer being deleted.
        const uint64_t off = (rng() % (kDisk / 2 - 10000)) + t * (kDisk / 2);
        std::string data = PatternBytes(1 + rng() % 9000, rng());
        const absl::Status s = chain->Write(off, data);
        ASSERT_TRUE(s.ok()) << s;
        writes[t].emplace_back(off, std::move(data));
        if (i > 5000) break;
      }
    });
  }
  StreamOptions options;
  options.batch_bytes = 256 << 10;
  auto done = Delete(chain.get(), "s2", options);
  stop = true;
  for (auto& w : writers) w.join();
  ASSERT_TRUE(done.ok()) << done.status();
  for (const auto& per_thread : writes) {
    for (const auto& [off, data] : per_thread) model.replace(off, data.size(), data);
  }
  EXPECT_EQ(ReadAll(chain.get()) == model, true);
  chain.reset();
  EXPECT_EQ(ReadDisk(top_, kDisk) == model, true);
}

// A snapshot taken while the newest snapshot is being deleted freezes the layer the copies go
// into; the deletion goes on into it as a frozen layer.
TEST_F(StreamTest, ASnapshotDuringTheDeletionFreezesItsTarget) {
  auto chain = OpenServed();
  ASSERT_NE(chain, nullptr);
  const std::string before = ReadAll(chain.get());
  std::atomic<uint64_t> progress{0};
  StreamOptions options;
  options.batch_bytes = 64 << 10;
  options.progress = [&](const StreamProgress& p) { progress = p.done; };
  absl::StatusOr<StreamResult> done = absl::UnknownError("not run");
  // 4 MiB/s: the 3 MiB of s2 take about a second.
  std::thread stream([&] { done = Delete(chain.get(), "s2", options, 4 << 20); });
  while (progress.load() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_TRUE(chain->Snapshot("s3").ok());
  ASSERT_TRUE(chain->Write(100, "after s3").ok());
  stream.join();
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(Snapshot("s3"), before);
  EXPECT_FALSE(std::filesystem::exists(SnapshotPath(top_, "s2")));
  EXPECT_EQ(chain->top_position(), 3);  // s1, s3, the active layer
  std::string now = before;
  now.replace(100, 8, "after s3");
  EXPECT_EQ(ReadAll(chain.get()) == now, true);
  chain.reset();
  EXPECT_EQ(Snapshot("s3"), before);
}

TEST_F(StreamTest, AStoppedStreamKeepsItsJournalAndResumesAtTheNextOpen) {
  const std::string disk = ReadDisk(top_, kDisk);
  const std::string journal = StreamJournalPath(SnapshotPath(top_, "s2"));
  for (int run = 0; run < 5; ++run) {
    auto chain = OpenServed();
    ASSERT_NE(chain, nullptr);
    std::atomic<bool> stop{false};
    StreamOptions options;
    options.stop = &stop;
    options.batch_bytes = 64 << 10;
    options.flush_interval = std::chrono::milliseconds(0);
    options.progress = [&](const StreamProgress& p) {
      if (p.done >= static_cast<uint64_t>(run + 1) * (256u << 10)) stop = true;
    };
    absl::StatusOr<StreamResult> done =
        run == 0 ? Delete(chain.get(), "s2", options)
                 : RunStream(Env::Default(), chain.get(), journal, options);
    ASSERT_TRUE(absl::IsCancelled(done.status())) << done.status();
    EXPECT_TRUE(std::filesystem::exists(journal));
    EXPECT_EQ(ReadAll(chain.get()), disk);
  }
  auto chain = OpenServed();
  ASSERT_EQ(FindStreamJournals(Env::Default(), top_), std::vector<std::string>{journal});
  ASSERT_TRUE(RunStream(Env::Default(), chain.get(), journal, {}).ok());
  EXPECT_EQ(ReadAll(chain.get()), disk);
  EXPECT_EQ(chain->top_position(), 2);
}

TEST_F(StreamTest, AnOfflineOpenFinishesAPendingDeletion) {
  const std::string disk = ReadDisk(top_, kDisk);
  {
    auto chain = OpenServed();
    auto plan = PlanStream(Env::Default(), *chain, "s1", 0);
    ASSERT_TRUE(plan.ok());
    ASSERT_TRUE(BeginStream(Env::Default(), *plan).ok());
  }
  auto chain = Chain::Open(top_);  // any writable open but the server's
  ASSERT_TRUE(chain.ok()) << chain.status();
  EXPECT_EQ((*chain)->top_position(), 2);
  EXPECT_FALSE(std::filesystem::exists(SnapshotPath(top_, "s1")));
  EXPECT_EQ(ReadAll(chain->get()), disk);
}

TEST_F(StreamTest, Refusals) {
  auto chain = OpenServed();
  ASSERT_NE(chain, nullptr);
  EXPECT_TRUE(absl::IsNotFound(PlanStream(Env::Default(), *chain, "nope", 0).status()));
  // A branch on s1 elsewhere in the directory: its content would change.
  ASSERT_TRUE(CreateLayer(dir_.File("branch.strata"),
                          {.parent = BaseName(SnapshotPath(top_, "s1")),
                           .parent_format = ParentFormat::kStrata})
                  .ok());
  auto branched = PlanStream(Env::Default(), *chain, "s1", 0);
  EXPECT_TRUE(absl::IsFailedPrecondition(branched.status()));
  EXPECT_NE(branched.status().message().find("branch.strata"), std::string::npos)
      << branched.status();
  // One deletion at a time.
  auto plan = PlanStream(Env::Default(), *chain, "s2", 0);
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_TRUE(BeginStream(Env::Default(), *plan).ok());
  std::filesystem::remove(dir_.File("branch.strata"));
  auto second = PlanStream(Env::Default(), *chain, "s1", 0);
  EXPECT_TRUE(absl::IsFailedPrecondition(second.status())) << second.status();
  // Cancelled before its commit point: the chain stays as it was.
  ASSERT_TRUE(AbandonStream(Env::Default(), StreamJournalPath(plan->layer_path)).ok());
  EXPECT_TRUE(FindStreamJournals(Env::Default(), top_).empty());
  EXPECT_EQ(chain->top_position(), 3);
}

TEST_F(StreamTest, CommitBelowALayerDeletesItsParent) {
  const std::string disk = ReadDisk(top_, kDisk);
  auto chain = OpenServed();
  auto plan = PlanStreamBelow(Env::Default(), *chain, top_, 0);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->record.name, "s2");
  EXPECT_TRUE(absl::IsNotFound(
      PlanStreamBelow(Env::Default(), *chain, SnapshotPath(top_, "s1"), 0).status()));
}

TEST(StreamJournalRecordTest, RoundTripsAndRejectsDamage) {
  StreamJournalRecord r{"disk@a.strata", NewUuid(), NewUuid(), "a", 1 << 20};
  std::string text;
  r.EncodeTo(&text);
  StreamJournalRecord back;
  ASSERT_TRUE(back.DecodeFrom(text).ok());
  EXPECT_EQ(back, r);
  text[20] ^= 1;
  EXPECT_TRUE(absl::IsDataLoss(back.DecodeFrom(text)));
  EXPECT_TRUE(absl::IsDataLoss(back.DecodeFrom(text.substr(0, 30))));
}

}  // namespace
}  // namespace strata
