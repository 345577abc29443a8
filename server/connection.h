// Connection: one NBD client on a worker's ring, from greeting to close.
//
// Design note. A connection has at most one recv and one send in flight. The recv fills an input
// buffer that the handshake, then the request parser, consume; a WRITE payload beyond what the
// buffer already holds is received straight into the request's own (aligned) buffer, so large
// writes are never copied. Each parsed request goes validate -> execute -> reply
// (request.h holds the pure parts); requests run concurrently and complete in any order. A
// finished request's reply is queued; the queue is sent by one sendmsg at a time gathering many
// replies, so one reply's bytes never interleave with another's and a short send just resumes
// where it stopped.
//
// Request lifecycle (RequestPhase, in order): kPayload (receiving WRITE data) -> kHeld (worker
// paused) -> kRunning (file I/O on the ring, or kBlocking on the blocking pool, or kParked
// waiting for a conflicting write) -> kSending -> released. File I/O phases of a write:
// PrepareWrite -> read head/tail fills into the buffer margins -> write the targets ->
// FinishWrite; WRITE_ZEROES runs Storage::Zero on the pool, then writes zeros through the same
// path for the ranges Zero hands back.
//
// Not done yet: registered (fixed) buffers and files; a handshake timeout; TLS.
#ifndef STRATA_SERVER_CONNECTION_H_
#define STRATA_SERVER_CONNECTION_H_

#include <sys/socket.h>
#include <sys/uio.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "server/handshake.h"
#include "server/request.h"
#include "server/stats.h"
#include "server/storage.h"

namespace strata {

class Worker;
class Connection;
struct Request;

// One file read or write SQE of a request (user_data = tagged pointer to it).
struct IoPiece {
  Request* req = nullptr;
  char* buf = nullptr;
  uint64_t file_offset = 0;
  uint64_t virtual_offset = 0;  // for the error reply's offset
  uint32_t length = 0;
  uint32_t done = 0;
  int fd = -1;
  bool write = false;
  // O_DIRECT fill reads go to an aligned bounce buffer (`buf`, from the pool, capacity
  // bounce_cap); once read, copy_len bytes at buf + copy_offset are copied to copy_dst.
  char* copy_dst = nullptr;
  uint32_t copy_offset = 0;
  uint32_t copy_len = 0;
  size_t bounce_cap = 0;
};

enum class RequestPhase : uint8_t { kPayload, kHeld, kRunning, kBlocking, kParked, kSending };
absl::string_view Name(RequestPhase phase);

struct Request {
  Connection* conn = nullptr;
  nbd::RequestHeader h;
  nbd::Command cmd = nbd::Command::kRead;
  RequestPhase phase = RequestPhase::kPayload;
  bool raw = false;      // handshake bytes, not an NBD request
  bool started = false;  // counted in the worker's active requests
  int64_t start_ns = 0;  // MonotonicNs() when parsed: the latency figure starts here
  absl::Status status;
  std::optional<uint64_t> error_offset;

  // Buffer: holds virtual bytes [buf_start, buf_start + buf_cap).
  char* buf = nullptr;
  size_t buf_cap = 0;
  uint64_t buf_start = 0;
  uint32_t payload_got = 0;

  // File I/O in flight.
  std::vector<IoPiece> pieces;
  int pending = 0;

  // READ
  std::vector<Segment> segments;
  ReadPin read_pin;  // READ: keeps `segments`' slots from reuse until the preads completed
  std::vector<ReadRun> runs;

  // WRITE / WRITE_ZEROES: ranges written one after the other through PrepareWrite.
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  size_t next_range = 0;
  WritePlan plan;
  bool plan_active = false;
  bool filling = false;  // pieces in flight read head/tail fills (not the targets)

  // Reply on the wire: header bytes plus pieces of header/data.
  std::string header;
  std::vector<ReplyPiece> reply;
  size_t reply_index = 0;  // first piece not fully sent
  size_t reply_skip = 0;   // bytes of reply[reply_index] already sent

  char* data() const { return buf + (h.offset - buf_start); }
};

class Connection {
 public:
  Connection(Worker* worker, int fd, uint64_t id, std::string peer);
  ~Connection();

  // Sends the greeting and starts reading.
  void Start();
  // Worker shutdown: requests already received but not started are refused with ESHUTDOWN
  // (spec, "Terminating the transmission phase"); started ones finish; then close.
  void Shutdown();
  // Shuts the socket down (the server's shutdown grace ran out): a send the client never reads
  // fails, so the connection can close once its started file I/O is done.
  void Abort();

  // Completions dispatched by the worker.
  void OnRecv(int res);
  void OnSend(int res);
  void OnPiece(IoPiece* piece, int res);
  // Held request resumed by the worker.
  void Execute(Request* r);
  // Parked write retried by the worker.
  void RetryWrite(Request* r) { StartRange(r); }

  uint64_t id() const { return id_; }
  // A copy of the counters (ring thread only).
  ConnectionStats Stats() const;

 private:
  enum class State { kHandshake, kTransmission, kDraining, kClosed };

  // Input
  void ArmRecv();
  void Process();
  bool FlowBlocked() const;
  void Dispatch(Request* r);
  // Execution
  void StartRead(Request* r);
  void StartRange(Request* r);
  void SubmitTargets(Request* r);
  void RangeWritten(Request* r);
  void WritesDone(Request* r);
  void StartZero(Request* r);
  void StartBlockStatus(Request* r);
  void RunBlockingThenReply(Request* r, std::function<absl::Status()> work);
  void PiecesDone(Request* r);
  void SubmitPieces(Request* r);
  void Fail(Request* r, absl::Status status);
  // Output
  void Reply(Request* r);
  void QueueRaw(std::string bytes);
  void FlushSends();
  // Lifetime
  Request* NewRequest();
  void AcquireBuffer(Request* r, uint64_t start, uint64_t end);
  void Release(Request* r);
  void BeginDrain(std::string reason);
  // Frees a WRITE whose payload was still being received (the connection is draining).
  void ReleasePayload();
  void MaybeClose();

  Worker* worker_;
  const int fd_;
  const uint64_t id_;
  const std::string peer_;
  State state_ = State::kHandshake;
  std::string close_reason_;
  Handshake handshake_;
  Negotiated session_;
  Storage* storage_ = nullptr;
  uint64_t alignment_ = kDirectIoAlignment;  // buffer placement (max of 4 KiB and sub-block)

  // Input buffer [in_begin_, in_end_) of in_.
  std::vector<char> in_;
  size_t in_begin_ = 0;
  size_t in_end_ = 0;
  bool recv_in_flight_ = false;
  Request* payload_req_ = nullptr;  // WRITE whose payload is being received directly

  // Output
  std::deque<Request*> send_queue_;
  std::vector<iovec> send_iov_;
  msghdr send_msg_{};
  bool send_in_flight_ = false;
  bool send_failed_ = false;
  bool shutting_down_ = false;

  int inflight_ = 0;  // requests (and raw sends) not yet released
  uint64_t inflight_bytes_ = 0;

  // Counters for `stats` and the close log line; written on the ring thread only.
  IoCounters io_;
  const int64_t opened_ns_;
};

}  // namespace strata

#endif  // STRATA_SERVER_CONNECTION_H_
