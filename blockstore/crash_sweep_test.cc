// Crash sweeps: every operation that changes a chain, stopped by a simulated power loss at each
// of its sync points in turn and crashed into many of the states a file system may leave there
// (crash_env.h), then reopened and checked against what the operation acknowledged (FORMAT.md
// §2 and §3): the chain opens (opening it for writing finishes or rolls back what was
// interrupted), `check` finds no problem, every write acknowledged by a completed Flush()
// reads back, a later write reads old or new per sector, and every snapshot reads as it did.
//
// At each stop every crash state is tried when there are at most Budget::exhaustive, else
// nothing-persisted, everything-persisted and Budget::samples random ones. STRATA_CRASH_STATES=
// long runs the long sweep. Each family prints its stops and distinct crash states checked.
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <functional>
#include <map>
#include <set>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "blockstore/chain.h"
#include "blockstore/check.h"
#include "blockstore/commit.h"
#include "blockstore/crash_env.h"
#include "blockstore/file.h"
#include "blockstore/layer.h"
#include "blockstore/resize.h"
#include "blockstore/revert.h"
#include "blockstore/snapshot_files.h"
#include "blockstore/test_util.h"
#include "blockstore/stream.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

using testing::PatternBytes;
using testing::PossibleContents;
using testing::TempDir;

// Small geometry so that a crash state is quick to check: 256 clusters of 4 sub-blocks, and
// a journal of 4 blocks (512 records), which a flush of 200 clusters spans twice (two blocks
// in one append) and a few flushes fill (a checkpoint, then the journal starts over).
constexpr uint32_t kCluster = 8192;
constexpr uint32_t kSubBlock = 2048;
constexpr uint64_t kDisk = 2 << 20;
constexpr uint64_t kJournal = 16 << 10;

struct Budget {
  uint64_t exhaustive;  // try every state of a stop with at most this many
  int samples;          // else this many random ones
};
Budget SweepBudget() {
  const char* mode = getenv("STRATA_CRASH_STATES");
  if (mode != nullptr && std::string(mode) == "long") return {4096, 96};
  return {8, 1};
}

// What a disk must read as after a crash.
struct Expect {
  std::string top;
  PossibleContents disk;
  // Snapshots that must be there, and those that may be (interrupted): name -> content.
  std::map<std::string, std::string> snapshots, maybe_snapshots;
  // When not empty, the disk reads as exactly one of these: an all-or-nothing operation.
  std::vector<std::string> disk_one_of;
  // Open the disk as the server does, resuming an unfinished snapshot deletion online
  // (RunStream), instead of letting the open finish it offline.
  bool resume_streams_online = false;
};

// The first byte where `a` and `b` differ.
uint64_t FirstDifference(const std::string& a, const std::string& b) {
  return std::mismatch(a.begin(), a.end(), b.begin(), b.end()).first - a.begin();
}

std::string ReadChain(Chain* chain, std::string* out) {
  out->assign(chain->size(), '\0');
  absl::Status s = chain->Read(0, absl::MakeSpan(*out));
  return s.ok() ? "" : absl::StrCat("read: ", s.message());
}

std::string SnapshotViolation(Env* env, const std::string& top, const std::string& name,
                              const std::string& content, bool must_exist) {
  const std::string path = SnapshotPath(top, name);
  if (!env->Exists(path)) return must_exist ? absl::StrCat("snapshot '", name, "' is gone") : "";
  auto chain = Chain::Open(path, {.writable = false, .env = env});
  if (!chain.ok()) return absl::StrCat("snapshot '", name, "' does not open: ", chain.status().message());
  std::string got;
  if (auto v = ReadChain(chain->get(), &got); !v.empty()) return v;
  if (got != content) {
    return absl::StrCat("snapshot '", name, "' changed: byte ", FirstDifference(got, content),
                        " (cluster ", FirstDifference(got, content) / kCluster, ")");
  }
  return "";
}

// The first way the crash state on disk breaks `expect`, "" when none; the disk's content goes
// to *read.
std::string Violation(Env* env, const Expect& expect, std::string* read) {
  {
    // Writable: runs recovery.
    auto chain = Chain::Open(expect.top, {.env = env, .serve_streams = expect.resume_streams_online});
    if (!chain.ok()) return absl::StrCat("the disk does not open: ", chain.status().message());
    for (const std::string& journal : FindStreamJournals(env, expect.top)) {
      if (auto r = RunStream(env, chain->get(), journal, {}); !r.ok()) {
        return absl::StrCat("resuming the deletion online: ", r.status().message());
      }
    }
    if (!FindStreamJournals(env, expect.top).empty()) return "a stream journal is left";
    if (auto v = ReadChain(chain->get(), read); !v.empty()) return v;
  }
  if (!expect.disk_one_of.empty()) {
    if (std::find(expect.disk_one_of.begin(), expect.disk_one_of.end(), *read) ==
        expect.disk_one_of.end()) {
      return absl::StrCat("the disk reads neither as before nor as after the operation (byte ",
                          FirstDifference(*read, expect.disk_one_of[0]), " differs from before)");
    }
  } else if (int64_t bad = expect.disk.FirstImpossibleSector(*read); bad >= 0) {
    return absl::StrCat("disk byte ", bad, " (cluster ", bad / kCluster,
                        ") holds neither its flushed content nor a later write");
  }
  auto report = CheckChain(env, expect.top, /*repair=*/false);
  if (!report.ok()) return absl::StrCat("check could not run: ", report.status().message());
  if (!report->problems.empty()) return absl::StrCat("check: ", report->problems[0]);
  for (const auto& [name, content] : expect.snapshots) {
    if (auto v = SnapshotViolation(env, expect.top, name, content, true); !v.empty()) return v;
  }
  for (const auto& [name, content] : expect.maybe_snapshots) {
    if (auto v = SnapshotViolation(env, expect.top, name, content, false); !v.empty()) return v;
  }
  return "";
}

