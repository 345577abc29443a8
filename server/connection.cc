#include "server/connection.h"

#include <fcntl.h>
#include <limits.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "blockstore/file.h"
#include "server/log.h"
#include "server/worker.h"

namespace strata {

using nbd::Command;

namespace {

// 64 KiB of option data plus headers must fit (Handshake::kMaxOptionLength); 128 KiB also holds
// a few dozen pipelined small WRITEs per recv.
constexpr size_t kInputBuffer = 128 << 10;
// Holes shorter than this are sent as zero bytes inside OFFSET_DATA: a chunk header for a few
// zero bytes saves nothing.
constexpr uint64_t kMinHoleChunk = 4096;
// WRITE_ZEROES that must write zero data does it in pieces of this size (one buffer each).
constexpr uint64_t kZeroWriteChunk = 1 << 20;
// BLOCK_STATUS looks at most this far per request; clients ask again from where it stopped.
constexpr uint64_t kMaxStatusQuery = 1ull << 30;
constexpr size_t kMaxDescriptors = 16384;
// Replies gathered into one sendmsg.
constexpr size_t kMaxSendIov = 256;
// O_DIRECT needs lengths in whole logical blocks; at the very end of a disk whose size is
// not a multiple of 4 KiB we round the last read up to this and accept the short read.
constexpr uint64_t kSectorSize = 512;

uint64_t AlignDown(uint64_t v, uint64_t a) { return v / a * a; }
uint64_t AlignUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

// The file behind an fd, for error messages (the error path only).
std::string FdName(int fd) {
  char link[64];
  char target[PATH_MAX];
  snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, target, sizeof(target) - 1);
  if (n <= 0) return absl::StrCat("fd ", fd);
  return std::string(target, n);
}

// ENOSPC is logged at most once a second: a full host volume fails every allocating write and
// must not flood the log (DESIGN.md, "Full host volume").
bool ShouldLogNoSpace() {
  static std::atomic<int64_t> last{0};
  int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                    std::chrono::steady_clock::now().time_since_epoch())
                    .count();
  int64_t prev = last.load();
  return prev != now && last.compare_exchange_strong(prev, now);
}

}  // namespace

absl::string_view Name(RequestPhase phase) {
  switch (phase) {
    case RequestPhase::kPayload: return "payload";
    case RequestPhase::kHeld: return "held";
    case RequestPhase::kRunning: return "running";
    case RequestPhase::kBlocking: return "blocking";
    case RequestPhase::kParked: return "parked";
    case RequestPhase::kSending: return "sending";
  }
  return "?";
}

Connection::Connection(Worker* worker, int fd, uint64_t id, std::string peer)
    : worker_(worker),
      fd_(fd),
      id_(id),
      peer_(std::move(peer)),
      handshake_(worker->exports()),
      in_(kInputBuffer),
      opened_ns_(MonotonicNs()) {
  if (LogEnabled(LogLevel::kDebug)) {
    handshake_.set_trace([id](const std::string& line) {
      STRATA_LOG(kDebug, "conn %d: %s", id, line);
    });
  }
}

Connection::~Connection() = default;

ConnectionStats Connection::Stats() const {
  ConnectionStats st;
  st.id = id_;
  st.worker = worker_->index();
  st.peer = peer_;
  st.negotiated = session_.export_ != nullptr;
  if (st.negotiated) st.export_name = session_.export_->name;
  st.in_flight = inflight_;
  st.opened_ns = opened_ns_;
  st.io = io_;
  return st;
}

void Connection::Start() {
  STRATA_LOG(kInfo, "conn %d: opened from %s on worker %d", id_, peer_, worker_->index());
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
         inflight_bytes_ >= limits.max_buffer_bytes_per_connection;
}

