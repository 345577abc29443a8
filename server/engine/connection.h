// Connection: one NBD client on a worker's ring, from greeting to close: the NBD conversation.
//
// Design note. A connection has at most one recv and one send in flight. The recv fills an input
// buffer that the handshake, then the request parser, consume; a WRITE payload beyond what the
// buffer already holds is received straight into the request's own (aligned) buffer, so large
// writes are never copied. Each parsed request goes validate (nbd/request.h) -> execute (its
// DiskIo, disk_io.h) -> reply; requests run concurrently and complete in any order. A finished
// request's reply is queued; the queue is sent by one sendmsg at a time gathering many replies,
// so one reply's bytes never interleave with another's and a short send just resumes where it
// stopped. The send goes out at the end of the worker's batch of completions (FlushSoon), so
// the replies of one batch share it.
//
// Memory (README, "What strata guarantees"). The input buffer starts at one page and grows
// only while recvs fill it; caught up, it shrinks back, so an idle connection holds a page. A
// request is parsed only once its buffer (a WRITE's payload, a READ's data) is charged to the
// server's BufferBudget; when the budget refuses, the header stays unparsed in the input
// buffer and the connection stops reading its socket until its worker hears that budget was
// freed (Worker::BudgetFreed). Past its share (WorkerLimits) a connection stops reading too,
// until its replies go out. A handshake longer than --handshake-timeout, or a WRITE payload
// that stops arriving for --request-timeout, closes the connection (the worker's
// once-a-second sweep calls CheckTimeouts).
//
// Request lifecycle (Request::Phase, in order): kPayload (parsed; a WRITE receiving its data)
// -> kHeld (the worker is paused) -> kDisk (its DiskIo runs) -> kSending (reply queued) ->
// released. Invalid requests and refusals skip to kSending. Enter() checks every transition.
//
// TLS (after NBD_OPT_STARTTLS) is a seam at the two places bytes cross the socket: the recv
// fills the TLS session's ciphertext buffer and plaintext is read out of it into the same
// targets (the input buffer or a WRITE's payload buffer); queued replies are encrypted into
// the session's output, which one send at a time puts on the socket. The ring still does every
// recv and send; GnuTLS never touches the descriptor (server/tls/tls.h).
//
// Not done yet: registered (fixed) buffers and files, multishot recv (one recv in flight per
// connection already, and at QD32 the server's own stages are under 5% of a request's time:
// bench/README.md); kernel TLS; a timeout on replies a client never reads (they hold their
// budget until it reads or goes).
#ifndef STRATA_SERVER_ENGINE_CONNECTION_H_
#define STRATA_SERVER_ENGINE_CONNECTION_H_

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
#include "server/engine/disk_io.h"
#include "server/engine/stats.h"
#include "server/engine/storage.h"
#include "server/nbd/handshake.h"
#include "server/nbd/request.h"
#include "server/tls/tls.h"

namespace strata {

class Worker;
class Connection;

struct Request {
  enum class Phase : uint8_t { kPayload, kHeld, kDisk, kSending };
  static absl::string_view Name(Phase phase);

  Connection* conn = nullptr;
  nbd::RequestHeader h;
  nbd::Command cmd = nbd::Command::kRead;
  Phase phase = Phase::kPayload;
  bool raw = false;      // handshake bytes, not an NBD request
  bool started = false;  // counted in the worker's active requests
  int64_t start_ns = 0;  // MonotonicNs() when parsed: the latency figure starts here
  int64_t disk_ns = 0;   // when its disk I/O started (0: it had none)
  int64_t reply_ns = 0;  // when its reply was queued
  absl::Status status;
  std::optional<uint64_t> error_offset;

  IoBuffer buf;              // the payload, the data read, or a write widened to sub-blocks
  uint32_t payload_got = 0;  // WRITE payload bytes received so far
  DiskIo io;

  // Reply on the wire: header bytes plus pieces of header/data.
  std::string header;
  std::vector<ReplyPiece> reply;
  size_t reply_index = 0;  // first piece not fully sent
  size_t reply_skip = 0;   // bytes of reply[reply_index] already sent

  char* data() const { return buf.At(h.offset); }
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
  // Shuts the socket down (the server's shutdown grace ran out, or Admission evicted it): a
  // send the client never reads fails, so the connection can close once its started file I/O
  // is done. `why` goes in the close line.
  void Abort(std::string why);