// True when `s` is ok. A failure is what a power cut does; without one it is a test failure.
bool Done(CrashEnv* env, const absl::Status& s, absl::string_view what) {
  if (s.ok()) return true;
  if (!env->power_cut()) ADD_FAILURE() << what << ": " << s;
  return false;
}

// Reads the whole content of the chain topped by `top` (for setting up expectations).
std::string Content(const std::string& top) {
  auto chain = Chain::Open(top, {.writable = false});
  EXPECT_TRUE(chain.ok()) << chain.status();
  std::string out;
  if (chain.ok()) {
    EXPECT_EQ(ReadChain(chain->get(), &out), "");
  }
  return out;
}

uint64_t Mix(uint64_t h, uint64_t v) {
  h = (h ^ v) * 0x9e3779b97f4a7c15ull;
  return h ^ (h >> 29);
}

// Totals over every family, printed at the end of the run.
struct Totals : ::testing::Environment {
  uint64_t states = 0;
  void TearDown() override {
    if (states > 0) std::printf("[crash sweep] all families: %lu distinct crash states\n", states);
  }
};
Totals* const totals = static_cast<Totals*>(::testing::AddGlobalTestEnvironment(new Totals));

// The disks an operation changes, as it acknowledged them so far.
using Disks = std::vector<Expect>;
// The operation under test; records in *disks what it acknowledged.
using Run = std::function<void(CrashEnv* env, Disks* disks)>;
// More of a crash state that passed its checks (a second run, swept in turn): `read` is what
// the first disk read as, `where` names the state.
using Then = std::function<void(CrashEnv* env, const std::string& read, const std::string& where)>;

class Family {
 public:
  explicit Family(std::string name) : name_(std::move(name)) {}

  // Runs `run` from `start`, stopped at each sync point in turn and once completed; checks the
  // chosen crash states of each stop, and hands those that pass to `then`.
  void Sweep(CrashEnv* env, const CrashPoint& start, const Disks& initial, const Run& run,
             const Then& then = nullptr) {
    Stops(env, start, initial, run, then, SweepBudget(), "");
    Report();
  }

  // Sweep's loop; `within` names the state `start` is (for a sweep inside another's).
  void Stops(CrashEnv* env, const CrashPoint& start, const Disks& initial, const Run& run,
             const Then& then, const Budget& budget, const std::string& within) {
    for (int stop = 0;; ++stop) {
      if (auto s = env->Crash(start, CrashChoice::Nothing()); !s.ok()) {  // the setup again
        ADD_FAILURE() << name_ << ": restoring the setup: " << s.status();
        return;
      }
      Disks disks = initial;
      env->CutPowerAtSync(stop);
      run(env, &disks);
      if (::testing::Test::HasFatalFailure()) return;
      const bool completed = !env->power_cut();
      const CrashPoint point = env->Point();
      ++stops_;
      for (const CrashChoice& choice :
           point.Choices(budget.exhaustive, budget.samples, Mix(seed_, stop))) {
        const std::string where =
            absl::StrCat(within, completed ? "after completion" : "at sync point ",
                         completed ? "" : absl::StrCat(stop), ", ", choice.ToString());
        if (!Count(env->Crash(point, choice))) return;
        std::string first_read, read, v;
        for (const Expect& e : disks) {
          if (v.empty()) v = Violation(env, e, &read);
          if (&e == &disks.front()) first_read = read;
        }
        if (!v.empty()) {
          Violated(absl::StrCat(where, " [", point.Describe(choice), "]"), v);
        } else if (then) {
          then(env, first_read, where);
        }
      }
      if (completed) break;
    }
  }

 private:
  // Counts the crash state of Crash()'s `print`; false (and a failure) when it failed.
  bool Count(const absl::StatusOr<uint64_t>& print) {
    if (!print.ok()) {
      ADD_FAILURE() << name_ << ": crash failed: " << print.status();
      return false;
    }
    if (distinct_.insert(*print).second) ++totals->states;
    return true;
  }
  void Violated(const std::string& where, const std::string& what) {
    if (violations_++ < 3) ADD_FAILURE() << name_ << ", " << where << ": " << what;
  }
  void Report() {
    std::printf("[crash sweep] %s: %d stops, %zu distinct crash states, %d violating\n",
                name_.c_str(), stops_, distinct_.size(), violations_);
    EXPECT_EQ(violations_, 0) << name_ << ": crash states that break durability (first 3 above)";
  }

  const std::string name_;
  const uint64_t seed_ = std::hash<std::string>()(name_);
  int stops_ = 0;
  int violations_ = 0;
  absl::flat_hash_set<uint64_t> distinct_;
};

// A raw base of kDisk pattern bytes in `dir` and an empty active layer `disk.strata` on it with
// the small journal; returns the layer's path.
std::string MakeDisk(const std::string& dir) {
  const std::string base = dir + "/base.raw", top = dir + "/disk.strata";
  testing::WriteFileBytes(base, PatternBytes(kDisk, 99));
  LayerCreateParams p;
  p.virtual_size = p.parent_size = kDisk;
  p.cluster_size = kCluster;
  p.sub_block_size = kSubBlock;
  p.parent_format = ParentFormat::kRaw;
  p.parent_path = "base.raw";
  p.journal_size = kJournal;
  auto layer = Layer::Create(Env::Default(), top, p);
  EXPECT_TRUE(layer.ok()) << layer.status();
  return top;
}

