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
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "server/engine/blocking_pool.h"
#include "server/engine/buffer_pool.h"
#include "server/nbd/export.h"
#include "server/nbd/handshake.h"
#include "server/engine/stats.h"
#include "server/tls/tls.h"

namespace strata {

class Connection;
class DiskIo;
struct Request;

// What a completion is about: the low bits of user_data.
enum class CompletionTag : uint64_t {
  kIgnore = 0,  // cancel requests and the like: nothing to do
  kPiece = 1,   // IoPiece*: file read or write of a request (disk_io.h)
  kRecv = 2,    // Connection*
  kSend = 3,    // Connection*
  kWake = 4,    // Worker*: the mailbox eventfd was written
  kTimer = 5,   // Worker*: retry timer for parked writes
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
  // Per connection: requests parsed and not yet fully replied, and their buffer bytes. Past
  // either, the connection stops reading its socket until replies go out (back-pressure).
  int max_requests_per_connection = 256;
  uint64_t max_buffer_bytes_per_connection = 256ull << 20;
};

// The server's TLS policy for its connections. `credentials` (null when mode is kOff) outlives
// every worker.
struct ConnectionTls {
  TlsMode mode = TlsMode::kOff;
  const TlsCredentials* credentials = nullptr;
};

class Worker {
 public:
  // `no_space` (shared by every worker, owned by the Server) outlives the worker.
  Worker(int index, const ExportTable* exports, BlockingPool* pool, NoSpaceState* no_space,
         WorkerLimits limits = {}, ConnectionTls tls = {});
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
  // Takes ownership of a connected socket.
  void AddConnection(int fd, std::string peer);
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

  // --- Ring thread only ---
  int index() const { return index_; }
  const WorkerLimits& limits() const { return limits_; }
  const ExportTable* exports() const { return exports_; }
  const ConnectionTls& tls() const { return tls_; }
  BufferPool& buffers() { return buffers_; }
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
  void RequestStarted() { ++active_; }
  void RequestDone();
  // The connection closed its socket; it is deleted after the current batch. Its counters
  // join the worker's total of closed connections.
  void ConnectionClosed(Connection* c, const IoCounters& io);

 private:
  void Loop();
  void Complete(uint64_t user_data, int res);
  void ArmWake();
  void ArmTimer();
  void RunMailbox();
  void RetryParked();
  void CheckDrained();

  const int index_;
  const ExportTable* exports_;
  BlockingPool* pool_;
  NoSpaceState* no_space_;
  const WorkerLimits limits_;
  const ConnectionTls tls_;
  io_uring ring_;
  bool ring_ready_ = false;
  int wake_fd_ = -1;
  uint64_t wake_buf_ = 0;
  std::thread thread_;

  absl::Mutex mu_;
  std::vector<std::function<void()>> mailbox_ ABSL_GUARDED_BY(mu_);

  // Ring-thread state.
  BufferPool buffers_;
  std::unordered_set<Connection*> connections_;
  IoCounters closed_io_;  // counters of connections that closed
  uint64_t closed_count_ = 0;
  std::vector<Connection*> closed_;
  std::deque<Request*> held_;
  std::vector<DiskIo*> parked_;
  bool retry_parked_ = false;
  bool timer_armed_ = false;
  __kernel_timespec timer_ts_{};
  bool stopping_ = false;
  absl::Notification stopped_;  // the loop ended
  bool paused_ = false;
  std::function<void()> on_drained_;
  int64_t active_ = 0;  // requests started and not yet replied and released
};

}  // namespace strata

#endif  // STRATA_SERVER_ENGINE_WORKER_H_
