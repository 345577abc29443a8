#include "server/control/live_control.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "blockstore/clock.h"
#include "blockstore/file.h"
#include "blockstore/format.h"
#include "blockstore/stream.h"
#include "blockstore/tree.h"
#include "server/log.h"
#include "server/nbd/protocol.h"

namespace strata {

using json = nlohmann::json;

namespace {

constexpr char kRequests[] =
    "snapshot, list, stats, info, revert, delete-snapshot, commit, cancel, job";

std::string IsoTime(int64_t wall_ns) {
  if (wall_ns <= 0) return "";
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::FromUnixNanos(wall_ns),
                          absl::UTCTimeZone());
}

double Round3(double v) { return std::round(v * 1000) / 1000; }

// p in [0, 1] over a sorted copy (nearest rank).
double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t rank = static_cast<size_t>(std::ceil(p * static_cast<double>(v.size())));
  return v[std::clamp<size_t>(rank, 1, v.size()) - 1];
}

json LatencyJson(const LatencyHistogram& h) {
  auto us = [](uint64_t ns) { return Round3(static_cast<double>(ns) / 1000); };
  return json{{"count", h.count},
              {"mean", h.count ? us(h.sum_ns / h.count) : 0.0},
              {"p50", us(h.PercentileNs(0.50))},
              {"p90", us(h.PercentileNs(0.90))},
              {"p99", us(h.PercentileNs(0.99))},
              {"max", us(h.max_ns)}};
}

json CountersJson(const IoCounters& io) {
  json by_command = json::object();
  for (int i = 0; i <= kCountedCommands; ++i) {
    if (io.requests[i] == 0) continue;
    std::string name = i == kOtherCommand
                           ? "other"
                           : std::string(nbd::Name(static_cast<nbd::Command>(i)));
    if (name.rfind("NBD_CMD_", 0) == 0) name = name.substr(8);
    for (char& c : name) c = static_cast<char>(tolower(static_cast<unsigned char>(c)));
    by_command[name] = io.requests[i];
  }
  return json{{"requests", io.total_requests()},
              {"requests_by_command", by_command},
              {"errors", io.errors},
              {"enospc_replies", io.enospc_replies},
              {"bytes_read", io.bytes_read},
              {"bytes_written", io.bytes_written},
              {"file_reads", io.file_reads},
              {"latency_us", LatencyJson(io.latency)},
              {"stages_us", json{{"before_disk", LatencyJson(io.before_disk)},
                                 {"disk", LatencyJson(io.disk)},
                                 {"send", LatencyJson(io.send)}}}};
}

}  // namespace

// The snapshot exports and the count of live snapshots taken (see the design note in the
// header): changed by the chain's listener, on whichever thread completed a snapshot.
class LiveControl::Published {
 public:
  Published(ExportTable* exports, std::string top_path, bool direct_io,
            std::vector<std::string> allowed_parent_dirs)
      : exports_(exports),
        top_path_(std::move(top_path)),
        direct_io_(direct_io),
        allowed_parent_dirs_(std::move(allowed_parent_dirs)) {}

  // Registers "@name" (once), opened on demand from `path`.
  void Add(const std::string& name, const std::string& path) {
    MutexLock lock(&mu_);
    ExportLocked(name, path);
  }
  // The chain's listener: a live snapshot is durable.
  void Completed(const Chain::CompletedSnapshot& s) {
    if (!s.lock.ok()) {
      STRATA_LOG(kError,
                 "snapshot '%s': %s lost its lock, so another strata process could change it "
                 "while it is served: %s",
                 s.name, s.frozen_path, s.lock.message());
    }
    MutexLock lock(&mu_);
    ++taken_;
    ExportLocked(s.name, s.frozen_path);
  }
  uint64_t taken() const {
    MutexLock lock(&mu_);
    return taken_;
  }
  std::vector<std::string> Names() const {
    MutexLock lock(&mu_);
    std::vector<std::string> names;
    for (const std::string& name : exported_) names.push_back("@" + name);
    return names;
  }
  // Removes snapshot `name`'s export (connections reading it keep it until they end).
  void Remove(const std::string& name) {
    MutexLock lock(&mu_);
    if (std::erase(exported_, name) > 0) exports_->Remove("@" + name);
  }
  // Removes the exports of the snapshots not in `keep`; returns their export names.
  std::vector<std::string> RemoveAllBut(const std::set<std::string>& keep) {
    MutexLock lock(&mu_);
    std::vector<std::string> removed;
    std::erase_if(exported_, [&](const std::string& snapshot) {
      if (keep.count(snapshot)) return false;
      exports_->Remove("@" + snapshot);
      removed.push_back("@" + snapshot);
      return true;
    });
    return removed;
  }