// Writes `data` at `offset`, noting it as possible first (a failed write may have landed).
bool Write(CrashEnv* env, Chain* chain, Expect* e, uint64_t offset, const std::string& data) {
  e->disk.Write(offset, data);
  return Done(env, chain->Write(offset, data), absl::StrCat("write @ ", offset));
}

bool Flush(CrashEnv* env, Chain* chain, Expect* e) {
  if (!Done(env, chain->Flush(), "flush")) return false;
  e->disk.Flushed();
  return true;
}

// One sub-block at the start of each of clusters [first, end), seeded with `seed`, flushed.
bool WriteClusters(CrashEnv* env, Chain* chain, Expect* e, uint64_t first, uint64_t end,
                   uint64_t seed) {
  for (uint64_t c = first; c < end; ++c) {
    if (!Write(env, chain, e, c * kCluster, PatternBytes(kSubBlock, seed + c))) return false;
  }
  return Flush(env, chain, e);
}

// Family (a)'s workload: a flush of 200 clusters (two journal blocks in one append), then
// rounds of unaligned and aligned writes, zeroes (trimming and not), trims, and flushes,
// which fill the journal: checkpoints, and appends from its start again.
void Workload(CrashEnv* env, Chain* chain, Expect* e, int rounds) {
  if (!WriteClusters(env, chain, e, 0, 200, 1)) return;
  for (int r = 0; r < rounds; ++r) {
    const uint64_t at = (uint64_t(r) * 300007 + 4099) % (kDisk - 3 * kCluster);
    if (!Write(env, chain, e, at, PatternBytes(9000, 1000 + r))) return;
    if (!Write(env, chain, e, (at / kCluster + 40) % 250 * kCluster,
               PatternBytes(2 * kCluster, 2000 + r))) {
      return;
    }
    const uint64_t zero_at = (at + 5 * kCluster + 700) % (kDisk - 3 * kCluster);
    e->disk.Write(zero_at, std::string(2 * kCluster, '\0'));
    if (!Done(env, chain->WriteZeroes(zero_at, 2 * kCluster, /*may_trim=*/r % 2 == 0), "zero")) {
      return;
    }
    // A trim zeroes the whole sub-blocks of its range and leaves the partial ones alone.
    const uint64_t trim_at = (at + 100 * kCluster + 300) % (kDisk - 3 * kCluster);
    const uint64_t inner = (trim_at + kSubBlock - 1) / kSubBlock * kSubBlock;
    const uint64_t inner_end = (trim_at + 2 * kCluster) / kSubBlock * kSubBlock;
    e->disk.Write(inner, std::string(inner_end - inner, '\0'));
    if (!Done(env, chain->Trim(trim_at, 2 * kCluster), "trim")) return;
    if (!Flush(env, chain, e)) return;
  }
}

// Where the sweeps keep their files: on tmpfs when there is one. The model, not the file
// system, decides what survives a crash, and ext4 writes dirty pages back at every punched
// hole and truncation, which costs each crash state milliseconds.
std::string SweepParent() {
  return access("/dev/shm", W_OK) == 0 ? "/dev/shm"
                                        : std::filesystem::temp_directory_path().string();
}

// SweepParent() when it takes O_DIRECT (tmpfs does since Linux 6.6), else the usual one.
std::string DirectIoParent() {
  TempDir probe(SweepParent());
  int fd = open(probe.File("probe").c_str(), O_CREAT | O_RDWR | O_DIRECT | O_CLOEXEC, 0644);
  if (fd < 0) return std::filesystem::temp_directory_path().string();
  close(fd);
  return SweepParent();
}

class CrashSweepTest : public ::testing::Test {
 protected:
  // Imports the setup in dir_ into env_, as durable: where the sweeps start.
  CrashPoint Import() {
    EXPECT_TRUE(env_.Import(dir_.path()).ok());
    return env_.Point();
  }
  Expect Fresh(const std::string& top) {
    return Expect{top, PossibleContents(Content(top)), {}, {}, {}};
  }

  TempDir dir_{SweepParent()};
  CrashEnv env_;
};

// (a) Writes, zeroes, trims and flushes: multi-block journal appends, a full journal, its
// checkpoint, appends from the start again.
TEST_F(CrashSweepTest, WritesAndFlushes) {
  const std::string top = MakeDisk(dir_.path());
  const CrashPoint setup = Import();
  Family family("(a) writes, zeroes, trims, flushes, checkpoints");
  family.Sweep(&env_, setup, {Fresh(top)}, [&](CrashEnv* env, Disks* disks) {
    auto chain = Chain::Open(top, {.env = env});
    if (!Done(env, chain.status(), "open")) return;
    Workload(env, chain->get(), &disks->front(), 6);
    if (env->power_cut()) return;
    // Else the sweep never saw a checkpoint (it moves the journal's start).
    auto header = ReadLayerHeader(env, top);
    ASSERT_TRUE(header.ok()) << header.status();
    EXPECT_GT(header->journal_start_seq, 1u) << "the workload never filled the journal";
  });
}