void Connection::ArmRecv() {
  if (recv_in_flight_ || state_ >= State::kDraining) return;
  char* target;
  size_t len;
  if (payload_req_ != nullptr) {
    target = payload_req_->data() + payload_req_->payload_got;
    len = payload_req_->h.length - payload_req_->payload_got;
  } else {
    if (FlowBlocked()) return;
    if (in_begin_ > 0) {
      std::memmove(in_.data(), in_.data() + in_begin_, in_end_ - in_begin_);
      in_end_ -= in_begin_;
      in_begin_ = 0;
    }
    if (in_end_ == in_.size()) return;  // parser is waiting on flow control
    target = in_.data() + in_end_;
    len = in_.size() - in_end_;
  }
  io_uring_sqe* sqe = worker_->GetSqe();
  io_uring_prep_recv(sqe, fd_, target, len, 0);
  io_uring_sqe_set_data64(sqe, MakeUserData(CompletionTag::kRecv, this));
  recv_in_flight_ = true;
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
    BeginDrain(payload_req_ != nullptr ? "client closed the connection in a WRITE payload"
                                       : "client closed the connection");
    return;
  }
  if (payload_req_ != nullptr) {
    Request* r = payload_req_;
    r->payload_got += res;
    if (r->payload_got == r->h.length) {
      payload_req_ = nullptr;
      Dispatch(r);
    }
  } else {
    in_end_ += res;
  }
  Process();
  ArmRecv();
}