 private:
  void ExportLocked(const std::string& name, const std::string& path)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  ExportTable* const exports_;
  const std::string top_path_;
  const bool direct_io_;
  const std::vector<std::string> allowed_parent_dirs_;
  mutable Mutex mu_;
  std::vector<std::string> exported_ ABSL_GUARDED_BY(mu_);  // snapshot names, in export order
  uint64_t taken_ ABSL_GUARDED_BY(mu_) = 0;
};

LiveControl::LiveControl(Server* server, ExportTable* exports, ChainStorage* disk,
                         LiveControlOptions options)
    : server_(server),
      exports_(exports),
      disk_(disk),
      options_(std::move(options)),
      started_wall_ns_(WallClockNs()),
      published_(std::make_shared<Published>(exports, disk->top_path(), disk->direct_io(),
                                             disk->allowed_parent_dirs())) {
  WatchSnapshots();
}

LiveControl::~LiveControl() = default;

void LiveControl::WatchSnapshots() {
  // The chain may complete a snapshot when it closes, after this object is gone: the
  // listener keeps what it changes alive.
  disk_->chain()->SetSnapshotListener(
      [published = published_](const Chain::CompletedSnapshot& s) { published->Completed(s); });
}

void LiveControl::Published::ExportLocked(const std::string& name, const std::string& path) {
  const std::string export_name = absl::StrCat("@", name);
  if (exports_->Has(export_name)) return;
  ExportInfo info{export_name,
                  absl::StrCat("snapshot '", name, "' of ", top_path_, " (read-only)"),
                  /*read_only=*/true};
  const bool direct_io = direct_io_;
  exports_->AddOnDemand(info, [info, path, direct_io, dirs = allowed_parent_dirs_]()
                                  -> absl::StatusOr<std::shared_ptr<const Export>> {
    // Read-only: shared locks only, beside the server's own shared lock on this frozen file.
    absl::StatusOr<std::unique_ptr<ChainStorage>> storage =
        OpenChainStorage(path, /*writable=*/false, direct_io, dirs);
    if (!storage.ok()) {
      STRATA_LOG_LIMITED(kError, "export %s: %s", info.name, storage.status().message());
      return absl::Status(storage.status().code(), absl::StrCat("export ", info.name, ": ",
                                                                storage.status().message()));
    }
    Storage* opened = storage->get();
    auto e = NewExport(info.name, opened, std::move(*storage));
    e->description = info.description;
    e->read_only = true;
    STRATA_LOG(kDebug, "export \"%s\" opened: %s", info.name, path);
    return e;
  });
  exported_.push_back(name);
  STRATA_LOG(kInfo, "export \"%s\": snapshot %s (read-only, opened on demand)", export_name,
             path);
}

void LiveControl::AddSnapshotExports() {
  MutexLock lock(&mu_);
  for (const LayerInfo& info : disk_->chain()->Layers()) {
    if (info.is_raw_base || info.header.state != LayerState::kFrozen ||
        info.header.snapshot_name.empty()) {
      continue;
    }
    published_->Add(info.header.snapshot_name, info.path);
  }
}

std::vector<std::string> LiveControl::SnapshotExportNames() const { return published_->Names(); }

absl::Status LiveControl::Handle(const json& request, json* reply) {
  const std::string what = request.value("request", std::string());
  if (what == "snapshot") return Snapshot(request, reply);
  if (what == "list") return List(reply);
  if (what == "stats") return Stats(reply);
  if (what == "info") return Info(reply);
  if (what == "revert") return Revert(request, reply);
  if (what == "delete-snapshot" || what == "commit") return DeleteSnapshot(request, reply);
  if (what == "cancel") return Cancel(reply);
  if (what == "job") return Job(reply);
  return absl::InvalidArgumentError(
      absl::StrFormat("unknown request \"%s\" (known: %s)", what, kRequests));
}

