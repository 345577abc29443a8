#include "server/server.h"

#include <unistd.h>

#include "absl/strings/str_format.h"
#include "server/engine/storage.h"
#include "server/log.h"

namespace strata {

Server::Server(const ExportTable* exports, ServerOptions options)
    : exports_(exports),
      options_(options),
      budget_(options.max_buffer_memory, options.buffer_floor_per_connection),
      no_space_(options.full_volume),
      admission_(options.admission) {}

Server::~Server() { Shutdown(); }

absl::Status Server::Start() {
  pool_ = std::make_unique<BlockingPool>(options_.blocking_threads);
  for (int i = 0; i < options_.workers; ++i) {
    auto w = std::make_unique<Worker>(i, exports_, pool_.get(), &no_space_, &budget_,
                                      options_.limits, &admission_, options_.tls);
    absl::Status st = w->Init();
    if (!st.ok()) return st;
    workers_.push_back(std::move(w));
  }
  for (auto& w : workers_) w->Start();
  volume_watch_ = std::make_unique<VolumeWatch>(options_.volume_dir, &no_space_, [this] {
    for (auto& w : workers_) {
      w->Post([w = w.get()] { w->RetryWaitingForSpace(/*give_up=*/false); });
    }
  });
  return volume_watch_->Start();
}

void Server::AddConnection(int fd, std::string peer) {
  const unsigned i = next_worker_.fetch_add(1) % workers_.size();
  const Admission::Decision d = admission_.Admit(static_cast<int>(i));
  const AdmissionLimits& caps = admission_.limits();
  if (!d.admitted) {
    close(fd);
    STRATA_LOG_LIMITED(kError,
                       "connection from %s refused: %d connections open, the most allowed "
                       "(--max-connections %d raises it; %d of them in handshake)",
                       peer, d.open, caps.max_connections, d.handshaking);
    return;
  }
  if (d.evict) {
    // Its close line (rate-limited) gives the reason.
    workers_[d.evict->worker]->Evict(
        d.evict->id,
        absl::StrFormat("still in handshake after %.3f s, the oldest of %d: room for a new "
                        "connection (--max-handshakes raises it)",
                        absl::ToDoubleSeconds(absl::Now() - d.evict->since),
                        caps.max_handshakes));
  }
  workers_[i]->AddConnection(fd, std::move(peer), d.id);
}

absl::Status Server::RunPaused(const std::function<absl::Status()>& fn, absl::Duration* pause,
                              absl::Duration drain_timeout) {
  MutexLock serialize(&pause_mu_);
  const absl::Time begin = absl::Now();
  // Shared with the workers' callbacks: after a timeout we return while a worker may still
  // drain later and call back, so the count cannot live on this stack frame.
  struct Drain {
    Mutex mu;
    int left ABSL_GUARDED_BY(mu) = 0;
  };
  auto drain = std::make_shared<Drain>();
  {
    MutexLock lock(&drain->mu);
    drain->left = static_cast<int>(workers_.size());
  }
  for (auto& w : workers_) {
    w->Pause([drain] {
      MutexLock lock(&drain->mu);
      --drain->left;
    });
  }
  int left;
  {
    MutexLock lock(&drain->mu);
    // A local, not an init-capture: clang resolves the annotation before the capture exists.
    auto* d = drain.get();
    auto drained = [d]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(d->mu) { return d->left == 0; };
    drain->mu.AwaitWithTimeout(absl::Condition(&drained), drain_timeout);
    left = drain->left;
  }
  absl::Status st;
  if (left > 0) {
    st = absl::DeadlineExceededError(absl::StrFormat(
        "%d of %d workers still had requests running or replies unsent after %s (a client "
        "that stops reading its socket holds its replies); nothing was done, I/O resumed",
        left, workers_.size(), absl::FormatDuration(drain_timeout)));
  } else {
    st = fn();
  }
  for (auto& w : workers_) w->Resume();
  if (pause != nullptr) *pause = absl::Now() - begin;
  return st;
}

absl::StatusOr<std::vector<WorkerStats>> Server::CollectStats(absl::Duration timeout) {
  struct Gather {
    Mutex mu;
    std::vector<WorkerStats> stats ABSL_GUARDED_BY(mu);
    size_t done ABSL_GUARDED_BY(mu) = 0;
  };
  auto g = std::make_shared<Gather>();
  const size_t n = workers_.size();
  for (auto& w : workers_) {
    w->CollectStats([g](WorkerStats ws) {
      MutexLock lock(&g->mu);
      g->stats.push_back(std::move(ws));
      ++g->done;
    });
  }
  MutexLock lock(&g->mu);
  auto* gp = g.get();  // as in the drain above: clang needs it in scope for the annotation
  auto all = [gp, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(gp->mu) { return gp->done == n; };
  if (!g->mu.AwaitWithTimeout(absl::Condition(&all), timeout)) {
    return absl::DeadlineExceededError(
        absl::StrFormat("stats: %d of %d workers did not answer within %s", n - g->done, n,
                        absl::FormatDuration(timeout)));
  }
  return g->stats;
}

void Server::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  volume_watch_.reset();  // it posts to the workers
  for (auto& w : workers_) w->Shutdown();
  const absl::Time deadline = absl::Now() + options_.shutdown_grace;
  bool forced = false;
  for (auto& w : workers_) {
    if (!forced && !w->WaitStopped(deadline)) {
      forced = true;
      STRATA_LOG(kError, "shutdown: connections still open after %s (a client that does not "
                         "read its replies?): closing their sockets",
                 absl::FormatDuration(options_.shutdown_grace));
      for (auto& x : workers_) x->AbortConnections();
    }
  }
  for (auto& w : workers_) w->Join();
  // A blocking job posts its result to its worker: the pool drains while the workers (their
  // mailboxes and eventfds) still exist, or that post writes to a closed, maybe reused, fd.
  pool_.reset();  // runs what is queued, then joins
  workers_.clear();
}

}  // namespace strata
