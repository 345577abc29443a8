// live_merge: online snapshot deletion (`delete-snapshot` / `commit` through the control
// socket, a stream job on the server's "strata-merge" thread) checked from the outside, on the
// real binary, while libnbd clients keep writing and reading.
//
// The promises checked (README "Live snapshots", PROTOCOL.md "delete-snapshot"):
//   - deleting X copies into the layer above what X holds and it lacks, relinks that layer past
//     X and removes disk@X.strata: the disk's content never changes (every acknowledged write
//     reads back), every other snapshot's @NAME export reads the same before, during and after;
//   - a client connected to @X keeps reading X until it disconnects; a new connection to @X is
//     refused from the moment the deletion starts;
//   - one deletion at a time: a second, a commit, a revert are refused while one runs; cancel
//     gives it up (the snapshot and its export stay); a live snapshot during a deletion works;
//   - a deletion interrupted by a server restart resumes at the next start and completes.
//
// Contents: tests whose writes are synchronous from the test thread keep a byte model of the
// disk (base pattern + every write) and record each snapshot as the model at the instant it was
// taken (exact: every write was acknowledged before the snapshot request). The multi-connection
// test (LiveMergeWritersTest) has writers each owning a disjoint set of 4 KiB blocks and never
// having two writes to one block in flight, so the live disk's model is exact too (the last
// acknowledged write of each block) whenever the writers are stopped; its snapshots are read
// back once after they are taken, checked against live_snapshot_test's submit/ack rule, and
// that recorded content must then read the same through every deletion.
#include <gtest/gtest.h>
#include <libnbd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <ostream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "control_util.h"
#include "server_fixture.h"
#include "tagged_block.h"