// ---------------------------------------------------------------------------------------------
// snapshot {"name": NAME} -> {"name", "file", "uuid", "export", "pause_ms"}

namespace {

// Flushes while clients keep running: the freeze after the pause (which makes the frozen layer
// durable and so delays the reply) then only covers what was written in the meantime. Under a
// heavy write load a flush lets new dirty data pile up, so flush again while that shrinks the
// next one (each is shorter than the last), at most kPreFlushes times.
absl::Status FlushBeforePause(Chain* chain) {
  constexpr int kPreFlushes = 4;
  constexpr absl::Duration kShortFlush = absl::Milliseconds(2);
  for (int i = 0; i < kPreFlushes; ++i) {
    const absl::Time begin = absl::Now();
    if (absl::Status st = chain->Flush(); !st.ok()) return st;
    if (absl::Now() - begin < kShortFlush) break;
  }
  return absl::OkStatus();
}

// The host volume as the volume watch last saw it (free_bytes null before its first reading).
json VolumeJson(const NoSpaceState& ns) {
  const bool measured = ns.total_bytes() > 0;
  return json{{"free_bytes", measured ? json(ns.free_bytes()) : json(nullptr)},
              {"total_bytes", measured ? json(ns.total_bytes()) : json(nullptr)},
              {"min_free_bytes", ns.policy().min_free_bytes},
              {"low", ns.low()}};
}

}  // namespace

absl::Status LiveControl::Snapshot(const json& request, json* reply) {
  if (!request.contains("name") || !request["name"].is_string() ||
      request["name"].get<std::string>().empty()) {
    return absl::InvalidArgumentError("snapshot: \"name\" (a non-empty string) is required");
  }
  const std::string name = request["name"].get<std::string>();
  MutexLock lock(&mu_);
  Chain* chain = disk_->chain();
  if (!disk_->writable()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "snapshot '", name, "': ", disk_->top_path(), " is served read-only; nothing to freeze"));
  }
  // Its pause would wait for writes that wait for space, holding every other request meanwhile
  // until the pause timeout: say why at once instead.
  if (int64_t waiting = server_->no_space().waiting(); waiting > 0) {
    ++snapshot_failures_;
    return absl::FailedPreconditionError(absl::StrFormat(
        "snapshot '%s': the disk is paused-critical (%d writes wait for space on the host "
        "volume): free space first",
        name, waiting));
  }
  absl::StatusOr<Chain::SnapshotResult> result =
      absl::InternalError("snapshot did not run");  // replaced inside the pause
  if (absl::Status pre = FlushBeforePause(chain); !pre.ok()) {
    ++snapshot_failures_;
    return absl::Status(pre.code(), absl::StrCat("snapshot '", name,
                                                 "': flush before the pause: ", pre.message()));
  }
  // The next layer's file (created and synced) needs no pause either.
  if (absl::Status prepared = chain->PrepareSnapshot(name); !prepared.ok()) {
    ++snapshot_failures_;
    return absl::Status(prepared.code(),
                        absl::StrCat("snapshot '", name, "': ", prepared.message()));
  }
  // The pause only moves new writes to the new layer, in memory.
  absl::Duration pause, switch_time;
  absl::Status st = server_->RunPaused(
      [&]() -> absl::Status {
        const absl::Time begin = absl::Now();
        result = chain->SwitchSnapshot(name);
        switch_time = absl::Now() - begin;
        return result.status();
      },
      &pause, options_.pause_timeout);
  const double pause_ms = absl::ToDoubleMilliseconds(pause);
  if (!st.ok()) {
    chain->CancelSnapshot();
    ++snapshot_failures_;
    if (st.code() == absl::StatusCode::kDeadlineExceeded) ++pause_timeouts_;
    STRATA_LOG(kError, "snapshot '%s' failed (I/O paused %.3f ms, disk served as before): %s",
               name, pause_ms, st.message());
    return absl::Status(st.code(), absl::StrCat("snapshot '", name, "': ", st.message()));
  }
  pauses_ms_.push_back(pause_ms);
  // I/O runs again; the reply waits until the snapshot is durable (a flush of the new layer
  // would wait for it too), and published_ has exported it. A failure leaves it pending: the
  // error says so; the flush or snapshot that completes it later publishes it.
  const absl::Time durable_begin = absl::Now();
  if (absl::Status durable = chain->CompleteSnapshot(); !durable.ok()) {
    STRATA_LOG(kError, "%s", durable.message());
    return absl::Status(durable.code(), absl::StrCat(durable.message(), "; @", name,
                                                     " is exported once it is durable"));
  }
  const double durable_ms = absl::ToDoubleMilliseconds(absl::Now() - durable_begin);
  STRATA_LOG(kInfo,
             "snapshot '%s' taken live: %s (I/O paused %.3f ms, of which %.3f ms switching "
             "layers; made durable in %.3f ms after resuming)",
             name, result->frozen_path, pause_ms, absl::ToDoubleMilliseconds(switch_time),
             durable_ms);
  (*reply)["name"] = name;
  (*reply)["file"] = result->frozen_path;
  (*reply)["uuid"] = UuidToString(result->frozen_uuid);
  (*reply)["pause_ms"] = Round3(pause_ms);
  (*reply)["switch_ms"] = Round3(absl::ToDoubleMilliseconds(switch_time));  // part of the pause
  // Making the frozen layer durable, after I/O resumed: it delays this reply, not the disk.
  (*reply)["durable_ms"] = Round3(durable_ms);
  (*reply)["export"] = "@" + name;  // opened when a client names it
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// list -> {"layers": [...]}, the top first

