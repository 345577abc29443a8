// Randomized model check: random writes, zeroes, trims, flushes, snapshots, reopens, commits,
// snapshot deletions and reverts, applied both to a chain and to a plain in-memory disk, and
// compared after every step. A failure prints the seed and the step; rerun one seed with
// STRATA_MODEL_SEED=N.
#include <cstdlib>
#include <map>
#include <random>

#include "blockstore/chain.h"
#include "blockstore/check.h"
#include "blockstore/commit.h"
#include "blockstore/file.h"
#include "blockstore/revert.h"
#include "blockstore/test_util.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

using testing::PatternBytes;
using testing::TempDir;

constexpr uint64_t kDisk = 4 << 20;
constexpr int kSteps = 400;

class ModelTest : public ::testing::TestWithParam<uint64_t> {
 protected:
  void Run(uint64_t seed);

  std::string ReadAll(Chain* chain) {
    std::string out(chain->size(), '\0');
    absl::Status s = chain->Read(0, absl::MakeSpan(out));
    EXPECT_TRUE(s.ok()) << s;
    return out;
  }
  // Names whose frozen layer is in the current chain, oldest first.
  std::vector<std::string> chain_snapshots_;
  std::map<std::string, std::string> snapshot_content_;
};

void ModelTest::Run(uint64_t seed) {
  TempDir dir;
  std::mt19937_64 rng(seed);
  std::string base = dir.File("base.raw"), top = dir.File("disk.strata");
  std::string model = PatternBytes(kDisk, seed);
  testing::WriteFileBytes(base, model);
  ASSERT_TRUE(CreateLayer(top, {.parent = base, .parent_format = ParentFormat::kRaw}).ok());
  auto opened = Chain::Open(top);
  ASSERT_TRUE(opened.ok()) << opened.status();
  std::unique_ptr<Chain> chain = std::move(*opened);
  int snapshots = 0;
  auto reopen = [&]() {
    chain.reset();
    auto c = Chain::Open(top);
    ASSERT_TRUE(c.ok()) << c.status();
    chain = std::move(*c);
  };

  for (int step = 0; step < kSteps; ++step) {
    SCOPED_TRACE(::testing::Message() << "seed " << seed << " step " << step);
    uint64_t off = rng() % kDisk;
    if (rng() % 3 == 0) off &= ~uint64_t{4095};
    uint64_t len = 1 + rng() % std::min<uint64_t>(kDisk - off, 200000);
    if (rng() % 3 == 0) len = std::min<uint64_t>(kDisk - off, (len + 4095) & ~uint64_t{4095});
    int op = static_cast<int>(rng() % 100);
    if (op < 45) {
      std::string data = PatternBytes(len, rng());
      ASSERT_TRUE(chain->Write(off, data).ok());
      model.replace(off, len, data);
    } else if (op < 55) {
      ASSERT_TRUE(chain->WriteZeroes(off, len, rng() % 2).ok());
      model.replace(off, len, std::string(len, '\0'));
    } else if (op < 62) {
      ASSERT_TRUE(chain->Trim(off, len).ok());
      // TRIM zeroes the whole sub-blocks inside the range and leaves partial ones.
      uint64_t first = (off + 4095) / 4096 * 4096, last = (off + len) / 4096 * 4096;
      if (off + len == kDisk) last = kDisk;
      if (first < last) model.replace(first, last - first, std::string(last - first, '\0'));
    } else if (op < 70) {
      ASSERT_TRUE(chain->Flush().ok());
    } else if (op < 78) {
      std::string name = "s" + std::to_string(snapshots++);
      ASSERT_TRUE(chain->Snapshot(name).ok());
      chain_snapshots_.push_back(name);
      snapshot_content_[name] = model;
    } else if (op < 83) {
      reopen();
    } else if (op < 88 && !chain_snapshots_.empty()) {
      // Delete a random snapshot by merging; the layer above it takes its place.
      size_t i = rng() % chain_snapshots_.size();
      std::string name = chain_snapshots_[i];
      chain.reset();
      auto r = DeleteSnapshot(Env::Default(), top, name);
      ASSERT_TRUE(r.ok()) << "delete " << name << ": " << r.status();
      chain_snapshots_.erase(chain_snapshots_.begin() + static_cast<long>(i));
      snapshot_content_.erase(name);
      reopen();
    } else if (op < 92 && !chain_snapshots_.empty()) {
      size_t i = rng() % chain_snapshots_.size();
      std::string name = chain_snapshots_[i];
      chain.reset();
      ASSERT_TRUE(Revert(Env::Default(), top, name).ok());
      model = snapshot_content_[name];
      // The snapshots above it are a branch now, no longer in this chain; the user deletes
      // that branch (or it would block merges into the snapshot: other children).
      for (size_t k = i + 1; k < chain_snapshots_.size(); ++k) {
        snapshot_content_.erase(chain_snapshots_[k]);
        ASSERT_EQ(unlink(dir.File("disk@" + chain_snapshots_[k] + ".strata").c_str()), 0);
      }
      chain_snapshots_.resize(i + 1);
      reopen();
    } else if (op < 95 && !chain_snapshots_.empty()) {
      // A snapshot read on its own still holds what it held.
      std::string name = chain_snapshots_[rng() % chain_snapshots_.size()];
      auto snap = Chain::Open(dir.File("disk@" + name + ".strata"),
                              {.writable = false, .lock = false});
      ASSERT_TRUE(snap.ok()) << snap.status();
      ASSERT_TRUE(ReadAll(snap->get()) == snapshot_content_[name]) << "snapshot " << name;
    } else {
      chain.reset();
      auto report = CheckChain(Env::Default(), top, false);
      ASSERT_TRUE(report.ok());
      for (const auto& p : report->problems) ADD_FAILURE() << p;
      for (const auto& p : report->repairable) ADD_FAILURE() << p;
      ASSERT_TRUE(report->clean());
      reopen();
    }
    ASSERT_TRUE(ReadAll(chain.get()) == model) << "content differs after op " << op;
  }
}

TEST_P(ModelTest, ChainMatchesPlainDisk) {
  const char* forced = std::getenv("STRATA_MODEL_SEED");
  Run(forced ? std::strtoull(forced, nullptr, 10) : GetParam());
}

INSTANTIATE_TEST_SUITE_P(Seeds, ModelTest, ::testing::Range<uint64_t>(1, 9));

}  // namespace
}  // namespace strata
