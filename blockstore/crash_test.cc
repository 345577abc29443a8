// Crash tests: power loss simulated by CrashEnv at every sync point of writes, flushes and
// snapshots, and real kill -9 of a child process during writes and during a commit. After
// each crash the chain must open, `check` must pass, and every write acknowledged before the
// last completed Flush() must read back; a write after it may read old or new, nothing else.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <map>
#include <random>
#include <set>

#include "blockstore/chain.h"
#include "blockstore/check.h"
#include "blockstore/commit.h"
#include "blockstore/crash_env.h"
#include "blockstore/crc32c.h"
#include "blockstore/file.h"
#include "blockstore/test_util.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

using testing::PatternBytes;
using testing::TempDir;

constexpr uint64_t kDisk = 2 << 20;
// Tracked per 512-byte sector: a disk may tear an unflushed write at any sector boundary.
constexpr uint64_t kBlock = 512;
constexpr uint64_t kBlocks = kDisk / kBlock;

// Per sector, the CRCs of every content it may hold after a crash: the content at the last
// completed flush, plus every content written since.
class PossibleContents {
 public:
  explicit PossibleContents(const std::string& initial) : model_(initial) { Collapse(); }
  void Write(uint64_t offset, const std::string& data) {
    model_.replace(offset, data.size(), data);
    for (uint64_t b = offset / kBlock; b <= (offset + data.size() - 1) / kBlock; ++b) {
      possible_[b].insert(BlockCrc(b));
    }
  }
  void Flushed() { Collapse(); }
  const std::string& model() const { return model_; }
  // Returns the first block whose content is impossible, or -1.
  int64_t FirstBadBlock(const std::string& disk) const {
    for (uint64_t b = 0; b < kBlocks; ++b) {
      if (!possible_[b].count(crc32c::Value(disk.data() + b * kBlock, kBlock))) {
        return static_cast<int64_t>(b);
      }
    }
    return -1;
  }

 private:
  uint32_t BlockCrc(uint64_t b) const { return crc32c::Value(model_.data() + b * kBlock, kBlock); }
  void Collapse() {
    possible_.assign(kBlocks, {});
    for (uint64_t b = 0; b < kBlocks; ++b) possible_[b].insert(BlockCrc(b));
  }
  std::string model_;
  std::vector<std::set<uint32_t>> possible_;
};

// A deterministic workload of writes (aligned and not), zeroes, trims and flushes.
struct Op {
  enum Kind { kWrite, kZero, kFlush } kind;
  uint64_t offset = 0;
  std::string data;  // kWrite: the bytes; kZero: length in data.size()
};

std::vector<Op> Workload(uint64_t seed, int count) {
  std::mt19937_64 rng(seed);
  std::vector<Op> ops;
  for (int i = 0; i < count; ++i) {
    int roll = static_cast<int>(rng() % 10);
    uint64_t off = rng() % kDisk;
    if (rng() % 2) off &= ~(kBlock - 1);
    uint64_t len = 1 + rng() % std::min<uint64_t>(kDisk - off, 3 * 65536);
    if (roll < 6) {
      ops.push_back({Op::kWrite, off, PatternBytes(len, rng())});
    } else if (roll < 8) {
      ops.push_back({Op::kZero, off, std::string(len, '\0')});
    } else {
      ops.push_back({Op::kFlush, 0, ""});
    }
  }
  return ops;
}

absl::Status Apply(Chain* chain, const Op& op) {
  switch (op.kind) {
    case Op::kWrite: return chain->Write(op.offset, op.data);
    case Op::kZero: return chain->WriteZeroes(op.offset, op.data.size());
    case Op::kFlush: return chain->Flush();
  }
  return absl::InternalError("bad op");
}

void ApplyToModel(PossibleContents* m, const Op& op) {
  if (op.kind == Op::kFlush) {
    m->Flushed();
  } else {
    m->Write(op.offset, op.data);  // zeroes: data holds the zeros
  }
}