json RemoteBaseJson(const LayerInfo& base) {
  const RemoteBaseState& r = base.remote;
  return json{{"uri", base.path},
              {"size", base.allocated_bytes},
              {"connected", r.connected},
              {"connections", r.connections},
              {"reconnects", r.reconnects},
              {"reads", r.reads},
              {"failed_reads", r.failed_reads},
              {"last_error", r.last_error.empty() ? json(nullptr) : json(r.last_error)}};
}

absl::Status LiveControl::List(json* reply) {
  MutexLock lock(&mu_);
  std::vector<LayerInfo> layers = disk_->chain()->Layers();
  std::sort(layers.begin(), layers.end(),
            [](const LayerInfo& a, const LayerInfo& b) { return a.position > b.position; });
  const int64_t now = WallClockNs();
  json out = json::array();
  for (const LayerInfo& l : layers) {
    json j{{"position", l.position}, {"file", l.path}, {"file_bytes", l.file_bytes}};
    // The active layer above a freezing snapshot keeps its pending name until the freeze ends.
    if (!l.final_path.empty()) j["final_file"] = l.final_path;
    if (l.is_remote_base) {
      j["state"] = "NBD base";
      j["allocated_bytes"] = 0;
      j["remote"] = RemoteBaseJson(l);
    } else if (l.is_raw_base) {
      j["state"] = "raw base";
      j["allocated_bytes"] = l.file_bytes;
    } else {
      const LayerHeader& h = l.header;
      const bool frozen = h.state == LayerState::kFrozen;
      // "freezing": a live snapshot whose layer is not durable yet (every flush retries).
      j["state"] = l.freezing ? "freezing" : frozen ? "frozen" : "active";
      // null, as `strata info --json` says it, for the active layer and an unnamed one.
      j["snapshot"] = (frozen || l.freezing) && !h.snapshot_name.empty() ? json(h.snapshot_name)
                                                                          : json(nullptr);
      j["uuid"] = UuidToString(h.uuid);
      j["allocated_bytes"] = l.allocated_bytes;
      j["created"] = h.created_ns > 0 ? json(IsoTime(h.created_ns)) : json(nullptr);
      if (frozen) {
        j["snapshot_time"] = IsoTime(h.frozen_ns);
        if (!h.snapshot_name.empty() && exports_->Has("@" + h.snapshot_name)) {
          j["export"] = "@" + h.snapshot_name;
        }
      }
      // Age of the state the layer holds: since the snapshot for a frozen layer, since its
      // creation for the active one.
      const int64_t since = frozen && h.frozen_ns > 0 ? h.frozen_ns : h.created_ns;
      if (since > 0) j["age_seconds"] = Round3(static_cast<double>(now - since) / 1e9);
    }
    out.push_back(std::move(j));
  }
  (*reply)["layers"] = std::move(out);
  (*reply)["merge"] = merge_ ? merge_->Describe() : json(nullptr);
  const NoSpaceState& ns = server_->no_space();
  (*reply)["paused_critical"] = ns.waiting() > 0;
  (*reply)["waiting_writes"] = ns.waiting();
  (*reply)["volume"] = VolumeJson(ns);
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// stats -> {"total", "connections", "enospc", "snapshots", ...}

absl::Status LiveControl::Stats(json* reply) {
  absl::StatusOr<std::vector<WorkerStats>> workers = server_->CollectStats();
  if (!workers.ok()) return workers.status();
  const int64_t now = MonotonicNs();
  IoCounters total;
  int64_t in_flight = 0;
  uint64_t closed = 0;
  json conns = json::array();
  for (const WorkerStats& w : *workers) {
    total.Merge(w.closed);
    closed += w.connections_closed;
    for (const ConnectionStats& c : w.connections) {
      total.Merge(c.io);
      in_flight += c.in_flight;
      json j = CountersJson(c.io);
      j["id"] = c.id;
      j["worker"] = c.worker;
      j["peer"] = c.peer;
      j["export"] = c.negotiated ? json(c.export_name) : json(nullptr);
      j["in_flight"] = c.in_flight;
      j["waiting_for_budget"] = c.waiting_for_budget;
      j["age_seconds"] = Round3(static_cast<double>(now - c.opened_ns) / 1e9);
      conns.push_back(std::move(j));
    }
  }
  std::sort(conns.begin(), conns.end(),
            [](const json& a, const json& b) { return a["id"] < b["id"]; });
  json t = CountersJson(total);
  t["in_flight"] = in_flight;
  (*reply)["total"] = std::move(t);
  (*reply)["connections"] = std::move(conns);
  (*reply)["connections_open"] = (*reply)["connections"].size();
  (*reply)["connections_closed"] = closed;
  const BufferBudget& budget = server_->budget();
  (*reply)["buffer_budget"] = {{"pool_bytes", budget.pool()},
                               {"pool_used_bytes", budget.pool_used()},
                               {"floor_bytes", budget.floor()}};

  const NoSpaceState& ns = server_->no_space();
  json enospc{{"full", ns.full()},
              {"replies", ns.replies()},
              {"episodes", ns.episodes()},
              {"since", ns.full() ? json(IsoTime(ns.since_wall_ns())) : json(nullptr)},
              {"last", ns.last_wall_ns() ? json(IsoTime(ns.last_wall_ns())) : json(nullptr)},
              {"on_full", Name(ns.policy().mode)},
              {"full_timeout_seconds", ns.policy().max_wait_ns / 1'000'000'000},
              {"waiting_writes", ns.waiting()},
              {"writes_that_waited", ns.waits()}};
  (*reply)["enospc"] = std::move(enospc);
  (*reply)["paused_critical"] = ns.waiting() > 0;
  (*reply)["volume"] = VolumeJson(ns);
  // A failed sync makes the disk refuse writes and flushes until restarted (README,
  // Guarantees): say so, with the cause.
  absl::Status failure = disk_->chain()->failure();
  (*reply)["sync_failure"] = failure.ok() ? json(nullptr) : json(std::string(failure.message()));
  const std::vector<LayerInfo> layers = disk_->chain()->Layers();
  (*reply)["base"] = layers.front().is_remote_base ? RemoteBaseJson(layers.front()) : json(nullptr);

  MutexLock lock(&mu_);
  json snaps{{"taken", published_->taken()},
             {"failed", snapshot_failures_},
             {"pause_timeouts", pause_timeouts_}};
  if (!pauses_ms_.empty()) {
    snaps["last_pause_ms"] = Round3(pauses_ms_.back());
    snaps["pause_p50_ms"] = Round3(Percentile(pauses_ms_, 0.50));
    snaps["pause_p99_ms"] = Round3(Percentile(pauses_ms_, 0.99));
    snaps["pause_max_ms"] = Round3(*std::max_element(pauses_ms_.begin(), pauses_ms_.end()));
  } else {
    snaps["last_pause_ms"] = nullptr;
  }
  (*reply)["snapshots"] = std::move(snaps);
  (*reply)["merge"] = merge_ ? merge_->Describe() : json(nullptr);
  (*reply)["uptime_seconds"] = Round3(static_cast<double>(WallClockNs() - started_wall_ns_) / 1e9);
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// info -> {"size", "cluster_size", "sub_block_size", "top_file", "exports", "connections", ...}

absl::Status LiveControl::Info(json* reply) {
  absl::StatusOr<int> connections = CountConnections();
  if (!connections.ok()) return connections.status();
  MutexLock lock(&mu_);
  (*reply)["size"] = disk_->size();
  (*reply)["sub_block_size"] = disk_->sub_block_size();
  (*reply)["cluster_size"] = disk_->chain()->cluster_size();
  (*reply)["layers"] = disk_->chain()->top_position();
  (*reply)["top_file"] = disk_->top_path();
  (*reply)["read_only"] = !disk_->writable();
  json exports = json::array();
  for (const ExportInfo& e : exports_->Describe()) {
    exports.push_back({{"name", e.name}, {"read_only", e.read_only},
                       {"description", e.description}});
  }
  (*reply)["exports"] = std::move(exports);
  (*reply)["connections"] = *connections;
  (*reply)["workers"] = server_->workers();
  (*reply)["control_socket"] = options_.control_path;
  (*reply)["pause_timeout_ms"] = absl::ToInt64Milliseconds(options_.pause_timeout);
  return absl::OkStatus();
}

absl::StatusOr<int> LiveControl::CountConnections() {
  absl::StatusOr<std::vector<WorkerStats>> workers = server_->CollectStats();
  if (!workers.ok()) return workers.status();
  int n = 0;
  for (const WorkerStats& w : *workers) n += static_cast<int>(w.connections.size());
  return n;
}

// ---------------------------------------------------------------------------------------------
// revert {"name"?} -> {"reverted_to", "file"}

absl::Status LiveControl::Revert(const json& request, json* reply) {
  std::string name;
  if (request.contains("name")) {
    if (!request["name"].is_string()) {
      return absl::InvalidArgumentError("revert: \"name\" must be a string (a snapshot name)");
    }
    name = request["name"].get<std::string>();
  }
  const std::string target = name.empty() ? "its parent" : absl::StrCat("snapshot '", name, "'");
  auto refuse = [&](int n) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "revert refused: %d client connection%s open (an online revert changes the disk under "
        "a client's feet; disconnect every client, e.g. shut the guest down, then retry)",
        n, n == 1 ? " is" : "s are"));
  };
  absl::StatusOr<int> connections = CountConnections();
  if (!connections.ok()) return connections.status();
  if (*connections > 0) return refuse(*connections);
  MutexLock lock(&mu_);
  if (!disk_->writable()) {
    return absl::FailedPreconditionError(
        absl::StrCat("revert: ", disk_->top_path(), " is served read-only"));
  }
  if (std::string why = MergeInTheWayLocked(); !why.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("revert refused: ", why));
  }
  absl::Duration pause;
  const Chain* before = disk_->chain();
  absl::Status st = server_->RunPaused(
      [&]() -> absl::Status {
        // Counted again with every worker paused: a client that connected meanwhile wins.
        absl::StatusOr<int> now = CountConnections();
        if (!now.ok()) return now.status();
        if (*now > 0) return refuse(*now);
        return disk_->Revert(name);
      },
      &pause, options_.pause_timeout);
  const absl::Status failed(st.code(), absl::StrCat("revert to ", target, ": ", st.message()));
  // A failed revert serves the chain it had; one whose commit point passed serves the
  // reverted chain, even if it reports a failure after it (ChainStorage::Revert).
  if (disk_->chain() == before) return failed;
  WatchSnapshots();
  // Snapshots above the target are no longer in the served chain (their files stay, a
  // branch): their exports go. Connections reading one keep it open until they end.
  std::set<std::string> in_chain;
  for (const LayerInfo& info : disk_->chain()->Layers()) {
    if (!info.is_raw_base) in_chain.insert(info.header.snapshot_name);
  }
  const std::vector<std::string> removed = published_->RemoveAllBut(in_chain);
  if (!st.ok()) {
    STRATA_LOG(kError, "%s", failed.message());
    return failed;
  }
  STRATA_LOG(kInfo, "reverted %s to %s (I/O paused %.3f ms)%s", disk_->top_path(), target,
             absl::ToDoubleMilliseconds(pause),
             removed.empty() ? "" : absl::StrCat("; exports removed: ", absl::StrJoin(removed, ", ")));
  (*reply)["reverted_to"] = name.empty() ? json(nullptr) : json(name);
  (*reply)["file"] = disk_->top_path();
  (*reply)["exports_removed"] = removed;
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// delete-snapshot {"name", "rate_limit"?} / commit {"layer"?, "rate_limit"?} -> {"job"}
// cancel -> {"job"}; job -> {"job"}