// (b) Crash, reopen, write and flush again, crash again: every crash state of the first run
// that passes its checks starts a second run, swept in turn. A flush of 200 clusters torn so
// that journal block 1 persisted and block 0 did not must not let block 1's records count once
// a later flush rewrites block 0: cluster 150, rewritten by the second run, then reads its new
// bytes, and cluster 199 its own.
TEST_F(CrashSweepTest, MultiRun) {
  const std::string top = MakeDisk(dir_.path());
  const CrashPoint setup = Import();
  Family family("(b) multi-run: crash, reopen, write + flush, crash");
  const Budget second_budget{SweepBudget().exhaustive, 1};
  family.Sweep(
      &env_, setup, {Fresh(top)},
      [&](CrashEnv* env, Disks* disks) {
        auto chain = Chain::Open(top, {.env = env});
        if (Done(env, chain.status(), "open")) Workload(env, chain->get(), &disks->front(), 1);
      },
      [&](CrashEnv* env, const std::string& read, const std::string& where) {
        // The second run: one cluster rewritten and flushed, nothing else (its close then
        // writes no journal block of its own).
        family.Stops(
            env, env->Point(), {Expect{top, PossibleContents(read), {}, {}, {}}},
            [&](CrashEnv* env, Disks* disks) {
              auto chain = Chain::Open(top, {.env = env});
              if (Done(env, chain.status(), "reopen")) {
                WriteClusters(env, chain->get(), &disks->front(), 150, 151, 777);
              }
            },
            nullptr, second_budget, absl::StrCat(where, ", then the second run "));
      });
}

// (c) An offline snapshot, then a live-style one with writes before and after its switch.
TEST_F(CrashSweepTest, Snapshots) {
  const std::string top = MakeDisk(dir_.path());
  {
    auto chain = Chain::Open(top);
    ASSERT_TRUE(chain.ok()) << chain.status();
    ASSERT_TRUE((*chain)->Write(0, PatternBytes(10 * kCluster, 5)).ok());
  }
  const CrashPoint setup = Import();
  Family family("(c) snapshots, offline and live");
  family.Sweep(&env_, setup, {Fresh(top)}, [&](CrashEnv* env, Disks* disks) {
    Expect* e = &disks->front();
    auto opened = Chain::Open(top, {.env = env});
    if (!Done(env, opened.status(), "open")) return;
    Chain* chain = opened->get();
    if (!Write(env, chain, e, 20 * kCluster, PatternBytes(3 * kCluster, 6))) return;
    e->maybe_snapshots["s1"] = e->disk.now();
    if (!Done(env, chain->Snapshot("s1").status(), "snapshot s1")) return;
    e->snapshots["s1"] = e->disk.now();
    e->disk.Flushed();
    if (!Write(env, chain, e, 21 * kCluster + 512, PatternBytes(5000, 7))) return;
    if (!Flush(env, chain, e)) return;
    // Live: prepared while writes go on, switched, completed with writes above it.
    if (!Done(env, chain->PrepareSnapshot("s2"), "prepare s2")) return;
    if (!Write(env, chain, e, 30 * kCluster, PatternBytes(kCluster, 8))) return;
    if (!Done(env, chain->SwitchSnapshot("s2").status(), "switch s2")) return;
    const std::string s2 = e->disk.now();
    const size_t switched = e->disk.mark();
    e->maybe_snapshots["s2"] = s2;
    if (!Write(env, chain, e, 0, PatternBytes(kCluster + 100, 9))) return;
    if (!Done(env, chain->CompleteSnapshot(), "complete s2")) return;
    e->snapshots["s2"] = s2;
    e->disk.FlushedUpTo(switched);
    if (!Write(env, chain, e, 40 * kCluster, PatternBytes(kCluster, 10))) return;
    Flush(env, chain, e);
  });
}

// A chain in `dir`: base, snapshots s1 and s2, and the active disk, every layer with data.
std::string MakeChain(const std::string& dir) {
  const std::string top = MakeDisk(dir);
  auto chain = Chain::Open(top);
  EXPECT_TRUE(chain.ok()) << chain.status();
  if (!chain.ok()) return top;
  EXPECT_TRUE((*chain)->Write(0, PatternBytes(40 * kCluster, 11)).ok());
  EXPECT_TRUE((*chain)->Snapshot("s1").ok());
  EXPECT_TRUE((*chain)->Write(20 * kCluster + 512, PatternBytes(40 * kCluster, 12)).ok());
  EXPECT_TRUE((*chain)->Snapshot("s2").ok());
  EXPECT_TRUE((*chain)->Write(40 * kCluster, PatternBytes(40 * kCluster, 13)).ok());
  EXPECT_TRUE((*chain)->WriteZeroes(5 * kCluster, 3 * kCluster).ok());
  return top;
}

// What MakeChain's disk must read as whatever a commit or revert does: content and snapshots.
Expect ChainExpect(const std::string& top) {
  Expect e{top, PossibleContents(Content(top)), {}, {}, {}};
  for (const char* name : {"s1", "s2"}) e.snapshots[name] = Content(SnapshotPath(top, name));
  return e;
}

// Sets the working directory for a scope.
class WorkingDir {
 public:
  explicit WorkingDir(const std::string& dir) : old_(std::filesystem::current_path()) {
    std::filesystem::current_path(dir);
  }
  ~WorkingDir() { std::filesystem::current_path(old_); }

 private:
  std::filesystem::path old_;
};

// (d) Deleting a snapshot (a commit of the layer above it) and committing the active layer.
TEST_F(CrashSweepTest, CommitAndDeleteSnapshot) {
  const std::string top = MakeChain(dir_.path());
  const CrashPoint setup = Import();
  Expect delete_s1 = ChainExpect(top), commit_top = delete_s1;
  delete_s1.maybe_snapshots["s1"] = delete_s1.snapshots["s1"];  // gone once merged
  delete_s1.snapshots.erase("s1");
  commit_top.maybe_snapshots["s2"] = commit_top.snapshots["s2"];
  commit_top.snapshots.erase("s2");
  Family deleting("(d) delete-snapshot s1");
  deleting.Sweep(&env_, setup, {delete_s1}, [&](CrashEnv* env, Disks*) {
    Done(env, DeleteSnapshot(env, top, "s1").status(), "delete-snapshot");
  });
  Family committing("(d) commit of the active layer");
  committing.Sweep(&env_, setup, {commit_top}, [&](CrashEnv* env, Disks*) {
    Done(env, CommitLayer(env, top).status(), "commit");
  });
}