void ExpectRecovered(const std::string& top, const PossibleContents& m) {
  auto chain = Chain::Open(top);
  ASSERT_TRUE(chain.ok()) << chain.status();
  std::string disk(kDisk, '\0');
  ASSERT_TRUE((*chain)->Read(0, absl::MakeSpan(disk)).ok());
  int64_t bad = m.FirstBadBlock(disk);
  EXPECT_EQ(bad, -1) << "block " << bad << " holds content that was never written there";
  chain->reset();
  auto report = CheckChain(Env::Default(), top, /*repair=*/false);
  ASSERT_TRUE(report.ok()) << report.status();
  // Space a crash leaked is repairable, not a problem.
  for (const auto& p : report->problems) ADD_FAILURE() << p;
}

class CrashTest : public ::testing::Test {
 protected:
  void SetUp() override {
    base_data_ = PatternBytes(kDisk, 99);
    testing::WriteFileBytes(base_, base_data_);
    ASSERT_TRUE(CreateLayer(top_, {.parent = base_, .parent_format = ParentFormat::kRaw}).ok());
  }
  TempDir dir_;
  std::string base_ = dir_.File("base.raw");
  std::string top_ = dir_.File("disk.strata");
  std::string base_data_;
};

// The disk dies (every sync fails) after N syncs, for many N, then the power goes.
TEST_F(CrashTest, PowerLossAtEverySyncPoint) {
  for (int fail_after = 0; fail_after < 40; ++fail_after) {
    SCOPED_TRACE(::testing::Message() << "fail after " << fail_after << " syncs");
    TempDir dir;
    std::string base = dir.File("base.raw"), top = dir.File("disk.strata");
    testing::WriteFileBytes(base, base_data_);
    ASSERT_TRUE(CreateLayer(top, {.parent = base, .parent_format = ParentFormat::kRaw}).ok());
    CrashEnv env(fail_after);
    PossibleContents model(base_data_);
    {
      auto chain = Chain::Open(top, {.env = &env});
      ASSERT_TRUE(chain.ok()) << chain.status();
      env.FailSyncsAfter(fail_after);
      int snapshots = 0, done = 0;
      for (const Op& op : Workload(fail_after, 60)) {
        absl::Status s = Apply(chain->get(), op);
        if (op.kind != Op::kFlush || s.ok()) ApplyToModel(&model, op);
        ++done;
        if (snapshots >= 3) continue;
        const std::string name = "s" + std::to_string(snapshots);
        if (fail_after % 3 == 0 && op.kind == Op::kFlush && s.ok()) {
          // A snapshot is a flush too, and must survive the crash as a whole or not at all.
          ++snapshots;
          if ((*chain)->Snapshot(name).ok()) model.Flushed();
        } else if (fail_after % 3 == 1 && done % 15 == 0) {
          // As a live server does, with writes not yet flushed below it: switched in memory,
          // writes go on above it, and the next flush must make it durable first.
          ++snapshots;
          if ((*chain)->PrepareSnapshot(name).ok() && !(*chain)->SwitchSnapshot(name).ok()) {
            (*chain)->CancelSnapshot();
          }
        }
      }
      // The chain's destructor tries to flush; with the disk dead it fails: not acknowledged.
    }
    env.Crash();
    env.FailSyncsAfter(-1);
    ExpectRecovered(top, model);
  }
}