  // Completions dispatched by the worker.
  void OnRecv(int res);
  void OnSend(int res);
  // Held request resumed by the worker.
  void Execute(Request* r);
  // The budget refused this connection a buffer and was freed since: parse again.
  void BudgetFreed();
  // The worker's sweep: closes the connection if its handshake or a WRITE payload has taken
  // too long by `now_ns` (MonotonicNs).
  void CheckTimeouts(int64_t now_ns);
  // The worker's end of a batch: the replies queued since go out (FlushSoon).
  void FlushPendingSends();
  // The request's DiskIo is done: its status is final.
  void DiskIoDone(Request* r) { Reply(r); }
  // A READ's DiskIo issued `n` reads of files (IoCounters::file_reads).
  void CountFileReads(uint64_t n) { io_.file_reads += n; }

  uint64_t id() const { return id_; }
  bool in_handshake() const { return state_ == State::kHandshake; }
  // A copy of the counters (ring thread only).
  ConnectionStats Stats() const;

 private:
  enum class State { kHandshake, kTransmission, kDraining, kClosed };

  // Input
  void ArmRecv();
  // Where the next plaintext goes: false while flow control holds the input back.
  bool RecvTarget(char** target, size_t* len);
  void PrepRecv(char* target, size_t len);
  // `n` plaintext bytes arrived in the RecvTarget.
  void Deliver(size_t n);
  void Process();
  // NBD_OPT_STARTTLS was acknowledged: the session starts once the ack is on the wire.
  void StartTls();
  bool TlsActive() const { return tls_ != nullptr && !starttls_pending_; }
  bool FlowBlocked() const;
  bool TakeBuffer(const nbd::RequestHeader& h, const absl::Status& valid, IoBuffer* buf);
  void ResizeInput(size_t size);
  void Dispatch(Request* r);
  // Output
  void Reply(Request* r);
  void QueueRaw(std::string bytes);
  // Sends the queued replies at the end of the worker's batch of completions, so the replies
  // finished in one batch leave in one sendmsg, not the first alone and the rest after it.
  void FlushSoon();
  void FlushSends();
  void FlushTls();
  // Points send_iov_ at queued reply bytes not yet sent (at most kMaxSendIov pieces and
  // max_bytes bytes); returns their size.
  size_t GatherSendIov(size_t max_bytes);
  // `bytes` of the queue went out (or into TLS records): the requests fully sent leave it.
  std::vector<Request*> AdvanceSendQueue(size_t bytes);
  // Lifetime
  Request* NewRequest();
  void Enter(Request* r, Request::Phase next);
  void Release(Request* r);
  void BeginDrain(std::string reason);
  // Frees a WRITE whose payload was still being received (the connection is draining).
  void ReleasePayload();
  void MaybeClose();
  // Queues the server's TLS close_notify and sends it; false when there is none to send.
  bool SendCloseNotify();

  Worker* worker_;
  const int fd_;
  const uint64_t id_;
  const std::string peer_;
  State state_ = State::kHandshake;
  std::string close_reason_;
  Handshake handshake_;
  Negotiated session_;
  Storage* storage_ = nullptr;
  BufferAccount buffers_;
  DiskIoContext disk_;  // what every request's DiskIo runs against, once negotiated

  // Input buffer [in_begin_, in_end_) of in_ (in_size_ bytes, from the worker's pool).
  char* in_ = nullptr;
  size_t in_size_ = 0;
  size_t in_begin_ = 0;
  size_t in_end_ = 0;
  bool recv_in_flight_ = false;
  bool recv_filled_ = false;        // the last recv filled the input buffer: keep its size
  bool budget_wait_ = false;        // the budget refused the next request's buffer
  Request* payload_req_ = nullptr;  // WRITE whose payload is being received directly
  int64_t payload_progress_ns_ = 0;  // when payload_req_ was parsed or last received bytes

  // Output
  std::deque<Request*> send_queue_;
  std::vector<iovec> send_iov_;
  msghdr send_msg_{};
  bool send_in_flight_ = false;
  bool flush_pending_ = false;  // on the worker's list for the end of the batch
  bool send_failed_ = false;
  bool shutting_down_ = false;

  // TLS, after NBD_OPT_STARTTLS; starttls_pending_ until the plaintext ack is sent.
  std::unique_ptr<TlsSession> tls_;
  bool starttls_pending_ = false;
  // The close_notify is queued, or must not be: the session failed, or the socket was shut down.
  bool close_notify_done_ = false;

  int inflight_ = 0;  // requests (and raw sends) not yet released

  // Counters for `stats` and the close log line; written on the ring thread only.
  IoCounters io_;
  const int64_t opened_ns_;
};

}  // namespace strata

#endif  // STRATA_SERVER_ENGINE_CONNECTION_H_
