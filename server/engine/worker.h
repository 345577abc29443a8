// Worker: one thread, one io_uring ring, the connections pinned to it.
//
// Design note. Everything a connection does — socket recv/send, file reads/writes — is an SQE on
// its worker's ring; the loop submits once per batch (io_uring_submit_and_wait), reaps a batch
// (peek_batch_cqe) and advances the CQ once. Each SQE's user_data is a tagged pointer
// (MakeUserData): the low 3 bits say what completed, the rest points at the object (a
// connection for socket I/O, an IoPiece of a request for file I/O). Other threads talk to a
// worker only through Post(): a mutex-guarded mailbox plus an eventfd whose read is always
// armed on the ring, so the ring thread never blocks on anything but io_uring_enter.
//
// Timeouts and budget: a timeout SQE (kSweep) fires once a second and checks every connection's
// handshake and payload timeouts (WorkerLimits), so no connection needs a timer of its own. A
// connection the server's BufferBudget refused waits on its worker's list; when any thread
// gives budget back, BufferBudget calls the worker's BudgetFreed, which Posts, and the ring
// thread resumes those connections.
//
// Pause/drain (for live snapshots, issue 5): Pause() stops starting new requests (they are
// parsed and held), waits until every started request has finished and its reply has been
// sent, then calls back; Resume() runs the held requests. Server::RunPaused builds "pause all
// workers, run a function, resume" on top of it.
#ifndef STRATA_SERVER_ENGINE_WORKER_H_
#define STRATA_SERVER_ENGINE_WORKER_H_

#include <liburing.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "blockstore/mutex.h"
#include "server/engine/blocking_pool.h"
#include "server/engine/buffer_pool.h"
#include "server/engine/stats.h"
#include "server/nbd/export.h"
#include "server/nbd/handshake.h"
#include "server/tls/tls.h"

namespace strata {

class Admission;
class Connection;
class DiskIo;
struct Request;

// A process-wide connection id, new at each call (1, 2, ...): log lines and `stats` name
// connections by it.
uint64_t NextConnectionId();

// What a completion is about: the low bits of user_data.
enum class CompletionTag : uint64_t {
  kIgnore = 0,  // cancel requests and the like: nothing to do
  kPiece = 1,   // IoPiece*: file read or write of a request (disk_io.h)
  kRecv = 2,    // Connection*
  kSend = 3,    // Connection*
  kWake = 4,    // Worker*: the mailbox eventfd was written
  kTimer = 5,   // Worker*: retry timer for parked writes
  kSweep = 6,   // Worker*: the once-a-second timeout sweep
};
absl::string_view Name(CompletionTag tag);

inline uint64_t MakeUserData(CompletionTag tag, const void* p) {
  const uint64_t bits = reinterpret_cast<uint64_t>(p);
  // Objects are at least 8-byte aligned, so the low 3 bits are free for the tag.
  if ((bits & 7) != 0) __builtin_trap();
  return bits | static_cast<uint64_t>(tag);
}
inline CompletionTag TagOf(uint64_t user_data) {
  return static_cast<CompletionTag>(user_data & 7);
}
template <typename T>
T* PointerOf(uint64_t user_data) {
  return reinterpret_cast<T*>(user_data & ~uint64_t{7});
}

// Ring threads are named kRingThreadPrefix + the worker's index ("strata-ring0").
inline constexpr char kRingThreadPrefix[] = "strata-ring";

struct WorkerLimits {
  unsigned ring_entries = 1024;  // SQ size; the CQ is twice that
  // Per connection: requests parsed and not yet fully replied, and their buffer bytes (its
  // share of the server's BufferBudget). Past either, the connection stops reading its socket
  // until replies go out (back-pressure).
  int max_requests_per_connection = 256;
  uint64_t max_buffer_bytes_per_connection = 64ull << 20;
  // A connection still negotiating after this long, or whose WRITE payload receives nothing
  // for this long, is closed (checked once a second). Zero: no limit.
  absl::Duration handshake_timeout = absl::Seconds(10);
  absl::Duration request_timeout = absl::Seconds(30);
};

// The server's TLS policy for its connections. `credentials` (null when mode is kOff) outlives
// every worker.
struct ConnectionTls {
  TlsMode mode = TlsMode::kOff;
  const TlsCredentials* credentials = nullptr;
};

class Worker final : public BudgetWaiter {
 public:
  // `no_space`, `budget` and `admission` (shared by every worker, owned by the Server) outlive
  // the worker; without `admission` connections are not counted.
  Worker(int index, const ExportTable* exports, BlockingPool* pool, NoSpaceState* no_space,
         BufferBudget* budget, WorkerLimits limits = {}, Admission* admission = nullptr,
         ConnectionTls tls = {});
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Sets up the ring and eventfd; an error names what failed (e.g. io_uring not permitted).
  absl::Status Init();
  void Start();
  // Waits for the loop to end (after Shutdown and the last connection closed).
  void Join();

