// Server: the workers and the blocking pool, plus the two whole-server operations: RunPaused
// (pause every worker, drain in-flight requests, run a function, resume — what a live snapshot
// needs) and Shutdown (finish in-flight requests, close every connection). Connections come in
// through AddConnection: listener.h's AcceptLoop accepts them.
#ifndef STRATA_SERVER_SERVER_H_
#define STRATA_SERVER_SERVER_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "blockstore/mutex.h"
#include "server/engine/admission.h"
#include "server/engine/blocking_pool.h"
#include "server/engine/stats.h"
#include "server/engine/worker.h"
#include "server/nbd/export.h"
#include "server/volume_watch.h"

namespace strata {

struct ServerOptions {
  int workers = 1;
  int blocking_threads = 4;
  WorkerLimits limits;
  AdmissionLimits admission;  // --max-connections, --max-handshakes
  // One budget for the request and reply buffers of every connection (BufferBudget): the
  // shared pool, and what each connection may hold whatever the others hold (one modest
  // request; the Linux kernel client's largest is 128 KiB).
  uint64_t max_buffer_memory = 256ull << 20;
  uint64_t buffer_floor_per_connection = 256ull << 10;
  // How long Shutdown waits for connections to finish their started requests and send their
  // replies before it closes their sockets (a client that stops reading would hold it forever).
  absl::Duration shutdown_grace = absl::Seconds(10);
  // A full host volume: what writes that need space do, and the early warning.
  FullVolumePolicy full_volume;
  // The directory whose volume holds the disk's writable layer (its free space is watched);
  // empty: not watched.
  std::string volume_dir;
  ConnectionTls tls;  // STARTTLS policy and credentials (cli: --tls, --tls-certs, --tls-psk)
};

class Server {
 public:
  Server(const ExportTable* exports, ServerOptions options);
  ~Server();

  // Creates and starts the workers.
  absl::Status Start();
  // Hands a connected socket to the next worker (round-robin), or closes it at once when it is
  // over --max-connections (with a log line, at most a few a second); may evict the oldest
  // connection still in handshake (Admission). Thread-safe.
  void AddConnection(int fd, std::string peer);
  const Admission& admission() const { return admission_; }
  // Pauses every worker, waits until no request is running or being replied on any of them,
  // runs `fn`, resumes, and returns fn's status. Requests arriving meanwhile wait. Returns the
  // time during which no request could start in *pause (may be null). Calls are serialized.
  // If the workers have not drained within `drain_timeout` (a client that stops reading its
  // socket keeps its replies unsent), fn does not run: the workers resume and the result is
  // kDeadlineExceeded naming how many requests were still running.
  absl::Status RunPaused(const std::function<absl::Status()>& fn, absl::Duration* pause = nullptr,
                         absl::Duration drain_timeout = absl::InfiniteDuration());
  // Every worker's connection counters, gathered on the ring threads (bounded by `timeout`).
  absl::StatusOr<std::vector<WorkerStats>> CollectStats(absl::Duration timeout = absl::Seconds(5));
  NoSpaceState& no_space() { return no_space_; }
  const BufferBudget& budget() const { return budget_; }
  int workers() const { return static_cast<int>(workers_.size()); }
  // Ends every connection once its started requests are answered, then joins the workers.
  // Connections still open after `shutdown_grace` get their sockets shut down: their started
  // file I/O still completes, but unsent replies are dropped.
  void Shutdown();

 private:
  const ExportTable* exports_;
  const ServerOptions options_;
  BufferBudget budget_;  // before workers_: they use it until they are gone
  std::unique_ptr<BlockingPool> pool_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::atomic<unsigned> next_worker_{0};
  NoSpaceState no_space_;
  std::unique_ptr<VolumeWatch> volume_watch_;
  Admission admission_;
  Mutex pause_mu_;  // serializes RunPaused
  bool shut_down_ = false;
};

}  // namespace strata

#endif  // STRATA_SERVER_SERVER_H_