// (d) Committing into the raw base (issue 12): the lowest snapshot s1 of MakeChain's disk (s2
// then stands on the base), and the active layer of a disk straight on its base, with data and
// zeroed ranges (an empty layer is left at its path). Every crash state reads as before, s2
// included, once the next writable open finished the commit.
TEST_F(CrashSweepTest, CommitIntoBase) {
  const std::string chain_dir = dir_.File("chain"), disk_dir = dir_.File("disk");
  std::filesystem::create_directory(chain_dir);
  std::filesystem::create_directory(disk_dir);
  const std::string top = MakeChain(chain_dir), disk = MakeDisk(disk_dir);
  {
    auto chain = Chain::Open(disk);
    ASSERT_TRUE(chain.ok()) << chain.status();
    ASSERT_TRUE((*chain)->Write(3 * kCluster + 700, PatternBytes(20 * kCluster, 21)).ok());
    ASSERT_TRUE((*chain)->WriteZeroes(8 * kCluster, 4 * kCluster, /*may_trim=*/true).ok());
    ASSERT_TRUE((*chain)->WriteZeroes(30 * kCluster + kSubBlock, kSubBlock, false).ok());
  }
  const CrashPoint setup = Import();
  Expect frozen = ChainExpect(top);
  frozen.maybe_snapshots["s1"] = frozen.snapshots["s1"];  // gone once committed
  frozen.snapshots.erase("s1");
  Family snapshot("(d) commit --into-base of snapshot s1");
  snapshot.Sweep(&env_, setup, {frozen}, [&](CrashEnv* env, Disks*) {
    Done(env, CommitIntoBase(env, SnapshotPath(top, "s1"), {.batch_bytes = 8 * kCluster}).status(),
         "commit --into-base");
  });
  Family active("(d) commit --into-base of the active layer");
  active.Sweep(&env_, setup, {Fresh(disk)}, [&](CrashEnv* env, Disks*) {
    Done(env, CommitIntoBase(env, disk, {.batch_bytes = 8 * kCluster}).status(),
         "commit --into-base");
  });
}

// (i) Deleting a snapshot online (stream.h): s2 streamed into the active layer, s1 into the
// frozen s2, a write going on beside the copy. Every crash state reads as the disk and the
// other snapshot did, whether the next open finishes the deletion offline or a server resumes
// it online; the deleted snapshot is there until the commit point and gone after.
TEST_F(CrashSweepTest, OnlineSnapshotDeletion) {
  const std::string top = MakeChain(dir_.path());
  const CrashPoint setup = Import();
  const Expect before = ChainExpect(top);  // each sweep leaves the files in its last state
  for (bool online : {false, true}) {
    for (const std::string name : {"s2", "s1"}) {
      Expect e = before;
      e.maybe_snapshots[name] = e.snapshots[name];
      e.snapshots.erase(name);
      e.resume_streams_online = online;
      Family family(absl::StrCat("(i) online deletion of ", name, ", resumed ",
                                 online ? "online" : "offline"));
      family.Sweep(&env_, setup, {e}, [&](CrashEnv* env, Disks* disks) {
        auto chain = Chain::Open(top, {.env = env, .serve_streams = true});
        if (!Done(env, chain.status(), "open")) return;
        auto plan = PlanStream(env, **chain, name, 0);
        if (!Done(env, plan.status(), "plan")) return;
        if (!Done(env, BeginStream(env, *plan), "begin")) return;
        if (!Write(env, chain->get(), &disks->front(), 3 * kCluster + 100,
                   PatternBytes(5000, 21))) {
          return;
        }
        StreamOptions options;
        options.batch_bytes = 8 * kCluster;  // several flushes of a frozen child per stream
        options.flush_interval = std::chrono::hours(1);
        Done(env, RunStream(env, chain->get(), StreamJournalPath(plan->layer_path), options)
                      .status(),
             "stream");
      });
    }
  }
}

// Leaves snapshot `name` of `top` interrupted: crashes (nothing pending kept) at its sync
// points in turn until `reached` holds afterwards.
void InterruptSnapshot(CrashEnv* env, const std::string& top, const std::string& name,
                       const std::function<bool()>& reached) {
  const CrashPoint before = env->Point();
  for (int stop = 0;; ++stop) {
    ASSERT_LT(stop, 50) << "snapshot " << name << " never got there";
    ASSERT_TRUE(env->Crash(before, CrashChoice::Nothing()).ok());
    env->CutPowerAtSync(stop);
    {
      auto chain = Chain::Open(top, {.env = env});
      if (chain.ok()) (void)(*chain)->Snapshot(name);
    }
    ASSERT_TRUE(env->power_cut()) << "snapshot " << name << " completed";
    ASSERT_TRUE(env->Crash(CrashChoice::Nothing()).ok());
    if (reached()) return;
  }
}