namespace strata_test {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

constexpr uint64_t kBlock = 4096;
constexpr uint64_t kMagic = 0x5354524154414D47ull;  // "STRATAMG"

using strata::testing::NowNs;

void SleepMs(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

void FillTagged(uint8_t* buf, uint32_t conn, uint32_t seq, uint32_t block) {
  ::strata::testing::FillTaggedBlock(buf, kMagic, conn, seq, block);
}

// Reads the whole export of `h` into `out`.
::testing::AssertionResult ReadAll(nbd_handle* h, uint64_t size, std::vector<uint8_t>* out) {
  out->resize(size);
  constexpr uint64_t kChunk = kMiB;
  for (uint64_t off = 0; off < size; off += kChunk) {
    const uint64_t n = std::min(kChunk, size - off);
    if (nbd_pread(h, out->data() + off, n, off, 0) != 0) {
      return ::testing::AssertionFailure() << "pread @" << off << "+" << n << ": "
                                           << nbd_get_error();
    }
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult SameBytes(const std::vector<uint8_t>& got,
                                     const std::vector<uint8_t>& want, const std::string& what) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure() << what << ": " << got.size() << " bytes, want "
                                         << want.size();
  }
  const int64_t at = FirstMismatch(got.data(), want.data(), got.size());
  if (at < 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << what << ": first difference at byte " << at << " (block " << at / kBlock
         << "): read 0x" << std::hex << int{got[at]} << ", want 0x" << int{want[at]};
}

// ---------------------------------------------------------------------------------------------
// The fixture: control requests, exports, files.

class LiveMergeTest : public ServerTest {
 protected:
  LiveMergeTest()
      : ServerTest({.up_to = Stage::kNone}, "online snapshot deletion is strata's") {}

  std::string Ctl() const { return server_.dir() + "/disk.ctl"; }
  std::string SnapFile(const std::string& name) const {
    return server_.dir() + "/disk@" + name + ".strata";
  }
  std::string JournalFile(const std::string& name) const { return SnapFile(name) + ".stream"; }
  json Request(const json& request) { return Control(Ctl(), request); }

  // Polls {"request":"job"} until the job is no longer running (or `timeout_s` pass); the last
  // job seen.
  json WaitJobEnd(int timeout_s = 30) {
    const int64_t deadline = NowNs() + int64_t{timeout_s} * 1'000'000'000;
    json job;
    for (;;) {
      json r = Request({{"request", "job"}});
      job = r.value("job", json(nullptr));
      if (!job.is_object() || job.value("state", "") != "running") return job;
      if (NowNs() > deadline) return job;
      SleepMs(10);
    }
  }
  std::string JobState() {
    json job = Request({{"request", "job"}}).value("job", json(nullptr));
    return job.is_object() ? job.value("state", "") : "(no job)";
  }

  // A new connection to `export_name` is refused.
  ::testing::AssertionResult ConnectRefused(const std::string& export_name) {
    NbdHandle h(nbd_create());
    if (!h) return ::testing::AssertionFailure() << "nbd_create: " << nbd_get_error();
    nbd_set_export_name(h.get(), export_name.c_str());
    if (nbd_connect_unix(h.get(), server_.socket_path().c_str()) == -1) {
      return ::testing::AssertionSuccess() << nbd_get_error();
    }
    return ::testing::AssertionFailure() << "a new connection to \"" << export_name
                                         << "\" was accepted";
  }

  // A fresh connection to `export_name` ("" the disk, "@NAME" a snapshot) reads exactly `want`.
  ::testing::AssertionResult ExportReads(const std::string& export_name,
                                         const std::vector<uint8_t>& want) {
    NbdHandle h = server_.Connect({.meta_contexts = {}, .export_name = export_name});
    if (!h) return ::testing::AssertionFailure() << "cannot connect to \"" << export_name << "\"";
    if (!export_name.empty() && nbd_is_read_only(h.get()) != 1) {
      return ::testing::AssertionFailure() << export_name << " is not read-only";
    }
    std::vector<uint8_t> got;
    if (auto r = ReadAll(h.get(), want.size(), &got); !r) return r;
    return SameBytes(got, want, "export \"" + export_name + "\"");
  }

  // The snapshot names `list` shows, newest first (null for the active layer: "").
  std::vector<std::string> ListedSnapshots(json* list_reply = nullptr) {
    json r = Request({{"request", "list"}});
    if (list_reply != nullptr) *list_reply = r;
    std::vector<std::string> names;
    for (const json& l : r.value("layers", json::array())) {
      if (l.value("state", "") == "raw base") continue;
      names.push_back(l.contains("snapshot") && l["snapshot"].is_string()
                          ? l["snapshot"].get<std::string>()
                          : "");
    }
    return names;
  }

  // Deleted for good: not listed, not exported, file and journal gone, new connections refused.
  ::testing::AssertionResult Gone(const std::string& name) {
    json list;
    std::vector<std::string> names = ListedSnapshots(&list);
    if (std::find(names.begin(), names.end(), name) != names.end()) {
      return ::testing::AssertionFailure() << "list still shows " << name << ": " << list;
    }
    json info = Request({{"request", "info"}});
    for (const json& e : info.value("exports", json::array())) {
      if (e.value("name", "") == "@" + name) {
        return ::testing::AssertionFailure() << "info still exports @" << name << ": " << info;
      }
    }
    if (fs::exists(SnapFile(name))) {
      return ::testing::AssertionFailure() << SnapFile(name) << " still exists";
    }
    if (fs::exists(JournalFile(name))) {
      return ::testing::AssertionFailure() << JournalFile(name) << " still exists";
    }
    if (auto r = ConnectRefused("@" + name); !r) return r;
    return ::testing::AssertionSuccess();
  }

  // Still a snapshot: listed as frozen with its export, its file there, no journal.
  ::testing::AssertionResult Present(const std::string& name) {
    json r = Request({{"request", "list"}});
    bool found = false;
    for (const json& l : r.value("layers", json::array())) {
      if (l.contains("snapshot") && l["snapshot"] == name) {
        found = true;
        if (l.value("state", "") != "frozen" || l.value("export", "") != "@" + name) {
          return ::testing::AssertionFailure() << name << " is listed as " << l;
        }
      }
    }
    if (!found) return ::testing::AssertionFailure() << "list does not show " << name << ": " << r;
    if (!fs::exists(SnapFile(name))) {
      return ::testing::AssertionFailure() << SnapFile(name) << " is gone";
    }
    if (fs::exists(JournalFile(name))) {
      return ::testing::AssertionFailure() << JournalFile(name) << " is left";
    }
    return ::testing::AssertionSuccess();
  }

  // A live snapshot; `*send_ns` / `*reply_ns` (optional) bracket the request.
  ::testing::AssertionResult TakeSnapshot(const std::string& name, int64_t* send_ns = nullptr,
                                          int64_t* reply_ns = nullptr) {
    int fd = ControlConnect(Ctl());
    if (fd < 0) return ::testing::AssertionFailure() << "cannot connect to " << Ctl();
    const int64_t sent = NowNs();
    bool ok = ControlSend(fd, json{{"request", "snapshot"}, {"name", name}}.dump() + "\n");
    std::string line = ok ? ControlReadLine(fd) : "";
    const int64_t replied = NowNs();
    close(fd);
    json r = json::parse(line, nullptr, false);
    if (!r.is_object() || r.value("ok", false) != true) {
      return ::testing::AssertionFailure() << "snapshot " << name << ": \"" << line << "\"\n"
                                           << server_.ServerLog();
    }
    if (send_ns != nullptr) *send_ns = sent;
    if (reply_ns != nullptr) *reply_ns = replied;
    return ::testing::AssertionSuccess();
  }

  // Starts deleting `name` (optionally rate-limited); the job of the reply.
  ::testing::AssertionResult StartDelete(const std::string& name, uint64_t rate_limit,
                                         json* job = nullptr) {
    json request{{"request", "delete-snapshot"}, {"name", name}};
    if (rate_limit > 0) request["rate_limit"] = rate_limit;
    json r = Request(request);
    if (r.value("ok", false) != true || !r.contains("job") || !r["job"].is_object()) {
      return ::testing::AssertionFailure() << "delete-snapshot " << name << ": " << r << "\n"
                                           << server_.ServerLog();
    }
    if (r["job"].value("snapshot", "") != name) {
      return ::testing::AssertionFailure() << "delete-snapshot " << name << ": job " << r["job"];
    }
    const std::string state = r["job"].value("state", "");
    if (state != "running" && state != "done") {
      return ::testing::AssertionFailure() << "delete-snapshot " << name << ": job " << r["job"];
    }
    if (job != nullptr) *job = r["job"];
    return ::testing::AssertionSuccess();
  }

  // The job ended well: done, no error, every byte of X dealt with.
  ::testing::AssertionResult Done(const json& job, const std::string& name) {
    if (!job.is_object() || job.value("state", "") != "done" || job.value("snapshot", "") != name ||
        !job.contains("error") || !job["error"].is_null() || job.value("bytes_done", -1.0) != job.value("bytes_total", -2.0)) {
      return ::testing::AssertionFailure() << "deleting " << name << " ended as " << job << "\n"
                                           << server_.ServerLog();
    }
    return ::testing::AssertionSuccess();
  }

  // Offline `strata check` after stopping the server.
  void StopAndCheck() {
    EXPECT_TRUE(server_.Stop()) << server_.ServerLog();
    std::string out;
    EXPECT_TRUE(server_.Check(&out)) << out;
  }
};

// ---------------------------------------------------------------------------------------------
// Tests with synchronous writes from the test thread and an exact byte model of the disk.

// 8 MiB on a raw base holding the base pattern in its first 4 MiB: the oldest snapshot's
// deletion relinks its child onto the raw base.
constexpr ChainOptions kBasedDisk = {.disk_size = 8 * kMiB, .base_data = 4 * kMiB};

class LiveMergeModelTest : public LiveMergeTest {
 protected:
  bool Serve(const ServeOptions& serve = {}) {
    serve_ = serve;
    if (!SetUpServer({.chain = kBasedDisk, .serve = serve, .connect = {.meta_contexts = {}}})) {
      return false;
    }
    model_.assign(kBasedDisk.disk_size, 0);
    FillBase(model_.data(), 0, kBasedDisk.base_data);
    return true;
  }
  // A write through h_, applied to the model.
  bool Write(uint64_t off, size_t len, uint32_t seed) {
    if (!WritePattern(h_.get(), off, len, seed)) return false;
    FillPattern(model_.data() + off, off, len, seed);
    return true;
  }
  // `count` writes of `len` bytes, `stride` apart from `first` (wrapping within the disk), plus
  // a few sub-block writes at odd offsets among them: partial sub-blocks and partial clusters.
  bool WriteRun(uint64_t first, int count, uint64_t stride, size_t len, uint32_t seed) {
    const uint64_t size = model_.size();
    for (int i = 0; i < count; ++i) {
      const uint64_t off = (first + i * stride) % (size - len);
      if (!Write(off, len, seed + i)) return false;
      if (i % 4 == 0 && !Write((off + len + 512 * (i % 7) + 100) % (size - 3000), 2900,
                               seed + 1000 + i)) {
        return false;
      }
    }
    return true;
  }
  bool Snap(const std::string& name) {
    if (!TakeSnapshot(name)) {
      ADD_FAILURE() << "snapshot " << name << " failed\n" << server_.ServerLog();
      return false;
    }
    snaps_[name] = model_;
    return true;
  }
  // Every recorded snapshot still there reads its content, the disk reads the model.
  void ExpectContents(const std::string& when) {
    for (const auto& [name, content] : snaps_) {
      if (!fs::exists(SnapFile(name))) continue;
      EXPECT_TRUE(ExportReads("@" + name, content)) << when;
    }
    EXPECT_TRUE(ExportReads("", model_)) << when;
    if (h_) {
      std::vector<uint8_t> got;
      ASSERT_TRUE(ReadAll(h_.get(), model_.size(), &got));
      EXPECT_TRUE(SameBytes(got, model_, "the disk through the connected client")) << when;
    }
  }

  ServeOptions serve_;
  std::vector<uint8_t> model_;
  std::map<std::string, std::vector<uint8_t>> snaps_;
};

// Test 2: a client connected to @X keeps reading X's content while X is deleted (rate-limited,
// so the reads overlap the copy into the active layer under writes) and after; a new
// connection to @X is refused from the start of the deletion on, and after the reader left.
TEST_F(LiveMergeModelTest, ConnectedReaderKeepsReadingTheDeletedSnapshot) {
  ASSERT_TRUE(Serve());
  ASSERT_TRUE(WriteRun(0, 8, 1 * kMiB, 64 * kKiB, 10));
  ASSERT_TRUE(Snap("s0"));
  // s1 holds ~1.5 MiB; the active layer above it will hide part of it.
  ASSERT_TRUE(WriteRun(128 * kKiB, 20, 384 * kKiB, 64 * kKiB, 100));
  ASSERT_TRUE(Snap("s1"));
  ASSERT_TRUE(WriteRun(160 * kKiB, 6, 1 * kMiB, 20 * kKiB, 200));

  NbdHandle reader = server_.Connect({.meta_contexts = {}, .export_name = "@s1"});
  ASSERT_TRUE(reader);
  std::vector<uint8_t> got;
  ASSERT_TRUE(ReadAll(reader.get(), model_.size(), &got));
  ASSERT_TRUE(SameBytes(got, snaps_["s1"], "@s1 before the deletion"));

  ASSERT_TRUE(StartDelete("s1", 512 * kKiB));
  EXPECT_TRUE(ConnectRefused("@s1")) << "right after the deletion started";
  int reads_while_running = 0;
  uint32_t seed = 300;
  const int64_t deadline = NowNs() + 30'000'000'000;
  while (JobState() == "running" && NowNs() < deadline) {
    ASSERT_TRUE(ReadAll(reader.get(), model_.size(), &got));
    ASSERT_TRUE(SameBytes(got, snaps_["s1"], "@s1 (connected) while it is deleted"))
        << "after " << reads_while_running << " good reads";
    ++reads_while_running;
    // The guest writes on meanwhile, into clusters the copy may be working on.
    ASSERT_TRUE(Write((seed * 97 * kKiB + 1536) % (model_.size() - 70 * kKiB), 66 * kKiB, seed));
    ++seed;
  }
  json job = WaitJobEnd();
  ASSERT_TRUE(Done(job, "s1"));
  EXPECT_GE(reads_while_running, 2) << "the rate-limited deletion ended too soon to test "
                                       "reads during it: "
                                    << job;
  EXPECT_GT(job.value("bytes_copied", 0.0), 0) << job;
  EXPECT_LT(job.value("bytes_copied", 0.0), job.value("bytes_total", 0.0))
      << "the active layer hid part of s1: not all of it had to be copied";

  // The file is gone, but the connected reader still reads s1.
  EXPECT_FALSE(fs::exists(SnapFile("s1")));
  ASSERT_TRUE(ReadAll(reader.get(), model_.size(), &got));
  EXPECT_TRUE(SameBytes(got, snaps_["s1"], "@s1 (connected) after its deletion"));
  EXPECT_TRUE(ConnectRefused("@s1")) << "after the deletion, reader still connected";
  reader.reset();
  EXPECT_TRUE(Gone("s1"));
  EXPECT_TRUE(Present("s0"));
  ExpectContents("after deleting s1");
  std::printf("live_merge: %d full reads of @s1 during its deletion; job %s\n",
              reads_while_running, job.dump().c_str());
  h_.reset();
  StopAndCheck();
}

// Test 3: refusals while a (rate-limited) deletion runs, and cancel.
TEST_F(LiveMergeModelTest, RefusalsWhileADeletionRunsAndCancel) {
  ASSERT_TRUE(Serve());
  // Nothing runs yet: a snapshot that does not exist is a clear error, and starts no job.
  json r = Request({{"request", "delete-snapshot"}, {"name", "nope"}});
  EXPECT_EQ(r.value("ok", true), false) << r;
  EXPECT_NE(r.value("error", "").find("nope"), std::string::npos) << r;
  r = Request({{"request", "delete-snapshot"}});
  EXPECT_EQ(r.value("ok", true), false) << r;
  EXPECT_NE(r.value("error", "").find("name"), std::string::npos) << r;
  r = Request({{"request", "delete-snapshot"}, {"name", "x"}, {"rate_limit", "fast"}});
  EXPECT_EQ(r.value("ok", true), false) << r;
  r = Request({{"request", "job"}});
  EXPECT_EQ(r.value("ok", false), true) << r;
  EXPECT_TRUE(r.contains("job") && r["job"].is_null()) << r;
  r = Request({{"request", "cancel"}});
  EXPECT_EQ(r.value("ok", true), false) << "cancel with nothing running: " << r;

  ASSERT_TRUE(WriteRun(0, 32, 256 * kKiB, 64 * kKiB, 10));  // s1: ~2.2 MiB
  ASSERT_TRUE(Snap("s1"));
  ASSERT_TRUE(WriteRun(64 * kKiB, 8, 1 * kMiB, 32 * kKiB, 100));
  ASSERT_TRUE(Snap("s2"));
  ASSERT_TRUE(WriteRun(96 * kKiB, 4, 2 * kMiB, 8 * kKiB, 200));
  h_.reset();  // no client: a revert is refused for the deletion, not for a connection

  // s1's child is the frozen s2; at 256 KiB/s the copy takes several seconds.
  ASSERT_TRUE(StartDelete("s1", 256 * kKiB));
  EXPECT_TRUE(ConnectRefused("@s1"));
  auto expect_refused = [&](const json& request, const std::string& what) {
    json reply = Request(request);
    EXPECT_EQ(reply.value("ok", true), false) << what << " while s1 is deleted: " << reply;
    const std::string error = reply.value("error", "");
    EXPECT_NE(error.find("s1"), std::string::npos) << what << ": " << reply;
    EXPECT_NE(error.find("progress"), std::string::npos) << what << ": " << reply;
  };
  expect_refused({{"request", "delete-snapshot"}, {"name", "s2"}}, "a second deletion");
  expect_refused({{"request", "delete-snapshot"}, {"name", "s1"}}, "the same deletion again");
  expect_refused({{"request", "commit"}}, "a commit");
  expect_refused({{"request", "revert"}}, "a revert to the parent");
  expect_refused({{"request", "revert"}, {"name", "s1"}}, "a revert to s1");
  {
    // `strata check` of the served disk reads the deletion's journal as the server's work in
    // progress, not as something left for --repair.
    std::string out;
    server_.Check(&out);
    EXPECT_NE(out.find(".stream: the journal of a snapshot deletion"), std::string::npos) << out;
    EXPECT_NE(out.find("in the hands of the server"), std::string::npos) << out;
    std::istringstream lines(out);
    for (std::string line; std::getline(lines, line);) {
      if (line.find(".stream") != std::string::npos) {
        EXPECT_NE(line.rfind("repairable", 0), 0u) << out;
      }
    }
  }
  // The refusals changed nothing: the job still runs, s2 and the disk read as before.
  json job = Request({{"request", "job"}}).value("job", json(nullptr));
  ASSERT_TRUE(job.is_object() && job.value("state", "") == "running")
      << "the rate-limited deletion ended before the refusals were all tried: " << job;
  EXPECT_LE(job.value("bytes_done", 0.0), job.value("bytes_total", 0.0)) << job;
  EXPECT_TRUE(Present("s2"));
  EXPECT_TRUE(ExportReads("@s2", snaps_["s2"]));
  json list = Request({{"request", "list"}});
  EXPECT_TRUE(list.contains("merge") && list["merge"].is_object() &&
              list["merge"].value("snapshot", "") == "s1")
      << list;

  r = Request({{"request", "cancel"}});
  ASSERT_EQ(r.value("ok", false), true) << r;
  EXPECT_EQ(r["job"].value("state", ""), "cancelled") << r;
  EXPECT_EQ(JobState(), "cancelled");
  EXPECT_TRUE(Present("s1")) << server_.ServerLog();
  EXPECT_TRUE(Present("s2"));
  ExpectContents("after the cancel");
  r = Request({{"request", "cancel"}});
  EXPECT_EQ(r.value("ok", true), false) << "a second cancel: " << r;
  EXPECT_NE(r.value("error", "").find("no snapshot deletion"), std::string::npos) << r;
  {
    // The given-up deletion left a clean chain (its copies read as s1 did).
    ASSERT_TRUE(server_.Stop()) << server_.ServerLog();
    std::string out;
    EXPECT_TRUE(server_.Check(&out)) << "after a cancelled deletion:\n" << out;
    ASSERT_TRUE(server_.Start(serve_)) << server_.ServerLog();
    EXPECT_TRUE(Present("s1"));
  }

  // Given up, not stuck: the deletion runs to the end when asked again, and a revert works.
  ASSERT_TRUE(StartDelete("s1", 0));
  ASSERT_TRUE(Done(WaitJobEnd(), "s1"));
  EXPECT_TRUE(Gone("s1"));
  EXPECT_TRUE(Present("s2"));
  ExpectContents("after deleting s1");
  r = Request({{"request", "revert"}});
  ASSERT_EQ(r.value("ok", false), true) << "revert after the deletion ended: " << r;
  model_ = snaps_["s2"];
  ExpectContents("after the revert to s2");
  StopAndCheck();
}

// A deletion whose child is a frozen layer, cancelled (or stopped by a shutdown) before its
// commit point, leaves the child's file no longer than its data: no slot the copy
// preallocated or used unflushed is left past the end (`strata check` clean). It once left
// ~16 MiB there.
TEST_F(LiveMergeModelTest, CancelledDeletionIntoAFrozenLayerChecksClean) {
  ASSERT_TRUE(Serve());
  ASSERT_TRUE(WriteRun(0, 32, 256 * kKiB, 64 * kKiB, 10));
  ASSERT_TRUE(Snap("s1"));
  ASSERT_TRUE(WriteRun(64 * kKiB, 8, 1 * kMiB, 32 * kKiB, 100));
  ASSERT_TRUE(Snap("s2"));
  h_.reset();
  const uintmax_t before = fs::file_size(SnapFile("s2"));
  ASSERT_TRUE(StartDelete("s1", 256 * kKiB));
  SleepMs(200);
  json r = Request({{"request", "cancel"}});
  ASSERT_EQ(r.value("ok", false), true) << r;
  ASSERT_TRUE(server_.Stop()) << server_.ServerLog();
  const uintmax_t after = fs::file_size(SnapFile("s2"));
  std::string out;
  EXPECT_TRUE(server_.Check(&out)) << "disk@s2.strata: " << before << " bytes before the "
                                   << "deletion, " << after << " after it was cancelled\n"
                                   << out;
}

// Test 4: a live snapshot during a rate-limited deletion of the newest snapshot (whose copy
// goes into the active layer, which the snapshot freezes: the job goes on into it).
TEST_F(LiveMergeModelTest, LiveSnapshotDuringDeletionOfTheNewest) {
  ASSERT_TRUE(Serve());
  ASSERT_TRUE(WriteRun(0, 12, 640 * kKiB, 64 * kKiB, 10));
  ASSERT_TRUE(Snap("s1"));
  ASSERT_TRUE(WriteRun(192 * kKiB, 24, 320 * kKiB, 64 * kKiB, 100));  // s2: ~1.7 MiB
  ASSERT_TRUE(Snap("s2"));
  ASSERT_TRUE(WriteRun(224 * kKiB, 4, 1 * kMiB, 16 * kKiB, 200));

  ASSERT_TRUE(StartDelete("s2", 512 * kKiB));
  SleepMs(300);
  ASSERT_EQ(JobState(), "running");
  // Writes into clusters s2 holds (some copied already, some not), then the snapshot.
  ASSERT_TRUE(WriteRun(200 * kKiB, 10, 640 * kKiB, 12 * kKiB, 300));
  ASSERT_TRUE(Snap("s3"));
  json job = Request({{"request", "job"}}).value("job", json(nullptr));
  EXPECT_TRUE(job.is_object() && job.value("state", "") == "running")
      << "the deletion ended before the live snapshot: nothing overlapped" << job;
  EXPECT_TRUE(ExportReads("@s3", snaps_["s3"])) << "@s3 during the deletion";
  EXPECT_TRUE(ExportReads("@s1", snaps_["s1"])) << "@s1 during the deletion";
  ASSERT_TRUE(WriteRun(232 * kKiB, 10, 576 * kKiB, 24 * kKiB, 400));

  job = WaitJobEnd();
  ASSERT_TRUE(Done(job, "s2"));
  EXPECT_TRUE(Gone("s2"));
  EXPECT_TRUE(Present("s1"));
  EXPECT_TRUE(Present("s3"));
  EXPECT_EQ(ListedSnapshots(), (std::vector<std::string>{"", "s3", "s1"}));
  ExpectContents("after deleting s2 across the snapshot s3");
  // And the layers keep working: another snapshot and deletion of s3 (now the newest).
  ASSERT_TRUE(Snap("s4"));
  ASSERT_TRUE(StartDelete("s3", 0));
  ASSERT_TRUE(Done(WaitJobEnd(), "s3"));
  EXPECT_TRUE(Gone("s3"));
  ExpectContents("after deleting s3");
  h_.reset();
  StopAndCheck();
}

// Test 5: a deletion interrupted by a restart (clean stop: the job is "stopped", its journal
// kept) resumes at the next start and completes. `middle`: X's child is a frozen snapshot;
// otherwise X is the newest and its child the active layer.
class LiveMergeRestartTest : public LiveMergeModelTest,
                             public ::testing::WithParamInterface<bool> {};

TEST_P(LiveMergeRestartTest, DeletionResumesAfterARestart) {
  const bool middle = GetParam();
  ASSERT_TRUE(Serve());
  ASSERT_TRUE(WriteRun(0, 8, 1 * kMiB, 64 * kKiB, 10));
  ASSERT_TRUE(Snap("s1"));
  ASSERT_TRUE(WriteRun(128 * kKiB, 32, 256 * kKiB, 64 * kKiB, 100));  // s2: ~2.2 MiB
  ASSERT_TRUE(Snap("s2"));
  ASSERT_TRUE(WriteRun(160 * kKiB, 4, 2 * kMiB, 16 * kKiB, 200));
  if (middle) {
    ASSERT_TRUE(Snap("s3"));
    ASSERT_TRUE(WriteRun(176 * kKiB, 4, 2 * kMiB, 16 * kKiB, 300));
  }

  ASSERT_TRUE(StartDelete("s2", 768 * kKiB));
  SleepMs(500);
  json before = Request({{"request", "job"}}).value("job", json(nullptr));
  ASSERT_TRUE(before.is_object() && before.value("state", "") == "running") << before;
  EXPECT_GT(before.value("bytes_done", 0.0), 0) << before;
  EXPECT_LT(before.value("bytes_done", 0.0), before.value("bytes_total", 0.0)) << before;

  h_.reset();
  ASSERT_TRUE(server_.Stop()) << "the server did not stop cleanly during a deletion\n"
                              << server_.ServerLog();
  EXPECT_TRUE(fs::exists(JournalFile("s2"))) << "the stopped deletion's journal is gone";
  EXPECT_TRUE(fs::exists(SnapFile("s2")));
  {
    // Offline, the unfinished deletion leaves a chain with no problem, its journal pending
    // (`check` calls that repairable, so its exit status is not 0).
    std::string out;
    server_.Check(&out);
    EXPECT_NE(out.find(" 0 problems"), std::string::npos) << out;
    EXPECT_NE(out.find("disk@s2.strata.stream"), std::string::npos) << out;
  }

  ASSERT_TRUE(server_.Start(serve_)) << server_.ServerLog();
  json after = Request({{"request", "job"}}).value("job", json(nullptr));
  ASSERT_TRUE(after.is_object()) << "no job after the restart\n" << server_.ServerLog();
  EXPECT_EQ(after.value("snapshot", ""), "s2") << after;
  const std::string state = after.value("state", "");
  EXPECT_TRUE(state == "running" || state == "done") << after;
  EXPECT_TRUE(ConnectRefused("@s2")) << "a new connection to @s2 after the restart (job "
                                     << after << ")";
  // Readers of the other snapshots and of the disk during the resumed job.
  EXPECT_TRUE(ExportReads("@s1", snaps_["s1"]));
  EXPECT_TRUE(ExportReads("", model_));
  json job = WaitJobEnd();
  ASSERT_TRUE(Done(job, "s2"));
  EXPECT_TRUE(Gone("s2"));
  EXPECT_TRUE(Present("s1"));
  if (middle) {
    EXPECT_TRUE(Present("s3"));
  }
  EXPECT_EQ(ListedSnapshots(), middle ? (std::vector<std::string>{"", "s3", "s1"})
                                      : (std::vector<std::string>{"", "s1"}));
  h_ = server_.Connect({.meta_contexts = {}});
  ASSERT_TRUE(h_);
  ExpectContents("after the resumed deletion");
  std::printf("live_merge: before the restart %s; after %s; at the end %s\n",
              before.dump().c_str(), after.dump().c_str(), job.dump().c_str());
  h_.reset();
  StopAndCheck();
}

INSTANTIATE_TEST_SUITE_P(Child, LiveMergeRestartTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? std::string("Frozen") : std::string("Active");
                         });

// `commit` deletes a layer's parent: LAYER's ({"layer": PATH}) or the active layer's.
TEST_F(LiveMergeModelTest, CommitDeletesTheParentOfALayer) {
  ASSERT_TRUE(Serve());
  ASSERT_TRUE(WriteRun(0, 8, 1 * kMiB, 64 * kKiB, 10));
  ASSERT_TRUE(Snap("s1"));
  ASSERT_TRUE(WriteRun(64 * kKiB, 8, 1 * kMiB, 64 * kKiB, 100));
  ASSERT_TRUE(Snap("s2"));
  ASSERT_TRUE(WriteRun(96 * kKiB, 8, 1 * kMiB, 64 * kKiB, 200));
  ASSERT_TRUE(Snap("s3"));
  ASSERT_TRUE(WriteRun(112 * kKiB, 4, 2 * kMiB, 16 * kKiB, 300));

  json r = Request({{"request", "commit"}, {"layer", SnapFile("s3")}});
  ASSERT_EQ(r.value("ok", false), true) << r;
  EXPECT_EQ(r["job"].value("snapshot", ""), "s2") << r;
  ASSERT_TRUE(Done(WaitJobEnd(), "s2"));
  EXPECT_TRUE(Gone("s2"));
  EXPECT_EQ(ListedSnapshots(), (std::vector<std::string>{"", "s3", "s1"}));
  ExpectContents("after commit of s3");

  r = Request({{"request", "commit"}});
  ASSERT_EQ(r.value("ok", false), true) << r;
  EXPECT_EQ(r["job"].value("snapshot", ""), "s3") << r;
  ASSERT_TRUE(Done(WaitJobEnd(), "s3"));
  EXPECT_TRUE(Gone("s3"));
  EXPECT_EQ(ListedSnapshots(), (std::vector<std::string>{"", "s1"}));
  ExpectContents("after commit of the active layer");

  // The bottom snapshot stands on the raw base: nothing below it to delete.
  r = Request({{"request", "commit"}, {"layer", SnapFile("s1")}});
  EXPECT_EQ(r.value("ok", true), false) << r;
  EXPECT_TRUE(Present("s1"));
  h_.reset();
  StopAndCheck();
}

// ---------------------------------------------------------------------------------------------
// Test 1: deletions under multi-connection writers.

struct WriteRec {
  uint32_t seq = 0;
  int64_t submit_ns = 0;
  int64_t ack_ns = 0;  // 0: not acknowledged
  int error = 0;
};

// One connection's writer: up to `depth` writes in flight to the blocks it owns (block % n ==
// conn - 1), never two to one block at once, so each block's writes are totally ordered and
// the last acknowledged one is what the block holds once the writer stopped. Run() can be
// called again after it returned (writes continue where they were).
class Writer {
 public:
  Writer(nbd_handle* h, uint32_t conn, uint32_t connections, uint64_t blocks, int depth)
      : h_(h),
        conn_(conn),
        connections_(connections),
        history_(blocks),
        busy_(blocks, false),
        slots_(depth),
        rng_(conn * 7919 + 17) {
    for (uint64_t b = conn - 1; b < blocks; b += connections) all_owned_.push_back(b);
    owned_ = all_owned_;
    for (auto& s : slots_) {
      s.owner = this;
      s.buf.resize(kBlock);
    }
  }

  void Run(const std::atomic<bool>& stop) {
    while (!stop.load() && !failed_) {
      for (auto& s : slots_) {
        if (!s.busy) Submit(&s);
      }
      if (nbd_poll(h_, 100) < 0) {
        ADD_FAILURE() << "conn " << conn_ << ": nbd_poll: " << nbd_get_error();
        failed_ = true;
        return;
      }
    }
    const int64_t deadline = NowNs() + 20'000'000'000;
    while (nbd_aio_in_flight(h_) > 0 && NowNs() < deadline) {
      if (nbd_poll(h_, 100) < 0) break;
    }
    EXPECT_EQ(nbd_aio_in_flight(h_), 0) << "conn " << conn_ << ": writes never completed";
  }

  // From the next Run() on, writes go only to owned blocks in these [first, end) ranges.
  void SetRegions(const std::vector<std::pair<uint64_t, uint64_t>>& ranges) {
    owned_.clear();
    for (uint64_t b : all_owned_) {
      for (const auto& [first, end] : ranges) {
        if (b >= first && b < end) {
          owned_.push_back(b);
          break;
        }
      }
    }
  }

  const std::vector<std::vector<WriteRec>>& history() const { return history_; }
  uint64_t writes() const { return writes_; }

 private:
  struct Slot {
    Writer* owner = nullptr;
    std::vector<uint8_t> buf;
    uint32_t block = 0;
    size_t index = 0;  // into history_[block]
    bool busy = false;
  };
  static int Done(void* user, int* error) {
    auto* s = static_cast<Slot*>(user);
    Writer* w = s->owner;
    WriteRec& r = w->history_[s->block][s->index];
    r.ack_ns = NowNs();
    r.error = *error;
    if (*error != 0) {
      ADD_FAILURE() << "conn " << w->conn_ << ": write to block " << s->block << " failed: "
                    << std::strerror(*error);
      w->failed_ = true;
    }
    w->busy_[s->block] = false;
    s->busy = false;
    return 1;
  }
  void Submit(Slot* s) {
    uint64_t b = 0;
    bool found = false;
    for (int tries = 0; tries < 8 && !found && !owned_.empty(); ++tries) {
      b = owned_[rng_() % owned_.size()];
      found = !busy_[b];
    }
    if (!found || owned_.empty()) return;
    WriteRec r;
    r.seq = ++seq_;
    s->block = static_cast<uint32_t>(b);
    s->index = history_[b].size();
    FillTagged(s->buf.data(), conn_, r.seq, s->block);
    s->busy = true;
    busy_[b] = true;
    r.submit_ns = NowNs();
    history_[b].push_back(r);
    ++writes_;
    if (nbd_aio_pwrite(h_, s->buf.data(), kBlock, b * kBlock,
                       (nbd_completion_callback){.callback = Done, .user_data = s, .free = nullptr},
                       0) < 0) {
      ADD_FAILURE() << "conn " << conn_ << ": nbd_aio_pwrite: " << nbd_get_error();
      s->busy = false;
      busy_[b] = false;
      history_[b].back().error = -1;
      failed_ = true;
    }
  }

  nbd_handle* h_;
  const uint32_t conn_;
  const uint32_t connections_;
  std::vector<std::vector<WriteRec>> history_;  // per block; only owned blocks are written
  std::vector<bool> busy_;
  std::vector<uint64_t> all_owned_, owned_;
  std::vector<Slot> slots_;
  std::mt19937_64 rng_;
  uint32_t seq_ = 0;
  uint64_t writes_ = 0;
  bool failed_ = false;
};

struct WritersParams {
  const char* cache;  // "" = the server's default
  int workers;
};

// Names the parameter in test names and ctest's list (gtest would print its bytes).
void PrintTo(const WritersParams& p, std::ostream* os) {
  *os << "--cache=" << (*p.cache ? p.cache : "default") << " --workers " << p.workers;
}

// An empty disk with no base: every block starts as zeros.
constexpr ChainOptions kEmptyDisk = {.disk_size = 4 * kMiB, .with_base = false};
constexpr int kConnections = 3;
constexpr int kDepth = 16;
constexpr int kSnapshots = 4;
constexpr int kGapMs = 60;
constexpr uint64_t kOrderSeed = 20261202;

class LiveMergeWritersTest : public LiveMergeTest,
                             public ::testing::WithParamInterface<WritersParams> {
 protected:
  const WriteRec* Find(uint64_t block, uint32_t conn, uint32_t seq) const {
    if (conn < 1 || conn > writers_.size() || (block % kConnections) != conn - 1) return nullptr;
    const auto& h = writers_[conn - 1]->history()[block];
    auto it = std::lower_bound(h.begin(), h.end(), seq,
                               [](const WriteRec& r, uint32_t s) { return r.seq < s; });
    return it != h.end() && it->seq == seq ? &*it : nullptr;
  }
  const std::vector<WriteRec>& History(uint64_t block) const {
    return writers_[block % kConnections]->history()[block];
  }
  // The disk as the writers left it (all stopped, every write acknowledged).
  std::vector<uint8_t> Model() const {
    std::vector<uint8_t> m(kEmptyDisk.disk_size, 0);
    for (uint64_t b = 0; b < m.size() / kBlock; ++b) {
      const auto& h = History(b);
      if (h.empty()) continue;
      FillTagged(m.data() + b * kBlock, static_cast<uint32_t>(b % kConnections + 1),
                 h.back().seq, static_cast<uint32_t>(b));
    }
    return m;
  }
  // live_snapshot_test's rule for a snapshot taken between send_ns and reply_ns.
  ::testing::AssertionResult Valid(const std::string& name, const std::vector<uint8_t>& content,
                                   int64_t send_ns, int64_t reply_ns) const {
    std::vector<uint8_t> want(kBlock);
    for (uint64_t b = 0; b < content.size() / kBlock; ++b) {
      const uint8_t* got = content.data() + b * kBlock;
      int64_t surely_in_latest_submit = -1;  // among writes acked before T_send
      for (const WriteRec& y : History(b)) {
        if (y.ack_ns != 0 && y.ack_ns < send_ns) {
          surely_in_latest_submit = std::max(surely_in_latest_submit, y.submit_ns);
        }
      }
      uint64_t magic;
      std::memcpy(&magic, got, 8);
      if (magic != kMagic) {
        if (!AllZero(got, kBlock)) {
          return ::testing::AssertionFailure() << name << " block " << b << ": torn or foreign";
        }
        if (surely_in_latest_submit != -1) {
          return ::testing::AssertionFailure()
                 << name << " block " << b << ": zeros, but a write to it was acknowledged "
                 << "before the snapshot request";
        }
        continue;
      }
      uint32_t conn, seq, block;
      std::memcpy(&conn, got + 8, 4);
      std::memcpy(&seq, got + 12, 4);
      std::memcpy(&block, got + 16, 4);
      const WriteRec* x = block == b ? Find(b, conn, seq) : nullptr;
      if (x == nullptr) {
        return ::testing::AssertionFailure() << name << " block " << b << ": holds unknown write "
                                             << conn << "/" << seq << " to block " << block;
      }
      FillTagged(want.data(), conn, seq, static_cast<uint32_t>(b));
      if (std::memcmp(got, want.data(), kBlock) != 0) {
        return ::testing::AssertionFailure() << name << " block " << b << ": torn write";
      }
      if (x->submit_ns >= reply_ns) {
        return ::testing::AssertionFailure() << name << " block " << b << ": holds a write "
                                             << "submitted after the snapshot reply";
      }
      if (surely_in_latest_submit > x->ack_ns) {
        return ::testing::AssertionFailure() << name << " block " << b << ": a later write "
                                             << "acknowledged before the snapshot is missing";
      }
    }
    return ::testing::AssertionSuccess();
  }

  std::vector<NbdHandle> handles_;
  std::vector<std::unique_ptr<Writer>> writers_;
};

enum class Kind { kNewest, kOldest, kMiddle };
const char* KindName(Kind k) {
  return k == Kind::kNewest ? "newest" : k == Kind::kOldest ? "oldest" : "middle";
}
Kind KindOf(const std::vector<std::string>& remaining, const std::string& x) {
  if (x == remaining.back()) return Kind::kNewest;
  if (x == remaining.front()) return Kind::kOldest;
  return Kind::kMiddle;
}

// A random deletion order of s1..sN (Fisher-Yates on mt19937_64's raw output, which the
// standard fixes) from the first seed >= kOrderSeed whose order deletes a newest, an oldest
// and a middle snapshot.
std::vector<std::string> DeletionOrder(const std::vector<std::string>& snaps) {
  for (uint64_t seed = kOrderSeed;; ++seed) {
    std::mt19937_64 rng(seed);
    std::vector<std::string> order = snaps;
    for (size_t i = order.size() - 1; i > 0; --i) std::swap(order[i], order[rng() % (i + 1)]);
    std::vector<std::string> remaining = snaps;
    bool kinds[3] = {false, false, false};
    for (const std::string& x : order) {
      kinds[static_cast<int>(KindOf(remaining, x))] = true;
      remaining.erase(std::find(remaining.begin(), remaining.end(), x));
      if (remaining.size() == 1) break;  // the last one is newest and oldest at once
    }
    if (kinds[0] && kinds[1] && kinds[2]) return order;
  }
}

TEST_P(LiveMergeWritersTest, DeletionsUnderMultiConnWriters) {
  const WritersParams p = GetParam();
  const uint64_t disk = kEmptyDisk.disk_size;
  const uint64_t blocks = disk / kBlock;
  const int64_t t0 = NowNs();
  ASSERT_TRUE(SetUpServer({.up_to = Stage::kServing,
                           .chain = kEmptyDisk,
                           .serve = {.cache = p.cache, .workers = p.workers}}));
  for (int c = 0; c < kConnections; ++c) {
    handles_.push_back(server_.Connect({.meta_contexts = {}}));
    ASSERT_TRUE(handles_.back());
    ASSERT_EQ(nbd_can_multi_conn(handles_.back().get()), 1);
    writers_.push_back(
        std::make_unique<Writer>(handles_.back().get(), c + 1, kConnections, blocks, kDepth));
  }
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  auto start_writers = [&] {
    stop = false;
    for (auto& w : writers_) threads.emplace_back([&w, &stop] { w->Run(stop); });
  };
  auto stop_writers = [&] {
    stop = true;
    for (auto& t : threads) t.join();
    threads.clear();
  };

  // Where the writes go, so that every deletion has something to copy (at this write rate,
  // writes to the whole disk would soon hide every snapshot in the layer above it): s1 holds
  // writes to the whole disk, s2, s3 and s4 to the quarters q0, q1 and q2; the active layer
  // gets writes to the last eighth R, and, while X is deleted, to R and the first eighth of
  // X's quarter (q3 for s1): into clusters the copy up into the active layer works on.
  using Ranges = std::vector<std::pair<uint64_t, uint64_t>>;
  const uint64_t q = blocks / 4, eighth = blocks / 8;
  const Ranges r_tail = {{blocks - eighth, blocks}};
  auto snapshot_phase = [&](int i) -> Ranges {
    return i == 1 ? Ranges{{0, blocks}} : Ranges{{(i - 2) * q, (i - 1) * q}};
  };
  auto deletion_phase = [&](const std::string& x) -> Ranges {
    const uint64_t quarter = x == "s1" ? 3 : std::stoul(x.substr(1)) - 2;
    return {{quarter * q, quarter * q + eighth}, r_tail.front()};
  };
  auto set_regions = [&](const Ranges& r) {
    for (auto& w : writers_) w->SetRegions(r);
  };

  // Snapshots s1..s4, each taken live while writes go to its phase's region.
  std::vector<std::string> names;
  std::map<std::string, std::pair<int64_t, int64_t>> times;
  for (int i = 1; i <= kSnapshots; ++i) {
    const std::string name = "s" + std::to_string(i);
    set_regions(snapshot_phase(i));
    start_writers();
    SleepMs(kGapMs);
    int64_t send_ns = 0, reply_ns = 0;
    const bool ok = TakeSnapshot(name, &send_ns, &reply_ns);
    stop_writers();
    ASSERT_TRUE(ok) << "snapshot " << name << "\n" << server_.ServerLog();
    names.push_back(name);
    times[name] = {send_ns, reply_ns};
  }
  set_regions(r_tail);
  start_writers();
  SleepMs(kGapMs);
  stop_writers();
  ASSERT_FALSE(HasFailure());

  // Each snapshot's content, recorded once and checked against the writes' times.
  std::map<std::string, std::vector<uint8_t>> content;
  for (const std::string& name : names) {
    NbdHandle h = server_.Connect({.meta_contexts = {}, .export_name = "@" + name});
    ASSERT_TRUE(h);
    ASSERT_TRUE(ReadAll(h.get(), disk, &content[name]));
    ASSERT_TRUE(Valid(name, content[name], times[name].first, times[name].second));
  }
  ASSERT_TRUE(ExportReads("", Model())) << "before any deletion";
  uint64_t before = 0;
  for (auto& w : writers_) before += w->writes();
  ASSERT_GT(before, 500u) << "too little load to mean anything";

  const std::vector<std::string> order = DeletionOrder(names);
  std::vector<std::string> remaining = names;
  std::string summary;
  for (const std::string& x : order) {
    const Kind kind = KindOf(remaining, x);
    // Readers connected to every remaining snapshot, X included, reading all through.
    struct Reader {
      std::string name;
      NbdHandle h;
    };
    std::vector<Reader> readers;
    for (const std::string& r : remaining) {
      readers.push_back({r, server_.Connect({.meta_contexts = {}, .export_name = "@" + r})});
      ASSERT_TRUE(readers.back().h);
    }
    std::atomic<bool> job_ended{false}, stop_checker{false};
    std::atomic<int> rounds{0}, rounds_after{0};
    std::string checker_error;  // written by the checker thread only, read after join
    std::thread checker([&] {
      std::vector<uint8_t> got;
      while (!stop_checker) {
        const bool after = job_ended;
        for (Reader& r : readers) {
          auto ok = ReadAll(r.h.get(), disk, &got);
          if (ok) ok = SameBytes(got, content[r.name], "@" + r.name + " (connected)");
          if (!ok) {
            checker_error = std::string(ok.message()) + (after ? " after" : " during") +
                            " the deletion of " + x + ", round " + std::to_string(rounds);
            return;
          }
        }
        ++rounds;
        if (after) ++rounds_after;
      }
    });

    set_regions(deletion_phase(x));
    start_writers();
    SleepMs(kGapMs / 2);
    json job;
    const auto started = StartDelete(x, 0, &job);
    bool refused = false;
    json end;
    if (started) {
      refused = ConnectRefused("@" + x);
      end = WaitJobEnd();
    }
    job_ended = true;
    for (int i = 0; i < 1000 && rounds_after < 1 && checker_error.empty(); ++i) SleepMs(10);
    SleepMs(kGapMs / 2);
    stop_writers();
    stop_checker = true;
    checker.join();
    readers.clear();

    ASSERT_TRUE(started);
    EXPECT_TRUE(refused) << "a new connection to @" << x << " after its deletion started";
    ASSERT_TRUE(Done(end, x));
    EXPECT_GT(end.value("bytes_copied", 0.0), 0) << "deleting " << x << " (" << KindName(kind)
                                                  << ") copied nothing: " << end;
    EXPECT_TRUE(checker_error.empty()) << checker_error;
    EXPECT_GE(rounds_after.load(), 1) << "no full read of the snapshots after deleting " << x;
    ASSERT_FALSE(HasFailure()) << "deleting " << x << " (" << KindName(kind) << ")";

    // After: the disk is the writers' model, every other snapshot reads its content through a
    // new connection, X is gone.
    remaining.erase(std::find(remaining.begin(), remaining.end(), x));
    EXPECT_TRUE(ExportReads("", Model())) << "after deleting " << x << " (" << KindName(kind)
                                          << ")";
    for (const std::string& r : remaining) {
      EXPECT_TRUE(ExportReads("@" + r, content[r])) << "after deleting " << x;
    }
    EXPECT_TRUE(Gone(x));
    std::vector<std::string> listed = ListedSnapshots();
    std::vector<std::string> want = {""};
    for (auto it = remaining.rbegin(); it != remaining.rend(); ++it) want.push_back(*it);
    EXPECT_EQ(listed, want) << "after deleting " << x;
    ASSERT_FALSE(HasFailure()) << "deleting " << x << " (" << KindName(kind) << ")";
    summary += x + "(" + KindName(kind) + ", " + std::to_string(rounds.load()) + " reads, " +
               std::to_string(static_cast<uint64_t>(end.value("bytes_copied", 0.0))) +
               " B copied) ";
  }
  uint64_t total = 0;
  for (auto& w : writers_) total += w->writes();
  handles_.clear();
  StopAndCheck();
  std::printf("live_merge: cache=%s workers=%d: %llu writes (%llu during deletions); deleted "
              "%s in %.2f s\n",
              *p.cache ? p.cache : "default", p.workers, static_cast<unsigned long long>(total),
              static_cast<unsigned long long>(total - before), summary.c_str(),
              static_cast<double>(NowNs() - t0) / 1e9);
}

INSTANTIATE_TEST_SUITE_P(
    CacheAndWorkers, LiveMergeWritersTest,
    ::testing::Values(WritersParams{"", 1}, WritersParams{"", 2}, WritersParams{"", 3},
                      WritersParams{"", 4}, WritersParams{"none", 1}, WritersParams{"none", 2},
                      WritersParams{"none", 3}, WritersParams{"none", 4}),
    [](const ::testing::TestParamInfo<WritersParams>& info) {
      return std::string(*info.param.cache ? "CacheNone" : "CacheDefault") + "Workers" +
             std::to_string(info.param.workers);
    });

}  // namespace
}  // namespace strata_test