namespace {

std::string StreamedLayer(const std::string& journal) {
  return journal.substr(0, journal.size() - std::string(".stream").size());
}

// The snapshot name a pending journal records (its file name when it has none).
std::string JournalSnapshot(const std::string& journal) {
  auto text = ReadWholeFile(Env::Default(), journal);
  StreamJournalRecord r;
  if (!text.ok() || !r.DecodeFrom(*text).ok()) return BaseName(StreamedLayer(journal));
  return r.name.empty() ? r.layer : r.name;
}

}  // namespace

std::string LiveControl::MergeInTheWayLocked() {
  if (merge_ && merge_->state() == MergeJob::State::kRunning) {
    json j = merge_->Describe();
    const double total = j["bytes_total"].get<double>();
    return absl::StrFormat("deleting snapshot '%s' is in progress (%.0f%% done); wait for it "
                           "or stop it with `strata cancel`",
                           merge_->snapshot(),
                           total > 0 ? 100 * j["bytes_done"].get<double>() / total : 0.0);
  }
  for (const std::string& journal : FindStreamJournals(Env::Default(), disk_->top_path())) {
    std::string why;
    if (merge_ && merge_->journal_path() == journal) {
      const json error = merge_->Describe()["error"];
      if (error.is_string()) why = absl::StrCat(" (", error.get<std::string>(), ")");
    }
    return absl::StrCat("the deletion of snapshot '", JournalSnapshot(journal), "' did not finish",
                        why, "; run `strata delete-snapshot` for it again to resume, or `strata "
                        "cancel` to give it up");
  }
  return "";
}