void Connection::Process() {
  if (state_ == State::kHandshake) {
    std::string out;
    size_t used = handshake_.Feed(
        absl::string_view(in_.data() + in_begin_, in_end_ - in_begin_), &out);
    in_begin_ += used;
    if (!out.empty()) QueueRaw(std::move(out));
    if (handshake_.state() == HandshakeState::kClosed) {
      BeginDrain(handshake_.close_reason());
      return;
    }
    if (handshake_.state() != HandshakeState::kTransmission) return;
    session_ = handshake_.negotiated();
    storage_ = session_.export_->storage;
    alignment_ = std::max<uint64_t>(kDirectIoAlignment, storage_->sub_block_size());
    state_ = State::kTransmission;
    STRATA_LOG(kDebug, "conn %d: export \"%s\" size %d flags %s%s%s%s", id_,
               session_.export_->name, session_.export_->size(),
               nbd::TransmissionFlagsToString(session_.transmission_flags),
               session_.structured_replies ? ", structured replies" : "",
               session_.base_allocation ? ", base:allocation" : "",
               session_.strata_layer ? ", strata:layer" : "");
  }
  while (state_ == State::kTransmission && payload_req_ == nullptr &&
         in_end_ - in_begin_ >= nbd::kRequestHeaderSize && !FlowBlocked()) {
    nbd::RequestHeader h = nbd::RequestHeader::DecodeFrom(in_.data() + in_begin_);
    in_begin_ += nbd::kRequestHeaderSize;
    if (h.magic != nbd::kRequestMagic) {
      STRATA_LOG(kError, "conn %d: bad request magic %#x: closing", id_, h.magic);
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
      STRATA_LOG(kError, "conn %d: %s: payload above %u bytes: closing", id_, DescribeRequest(h),
                 kMaxPayload);
      BeginDrain("oversized WRITE payload");
      return;
    }
    Request* r = NewRequest();
    r->h = h;
    r->cmd = cmd;
    r->start_ns = MonotonicNs();
    r->status = ValidateRequest(h, session_);
    if (cmd == Command::kWrite) {
      // Even an invalid WRITE consumes its payload, to keep the stream in step.
      if (r->status.ok()) {
        AcquireBuffer(r, h.offset, h.offset + h.length);
      } else {
        // The offset may be anything (even overflow offset + length): a plain buffer.
        AcquireBuffer(r, 0, h.length);
        r->buf_start = h.offset;
      }
      size_t have = std::min<size_t>(h.length, in_end_ - in_begin_);
      std::memcpy(r->data(), in_.data() + in_begin_, have);
      in_begin_ += have;
      r->payload_got = static_cast<uint32_t>(have);
      if (r->payload_got < h.length) {
        payload_req_ = r;  // the rest goes straight into r->buf
        return;
      }
    }
    Dispatch(r);
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

void Connection::Abort() {
  if (state_ == State::kClosed) return;
  ::shutdown(fd_, SHUT_RDWR);
  BeginDrain("closed by the server's shutdown grace period");
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
    r->phase = RequestPhase::kHeld;
    worker_->Hold(r);
    return;
  }
  Execute(r);
}

// ---------------------------------------------------------------------------------------------
// Execute: the single entry point from the protocol into storage.

void Connection::Execute(Request* r) {
  r->started = true;
  r->phase = RequestPhase::kRunning;
  worker_->RequestStarted();
  STRATA_LOG(kDebug, "conn %d: %s", id_, DescribeRequest(r->h));
  const bool fua = r->h.flags & nbd::kCmdFlagFua;
  switch (r->cmd) {
    case Command::kRead:
      StartRead(r);
      return;
    case Command::kWrite:
      if (r->h.length > 0) r->ranges.push_back({r->h.offset, r->h.length});
      io_.bytes_written += r->h.length;
      StartRange(r);
      return;
    case Command::kWriteZeroes:
      StartZero(r);
      return;
    case Command::kTrim:
      RunBlockingThenReply(r, [s = storage_, h = r->h, fua]() -> absl::Status {
        if (h.length == 0) return absl::OkStatus();
        absl::Status st = s->Trim(h.offset, h.length);
        if (st.ok() && fua) st = s->GroupFlush();
        return st;
      });
      return;
    case Command::kFlush:
      RunBlockingThenReply(r, [s = storage_, ro = session_.export_->read_only]() {
        // A read-only export has nothing to make durable.
        return ro ? absl::OkStatus() : s->GroupFlush();
      });
      return;
    case Command::kCache:
      RunBlockingThenReply(r, [s = storage_, h = r->h]() { return s->Cache(h.offset, h.length); });
      return;
    case Command::kBlockStatus:
      StartBlockStatus(r);
      return;
    default:
      // ValidateRequest refused every other command.
      Fail(r, absl::InternalError(absl::StrCat(DescribeRequest(r->h), ": not executable")));
      return;
  }
}


namespace {

// The data I/O for `seg` of request `r`, whose bytes at virtual offset `pos` live in r->buf.
IoPiece PieceFor(Request* r, const Segment& seg, uint64_t pos) {
  IoPiece piece;
  piece.req = r;
  piece.buf = r->buf + (pos - r->buf_start);
  piece.file_offset = seg.file_offset;
  piece.virtual_offset = pos;
  piece.length = static_cast<uint32_t>(seg.length);
  piece.fd = seg.fd;
  return piece;
}

}  // namespace

void Connection::StartRead(Request* r) {
  const uint64_t off = r->h.offset;
  const uint64_t len = r->h.length;
  io_.bytes_read += len;
  if (len == 0) {
    Reply(r);
    return;
  }
  // O_DIRECT: read the aligned range around the request into an aligned buffer.
  const bool direct = storage_->direct_io();
  const uint64_t a = direct ? kDirectIoAlignment : 1;
  const uint64_t start = AlignDown(off, a);
  const uint64_t end = std::min(AlignUp(off + len, a), storage_->size());
  AcquireBuffer(r, start, AlignUp(off + len, kDirectIoAlignment));
  absl::Status st = storage_->MapRead(start, end - start, &r->segments, &r->read_pin);
  if (!st.ok()) {
    Fail(r, std::move(st));
    return;
  }
  // Holes go out as OFFSET_HOLE chunks when the client reads structured replies and did not
  // ask for a single chunk (DF); otherwise they are zero-filled.
  const bool holes = session_.structured_replies && !(r->h.flags & nbd::kCmdFlagDf);
  uint64_t pos = start;
  for (const Segment& seg : r->segments) {
    const uint64_t seg_end = pos + seg.length;
    // The part of this segment inside the request, for the reply runs.
    const uint64_t s = std::max(pos, off);
    const uint64_t t = std::min(seg_end, off + len);
    bool hole = false;
    if (seg.kind == Segment::Kind::kData) {
      IoPiece p = PieceFor(r, seg, pos);
      if (direct) p.length = static_cast<uint32_t>(AlignUp(seg.length, kSectorSize));
      r->pieces.push_back(p);
    } else if (holes && t > s && t - s >= kMinHoleChunk) {
      hole = true;
    } else {
      std::memset(r->buf + (pos - r->buf_start), 0, seg.length);
    }
    if (t > s) {
      if (!r->runs.empty() && r->runs.back().hole == hole) {
        r->runs.back().length += t - s;
      } else {
        r->runs.push_back({t - s, hole});
      }
    }
    pos = seg_end;
  }
  if (pos < off + len) {
    Fail(r, absl::InternalError(absl::StrFormat("%s: MapRead covered only up to %#x",
                                                DescribeRequest(r->h), pos)));
    return;
  }
  SubmitPieces(r);
}

void Connection::StartRange(Request* r) {
  if (r->next_range == r->ranges.size()) {
    WritesDone(r);
    return;
  }
  const auto [off, len] = r->ranges[r->next_range];
  if (r->cmd == Command::kWriteZeroes) {
    // The payload of a zero write is zeros; margins get the fills.
    if (r->buf == nullptr || r->buf_start > AlignDown(off, alignment_) ||
        r->buf_start + r->buf_cap < AlignUp(off + len, alignment_)) {
      if (r->buf != nullptr) {
        worker_->buffers().Release(r->buf, r->buf_cap);
        inflight_bytes_ -= r->buf_cap;
        r->buf = nullptr;
      }
      AcquireBuffer(r, off, off + len);
    }
    std::memset(r->buf + (off - r->buf_start), 0, len);
  }
  absl::StatusOr<WritePlan> plan = storage_->PrepareWrite(off, len);
  if (IsWriteConflict(plan.status())) {
    r->phase = RequestPhase::kParked;
    worker_->Park(r);
    return;
  }
  r->phase = RequestPhase::kRunning;
  if (!plan.ok()) {
    Fail(r, plan.status());
    return;
  }
  r->plan = std::move(*plan);
  r->plan_active = true;
  const WritePlan& p = r->plan;
  if (p.start < r->buf_start || p.end > r->buf_start + r->buf_cap) {
    // Widened beyond our margins: move the payload into a buffer that covers the plan.
    char* old = r->buf;
    size_t old_cap = r->buf_cap;
    uint64_t old_start = r->buf_start;
    r->buf = nullptr;
    AcquireBuffer(r, p.start, p.end);
    std::memcpy(r->buf + (off - r->buf_start), old + (off - old_start), len);
    worker_->buffers().Release(old, old_cap);
    inflight_bytes_ -= old_cap;
  }
  // Read the current contents of the widened margins first.
  auto fill = [&](const std::vector<Segment>& segs, uint64_t pos) {
    for (const Segment& seg : segs) {
      char* dst = r->buf + (pos - r->buf_start);
      if (seg.kind == Segment::Kind::kData) {
        IoPiece piece = PieceFor(r, seg, pos);
        if (storage_->direct_io()) {
          // A fill is a partial sub-block: O_DIRECT reads the whole aligned block into a
          // bounce buffer and the fill's part is copied into the margin afterwards. The file
          // offset of a sub-block is sub-block aligned, so the same rounding holds in the file.
          const uint64_t head = seg.file_offset % kDirectIoAlignment;
          const uint64_t aligned_len = AlignUp(head + seg.length, kDirectIoAlignment);
          piece.buf = worker_->buffers().Acquire(aligned_len, &piece.bounce_cap);
          piece.file_offset = seg.file_offset - head;
          piece.length = static_cast<uint32_t>(aligned_len);
          piece.copy_dst = dst;
          piece.copy_offset = static_cast<uint32_t>(head);
          piece.copy_len = static_cast<uint32_t>(seg.length);
        }
        r->pieces.push_back(piece);
      } else {
        std::memset(dst, 0, seg.length);
      }
      pos += seg.length;
    }
  };
  fill(p.head_fill, p.start);
  fill(p.tail_fill, off + len);
  if (r->pieces.empty()) {
    SubmitTargets(r);
  } else {
    r->filling = true;
    SubmitPieces(r);
  }
}

void Connection::SubmitTargets(Request* r) {
  const WritePlan& p = r->plan;
  uint64_t pos = p.start;
  for (const Segment& seg : p.targets) {
    if (seg.kind == Segment::Kind::kData) {
      IoPiece piece = PieceFor(r, seg, pos);
      piece.write = true;
      r->pieces.push_back(piece);
    }
    pos += seg.length;
  }
  if (r->pieces.empty()) {
    RangeWritten(r);
  } else {
    SubmitPieces(r);
  }
}

void Connection::RangeWritten(Request* r) {
  const bool ok = r->status.ok();
  storage_->FinishWrite(r->plan, ok);
  r->plan_active = false;
  worker_->WriteFinished();
  if (!ok) {
    Reply(r);
    return;
  }
  ++r->next_range;
  StartRange(r);
}

void Connection::WritesDone(Request* r) {
  if (r->h.flags & nbd::kCmdFlagFua) {
    RunBlockingThenReply(r, [s = storage_]() { return s->GroupFlush(); });
    return;
  }
  Reply(r);
}

void Connection::StartZero(Request* r) {
  // FAST_ZERO needs no check: whole sub-blocks become zero marks (with NO_HOLE keeping their
  // space) and only the unaligned edges are written, so this is never slower than a WRITE.
  const uint16_t flags = r->h.flags;
  if (r->h.length == 0) {
    Reply(r);
    return;
  }
  r->phase = RequestPhase::kBlocking;
  worker_->RunBlocking(
      [s = storage_, r, may_trim = !(flags & nbd::kCmdFlagNoHole)]() {
        std::vector<std::pair<uint64_t, uint64_t>> data_ranges;
        absl::Status st = s->Zero(r->h.offset, r->h.length, may_trim, &data_ranges);
        // Split what must be written as zero data into buffer-sized pieces.
        for (auto [off, len] : data_ranges) {
          while (len > 0) {
            uint64_t n = std::min(len, kZeroWriteChunk - off % kZeroWriteChunk);
            r->ranges.push_back({off, n});
            off += n;
            len -= n;
          }
        }
        return st;
      },
      [this, r](absl::Status st) {
        r->phase = RequestPhase::kRunning;
        if (!st.ok()) {
          Fail(r, std::move(st));
          return;
        }
        StartRange(r);
      });
}

void Connection::StartBlockStatus(Request* r) {
  const uint64_t off = r->h.offset;
  const uint64_t len = std::min<uint64_t>(r->h.length, kMaxStatusQuery);
  std::vector<Extent> extents;
  absl::Status st = storage_->Extents(off, len, &extents);
  if (!st.ok()) {
    Fail(r, std::move(st));
    return;
  }
  const size_t max = (r->h.flags & nbd::kCmdFlagReqOne) ? 1 : kMaxDescriptors;
  std::vector<std::pair<uint32_t, std::vector<Descriptor>>> chunks;
  if (session_.base_allocation) {
    chunks.push_back({kContextIdBaseAllocation,
                      ToDescriptors(extents, off, len, max, BaseAllocationFlags)});
  }
  if (session_.strata_layer) {
    const int top = storage_->top_position();
    chunks.push_back({kContextIdStrataLayer,
                      ToDescriptors(extents, off, len, max,
                                    [top](const Extent& e) { return StrataLayerDepth(e, top); })});
  }
  for (size_t i = 0; i < chunks.size(); ++i) {
    auto& [id, descriptors] = chunks[i];
    // The spec requires at least one descriptor; status 0 is always a safe answer.
    if (descriptors.empty()) descriptors.push_back({static_cast<uint32_t>(len), 0});
    EncodeBlockStatusChunk(r->h.handle, i + 1 == chunks.size(), id, descriptors, &r->header);
  }
  r->reply.push_back({true, 0, r->header.size()});
  r->phase = RequestPhase::kSending;
  Reply(r);
}

void Connection::RunBlockingThenReply(Request* r, std::function<absl::Status()> work) {
  r->phase = RequestPhase::kBlocking;
  worker_->RunBlocking(std::move(work), [this, r](absl::Status st) {
    r->phase = RequestPhase::kRunning;
    if (!st.ok()) {
      Fail(r, std::move(st));
      return;
    }
    Reply(r);
  });
}

void Connection::Fail(Request* r, absl::Status status) {
  if (r->status.ok()) r->status = std::move(status);
  if (r->plan_active) {
    storage_->FinishWrite(r->plan, false);
    r->plan_active = false;
    worker_->WriteFinished();
  }
  Reply(r);
}

// ---------------------------------------------------------------------------------------------
// File I/O pieces

void Connection::SubmitPieces(Request* r) {
  if (r->pieces.empty()) {
    PiecesDone(r);
    return;
  }
  r->pending = static_cast<int>(r->pieces.size());
  for (IoPiece& p : r->pieces) {
    io_uring_sqe* sqe = worker_->GetSqe();
    if (p.write) {
      io_uring_prep_write(sqe, p.fd, p.buf, p.length, p.file_offset);
    } else {
      io_uring_prep_read(sqe, p.fd, p.buf, p.length, p.file_offset);
    }
    io_uring_sqe_set_data64(sqe, MakeUserData(CompletionTag::kPiece, &p));
  }
}

void Connection::OnPiece(IoPiece* p, int res) {
  Request* r = p->req;
  // 1. Error
  if (res < 0 && res != -EAGAIN && res != -EINTR) {
    if (r->status.ok()) {
      r->status = StatusFromErrno(
          -res, absl::StrFormat("%s: %s %s @ %#x length %#x", DescribeRequest(r->h),
                                p->write ? "write" : "read", FdName(p->fd),
                                p->file_offset + p->done, p->length - p->done));
      const uint64_t at = std::max(p->virtual_offset + p->done, r->h.offset);
      if (at < r->h.offset + r->h.length) r->error_offset = at;
    }
  } else if (res == -EAGAIN || res == -EINTR || (res > 0 && p->done + res < p->length)) {
    // 2. EAGAIN, 3. short transfer: advance and requeue.
    if (res > 0) p->done += res;
    io_uring_sqe* sqe = worker_->GetSqe();
    if (p->write) {
      io_uring_prep_write(sqe, p->fd, p->buf + p->done, p->length - p->done,
                          p->file_offset + p->done);
    } else {
      io_uring_prep_read(sqe, p->fd, p->buf + p->done, p->length - p->done,
                         p->file_offset + p->done);
    }
    io_uring_sqe_set_data64(sqe, MakeUserData(CompletionTag::kPiece, p));
    return;
  } else if (res == 0 && p->done < p->length) {
    if (p->write) {
      if (r->status.ok()) {
        r->status = absl::DataLossError(absl::StrFormat("%s: write to %s @ %#x wrote nothing",
                                                        DescribeRequest(r->h), FdName(p->fd),
                                                        p->file_offset + p->done));
      }
    } else {
      // Reading past the end of a file (a raw base shorter than the disk) reads zeros.
      std::memset(p->buf + p->done, 0, p->length - p->done);
    }
  }
  // 4. Done
  if (p->copy_dst != nullptr) {
    if (r->status.ok()) std::memcpy(p->copy_dst, p->buf + p->copy_offset, p->copy_len);
    worker_->buffers().Release(p->buf, p->bounce_cap);
    p->copy_dst = nullptr;
  }
  if (--r->pending > 0) return;
  r->pieces.clear();
  PiecesDone(r);
}

void Connection::PiecesDone(Request* r) {
  switch (r->cmd) {
    case Command::kWrite:
    case Command::kWriteZeroes:
      if (r->filling) {
        r->filling = false;
        if (r->status.ok()) {
          SubmitTargets(r);
          return;
        }
      }
      RangeWritten(r);  // FinishWrite(plan, ok), then the next range or the reply
      return;
    default:
      r->read_pin.Release();  // the preads are done: trimmed slots may be reused
      Reply(r);
      return;
  }
}

// ---------------------------------------------------------------------------------------------
// Output

void Connection::Reply(Request* r) {
  r->phase = RequestPhase::kSending;
  const uint16_t type = r->h.type;
  ++io_.requests[type < kCountedCommands ? type : kOtherCommand];
  io_.latency.Add(static_cast<uint64_t>(MonotonicNs() - r->start_ns));
  if (!r->status.ok()) {
    ++io_.errors;
    const nbd::Error error = ErrorFor(r->status, r->cmd);
    if (error == nbd::Error::kNoSpc && r->status.code() == absl::StatusCode::kResourceExhausted) {
      // The host volume is full (not a write past the end of the disk).
      ++io_.enospc_replies;
      worker_->no_space()->OnNoSpace();
    }
    if (error != nbd::Error::kNoSpc || ShouldLogNoSpace()) {
      STRATA_LOG(kError, "conn %d: %s -> %s", id_, r->status.message(), nbd::Name(error));
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
                      r->runs, &r->header, &r->reply);
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
  FlushSends();
}

void Connection::QueueRaw(std::string bytes) {
  Request* r = NewRequest();
  r->raw = true;
  r->header = std::move(bytes);
  r->reply.push_back({true, 0, r->header.size()});
  r->phase = RequestPhase::kSending;
  if (send_failed_) {
    Release(r);
    return;
  }
  send_queue_.push_back(r);
  FlushSends();
}

void Connection::FlushSends() {
  if (send_in_flight_ || send_queue_.empty() || send_failed_) return;
  send_iov_.clear();
  for (Request* r : send_queue_) {
    for (size_t i = r->reply_index; i < r->reply.size() && send_iov_.size() < kMaxSendIov; ++i) {
      const ReplyPiece& piece = r->reply[i];
      char* base = piece.from_header ? r->header.data() + piece.offset : r->data() + piece.offset;
      size_t skip = i == r->reply_index ? r->reply_skip : 0;
      send_iov_.push_back({base + skip, piece.length - skip});
    }
    if (send_iov_.size() >= kMaxSendIov) break;
  }
  send_msg_ = {};
  send_msg_.msg_iov = send_iov_.data();
  send_msg_.msg_iovlen = send_iov_.size();
  io_uring_sqe* sqe = worker_->GetSqe();
  io_uring_prep_sendmsg(sqe, fd_, &send_msg_, MSG_NOSIGNAL);
  io_uring_sqe_set_data64(sqe, MakeUserData(CompletionTag::kSend, this));
  send_in_flight_ = true;
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
      STRATA_LOG(kInfo, "conn %d: send failed: %s; dropping %d queued replies", id_,
                 strerror(-res), send_queue_.size());
    }
    send_failed_ = true;
    sent.assign(send_queue_.begin(), send_queue_.end());
    send_queue_.clear();
  } else {
    size_t left = static_cast<size_t>(res);
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
  }
  for (Request* r : sent) Release(r);
  if (send_failed_ && state_ < State::kDraining) BeginDrain("send failed");
  FlushSends();
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

void Connection::AcquireBuffer(Request* r, uint64_t start, uint64_t end) {
  const uint64_t s = AlignDown(start, alignment_);
  const uint64_t e = std::max(AlignUp(end, alignment_), s + alignment_);
  r->buf = worker_->buffers().Acquire(e - s, &r->buf_cap);
  r->buf_start = s;
  inflight_bytes_ += r->buf_cap;
}

void Connection::Release(Request* r) {
  if (r->buf != nullptr) {
    worker_->buffers().Release(r->buf, r->buf_cap);
    inflight_bytes_ -= r->buf_cap;
  }
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
  state_ = State::kClosed;
  close(fd_);
  STRATA_LOG(kInfo,
             "conn %d: closed (%s): export \"%s\"%s, %d requests, %d errors, %d bytes read, "
             "%d written",
             id_, close_reason_, session_.export_ ? session_.export_->name : "",
             session_.export_ ? "" : " (not negotiated)", io_.total_requests(), io_.errors,
             io_.bytes_read, io_.bytes_written);
  worker_->ConnectionClosed(this, io_);
}

}  // namespace strata
