// LiveControl: what the control socket's requests do to a running server — live snapshots,
// the snapshot exports, list, stats, info and online revert. ControlSocket (control_socket.h)
// is the transport; this is the handler behind it.
//
// Design note. A live snapshot is Chain::PrepareSnapshot (next layer file, outside any pause),
// then Server::RunPaused(Chain::SwitchSnapshot): every worker stops starting requests, the
// started ones finish and their replies are sent, new writes move to the new layer in memory,
// the workers resume; then Chain::CompleteSnapshot makes the frozen layer durable before the
// reply. So a write acknowledged before the snapshot request is in the snapshot, none sent
// after the reply is, and a write in flight lands wholly on one side (it either finished
// before the pause or starts after it). The drain is bounded (`pause_timeout`): a client that
// does not read its replies makes the snapshot fail with a clear error instead of stalling
// every client.
//
// Each frozen layer of the served chain with a snapshot name is exported read-only as "@NAME",
// opened on demand (ExportTable::AddOnDemand): its own Chain opened read-only on
// `<stem>@NAME.strata` (shared flocks, compatible with the server's) when a client names it,
// closed when its last connection ends. Many snapshots then cost nothing until read.
//
// A live snapshot is published (exported and counted as taken) by the chain's snapshot
// listener, exactly once, when it becomes durable: usually in CompleteSnapshot before the
// reply, but after an I/O error there it is a later FLUSH or the next snapshot that completes
// it, on whichever thread runs that. So the published state (Published) has its own lock,
// never held while calling into the chain, and the listener shares its ownership.
//
// Thread safety: Handle() is called by the control socket's one thread; requests are therefore
// serialized. Every method takes mu_ anyway so tests may call it from anywhere.
#ifndef STRATA_SERVER_CONTROL_LIVE_CONTROL_H_
#define STRATA_SERVER_CONTROL_LIVE_CONTROL_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "blockstore/mutex.h"
#include "nlohmann/json.hpp"
#include "server/control/merge_job.h"
#include "server/engine/chain_storage.h"
#include "server/nbd/export.h"
#include "server/server.h"

namespace strata {

struct LiveControlOptions {
  // Longest a snapshot or revert waits for in-flight requests to finish before giving up.
  absl::Duration pause_timeout = absl::Seconds(5);
  std::string control_path;     // shown by `info`
};

// The state of a chain's NBD base (blockstore/remote_base.h), as `list`, `stats` and `strata
// info --json` show it.
nlohmann::json RemoteBaseJson(const LayerInfo& base);

class LiveControl {
 public:
  // `disk` is the served chain, also in `exports` as the default export. All three outlive
  // this object's use.
  LiveControl(Server* server, ExportTable* exports, ChainStorage* disk, LiveControlOptions options);
  ~LiveControl();

  // Exports every named frozen layer of the served chain as "@NAME" (at startup). Nothing is
  // opened here: a snapshot that cannot be opened fails when a client names it.
  void AddSnapshotExports();
  // The control socket's handler: dispatches on request["request"].
  absl::Status Handle(const nlohmann::json& request, nlohmann::json* reply);

  // Names of the snapshot exports, for tests and logs.
  std::vector<std::string> SnapshotExportNames() const;

  // Resumes a snapshot deletion an earlier run left unfinished (at startup).
  void ResumeMerges();
  // Stops a running deletion, keeping its journal (before the chain closes).
  void StopMerges();

 private:
  absl::Status Snapshot(const nlohmann::json& request, nlohmann::json* reply);
  absl::Status List(nlohmann::json* reply);
  absl::Status Stats(nlohmann::json* reply);
  absl::Status Info(nlohmann::json* reply);
  absl::Status Revert(const nlohmann::json& request, nlohmann::json* reply);
  absl::Status DeleteOffChainLocked(const std::string& name, nlohmann::json* reply)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // delete-snapshot {"name"} and commit {"layer"?}: start an online deletion (stream).
  absl::Status DeleteSnapshot(const nlohmann::json& request, nlohmann::json* reply);
  absl::Status Cancel(nlohmann::json* reply);
  absl::Status Job(nlohmann::json* reply);
  // Starts the job for the stream journaled at `journal` (snapshot `name`), unexporting it.
  void StartMergeLocked(const std::string& journal, const std::string& name)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Why a new deletion or a revert cannot start now ("" when it can).
  std::string MergeInTheWayLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Has the served chain (a new one after a revert) report completed snapshots to published_.
  void WatchSnapshots();
  // Connections of every worker (also those still negotiating).
  absl::StatusOr<int> CountConnections();

  Server* server_;
  ExportTable* exports_;
  ChainStorage* disk_;
  const LiveControlOptions options_;
  const int64_t started_wall_ns_;

  class Published;
  const std::shared_ptr<Published> published_;

  mutable Mutex mu_;
  std::vector<double> pauses_ms_ ABSL_GUARDED_BY(mu_);  // live snapshots switched
  uint64_t snapshot_failures_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t pause_timeouts_ ABSL_GUARDED_BY(mu_) = 0;
  std::unique_ptr<MergeJob> merge_ ABSL_GUARDED_BY(mu_);  // the running or last deletion
};

}  // namespace strata

#endif  // STRATA_SERVER_CONTROL_LIVE_CONTROL_H_
