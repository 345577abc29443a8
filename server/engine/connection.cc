#include "server/engine/connection.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/log.h"
#include "server/engine/block_status.h"
#include "server/engine/worker.h"

namespace strata {

using nbd::Command;

namespace {

// The input buffer of a connection with nothing buffered: one page, so idle connections cost
// little.
constexpr size_t kInputMin = 4 << 10;
// 64 KiB of option data plus headers must fit (Handshake::kMaxOptionLength); 128 KiB also holds
// a few dozen pipelined small WRITEs per recv.
constexpr size_t kInputMax = 128 << 10;
// Replies gathered into one sendmsg.
constexpr size_t kMaxSendIov = 256;
// With TLS, replies are encrypted up to this much ciphertext waiting for the socket, in
// pieces of at most kTlsWriteBytes: a 32 MiB READ reply costs 2 MiB of records at a time,
// not a second copy of itself.
constexpr size_t kTlsOutputHigh = 1 << 20;
constexpr size_t kTlsWriteBytes = 1 << 20;
// ENOSPC is logged at most once a second: a full host volume fails every allocating write and
// must not flood the log (README, "What strata guarantees": a full host volume).
bool ShouldLogNoSpace() {
  static std::atomic<int64_t> last{0};
  const int64_t now = MonotonicNs() / 1000000000;  // whole seconds
  int64_t prev = last.load();
  return prev != now && last.compare_exchange_strong(prev, now);
}

}  // namespace

absl::string_view Request::Name(Phase phase) {
  switch (phase) {
    case Phase::kPayload: return "payload";
    case Phase::kHeld: return "held";
    case Phase::kDisk: return "disk";
    case Phase::kSending: return "sending";
  }
  return "?";
}

Connection::Connection(Worker* worker, int fd, uint64_t id, std::string peer)
    : worker_(worker),
      fd_(fd),
      id_(id),
      peer_(std::move(peer)),
      handshake_(worker->exports(), worker->tls().mode),
      buffers_(&worker->buffers(), worker->budget(), worker),
      opened_ns_(MonotonicNs()) {
  if (LogEnabled(LogLevel::kDebug)) {
    handshake_.set_trace([id](const std::string& line) {
      STRATA_LOG(kDebug, "conn %d: %s", id, line);
    });
  }
}

Connection::~Connection() { worker_->buffers().Release(in_, in_size_); }

ConnectionStats Connection::Stats() const {
  ConnectionStats st;
  st.id = id_;
  st.worker = worker_->index();
  st.peer = peer_;
  st.negotiated = session_.export_ != nullptr;
  if (st.negotiated) st.export_name = session_.export_->name;
  st.in_flight = inflight_;
  st.waiting_for_budget = budget_wait_;
  st.opened_ns = opened_ns_;
  st.io = io_;
  return st;
}

void Connection::Start() {
  STRATA_LOG_LIMITED(kInfo, "conn %d: opened from %s on worker %d", id_, peer_, worker_->index());
  std::string greeting;
  Handshake::WriteGreeting(&greeting);
  QueueRaw(std::move(greeting));
  ArmRecv();
}

// ---------------------------------------------------------------------------------------------
// Input

bool Connection::FlowBlocked() const {
  const WorkerLimits& limits = worker_->limits();
  return inflight_ >= limits.max_requests_per_connection ||
         buffers_.bytes() >= limits.max_buffer_bytes_per_connection;
}

// Moves what is buffered to the start of a new input buffer of `size` bytes.
void Connection::ResizeInput(size_t size) {
  size_t cap;
  char* bigger = worker_->buffers().Acquire(size, &cap);
  const size_t buffered = in_end_ - in_begin_;
  if (buffered > 0) std::memcpy(bigger, in_ + in_begin_, buffered);
  worker_->buffers().Release(in_, in_size_);
  in_ = bigger;
  in_size_ = cap;
  in_begin_ = 0;
  in_end_ = buffered;
}

// Where the next bytes from the client go: the WRITE payload being received, else the input
// buffer (allocated on demand, grown while the client outpaces it, shrunk once it caught up).
// False when flow control or the budget holds the input back.
bool Connection::RecvTarget(char** target, size_t* len) {
  if (payload_req_ != nullptr) {
    *target = payload_req_->data() + payload_req_->payload_got;
    *len = payload_req_->h.length - payload_req_->payload_got;
    return true;
  }
  if (FlowBlocked() || budget_wait_) return false;
  if (in_ == nullptr) {
    ResizeInput(kInputMin);
  } else if (recv_filled_ && in_size_ < kInputMax) {
    ResizeInput(in_size_ * 2);  // the client sends faster than one buffer a recv
  } else if (in_begin_ == in_end_ && !recv_filled_ && in_size_ > kInputMin) {
    ResizeInput(kInputMin);  // caught up: an idle connection holds a page
  } else if (in_begin_ > 0) {
    std::memmove(in_, in_ + in_begin_, in_end_ - in_begin_);
    in_end_ -= in_begin_;
    in_begin_ = 0;
  }
  if (in_end_ == in_size_) return false;  // parser is waiting on flow control
  *target = in_ + in_end_;
  *len = in_size_ - in_end_;
  return true;
}

void Connection::PrepRecv(char* target, size_t len) {
  io_uring_sqe* sqe = worker_->GetSqe();
  io_uring_prep_recv(sqe, fd_, target, len, 0);
  io_uring_sqe_set_data64(sqe, MakeUserData(CompletionTag::kRecv, this));
  recv_in_flight_ = true;
}

void Connection::ArmRecv() {
  // Without TLS one pass: a recv straight into the target. With TLS, plaintext the session
  // already holds is delivered first (a recv may bring several records); the socket's next
  // bytes go to the session.
  while (!recv_in_flight_ && state_ < State::kDraining && !starttls_pending_) {
    char* target;
    size_t len;
    if (!RecvTarget(&target, &len)) return;
    if (tls_ == nullptr) {
      PrepRecv(target, len);
      return;
    }
    absl::StatusOr<size_t> n = tls_->Read(target, len);
    FlushSends();  // handshake messages and alerts
    if (!n.ok()) {
      // A client's close_notify (kUnavailable) is a close like any other, not an error; after
      // a failed handshake or a bad record the session can send nothing more.
      if (!absl::IsUnavailable(n.status())) {
        close_notify_done_ = true;
        STRATA_LOG_LIMITED(kError, "conn %d: %s", id_, n.status().message());
      }
      BeginDrain(std::string(n.status().message()));
      return;
    }
    if (tls_->handshake_done() && handshake_.state() == HandshakeState::kStartTls) {
      STRATA_LOG(kInfo, "conn %d: TLS established: %s", id_, tls_->Description());
      handshake_.TlsStarted();
    }
    if (*n > 0) {
      Deliver(*n);
      continue;
    }
    if (tls_->recv_space_size() == 0) {  // cannot happen: the buffer holds whole records
      BeginDrain("TLS input buffer full without a complete record");
      return;
    }
    PrepRecv(tls_->recv_space(), tls_->recv_space_size());
  }
}

void Connection::OnRecv(int res) {
  recv_in_flight_ = false;
  if (state_ >= State::kDraining) {
    // A payload buffer the cancelled recv may have been filling is free only now.
    ReleasePayload();
    MaybeClose();
    return;
  }
  if (res == -EAGAIN || res == -EINTR || res == -ENOBUFS) {
    ArmRecv();
    return;
  }
  if (res < 0) {
    BeginDrain(absl::StrCat("recv failed: ", strerror(-res)));
    return;
  }
  if (res == 0) {
    // Without a close_notify a TLS client may have been cut off in the middle of a record.
    const char* why = payload_req_ != nullptr ? "client closed the connection in a WRITE payload"
                      : TlsActive() ? "client closed the connection without a TLS close_notify"
                                    : "client closed the connection";
    BeginDrain(why);
    return;
  }
  if (tls_ != nullptr) {
    tls_->Received(res);  // ArmRecv decrypts
  } else {
    Deliver(res);
  }
  ArmRecv();
}

void Connection::Deliver(size_t n) {
  if (payload_req_ != nullptr) {
    Request* r = payload_req_;
    r->payload_got += n;
    payload_progress_ns_ = MonotonicNs();
    if (r->payload_got == r->h.length) {
      payload_req_ = nullptr;
      Dispatch(r);
    }
  } else {
    in_end_ += n;
    recv_filled_ = in_end_ == in_size_;
  }
  Process();
}

void Connection::StartTls() {
  absl::StatusOr<std::unique_ptr<TlsSession>> session =
      TlsSession::NewServer(worker_->tls().credentials);
  if (!session.ok()) {
    STRATA_LOG(kError, "conn %d: %s", id_, session.status().message());
    BeginDrain(std::string(session.status().message()));
    return;
  }
  tls_ = *std::move(session);
  // A client starts its TLS handshake only once it has our ack, so whatever follows the
  // option in the input is TLS already.
  const size_t rest = in_end_ - in_begin_;
  std::memcpy(tls_->recv_space(), in_ + in_begin_, std::min(rest, tls_->recv_space_size()));
  tls_->Received(std::min(rest, tls_->recv_space_size()));
  in_begin_ = in_end_ = 0;
  // The ack was queued in plaintext: TLS starts once it is sent (OnSend).
  starttls_pending_ = true;
}

void Connection::Process() {
  if (state_ == State::kHandshake) {
    std::string out;
    size_t used = handshake_.Feed(
        absl::string_view(in_ + in_begin_, in_end_ - in_begin_), &out);
    in_begin_ += used;
    if (!out.empty()) QueueRaw(std::move(out));
    if (handshake_.state() == HandshakeState::kClosed) {
      BeginDrain(handshake_.close_reason());
      return;
    }
    if (handshake_.state() == HandshakeState::kStartTls && tls_ == nullptr) {
      StartTls();
      return;
    }
    if (handshake_.state() != HandshakeState::kTransmission) return;
    session_ = handshake_.negotiated();
    storage_ = session_.export_->storage;
    buffers_.set_alignment(std::max<uint64_t>(kDirectIoAlignment, storage_->sub_block_size()));
    disk_ = {this, worker_, storage_, &buffers_, &session_};
    state_ = State::kTransmission;
    worker_->ConnectionNegotiated(this);
    STRATA_LOG(kDebug, "conn %d: export \"%s\" size %d flags %s%s%s%s", id_,
               session_.export_->name, session_.export_->size(),
               nbd::TransmissionFlagsToString(session_.transmission_flags),
               session_.structured_replies ? ", structured replies" : "",
               session_.base_allocation ? ", base:allocation" : "",
               session_.strata_layer ? ", strata:layer" : "");
  }
  while (state_ == State::kTransmission && payload_req_ == nullptr &&
         in_end_ - in_begin_ >= nbd::kRequestHeaderSize && !FlowBlocked()) {
    nbd::RequestHeader h = nbd::RequestHeader::DecodeFrom(in_ + in_begin_);
    if (h.magic != nbd::kRequestMagic) {
      STRATA_LOG_LIMITED(kError, "conn %d: bad request magic %#x: closing", id_, h.magic);
      BeginDrain("bad request magic");
      return;
    }
    const Command cmd = static_cast<Command>(h.type);
    if (cmd == Command::kDisc) {
      BeginDrain("client sent NBD_CMD_DISC");
      return;
    }
    if (cmd == Command::kWrite && h.length > kMaxPayload) {
      // The spec lets a server hang up on payloads of 32 MiB or more rather than swallow them.
      STRATA_LOG_LIMITED(kError, "conn %d: %s: payload above %u bytes: closing", id_, DescribeRequest(h),
                 kMaxPayload);
      BeginDrain("oversized WRITE payload");
      return;
    }
    absl::Status valid = ValidateRequest(h, session_);
    IoBuffer buf;
    if (!TakeBuffer(h, valid, &buf)) {
      // The header stays in the input buffer and is parsed again once budget is freed (or
      // this connection's own replies go out: OnSend).
      if (!budget_wait_) worker_->WaitForBudget(this);
      budget_wait_ = true;
      return;
    }
    budget_wait_ = false;
    in_begin_ += nbd::kRequestHeaderSize;
    Request* r = NewRequest();
    r->h = h;
    r->cmd = cmd;
    r->start_ns = MonotonicNs();
    r->status = std::move(valid);
    r->buf = buf;
    if (cmd == Command::kWrite) {
      size_t have = std::min<size_t>(h.length, in_end_ - in_begin_);
      std::memcpy(r->data(), in_ + in_begin_, have);
      in_begin_ += have;
      r->payload_got = static_cast<uint32_t>(have);
      if (r->payload_got < h.length) {
        payload_req_ = r;  // the rest goes straight into r->buf
        payload_progress_ns_ = MonotonicNs();
        return;
      }
    }
    Dispatch(r);
  }
}

// The buffer a request needs before it is parsed: a WRITE's payload (an invalid WRITE's too: it
// is consumed to keep the stream in step) or a READ's data. False when the budget has no room.
bool Connection::TakeBuffer(const nbd::RequestHeader& h, const absl::Status& valid,
                            IoBuffer* buf) {
  const Command cmd = static_cast<Command>(h.type);
  if (cmd == Command::kWrite) {
    // An invalid WRITE's offset may be anything (even overflow offset + length): a plain buffer.
    return valid.ok() ? buffers_.TryAcquire(buf, h.offset, h.offset + h.length)
                      : buffers_.TryAcquireUnaligned(buf, h.offset, h.length);
  }
  // A READ refused (invalid, or the server shutting down) needs no data buffer.
  if (cmd == Command::kRead && valid.ok() && !shutting_down_ && h.length > 0) {
    return buffers_.TryAcquire(buf, h.offset, h.offset + h.length);
  }
  return true;
}

void Connection::BudgetFreed() {
  budget_wait_ = false;
  if (state_ != State::kTransmission) return;
  Process();
  ArmRecv();
}

void Connection::CheckTimeouts(int64_t now_ns) {
  const WorkerLimits& limits = worker_->limits();
  auto past = [now_ns](int64_t since_ns, absl::Duration limit) {
    return limit > absl::ZeroDuration() && now_ns - since_ns > absl::ToInt64Nanoseconds(limit);
  };
  if (state_ == State::kHandshake && past(opened_ns_, limits.handshake_timeout)) {
    Abort(absl::StrCat("handshake not finished within ",
                          absl::FormatDuration(limits.handshake_timeout)));
  } else if (state_ == State::kTransmission && payload_req_ != nullptr &&
             past(payload_progress_ns_, limits.request_timeout)) {
    Abort(absl::StrFormat("%s: no payload bytes for %s (%u of %u received)",
                             DescribeRequest(payload_req_->h),
                             absl::FormatDuration(limits.request_timeout),
                             payload_req_->payload_got, payload_req_->h.length));
  }
}

void Connection::Shutdown() {
  shutting_down_ = true;
  Process();  // answers complete requests still in the input buffer with ESHUTDOWN
  BeginDrain("server shutting down");
  // A connection that was already draining (its client gone) is untouched by BeginDrain; if it
  // is idle it must close now, or it keeps the worker's loop (and Server::Shutdown) alive.
  MaybeClose();
}

void Connection::Abort(std::string why) {
  if (state_ == State::kClosed) return;
  ::shutdown(fd_, SHUT_RDWR);
  close_notify_done_ = true;  // nothing can be sent any more
  BeginDrain(std::move(why));
}

void Connection::Dispatch(Request* r) {
  if (shutting_down_ && r->status.ok()) {
    r->status = absl::CancelledError(
        absl::StrCat(DescribeRequest(r->h), ": refused, the server is shutting down"));
  }
  if (!r->status.ok()) {
    Reply(r);
    return;
  }
  if (worker_->paused()) {
    Enter(r, Request::Phase::kHeld);
    worker_->Hold(r);
    return;
  }
  Execute(r);
}

// ---------------------------------------------------------------------------------------------
// Execute: the single entry point from the protocol into storage.

void Connection::Execute(Request* r) {
  r->started = true;
  Enter(r, Request::Phase::kDisk);
  worker_->RequestStarted();
  STRATA_LOG(kDebug, "conn %d: %s", id_, DescribeRequest(r->h));
  if (r->cmd == Command::kRead) io_.bytes_read += r->h.length;
  if (r->cmd == Command::kWrite) io_.bytes_written += r->h.length;
  r->disk_ns = MonotonicNs();
  io_.before_disk.Add(static_cast<uint64_t>(r->disk_ns - r->start_ns));
  r->io.Start(&disk_, r);
}

// ---------------------------------------------------------------------------------------------
// Output

void Connection::Reply(Request* r) {
  Enter(r, Request::Phase::kSending);
  const uint16_t type = r->h.type;
  ++io_.requests[type < kCountedCommands ? type : kOtherCommand];
  r->reply_ns = MonotonicNs();
  io_.latency.Add(static_cast<uint64_t>(r->reply_ns - r->start_ns));
  if (r->disk_ns != 0) io_.disk.Add(static_cast<uint64_t>(r->reply_ns - r->disk_ns));
  if (!r->status.ok()) {
    ++io_.errors;
    const nbd::Error error = ErrorFor(r->status, r->cmd);
    if (error == nbd::Error::kNoSpc && r->status.code() == absl::StatusCode::kResourceExhausted) {
      // The host volume is full (not a write past the end of the disk).
      ++io_.enospc_replies;
      worker_->no_space()->OnNoSpace();
    }
    if (error != nbd::Error::kNoSpc || ShouldLogNoSpace()) {
      STRATA_LOG_LIMITED(kError, "conn %d: %s -> %s", id_, r->status.message(), nbd::Name(error));
    }
    r->header.clear();
    r->reply.clear();
    EncodeErrorReply(r->h.handle, session_.structured_replies, error, r->status.message(),
                     r->error_offset, &r->header);
    r->reply.push_back({true, 0, r->header.size()});
  } else if (r->reply.empty()) {
    if (r->cmd == Command::kWrite || r->cmd == Command::kWriteZeroes) {
      worker_->no_space()->OnWriteSucceeded();
    }
    if (r->cmd == Command::kRead) {
      EncodeReadReply(r->h.handle, r->h.offset, r->h.length, session_.structured_replies,
                      r->io.runs(), &r->header, &r->reply);
    } else if (r->cmd == Command::kBlockStatus) {
      EncodeBlockStatusReply(session_, r->h, r->io.status_length(), r->io.extents(),
                             storage_->top_position(), &r->header);
      r->reply.push_back({true, 0, r->header.size()});
    } else {
      EncodeDoneReply(r->h.handle, session_.structured_replies, &r->header);
      r->reply.push_back({true, 0, r->header.size()});
    }
  }
  if (send_failed_) {
    Release(r);
    return;
  }
  send_queue_.push_back(r);
  FlushSoon();
}

void Connection::QueueRaw(std::string bytes) {
  Request* r = NewRequest();
  r->raw = true;
  r->header = std::move(bytes);
  r->reply.push_back({true, 0, r->header.size()});
  r->phase = Request::Phase::kSending;
  if (send_failed_) {
    Release(r);
    return;
  }
  send_queue_.push_back(r);
  FlushSoon();
}

size_t Connection::GatherSendIov(size_t max_bytes) {
  send_iov_.clear();
  size_t bytes = 0;
  for (Request* r : send_queue_) {
    for (size_t i = r->reply_index;
         i < r->reply.size() && send_iov_.size() < kMaxSendIov && bytes < max_bytes; ++i) {
      const ReplyPiece& piece = r->reply[i];
      char* base = piece.from_header ? r->header.data() + piece.offset : r->data() + piece.offset;
      size_t skip = i == r->reply_index ? r->reply_skip : 0;
      size_t len = std::min(piece.length - skip, max_bytes - bytes);
      send_iov_.push_back({base + skip, len});
      bytes += len;
    }
    if (send_iov_.size() >= kMaxSendIov || bytes >= max_bytes) break;
  }
  return bytes;
}

void Connection::FlushSoon() {
  if (flush_pending_) return;
  flush_pending_ = true;
  worker_->FlushSoon(this);
}

void Connection::FlushPendingSends() {
  flush_pending_ = false;
  FlushSends();
}

void Connection::FlushSends() {
  if (send_in_flight_ || send_failed_) return;
  if (TlsActive()) {
    FlushTls();
    return;
  }
  if (send_queue_.empty()) return;
  GatherSendIov(SIZE_MAX);
  send_msg_ = {};
  send_msg_.msg_iov = send_iov_.data();
  send_msg_.msg_iovlen = send_iov_.size();
  io_uring_sqe* sqe = worker_->GetSqe();
  io_uring_prep_sendmsg(sqe, fd_, &send_msg_, MSG_NOSIGNAL);
  io_uring_sqe_set_data64(sqe, MakeUserData(CompletionTag::kSend, this));
  send_in_flight_ = true;
}

void Connection::FlushTls() {
  while (!send_queue_.empty() && tls_->buffered_output() < kTlsOutputHigh) {
    const size_t bytes = GatherSendIov(kTlsWriteBytes);
    if (absl::Status st = tls_->Write(send_iov_.data(), send_iov_.size()); !st.ok()) {
      STRATA_LOG(kError, "conn %d: %s", id_, st.message());
      send_failed_ = true;
      BeginDrain(std::string(st.message()));
      return;
    }
    // The records hold copies: the replies are done with.
    for (Request* r : AdvanceSendQueue(bytes)) Release(r);
  }
  // Releasing a draining connection's last reply queued the close_notify and sent the output.
  if (send_in_flight_) return;
  absl::string_view out = tls_->NextOutput();
  if (out.empty()) return;
  io_uring_sqe* sqe = worker_->GetSqe();
  io_uring_prep_send(sqe, fd_, out.data(), out.size(), MSG_NOSIGNAL);
  io_uring_sqe_set_data64(sqe, MakeUserData(CompletionTag::kSend, this));
  send_in_flight_ = true;
}

std::vector<Request*> Connection::AdvanceSendQueue(size_t bytes) {
  std::vector<Request*> sent;
  size_t left = bytes;
  while (left > 0 && !send_queue_.empty()) {
    Request* r = send_queue_.front();
    const size_t remaining = r->reply[r->reply_index].length - r->reply_skip;
    if (left < remaining) {
      r->reply_skip += left;
      break;
    }
    left -= remaining;
    r->reply_skip = 0;
    if (++r->reply_index == r->reply.size()) {
      send_queue_.pop_front();
      sent.push_back(r);
    }
  }
  return sent;
}

void Connection::OnSend(int res) {
  send_in_flight_ = false;
  if (res == -EAGAIN || res == -EINTR || res == -ENOBUFS) {
    FlushSends();
    return;
  }
  std::vector<Request*> sent;
  if (res < 0) {
    if (state_ < State::kDraining) {
      STRATA_LOG_LIMITED(kInfo, "conn %d: send failed: %s; dropping %d queued replies", id_,
                 strerror(-res), send_queue_.size());
    }
    send_failed_ = true;
    sent.assign(send_queue_.begin(), send_queue_.end());
    send_queue_.clear();
  } else if (TlsActive()) {
    tls_->Sent(static_cast<size_t>(res));  // ciphertext: the replies left the queue already
  } else {
    sent = AdvanceSendQueue(static_cast<size_t>(res));
  }
  for (Request* r : sent) Release(r);
  if (starttls_pending_ && send_queue_.empty()) starttls_pending_ = false;  // the ack is out
  if (send_failed_ && state_ < State::kDraining) BeginDrain("send failed");
  FlushSoon();
  if (state_ == State::kTransmission || state_ == State::kHandshake) {
    Process();
    ArmRecv();
  }
  MaybeClose();
}

// ---------------------------------------------------------------------------------------------
// Lifetime

Request* Connection::NewRequest() {
  Request* r = new Request;
  r->conn = this;
  ++inflight_;
  return r;
}

// Every phase change goes through here: a request that went backwards, or skipped its disk
// I/O, would be replied twice or have its buffer freed under a running SQE.
void Connection::Enter(Request* r, Request::Phase next) {
  using Phase = Request::Phase;
  const Phase from = r->phase;
  const bool legal = (from == Phase::kPayload && next != Phase::kPayload) ||
                     (from == Phase::kHeld && (next == Phase::kDisk || next == Phase::kSending)) ||
                     (from == Phase::kDisk && next == Phase::kSending &&
                      r->io.step() == DiskIo::Step::kDone);
  if (!legal) {
    STRATA_LOG(kError, "conn %d: %s: illegal phase change %s -> %s (disk I/O %s)", id_,
               DescribeRequest(r->h), Request::Name(from), Request::Name(next),
               DiskIo::Name(r->io.step()));
    abort();
  }
  r->phase = next;
}

void Connection::Release(Request* r) {
  // Sent (not dropped with a failed send): the reply's time on the way out.
  if (r->reply_ns != 0 && !send_failed_) {
    io_.send.Add(static_cast<uint64_t>(MonotonicNs() - r->reply_ns));
  }
  buffers_.Release(&r->buf);
  const bool started = r->started;
  delete r;
  --inflight_;
  if (started) worker_->RequestDone();
  // Whatever path releases the last request of a draining connection closes it. Not only
  // OnSend: once a send has failed (client gone), Reply and QueueRaw release finished requests
  // directly, and nothing else would ever look at the connection again.
  MaybeClose();
}

void Connection::BeginDrain(std::string reason) {
  if (state_ >= State::kDraining) return;
  state_ = State::kDraining;
  close_reason_ = std::move(reason);
  // With a recv in flight the kernel may still write into the payload buffer: keep it until
  // that recv completes (OnRecv), or the pool could hand it to another request meanwhile.
  if (!recv_in_flight_) ReleasePayload();
  if (recv_in_flight_) {
    io_uring_sqe* sqe = worker_->GetSqe();
    io_uring_prep_cancel64(sqe, MakeUserData(CompletionTag::kRecv, this), 0);
    io_uring_sqe_set_data64(sqe, MakeUserData(CompletionTag::kIgnore, nullptr));
  }
  MaybeClose();
}

void Connection::ReleasePayload() {
  if (payload_req_ == nullptr) return;
  Request* r = payload_req_;
  payload_req_ = nullptr;
  Release(r);
}

void Connection::MaybeClose() {
  if (state_ != State::kDraining || inflight_ > 0 || send_in_flight_ || recv_in_flight_) return;
  if (SendCloseNotify()) return;
  // Records of replies already released (an alert, a last reply) still go out first.
  if (TlsActive() && tls_->HasOutput() && !send_failed_) return;
  state_ = State::kClosed;
  close(fd_);
  STRATA_LOG_LIMITED(kInfo,
                     "conn %d: closed (%s): export \"%s\"%s, %d requests, %d errors, %d bytes "
                     "read, %d written",
                     id_, close_reason_, session_.export_ ? session_.export_->name : "",
                     session_.export_ ? "" : " (not negotiated)", io_.total_requests(),
                     io_.errors, io_.bytes_read, io_.bytes_written);
  worker_->ConnectionClosed(this, io_);
}

// A TLS session ends with the server's close_notify once every reply is out (NBD_CMD_DISC,
// the server stopping, the client's own close_notify), so the client reads a clean end of the
// session and not a truncation (qemu-nbd and nbdkit do the same). gnutls_bye(SHUT_WR) only
// queues the alert: it goes out through the ring's send like any record, never blocking.
bool Connection::SendCloseNotify() {
  if (!TlsActive() || !tls_->handshake_done() || close_notify_done_ || send_failed_) return false;
  close_notify_done_ = true;
  if (absl::Status st = tls_->Close(); !st.ok()) {
    STRATA_LOG_LIMITED(kError, "conn %d: %s", id_, st.message());
    return false;
  }
  FlushSends();
  return send_in_flight_;
}

}  // namespace strata