void LiveControl::StartMergeLocked(const std::string& journal, const std::string& name) {
  published_->Remove(name);  // new readers of a snapshot being deleted are refused
  merge_.reset();            // the last job, ended
  const std::string layer = StreamedLayer(journal);
  merge_ = std::make_unique<MergeJob>(
      disk_->chain(), journal, name,
      [published = published_, name, layer](MergeJob::State state, const absl::Status&) {
        // The snapshot stays: export it again.
        if (state == MergeJob::State::kCancelled || state == MergeJob::State::kFailed) {
          published->Add(name, layer);
        }
      });
}

void LiveControl::ResumeMerges() {
  MutexLock lock(&mu_);
  if (!disk_->writable()) return;
  for (const std::string& journal : FindStreamJournals(Env::Default(), disk_->top_path())) {
    const std::string name = JournalSnapshot(journal);
    STRATA_LOG(kInfo, "resuming the deletion of snapshot '%s' left by an earlier run", name);
    StartMergeLocked(journal, name);
    return;  // one at a time; a second journal cannot be started by a server
  }
}

void LiveControl::StopMerges() {
  MutexLock lock(&mu_);
  if (merge_) merge_->Stop();
}

// A snapshot off the served chain (left by a revert): no client reads through it, so it goes
// at once, as offline (tree.h), and the reply says so instead of naming a job. Its one child,
// if it has one, is merged into it here (rare: a dead branch of its own).
absl::Status LiveControl::DeleteOffChainLocked(const std::string& name, json* reply) {
  auto done = DeleteOffChainSnapshot(Env::Default(), disk_->top_path(), name);
  if (!done.ok()) return done.status();
  STRATA_LOG(kInfo, "delete-snapshot: removed snapshot '%s' (%s), off the served chain%s%s",
             name, done->path, done->merged_into.empty() ? "" : ", merged into ",
             done->merged_into);
  (*reply)["deleted"] = {{"snapshot", name},
                         {"file", done->path},
                         {"merged_into", done->merged_into.empty() ? json(nullptr)
                                                                   : json(done->merged_into)},
                         {"bytes_copied", done->bytes_copied}};
  return absl::OkStatus();
}