// kill -9 of a process in the middle of writes and flushes.
TEST_F(CrashTest, KillDuringWrites) {
  for (int round = 0; round < 6; ++round) {
    SCOPED_TRACE(::testing::Message() << "round " << round);
    std::vector<Op> ops = Workload(1000 + round, 400);
    int pipefd[2];
    ASSERT_EQ(pipe(pipefd), 0);
    pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      close(pipefd[0]);
      auto chain = Chain::Open(top_);
      if (!chain.ok()) _exit(3);
      for (size_t i = 0; i < ops.size(); ++i) {
        if (!Apply(chain->get(), ops[i]).ok()) _exit(4);
        // Report each completed op; the parent trusts flushes it has heard of.
        uint32_t done = static_cast<uint32_t>(i + 1);
        if (write(pipefd[1], &done, sizeof(done)) != sizeof(done)) _exit(5);
      }
      _exit(0);
    }
    close(pipefd[1]);
    std::mt19937_64 rng(round);
    usleep(static_cast<useconds_t>(20000 + rng() % 200000));
    kill(child, SIGKILL);
    int status;
    waitpid(child, &status, 0);
    uint32_t heard = 0, v;
    while (read(pipefd[0], &v, sizeof(v)) == sizeof(v)) heard = v;
    close(pipefd[0]);
    // Everything up to the last flush heard of is certain; anything after may have happened.
    PossibleContents model(base_data_);
    {
      auto chain = Chain::Open(top_, {.writable = false, .lock = false});
      ASSERT_TRUE(chain.ok()) << chain.status();
    }
    for (uint32_t i = 0; i < ops.size(); ++i) {
      if (i < heard || ops[i].kind != Op::kFlush) ApplyToModel(&model, ops[i]);
    }
    ExpectRecovered(top_, model);
    // Next round starts from a fresh layer on the same base.
    ASSERT_EQ(unlink(top_.c_str()), 0);
    ASSERT_TRUE(CreateLayer(top_, {.parent = base_, .parent_format = ParentFormat::kRaw}).ok());
  }
}

// kill -9 of `strata commit` at random instants; the next run completes the merge.
TEST_F(CrashTest, KillDuringCommitThenResume) {
  constexpr uint64_t kBig = 64 << 20;
  std::string base = dir_.File("big.raw"), top = dir_.File("big.strata");
  testing::WriteFileBytes(base, std::string(kBig, '\0'));
  int resumed_rounds = 0;
  for (int round = 0; round < 8; ++round) {
    SCOPED_TRACE(::testing::Message() << "round " << round);
    unlink(top.c_str());
    unlink(dir_.File("big@s.strata").c_str());
    ASSERT_TRUE(CreateLayer(top, {.parent = base, .parent_format = ParentFormat::kRaw}).ok());
    std::string expect = PatternBytes(kBig, round);
    {
      auto chain = Chain::Open(top);
      ASSERT_TRUE(chain.ok());
      ASSERT_TRUE((*chain)->Write(0, expect.substr(0, kBig / 2)).ok());
      ASSERT_TRUE((*chain)->Snapshot("s").ok());
      ASSERT_TRUE((*chain)->Write(kBig / 4, expect.substr(kBig / 4)).ok());
    }
    pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      // Small batches: many progress records for the kill to fall between.
      _exit(CommitLayer(Env::Default(), top, nullptr, 2 << 20).ok() ? 0 : 1);
    }
    usleep(static_cast<useconds_t>(round * 25000));
    kill(child, SIGKILL);
    int status;
    waitpid(child, &status, 0);
    auto resumed = ResumeInterruptedCommit(Env::Default(), top);
    ASSERT_TRUE(resumed.ok()) << resumed.status();
    resumed_rounds += !resumed->empty();
    auto chain = Chain::Open(top, {.writable = false});
    ASSERT_TRUE(chain.ok()) << chain.status();
    std::string disk(kBig, '\0');
    ASSERT_TRUE((*chain)->Read(0, absl::MakeSpan(disk)).ok());
    EXPECT_TRUE(disk == expect) << "content changed by an interrupted commit";
    chain->reset();
    auto report = CheckChain(Env::Default(), top, false);
    ASSERT_TRUE(report.ok());
    for (const auto& p : report->problems) ADD_FAILURE() << p;
  }
  // The kills must have hit merges in progress, or this test checked nothing.
  EXPECT_GT(resumed_rounds, 0);
}

}  // namespace
}  // namespace strata