// (d) A snapshot s3 interrupted before its commit point (linked, not frozen: it rolls back)
// and after it (frozen, its new layer not renamed yet: it must be finished), then a snapshot
// deleted below it, or the top committed: the leftover must be dealt with first.
TEST_F(CrashSweepTest, MergesOverAnInterruptedSnapshot) {
  const std::string top = MakeChain(dir_.path());
  const CrashPoint setup = Import();
  const Expect chain = ChainExpect(top);
  auto frozen = [&] {
    auto h = ReadLayerHeader(&env_, top);
    return h.ok() && h->state == LayerState::kFrozen;
  };
  for (bool committed : {false, true}) {
    ASSERT_TRUE(env_.Crash(setup, CrashChoice::Nothing()).ok());
    InterruptSnapshot(&env_, top, "s3", [&] {
      return env_.Exists(PendingLayerPath(top)) && env_.Exists(SnapshotPath(top, "s3")) &&
             frozen() == committed;
    });
    if (HasFatalFailure()) return;
    const CrashPoint interrupted = env_.Point();
    const std::string when = committed ? "after its commit point" : "before its commit point";
    Expect deleting = chain, committing = chain;
    deleting.maybe_snapshots["s1"] = chain.snapshots.at("s1");  // gone once merged
    deleting.snapshots.erase("s1");
    (committed ? deleting.snapshots : deleting.maybe_snapshots)["s3"] = chain.disk.now();
    // Committing the top merges it into s3 once s3 is finished, else into s2.
    committing.maybe_snapshots["s3"] = chain.disk.now();
    if (!committed) {
      committing.maybe_snapshots["s2"] = chain.snapshots.at("s2");
      committing.snapshots.erase("s2");
    }
    Family delete_family(absl::StrCat("(d) delete-snapshot s1 over snapshot s3 interrupted ", when));
    delete_family.Sweep(&env_, interrupted, {deleting}, [&](CrashEnv* env, Disks*) {
      Done(env, DeleteSnapshot(env, top, "s1").status(), "delete-snapshot");
    });
    Family commit_family(absl::StrCat("(d) commit of the top over snapshot s3 interrupted ", when));
    commit_family.Sweep(&env_, interrupted, {committing}, [&](CrashEnv* env, Disks*) {
      Done(env, CommitLayer(env, top).status(), "commit");
    });
  }
}

// (d) Two disks in sibling directories vm1/ and vm2/; merges named by relative paths from the
// other disk's directory and from their own: the other disk must not change.
TEST_F(CrashSweepTest, CommitWithRelativePathsFromAnotherDirectory) {
  const std::string vm1 = dir_.File("vm1"), vm2 = dir_.File("vm2");
  std::filesystem::create_directory(vm1);
  std::filesystem::create_directory(vm2);
  const std::string top1 = MakeChain(vm1), top2 = MakeChain(vm2);
  const CrashPoint setup = Import();
  Expect disk1 = ChainExpect(top1), disk2 = ChainExpect(top2), commit1 = disk1;
  disk1.maybe_snapshots["s1"] = disk1.snapshots["s1"];
  disk1.snapshots.erase("s1");
  commit1.maybe_snapshots["s2"] = commit1.snapshots["s2"];
  commit1.snapshots.erase("s2");
  Family other_dir("(d) delete-snapshot ../vm1/disk.strata s1 from vm2/");
  other_dir.Sweep(&env_, setup, {disk1, disk2}, [&](CrashEnv* env, Disks*) {
    WorkingDir cwd(vm2);
    Done(env, DeleteSnapshot(env, "../vm1/disk.strata", "s1").status(), "delete-snapshot");
  });
  Family own_dir("(d) commit disk.strata from vm1/");
  own_dir.Sweep(&env_, setup, {commit1, disk2}, [&](CrashEnv* env, Disks*) {
    WorkingDir cwd(vm1);
    Done(env, CommitLayer(env, "disk.strata").status(), "commit");
  });
}

// (e) Revert to the parent and to a snapshot further down: all or nothing.
TEST_F(CrashSweepTest, Revert) {
  const std::string top = MakeChain(dir_.path());
  const CrashPoint setup = Import();
  const Expect before = ChainExpect(top);
  for (const std::string& to : {std::string(""), std::string("s1")}) {
    Expect e = before;
    e.disk_one_of = {e.disk.now(), e.snapshots[to.empty() ? "s2" : to]};
    Family family(absl::StrCat("(e) revert", to.empty() ? "" : " to ", to));
    family.Sweep(&env_, setup, {e}, [&](CrashEnv* env, Disks*) {
      Done(env, Revert(env, top, to), "revert");
    });
  }
}

// (f) check --repair of leaked space (slots freed by a durable journal record whose punch did
// not persist) and of a damaged header copy.
TEST_F(CrashSweepTest, CheckRepair) {
  const std::string top = MakeChain(dir_.path());
  Import();
  {
    // Trimmed clusters free their slots; the flush makes that durable and punches them, and
    // the power goes before the punch is.
    auto chain = Chain::Open(top, {.env = &env_});
    ASSERT_TRUE(chain.ok()) << chain.status();
    ASSERT_TRUE((*chain)->Trim(40 * kCluster, 10 * kCluster).ok());
    env_.CutPowerAtSync(2);
    ASSERT_TRUE((*chain)->Flush().ok());
  }
  ASSERT_TRUE(env_.Crash(CrashChoice::Nothing()).ok());
  {
    // A flipped byte in s1's second header copy, durable.
    auto s1 = env_.Open(SnapshotPath(top, "s1"), {.writable = true});
    ASSERT_TRUE(s1.ok()) << s1.status();
    char c;
    ASSERT_TRUE((*s1)->Read(kHeaderCopyOffset[1] + 100, 1, &c).ok());
    c ^= 0x40;
    ASSERT_TRUE((*s1)->Write(kHeaderCopyOffset[1] + 100, absl::string_view(&c, 1)).ok());
    ASSERT_TRUE((*s1)->Sync().ok());
  }
  Expect e = ChainExpect(top);
  auto before = CheckChain(&env_, top, false);
  ASSERT_TRUE(before.ok()) << before.status();
  ASSERT_TRUE(before->problems.empty()) << before->problems[0];
  ASSERT_EQ(before->repairable.size(), 2u) << "the setup made no leak or no damaged copy: "
                                           << ::testing::PrintToString(before->repairable);
  Family family("(f) check --repair");
  family.Sweep(&env_, env_.Point(), {e}, [&](CrashEnv* env, Disks*) {
    auto report = CheckChain(env, top, /*repair=*/true);
    if (Done(env, report.status(), "check --repair") && !env->power_cut()) {
      EXPECT_TRUE(report->problems.empty()) << report->problems[0];
    }
  });
}