absl::Status LiveControl::DeleteSnapshot(const json& request, json* reply) {
  const bool commit = request.value("request", std::string()) == "commit";
  const std::string what = commit ? "commit" : "delete-snapshot";
  std::string name, layer;
  uint64_t rate_limit = 0;
  if (commit) {
    if (request.contains("layer") && !request["layer"].is_string()) {
      return absl::InvalidArgumentError("commit: \"layer\" must be a string (a layer file)");
    }
    layer = request.value("layer", disk_->top_path());
  } else {
    if (!request.contains("name") || !request["name"].is_string()) {
      return absl::InvalidArgumentError(
          "delete-snapshot: \"name\" (the snapshot to delete) is required, as a string");
    }
    name = request["name"].get<std::string>();
  }
  if (request.contains("rate_limit")) {
    if (!request["rate_limit"].is_number_unsigned()) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": \"rate_limit\" must be a number of bytes per second"));
    }
    rate_limit = request["rate_limit"].get<uint64_t>();
  }
  MutexLock lock(&mu_);
  Chain* chain = disk_->chain();
  if (!disk_->writable()) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, ": ", disk_->top_path(), " is served read-only"));
  }
  // The same deletion asked for again after it failed: resume it.
  for (const std::string& journal : FindStreamJournals(Env::Default(), disk_->top_path())) {
    if (!commit && JournalSnapshot(journal) == name &&
        !(merge_ && merge_->state() == MergeJob::State::kRunning)) {
      StartMergeLocked(journal, name);
      (*reply)["job"] = merge_->Describe();
      return absl::OkStatus();
    }
  }
  if (std::string why = MergeInTheWayLocked(); !why.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(what, " refused: ", why));
  }
  if (!commit && IsOffChainSnapshot(Env::Default(), disk_->top_path(), name)) {
    return DeleteOffChainLocked(name, reply);
  }
  absl::StatusOr<StreamPlan> plan =
      commit ? PlanStreamBelow(Env::Default(), *chain, layer, rate_limit)
             : PlanStream(Env::Default(), *chain, name, rate_limit);
  if (!plan.ok()) return plan.status();
  if (absl::Status st = BeginStream(Env::Default(), *plan); !st.ok()) return st;
  const std::string label = plan->record.name.empty() ? plan->record.layer : plan->record.name;
  STRATA_LOG(kInfo, "%s: deleting snapshot '%s' online, at most %.1f MiB to copy into %s", what,
             label, static_cast<double>(plan->needed_bytes) / (1 << 20), plan->child_path);
  StartMergeLocked(StreamJournalPath(plan->layer_path), label);
  (*reply)["job"] = merge_->Describe();
  return absl::OkStatus();
}

absl::Status LiveControl::Cancel(json* reply) {
  MutexLock lock(&mu_);
  if (merge_ && merge_->state() == MergeJob::State::kRunning) {
    merge_->Cancel();
    merge_->Stop();  // the copy checks its stop flag at every cluster: soon
    (*reply)["job"] = merge_->Describe();
    return absl::OkStatus();
  }
  // A deletion that failed (or was stopped) keeps its journal until given up.
  for (const std::string& journal : FindStreamJournals(Env::Default(), disk_->top_path())) {
    if (absl::Status st = AbandonStream(Env::Default(), journal); !st.ok()) return st;
    const std::string name = JournalSnapshot(journal);
    published_->Add(name, StreamedLayer(journal));
    (*reply)["job"] = json{{"snapshot", name}, {"state", "cancelled"}};
    return absl::OkStatus();
  }
  return absl::FailedPreconditionError("cancel: no snapshot deletion is running");
}

absl::Status LiveControl::Job(json* reply) {
  MutexLock lock(&mu_);
  (*reply)["job"] = merge_ ? merge_->Describe() : json(nullptr);
  return absl::OkStatus();
}

}  // namespace strata
