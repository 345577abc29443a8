// Crash tests with real processes: kill -9 of a child during writes and during a commit. After
// each kill the chain must open, `check` must pass, and every write acknowledged before the
// last completed Flush() must read back; a write after it may read old or new, nothing else.
// Simulated power loss at every sync point, with the file system's reorderings, is in
// crash_sweep_test.cc.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <random>

#include "blockstore/chain.h"
#include "blockstore/check.h"
#include "blockstore/commit.h"
#include "blockstore/file.h"
#include "blockstore/test_util.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

using testing::PatternBytes;
using testing::PossibleContents;
using testing::TempDir;

constexpr uint64_t kDisk = 2 << 20;
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
    if (rng() % 2) off &= ~(PossibleContents::kSector - 1);
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
  int64_t bad = m.FirstImpossibleSector(disk);
  EXPECT_EQ(bad, -1) << "the sector @ " << bad << " holds content that was never written there";
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