// An aligned buffer for O_DIRECT descriptors.
struct Aligned {
  explicit Aligned(const std::string& data) : size(data.size()) {
    EXPECT_EQ(posix_memalign(&buf, 4096, data.size()), 0);
    memcpy(buf, data.data(), data.size());
  }
  ~Aligned() { free(buf); }
  absl::string_view view() const { return {static_cast<const char*>(buf), size}; }
  void* buf = nullptr;
  size_t size;
};

// What `segments` hold, read through the env's files (aligned, for O_DIRECT descriptors).
std::string ReadSegments(CrashEnv* env, const std::vector<Segment>& segments) {
  std::string out;
  for (const Segment& seg : segments) {
    if (seg.kind == Segment::Kind::kZero) {
      out.append(seg.length, '\0');
      continue;
    }
    File* file = env->FileForFd(seg.fd);
    if (file == nullptr) {
      ADD_FAILURE() << "segment fd " << seg.fd << " is no file of the env";
      return out;
    }
    Aligned buf(std::string(seg.length, '\0'));
    absl::Status s = file->Read(seg.file_offset, seg.length, static_cast<char*>(buf.buf));
    EXPECT_TRUE(s.ok()) << s;
    out.append(buf.view().data(), buf.view().size());
  }
  return out;
}

// (g) The chain driven as the server drives it: PrepareWrite, the data written at the
// segments' file offsets through the File owning each descriptor (the server's io_uring
// writes Segment::fd), FinishWrite; Zero and Trim; Flush; on O_DIRECT descriptors.
TEST_F(CrashSweepTest, ServerStyle) {
  TempDir dir(DirectIoParent());
  const std::string top = MakeDisk(dir.path());
  ASSERT_TRUE(env_.Import(dir.path()).ok());
  const CrashPoint setup = env_.Point();
  Family family("(g) server-style PrepareWrite/FinishWrite/Zero/Trim/Flush, O_DIRECT");
  family.Sweep(&env_, setup, {Fresh(top)}, [&](CrashEnv* env, Disks* disks) {
    Expect* e = &disks->front();
    auto opened = Chain::Open(top, {.direct_io = true, .env = env});
    if (!Done(env, opened.status(), "open")) return;
    Chain* chain = opened->get();
    auto write = [&](uint64_t offset, const std::string& data) {
      e->disk.Write(offset, data);
      auto plan = chain->PrepareWrite(offset, data.size());
      if (!Done(env, plan.status(), "prepare write")) return false;
      EXPECT_FALSE(plan->widened());
      Aligned buf(data);
      absl::Status s;
      uint64_t done = 0;
      for (const Segment& t : plan->targets) {
        File* file = env->FileForFd(t.fd);
        if (file == nullptr) {
          ADD_FAILURE() << "segment fd " << t.fd << " is no file of the env";
          break;
        }
        if (s = file->Write(t.file_offset, buf.view().substr(done, t.length)); !s.ok()) break;
        done += t.length;
      }
      chain->FinishWrite(*plan, s.ok() && done == data.size());
      return Done(env, s, "write");
    };
    for (int round = 0; round < 4; ++round) {
      for (uint64_t i = 0; i < 50; ++i) {
        uint64_t c = (i * 7 + round * 50) % 250;
        if (!write(c * kCluster + (round % 4) * kSubBlock, PatternBytes(kSubBlock, c + 100 * round))) {
          return;
        }
      }
      if (!write(round * 3 * kCluster, PatternBytes(3 * kCluster, 50 + round))) return;
      std::vector<std::pair<uint64_t, uint64_t>> edges;
      const uint64_t zero_at = (60 + round * 20) * kCluster + kSubBlock;
      e->disk.Write(zero_at, std::string(2 * kCluster, '\0'));
      if (!Done(env, chain->Zero(zero_at, 2 * kCluster, round % 2 == 0, &edges), "zero")) return;
      EXPECT_TRUE(edges.empty());
      // A read mapped before a trim whose pread runs only after the trim, a flush and a write
      // that wants a slot (the server's preads run after MapRead dropped the lock): it reads
      // the old bytes or zeros, never the later cluster's (FORMAT.md §2, rule 2).
      const uint64_t trim_at = (90 + round * 20) * kCluster;
      if (!write(trim_at, PatternBytes(kCluster, 900 + round))) return;
      std::vector<Segment> mapped;
      ReadPin pin;
      if (!Done(env, chain->MapRead(trim_at, kCluster, &mapped, &pin), "map read")) return;
      e->disk.Write(trim_at, std::string(kCluster, '\0'));
      if (!Done(env, chain->Trim(trim_at, kCluster), "trim")) return;
      if (!Flush(env, chain, e)) return;
      const std::string later = PatternBytes(kCluster, 950 + round);
      if (!write((250 + round) * kCluster, later)) return;
      const std::string got = ReadSegments(env, mapped);
      EXPECT_NE(got, later) << "a read mapped before a trim returned a later cluster's bytes";
      pin.Release();
    }
  });
}