  // --- Thread-safe ---
  // Runs `fn` on the worker thread, soon.
  void Post(std::function<void()> fn);
  // Takes ownership of a connected socket; `id` is what Admission::Admit gave it.
  void AddConnection(int fd, std::string peer, uint64_t id = NextConnectionId());
  // Closes connection `id` if it is still in handshake (Admission evicted it), saying `why`.
  void Evict(uint64_t id, std::string why);
  // Ends every connection once its started requests are done; then the loop ends. A pause in
  // progress is not ended: only its Resume runs the held requests.
  void Shutdown();
  // After Shutdown: true once the loop ended, false if `deadline` passed first.
  bool WaitStopped(absl::Time deadline);
  // Shuts down every connection's socket, so replies a client never reads stop holding it.
  void AbortConnections();
  // Stops starting requests; `on_drained` runs on the ring thread once no started request is
  // active (finished and its reply sent), and never before, whatever happens meanwhile.
  void Pause(std::function<void()> on_drained);
  // Ends a pause (also one that never drained: Server::RunPaused's timeout).
  void Resume();
  // Copies every connection's counters on the ring thread, then calls done(stats) there.
  void CollectStats(std::function<void(WorkerStats)> done);
  // Budget was given back (by any worker): the connections waiting for it try again.
  void BudgetFreed() override;

  // --- Ring thread only ---
  int index() const { return index_; }
  const WorkerLimits& limits() const { return limits_; }
  const ExportTable* exports() const { return exports_; }
  const ConnectionTls& tls() const { return tls_; }
  BufferPool& buffers() { return buffers_; }
  BufferBudget* budget() const { return budget_; }
  // The budget refused `c` a request's buffer: the next BudgetFreed resumes it.
  void WaitForBudget(Connection* c) { budget_waiting_.push_back(c); }
  NoSpaceState* no_space() const { return no_space_; }
  // An SQE; submits the queue first when it is full. Never null.
  io_uring_sqe* GetSqe();
  // Runs `work` on the blocking pool and `done` with its result back on this thread.
  void RunBlocking(std::function<absl::Status()> work, std::function<void(absl::Status)> done);
  // Runs `work` on the blocking pool with no completion here: the pool runs it to the end
  // before the server's storage goes away (Server::Shutdown), whatever this worker does.
  void RunDetached(std::function<void()> work);
  bool paused() const { return paused_; }
  void Hold(Request* r) { held_.push_back(r); }
  // PrepareWrite found a conflicting write in flight: DiskIo::Retry after a write finishes or
  // after a short timer.
  void Park(DiskIo* io);
  void WriteFinished() { retry_parked_ = true; }
  // --on-full=pause: `io` (counted in NoSpaceState::waiting()) waits for space until
  // RetryWaitingForSpace; false if the worker is stopping (fail it now).
  bool WaitForSpace(DiskIo* io);
  // Every waiting write tries again (the server's volume watch calls this once a second), or
  // with `give_up` fails with ENOSPC (shutdown).
  void RetryWaitingForSpace(bool give_up);
  void RequestStarted() { ++active_; }
  void RequestDone();
  // The connection closed its socket; it is deleted after the current batch. Its counters
  // join the worker's total of closed connections.
  void ConnectionClosed(Connection* c, const IoCounters& io);
  // The connection finished its handshake: it no longer counts against --max-handshakes.
  void ConnectionNegotiated(const Connection* c);
  // `c` has replies queued: they are sent at the end of this batch of completions.
  void FlushSoon(Connection* c) { flush_.push_back(c); }

 private:
  void Loop();
  void Complete(uint64_t user_data, int res);
  void ArmWake();
  void ArmTimer();
  void RunMailbox();
  void RetryParked();
  void CheckDrained();
  void ArmSweep();
  void Sweep();
  void ResumeBudgetWaiting();
  void FlushReplies();

  const int index_;
  const ExportTable* exports_;
  BlockingPool* pool_;
  NoSpaceState* no_space_;
  BufferBudget* budget_;
  const WorkerLimits limits_;
  Admission* const admission_;
  const ConnectionTls tls_;
  io_uring ring_;
  bool ring_ready_ = false;
  bool ring_disabled_ = false;  // made with R_DISABLED: Loop enables it
  int wake_fd_ = -1;
  uint64_t wake_buf_ = 0;
  std::thread thread_;

  Mutex mu_;
  std::vector<std::function<void()>> mailbox_ ABSL_GUARDED_BY(mu_);

  // Ring-thread state.
  BufferPool buffers_;
  std::unordered_set<Connection*> connections_;
  IoCounters closed_io_;  // counters of connections that closed
  uint64_t closed_count_ = 0;
  std::vector<Connection*> closed_;
  std::vector<Connection*> flush_;  // FlushSoon, in order
  std::deque<Request*> held_;
  std::vector<DiskIo*> parked_;
  std::vector<DiskIo*> waiting_for_space_;
  bool retry_parked_ = false;
  bool timer_armed_ = false;
  __kernel_timespec timer_ts_{};
  __kernel_timespec sweep_ts_{};
  std::vector<Connection*> budget_waiting_;
  bool stopping_ = false;
  Notification stopped_;  // the loop ended
  bool paused_ = false;
  std::function<void()> on_drained_;
  int64_t active_ = 0;  // requests started and not yet replied and released
};

}  // namespace strata

#endif  // STRATA_SERVER_ENGINE_WORKER_H_
