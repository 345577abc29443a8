#include "server/engine/worker.h"

#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_format.h"
#include "server/engine/admission.h"
#include "server/engine/connection.h"
#include "server/log.h"

namespace strata {

namespace {
// CQEs reaped per batch.
constexpr unsigned kReapBatch = 256;
// Parked writes (PrepareWrite said kUnavailable) are retried when any write on this worker
// finishes; the timer covers a conflicting write on another worker, which we hear nothing of.
constexpr long kParkedRetryNs = 500 * 1000;
// How often connections are checked for timeouts: a timeout fires within a second of its time.
constexpr long kSweepSeconds = 1;

std::atomic<uint64_t> g_next_connection_id{1};
}  // namespace

uint64_t NextConnectionId() { return g_next_connection_id.fetch_add(1); }

absl::string_view Name(CompletionTag tag) {
  switch (tag) {
    case CompletionTag::kIgnore: return "ignore";
    case CompletionTag::kPiece: return "piece";
    case CompletionTag::kRecv: return "recv";
    case CompletionTag::kSend: return "send";
    case CompletionTag::kWake: return "wake";
    case CompletionTag::kTimer: return "timer";
    case CompletionTag::kSweep: return "sweep";
  }
  return "?";
}

Worker::Worker(int index, const ExportTable* exports, BlockingPool* pool, NoSpaceState* no_space,
               BufferBudget* budget, WorkerLimits limits, Admission* admission,
               ConnectionTls tls)
    : index_(index),
      exports_(exports),
      pool_(pool),
      no_space_(no_space),
      budget_(budget),
      limits_(limits),
      admission_(admission),
      tls_(tls) {}

Worker::~Worker() {
  if (thread_.joinable()) thread_.join();
  budget_->Forget(this);
  for (Connection* c : closed_) delete c;
  if (ring_ready_) io_uring_queue_exit(&ring_);
  if (wake_fd_ >= 0) close(wake_fd_);
}

absl::Status Worker::Init() {
  // One thread submits (SINGLE_ISSUER), and completions' task work runs only when it waits
  // for them (DEFER_TASKRUN), not by interrupting it mid-batch: fewer wakeups and IPIs per
  // request. The ring is made here but enabled on its own thread (R_DISABLED), the one
  // issuer. Kernels before 6.1 refuse the flags: then a plain ring.
  io_uring_params params{};
  params.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
                 IORING_SETUP_R_DISABLED;
  params.cq_entries = limits_.ring_entries * 2;
  int ret = io_uring_queue_init_params(limits_.ring_entries, &ring_, &params);
  if (ret == -EINVAL) {
    params = {};
    params.flags = IORING_SETUP_CQSIZE;
    params.cq_entries = limits_.ring_entries * 2;
    ret = io_uring_queue_init_params(limits_.ring_entries, &ring_, &params);
  }
  ring_disabled_ = ret >= 0 && (params.flags & IORING_SETUP_R_DISABLED) != 0;
  if (ret < 0) {
    return absl::ErrnoToStatus(
        -ret, absl::StrFormat("worker %d: io_uring_queue_init(%u) (needs Linux 5.6 or later and "
                              "io_uring not disabled by sysctl or seccomp)",
                              index_, limits_.ring_entries));
  }
  ring_ready_ = true;
  wake_fd_ = eventfd(0, EFD_CLOEXEC);
  if (wake_fd_ < 0) {
    return absl::ErrnoToStatus(errno, absl::StrFormat("worker %d: eventfd", index_));
  }
  return absl::OkStatus();
}

void Worker::Start() {
  thread_ = std::thread([this] {
    // Named for top -H and perf, and so tests can tell a ring thread from the others.
    pthread_setname_np(pthread_self(), absl::StrFormat("%s%d", kRingThreadPrefix, index_).c_str());
    Loop();
  });
}

void Worker::Join() {
  if (thread_.joinable()) thread_.join();
}

void Worker::Post(std::function<void()> fn) {
  {
    MutexLock lock(&mu_);
    mailbox_.push_back(std::move(fn));
  }
  uint64_t one = 1;
  // eventfd counters only fail on overflow, which 2^64-1 posts would take.
  ssize_t ignored = write(wake_fd_, &one, sizeof(one));
  (void)ignored;
}

void Worker::AddConnection(int fd, std::string peer, uint64_t id) {
  Post([this, fd, id, peer = std::move(peer)]() mutable {
    if (stopping_) {
      close(fd);
      if (admission_ != nullptr) admission_->Closed(id);
      return;
    }
    auto* c = new Connection(this, fd, id, std::move(peer));
    connections_.insert(c);
    c->Start();
  });
}

void Worker::Shutdown() {
  Post([this] {
    stopping_ = true;
    // A write waiting for space would hold its connection open until --full-timeout.
    RetryWaitingForSpace(/*give_up=*/true);
    // A pause in progress is left alone: its drained callback fires only in CheckDrained, once
    // no request is active, and its Resume (RunPaused always sends one, after its function or
    // its timeout) runs the held requests; their connections close once they are answered.
    // Copy: Shutdown may close a connection (and erase it) right away.
    std::vector<Connection*> all(connections_.begin(), connections_.end());
    for (Connection* c : all) c->Shutdown();
  });
}

bool Worker::WaitStopped(absl::Time deadline) {
  return stopped_.WaitForNotificationWithDeadline(deadline);
}

void Worker::AbortConnections() {
  Post([this] {
    // Copy: Abort may close a connection (and erase it) right away.
    std::vector<Connection*> all(connections_.begin(), connections_.end());
    for (Connection* c : all) c->Abort("closed by the server's shutdown grace period");
  });
}

void Worker::Evict(uint64_t id, std::string why) {
  Post([this, id, why = std::move(why)]() mutable {
    for (Connection* c : connections_) {
      // It may have finished its handshake since it was chosen: then it stays.
      if (c->id() == id && c->in_handshake()) {
        c->Abort(std::move(why));
        return;
      }
    }
  });
}

void Worker::Pause(std::function<void()> on_drained) {
  Post([this, on_drained = std::move(on_drained)]() mutable {
    paused_ = true;
    on_drained_ = std::move(on_drained);
    CheckDrained();
  });
}

void Worker::Resume() {
  Post([this] {
    paused_ = false;
    on_drained_ = nullptr;  // a pause that timed out before draining never calls back
    std::deque<Request*> held;
    held.swap(held_);
    for (Request* r : held) r->conn->Execute(r);
  });
}

void Worker::CollectStats(std::function<void(WorkerStats)> done) {
  Post([this, done = std::move(done)] {
    WorkerStats stats;
    stats.connections.reserve(connections_.size());
    for (const Connection* c : connections_) stats.connections.push_back(c->Stats());
    stats.closed = closed_io_;
    stats.connections_closed = closed_count_;
    done(std::move(stats));
  });
}

void Worker::BudgetFreed() {
  Post([this] { ResumeBudgetWaiting(); });
}

void Worker::ResumeBudgetWaiting() {
  std::vector<Connection*> waiting;
  waiting.swap(budget_waiting_);
  // One that finds no room again waits again (and this worker with it).
  for (Connection* c : waiting) c->BudgetFreed();
}

// The only place the drained callback fires: a pause is released only with no request active.
void Worker::CheckDrained() {
  if (paused_ && on_drained_ && active_ == 0) {
    auto cb = std::move(on_drained_);
    on_drained_ = nullptr;
    cb();
  }
}

void Worker::RequestDone() {
  --active_;
  CheckDrained();
}

io_uring_sqe* Worker::GetSqe() {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  while (sqe == nullptr) {
    // SQ full: hand what we have to the kernel and take a fresh slot.
    int ret = io_uring_submit(&ring_);
    if (ret < 0 && ret != -EAGAIN && ret != -EBUSY && ret != -EINTR) {
      STRATA_LOG(kError, "worker %d: io_uring_submit: %s", index_, strerror(-ret));
    }
    sqe = io_uring_get_sqe(&ring_);
  }
  return sqe;
}

void Worker::RunBlocking(std::function<absl::Status()> work,
                         std::function<void(absl::Status)> done) {
  pool_->Submit([this, work = std::move(work), done = std::move(done)]() mutable {
    absl::Status st = work();
    Post([done = std::move(done), st = std::move(st)]() mutable { done(std::move(st)); });
  });
}

void Worker::RunDetached(std::function<void()> work) { pool_->Submit(std::move(work)); }

void Worker::Park(DiskIo* io) {
  parked_.push_back(io);
  ArmTimer();
}

bool Worker::WaitForSpace(DiskIo* io) {
  if (stopping_) return false;
  waiting_for_space_.push_back(io);
  return true;
}

void Worker::RetryWaitingForSpace(bool give_up) {
  std::vector<DiskIo*> waiting;
  waiting.swap(waiting_for_space_);
  for (DiskIo* io : waiting) io->RetryAfterWaiting(give_up);
}

void Worker::ArmTimer() {
  if (timer_armed_) return;
  timer_ts_.tv_sec = 0;
  timer_ts_.tv_nsec = kParkedRetryNs;
  io_uring_sqe* sqe = GetSqe();
  io_uring_prep_timeout(sqe, &timer_ts_, 0, 0);
  io_uring_sqe_set_data64(sqe, MakeUserData(CompletionTag::kTimer, this));
  timer_armed_ = true;
}

void Worker::ArmSweep() {
  sweep_ts_.tv_sec = kSweepSeconds;
  sweep_ts_.tv_nsec = 0;
  io_uring_sqe* sqe = GetSqe();
  io_uring_prep_timeout(sqe, &sweep_ts_, 0, 0);
  io_uring_sqe_set_data64(sqe, MakeUserData(CompletionTag::kSweep, this));
}

void Worker::Sweep() {
  const int64_t now = MonotonicNs();
  // Copy: a timeout closes (and erases) its connection right away.
  std::vector<Connection*> all(connections_.begin(), connections_.end());
  for (Connection* c : all) c->CheckTimeouts(now);
}

void Worker::RetryParked() {
  retry_parked_ = false;
  if (parked_.empty()) return;
  std::vector<DiskIo*> parked;
  parked.swap(parked_);
  for (DiskIo* io : parked) io->Retry();
}

void Worker::ArmWake() {
  io_uring_sqe* sqe = GetSqe();
  io_uring_prep_read(sqe, wake_fd_, &wake_buf_, sizeof(wake_buf_), 0);
  io_uring_sqe_set_data64(sqe, MakeUserData(CompletionTag::kWake, this));
}

void Worker::RunMailbox() {
  std::vector<std::function<void()>> work;
  {
    MutexLock lock(&mu_);
    work.swap(mailbox_);
  }
  for (auto& fn : work) fn();
}

void Worker::ConnectionClosed(Connection* c, const IoCounters& io) {
  connections_.erase(c);
  std::erase(budget_waiting_, c);
  std::erase(flush_, c);
  closed_io_.Merge(io);
  ++closed_count_;
  closed_.push_back(c);
  if (admission_ != nullptr) admission_->Closed(c->id());
}

void Worker::ConnectionNegotiated(const Connection* c) {
  if (admission_ != nullptr) admission_->Negotiated(c->id());
}

void Worker::Complete(uint64_t user_data, int res) {
  switch (TagOf(user_data)) {
    case CompletionTag::kPiece: {
      IoPiece* p = PointerOf<IoPiece>(user_data);
      p->io->OnPiece(p, res);
      return;
    }
    case CompletionTag::kRecv:
      PointerOf<Connection>(user_data)->OnRecv(res);
      return;
    case CompletionTag::kSend:
      PointerOf<Connection>(user_data)->OnSend(res);
      return;
    case CompletionTag::kWake:
      if (res < 0 && res != -EAGAIN && res != -EINTR) {
        STRATA_LOG(kError, "worker %d: eventfd read: %s", index_, strerror(-res));
      }
      ArmWake();
      RunMailbox();
      return;
    case CompletionTag::kTimer:
      timer_armed_ = false;
      RetryParked();
      if (!parked_.empty()) ArmTimer();
      return;
    case CompletionTag::kSweep:
      Sweep();
      ArmSweep();
      return;
    case CompletionTag::kIgnore:
      return;
  }
}

void Worker::FlushReplies() {
  // A flush never queues another, but a connection may be added while the list is walked.
  while (!flush_.empty()) {
    std::vector<Connection*> flush;
    flush.swap(flush_);
    for (Connection* c : flush) c->FlushPendingSends();
  }
}

void Worker::Loop() {
  if (ring_disabled_) {
    // This thread becomes the ring's one issuer.
    // liburing 2.3 declares io_uring_enable_rings but its library lacks it: the syscall.
    if (syscall(__NR_io_uring_register, ring_.ring_fd, IORING_REGISTER_ENABLE_RINGS, nullptr, 0) <
        0) {
      STRATA_LOG(kError, "worker %d: enabling its io_uring: %s", index_, strerror(errno));
    }
  }
  ArmWake();
  ArmSweep();
  io_uring_cqe* cqes[kReapBatch];
  while (!(stopping_ && connections_.empty())) {
    int ret = io_uring_submit_and_wait(&ring_, 1);
    if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) {
      STRATA_LOG(kError, "worker %d: io_uring_submit_and_wait: %s", index_, strerror(-ret));
    }
    unsigned n = io_uring_peek_batch_cqe(&ring_, cqes, kReapBatch);
    for (unsigned i = 0; i < n; ++i) Complete(cqes[i]->user_data, cqes[i]->res);
    io_uring_cq_advance(&ring_, n);
    if (retry_parked_) RetryParked();
    FlushReplies();
    for (Connection* c : closed_) delete c;
    closed_.clear();
  }
  // Requests are all done (connections close only when idle); the wake read and the timers
  // go with the ring.
  io_uring_submit(&ring_);
  stopped_.Notify();
}

}  // namespace strata