// (r) Growing a disk (resize.h), then merging across the size boundary: the resize reads as
// the old disk or the grown one (its content, then zeros), never anything else; deleting the
// smaller snapshot below the grown top (the merge grows it) and committing the top keep the
// grown disk's content and the other snapshot.
TEST_F(CrashSweepTest, ResizeAndMergesAcrossTheSizeBoundary) {
  const std::string top = MakeChain(dir_.path());
  const CrashPoint setup = Import();
  Expect grow = ChainExpect(top);
  const std::string before = grow.disk.now();
  grow.disk_one_of = {before, before + std::string(kDisk / 2, '\0')};
  Family growing("(r) resize +1M");
  growing.Sweep(&env_, setup, {grow}, [&](CrashEnv* env, Disks*) {
    Done(env, ResizeDisk(env, top, {.bytes = kDisk / 2, .relative = true}).status(), "resize");
  });

  ASSERT_TRUE(env_.Crash(setup, CrashChoice::Nothing()).ok());
  ASSERT_TRUE(ResizeDisk(&env_, top, {.bytes = kDisk / 2, .relative = true}).ok());
  ASSERT_TRUE(env_.Crash(CrashChoice::Everything()).ok());
  const CrashPoint grown = env_.Point();
  Expect delete_s2 = ChainExpect(top), commit_top = delete_s2;
  ASSERT_EQ(delete_s2.disk.now(), grow.disk_one_of[1]);
  delete_s2.maybe_snapshots["s2"] = delete_s2.snapshots["s2"];
  delete_s2.snapshots.erase("s2");
  commit_top.maybe_snapshots["s2"] = commit_top.snapshots["s2"];
  commit_top.snapshots.erase("s2");
  Family deleting("(r) delete-snapshot s2 below the grown top");
  deleting.Sweep(&env_, grown, {delete_s2}, [&](CrashEnv* env, Disks*) {
    Done(env, DeleteSnapshot(env, top, "s2").status(), "delete-snapshot");
  });
  Family committing("(r) commit of the grown top into s2");
  committing.Sweep(&env_, grown, {commit_top}, [&](CrashEnv* env, Disks*) {
    Done(env, CommitLayer(env, top).status(), "commit");
  });
}

// (v) Opening on a full volume with a checkpoint owed (FORMAT.md, Durability 5): a server
// stopped on the volume it filled left journal records, so the writable open's new epoch needs
// a checkpoint table and finds no space. The open succeeds, the checkpoint stays owed (nothing
// is appended to the old epoch's journal: a zero write's flush fails with
// ENOSPC, without failing the disk), and once space returns the first flush makes it; the
// writes after it are acknowledged by their flushes.
TEST_F(CrashSweepTest, OpenOnAFullVolumeWithACheckpointOwed) {
  const std::string top = MakeDisk(dir_.path());
  Import();
  {
    // A server on a volume with no space from the start: zeroes (marks, no slot) flushed into
    // the journal, and no clean stop.
    env_.SetVolumeFull(true);
    auto chain = Chain::Open(top, {.env = &env_});
    ASSERT_TRUE(chain.ok()) << chain.status();
    ASSERT_TRUE((*chain)->WriteZeroes(0, 4 * kCluster, /*may_trim=*/true).ok());
    ASSERT_TRUE((*chain)->Flush().ok());
    EXPECT_TRUE(IsNoSpace((*chain)->Write(8 * kCluster, PatternBytes(kSubBlock, 8))));
    env_.SetVolumeFull(false);
  }
  ASSERT_TRUE(env_.Crash(CrashChoice::Everything()).ok());
  const CrashPoint setup = env_.Point();
  auto before = ReadLayerHeader(Env::Default(), top);
  ASSERT_TRUE(before.ok()) << before.status();

  Family family("(v) open on a full volume with a checkpoint owed, space returns");
  family.Sweep(&env_, setup, {Fresh(top)}, [&](CrashEnv* env, Disks* disks) {
    Expect* e = &disks->front();
    // A failure without a power cut is a test failure, except ENOSPC where `full` says so.
    auto no_space = [&](const absl::Status& s, absl::string_view what) {
      if (!s.ok() && !env->power_cut()) EXPECT_TRUE(IsNoSpace(s)) << what << ": " << s;
      if (s.ok()) ADD_FAILURE() << what << " found space on the full volume";
      return !env->power_cut();
    };
    env->SetVolumeFull(true);
    [&] {
      auto opened = Chain::Open(top, {.env = env});
      if (!Done(env, opened.status(), "open on the full volume")) return;
      Chain* chain = opened->get();
      e->disk.Write(kCluster, std::string(kCluster, '\0'));  // a zero mark needs no slot
      if (!Done(env, chain->WriteZeroes(kCluster, kCluster, true), "zero")) return;
      if (!no_space(chain->Flush(), "flush (the owed checkpoint)")) return;
      EXPECT_TRUE(chain->failure().ok()) << "ENOSPC failed the disk: " << chain->failure();
      // Refused before it writes anything: not a possible content.
      if (!no_space(chain->Write(250 * kCluster, PatternBytes(kSubBlock, 301)), "new cluster")) {
        return;
      }
      env->SetVolumeFull(false);  // space returns
      if (!Flush(env, chain, e)) return;
      if (!WriteClusters(env, chain, e, 240, 250, 400)) return;
      if (!Write(env, chain, e, 0, PatternBytes(kSubBlock, 500))) return;
      if (!Flush(env, chain, e)) return;
    }();
    env->SetVolumeFull(false);
    if (env->power_cut()) return;
    // Else the owed checkpoint was never made: the epoch did not move.
    auto header = ReadLayerHeader(env, top);
    ASSERT_TRUE(header.ok()) << header.status();
    EXPECT_GT(header->journal_start_seq, before->journal_start_seq)
        << "no new journal epoch after space returned";
  });
}

}  // namespace
}  // namespace strata
