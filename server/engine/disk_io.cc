#include "server/engine/disk_io.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "blockstore/file.h"
#include "server/engine/connection.h"
#include "server/engine/worker.h"
#include "server/log.h"

namespace strata {

using nbd::Command;

namespace {

// Holes shorter than this are sent as zero bytes inside OFFSET_DATA: a chunk header for a few
// zero bytes saves nothing.
constexpr uint64_t kMinHoleChunk = 4096;
// WRITE_ZEROES that must write zero data does it in pieces of this size (one buffer each).
constexpr uint64_t kZeroWriteChunk = 1 << 20;
// BLOCK_STATUS looks at most this far per request; clients ask again from where it stopped.
constexpr uint64_t kMaxStatusQuery = 1ull << 30;
// O_DIRECT needs lengths in whole logical blocks; at the very end of a disk whose size is
// not a multiple of 4 KiB we round the last read up to this and accept the short read.
constexpr uint64_t kSectorSize = 512;
// CoalesceReads: runs of one file at most kMaxReadGap apart are read as one span of at most
// kMaxCoalescedRead. A 64 KiB read costs this virtual disk about what a 4 KiB one does, so
// reading a cluster's gaps in vain is cheaper than one more I/O.
constexpr uint64_t kMaxReadGap = 64 << 10;
constexpr uint64_t kMaxCoalescedRead = 1 << 20;

uint64_t AlignDown(uint64_t v, uint64_t a) { return v / a * a; }
uint64_t AlignUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Buffers

void BufferAccount::Place(uint64_t start, uint64_t end, uint64_t* s, uint64_t* e) const {
  *s = AlignDown(start, alignment_);
  *e = std::max(AlignUp(end, alignment_), *s + alignment_);
}

void BufferAccount::Fill(IoBuffer* b, uint64_t start, uint64_t size) {
  b->data = pool_->Acquire(size, &b->cap);
  b->start = start;
  bytes_ += b->cap;
}

bool BufferAccount::TryAcquire(IoBuffer* b, uint64_t start, uint64_t end) {
  uint64_t s, e;
  Place(start, end, &s, &e);
  if (!budget_->TryTake(bytes_, BufferPool::CapacityFor(e - s), waiter_)) return false;
  Fill(b, s, e - s);
  return true;
}

bool BufferAccount::TryAcquireUnaligned(IoBuffer* b, uint64_t offset, uint64_t length) {
  const uint64_t size = std::max<uint64_t>(length, 1);
  if (!budget_->TryTake(bytes_, BufferPool::CapacityFor(size), waiter_)) return false;
  Fill(b, offset, size);
  return true;
}

void BufferAccount::Acquire(IoBuffer* b, uint64_t start, uint64_t end) {
  uint64_t s, e;
  Place(start, end, &s, &e);
  budget_->Take(bytes_, BufferPool::CapacityFor(e - s));
  Fill(b, s, e - s);
}

void BufferAccount::Release(IoBuffer* b) {
  if (b->data == nullptr) return;
  pool_->Release(b->data, b->cap);
  budget_->Give(bytes_, b->cap);
  bytes_ -= b->cap;
  *b = IoBuffer{};
}

// ---------------------------------------------------------------------------------------------
// Steps

absl::string_view DiskIo::Name(Step step) {
  switch (step) {
    case Step::kIdle: return "idle";
    case Step::kBlockingCall: return "blocking call";
    case Step::kReading: return "reading";
    case Step::kZeroing: return "zeroing";
    case Step::kParked: return "parked";
    case Step::kReplenishing: return "replenishing slots";
    case Step::kWaitingForSpace: return "waiting for space";
    case Step::kFilling: return "filling";
    case Step::kWriting: return "writing";
    case Step::kFua: return "FUA flush";
    case Step::kDone: return "done";
  }
  return "?";
}

void DiskIo::Retry() { Advance(); }

void DiskIo::Start(const DiskIoContext* ctx, Request* r) {
  ctx_ = ctx;
  r_ = r;
  Advance();
}

// The one place that decides what follows each step. A step that failed has set r_->status.
void DiskIo::Advance() {
  const bool ok = r_->status.ok();
  switch (step_) {
    case Step::kIdle:
      return Begin();
    case Step::kReading:
      read_pin_.Release();  // the preads are done: trimmed slots may be reused
      if (ok) CopyOnRead();
      return Finish();
    case Step::kZeroing:
      // Zero marks need journal space as a write needs slots: a zero waits like a write.
      if (!ok && WaitForSpace()) return;
      return ok ? NextRange() : Finish();
    case Step::kReplenishing:
      if (!ok && WaitForSpace()) return;
      return ok ? PrepareRange() : Finish();
    case Step::kParked:
      return ok ? PrepareRange() : Finish();
    case Step::kWaitingForSpace:
      return ResumeAfterWaiting();
    case Step::kFilling:
      return ok ? WriteTargets() : EndRange();
    case Step::kWriting:
      return EndRange();
    case Step::kBlockingCall:
    case Step::kFua:
      // A flush whose checkpoint found no space (the journal was full) waits like a write.
      if (!ok && WaitForSpace()) return;
      return Finish();
    case Step::kDone:
      STRATA_LOG(kError, "%s: disk I/O advanced after it was done", DescribeRequest(r_->h));
      abort();  // a second reply for one request would corrupt the client's stream
  }
}

// The command's first step.
void DiskIo::Begin() {
  Storage* s = ctx_->storage;
  const nbd::RequestHeader h = r_->h;
  const bool fua = h.flags & nbd::kCmdFlagFua;
  switch (r_->cmd) {
    case Command::kRead:
      return BeginRead();
    case Command::kWrite:
      if (h.length > 0) ranges_.push_back({h.offset, h.length});
      return NextRange();
    case Command::kWriteZeroes:
      return BeginZero();
    case Command::kTrim:
      return RunOnPool(Step::kBlockingCall, [s, h, fua]() -> absl::Status {
        if (h.length == 0) return absl::OkStatus();
        absl::Status st = s->Trim(h.offset, h.length);
        if (st.ok() && fua) st = s->GroupFlush();
        return st;
      });
    case Command::kFlush:
      // A read-only export has nothing to make durable.
      return RunOnPool(Step::kBlockingCall, [s, ro = ctx_->session->export_->read_only]() {
        return ro ? absl::OkStatus() : s->GroupFlush();
      });
    case Command::kCache:
      return RunOnPool(Step::kBlockingCall, [s, h]() { return s->Cache(h.offset, h.length); });
    case Command::kBlockStatus:
      return BeginBlockStatus();
    default:
      // ValidateRequest refused every other command.
      return Fail(absl::InternalError(absl::StrCat(DescribeRequest(h), ": not executable")));
  }
}

void DiskIo::Finish() {
  StopWaiting();
  step_ = Step::kDone;
  ctx_->conn->DiskIoDone(r_);
}

void DiskIo::Fail(absl::Status status) {
  if (r_->status.ok()) r_->status = std::move(status);
  Finish();
}

void DiskIo::RunOnPool(Step step, std::function<absl::Status()> work) {
  step_ = step;
  ctx_->worker->RunBlocking(std::move(work), [this](absl::Status st) {
    if (!st.ok() && r_->status.ok()) r_->status = std::move(st);
    Advance();
  });
}

// ---------------------------------------------------------------------------------------------
// READ

void DiskIo::BeginRead() {
  const uint64_t off = r_->h.offset;
  const uint64_t len = r_->h.length;
  if (len == 0) return Finish();
  Storage* storage = ctx_->storage;
  // O_DIRECT: read the aligned range around the request into an aligned buffer.
  const uint64_t a = storage->direct_io() ? kDirectIoAlignment : 1;
  const uint64_t start = AlignDown(off, a);
  const uint64_t end = std::min(AlignUp(off + len, a), storage->size());
  // The connection took the buffer when it admitted the request (Connection::TakeBuffer).
  FitBuffer(start, AlignUp(off + len, kDirectIoAlignment), 0, 0);
  read_start_ = start;
  absl::Status st = storage->MapRead(start, end - start, &segments_, &read_pin_);
  if (!st.ok()) return Fail(std::move(st));
  // Holes go out as OFFSET_HOLE chunks when the client reads structured replies and did not
  // ask for a single chunk (DF); otherwise they are zero-filled.
  const bool holes = ctx_->session->structured_replies && !(r_->h.flags & nbd::kCmdFlagDf);
  uint64_t pos = start;
  for (const Segment& seg : segments_) {
    AddReadSegment(seg, pos, holes);
    pos += seg.length;
  }
  if (pos < off + len) {
    return Fail(absl::InternalError(
        absl::StrFormat("%s: MapRead covered only up to %#x", DescribeRequest(r_->h), pos)));
  }
  CoalesceReads();
  ctx_->conn->CountFileReads(static_cast<uint64_t>(
      std::count_if(pieces_.begin(), pieces_.end(), [](const IoPiece& p) { return !p.remote; })));
  SubmitPieces(Step::kReading);
}

// A 1 MiB read of clusters that each hold a few scattered 4 KiB writes maps to dozens of runs:
// each written run from its slot, each gap from the layer below, every one its own I/O (a
// cold sequential read at a quarter of the speed of whole clusters, bench/README.md).
// Runs of one file at the same distance from their virtual offsets (one slot, or a raw base)
// and close together become one read of their span into a bounce buffer, each run copied out
// of it once it completes: one I/O for several, for the gaps' bytes read in vain and a copy.
// The gaps are other pieces' (or zeros) and are never copied over. Bounce buffers take at
// most twice the request's length (its base and one layer may each span all of it), charged
// to the connection like its buffer.
void DiskIo::CoalesceReads() {
  if (pieces_.size() < 2) return;
  struct Span {
    std::vector<size_t> members;  // indexes into pieces_, in file order
    uint64_t file_end;
  };
  std::vector<Span> spans;
  absl::flat_hash_map<std::pair<int, uint64_t>, size_t> open;  // (fd, file - virtual) -> span
  for (size_t i = 0; i < pieces_.size(); ++i) {
    const IoPiece& p = pieces_[i];
    const uint64_t end = p.file_offset + p.length;
    if (!p.remote) {
      const std::pair<int, uint64_t> key{p.fd, p.file_offset - p.virtual_offset};
      auto it = open.find(key);
      if (it != open.end()) {
        Span& s = spans[it->second];
        const uint64_t start = pieces_[s.members.front()].file_offset;
        if (p.file_offset >= s.file_end && p.file_offset - s.file_end <= kMaxReadGap &&
            end - start <= kMaxCoalescedRead) {
          s.members.push_back(i);
          s.file_end = end;
          continue;
        }
      }
      open[key] = spans.size();
    }
    spans.push_back({{i}, end});
  }
  if (spans.size() == pieces_.size()) return;
  std::vector<IoPiece> coalesced;
  coalesced.reserve(spans.size());
  uint64_t bounced = 0;
  for (const Span& s : spans) {
    const uint64_t length = s.file_end - pieces_[s.members.front()].file_offset;
    if (s.members.size() == 1 || bounced + length > 2 * uint64_t{r_->h.length}) {
      for (size_t i : s.members) coalesced.push_back(pieces_[i]);
      continue;
    }
    bounced += length;
    coalesced.push_back(SpanOf(s.members));
  }
  pieces_ = std::move(coalesced);
}

// One read of the file range from the first of `members` to the end of the last, into a
// bounce buffer, with each member's bytes copied out to where it would have read them.
IoPiece DiskIo::SpanOf(const std::vector<size_t>& members) {
  IoPiece span = pieces_[members.front()];
  const IoPiece& last = pieces_[members.back()];
  span.length = static_cast<uint32_t>(last.file_offset + last.length - span.file_offset);
  ctx_->buffers->Acquire(&span.bounce, 0, span.length);
  span.buf = span.bounce.data;
  for (size_t i : members) {
    const IoPiece& m = pieces_[i];
    AddCopyOut(&span, m.buf, m.file_offset - span.file_offset, m.length);
  }
  return span;
}

// --copy-on-read: what this read took from the remote base is written into the active layer,
// on the blocking pool, from a copy (the buffer goes with the reply).
void DiskIo::CopyOnRead() {
  Storage* storage = ctx_->storage;
  if (storage->remote_base() == nullptr) return;
  uint64_t pos = read_start_;
  for (const Segment& seg : segments_) {
    const uint64_t at = pos;
    pos += seg.length;
    if (seg.kind != Segment::Kind::kRemote || !storage->AdmitCopyOnRead(seg.length)) continue;
    std::string data(r_->buf.At(at), seg.length);
    ctx_->worker->RunDetached([storage, at, data = std::move(data)]() mutable {
      storage->CopyUpFromBase(at, std::move(data));
    });
  }
}

// `seg` covers [pos, pos + seg.length) of the aligned range: a pread, zeros or a hole run.
void DiskIo::AddReadSegment(const Segment& seg, uint64_t pos, bool holes) {
  const uint64_t off = r_->h.offset;
  const uint64_t end = off + r_->h.length;
  // The part of this segment inside the request, for the reply runs.
  const uint64_t s = std::max(pos, off);
  const uint64_t t = std::min(pos + seg.length, end);
  bool hole = false;
  if (seg.kind != Segment::Kind::kZero) {
    IoPiece p = PieceFor(seg, pos);
    if (ctx_->storage->direct_io() && !p.remote) {
      p.length = static_cast<uint32_t>(AlignUp(seg.length, kSectorSize));
    }
    pieces_.push_back(p);
  } else if (holes && t > s && t - s >= kMinHoleChunk) {
    hole = true;
  } else {
    std::memset(r_->buf.At(pos), 0, seg.length);
  }
  if (t <= s) return;
  if (!runs_.empty() && runs_.back().hole == hole) {
    runs_.back().length += t - s;
  } else {
    runs_.push_back({t - s, hole});
  }
}

// ---------------------------------------------------------------------------------------------
// WRITE and WRITE_ZEROES

void DiskIo::BeginZero() {
  // FAST_ZERO needs no check: whole sub-blocks become zero marks (with NO_HOLE keeping their
  // space) and only the unaligned edges are written, so this is never slower than a WRITE.
  if (r_->h.length == 0) return Finish();
  const nbd::RequestHeader h = r_->h;
  ranges_.clear();  // what an attempt that found no space left (WaitForSpace)
  RunOnPool(Step::kZeroing, [this, s = ctx_->storage, h]() {
    std::vector<std::pair<uint64_t, uint64_t>> data_ranges;
    absl::Status st = s->Zero(h.offset, h.length, !(h.flags & nbd::kCmdFlagNoHole), &data_ranges);
    // What must be written as zero data goes in buffer-sized pieces.
    for (auto [off, len] : data_ranges) {
      while (len > 0) {
        uint64_t n = std::min(len, kZeroWriteChunk - off % kZeroWriteChunk);
        ranges_.push_back({off, n});
        off += n;
        len -= n;
      }
    }
    return st;
  });
}

void DiskIo::NextRange() {
  if (next_range_ < ranges_.size()) return PrepareRange();
  if (r_->h.flags & nbd::kCmdFlagFua) {
    return RunOnPool(Step::kFua, [s = ctx_->storage]() { return s->GroupFlush(); });
  }
  Finish();
}

void DiskIo::PrepareRange() {
  const auto [off, len] = ranges_[next_range_];
  if (r_->cmd == Command::kWriteZeroes) {
    // The payload of a zero write is zeros; the margins get the fills.
    FitBuffer(off, off + len, 0, 0);
    std::memset(r_->buf.At(off), 0, len);
  }
  Storage* storage = ctx_->storage;
  absl::StatusOr<WritePlan> plan = storage->PrepareWrite(off, len);
  if (IsWriteConflict(plan.status())) {
    step_ = Step::kParked;
    ctx_->worker->Park(this);
    return;
  }
  if (NeedsSlots(plan.status())) {
    return RunOnPool(Step::kReplenishing, [storage]() { return storage->ReplenishSlots(); });
  }
  if (!plan.ok()) return Fail(plan.status());
  plan_ = std::move(*plan);
  if (plan_.replenish) ReplenishSoon();
  // The plan may widen the range beyond the buffer's margins: keep the payload, in place or
  // moved into a buffer that covers the plan.
  FitBuffer(plan_.start, plan_.end, off, len);
  AddFills(plan_.head_fill, plan_.start);
  AddFills(plan_.tail_fill, off + len);
  if (pieces_.empty()) return WriteTargets();
  SubmitPieces(Step::kFilling);
}

// The volume had no space for this write's slots (r_->status is kResourceExhausted, ENOSPC).
// Under --on-full=pause it waits on the worker, counted in NoSpaceState, and is retried once a
// second until space returns or FullVolumePolicy::max_wait_ns has passed since it first waited.
bool DiskIo::WaitForSpace() {
  if (!IsNoSpace(r_->status)) return false;
  NoSpaceState* no_space = ctx_->worker->no_space();
  const int64_t now = MonotonicNs();
  if (!waiting_counted_) {
    if (!no_space->BeginWait()) return false;
    waiting_counted_ = true;
    wait_since_ns_ = now;
  } else if (now - wait_since_ns_ >= no_space->policy().max_wait_ns) {
    r_->status = absl::ResourceExhaustedError(
        absl::StrFormat("%s (waited %d s for space: --full-timeout)", r_->status.message(),
                        (now - wait_since_ns_) / 1'000'000'000));
    return false;
  }
  if (!ctx_->worker->WaitForSpace(this)) return false;
  wait_status_ = std::move(r_->status);
  r_->status = absl::OkStatus();
  waited_in_ = step_;
  step_ = Step::kWaitingForSpace;
  return true;
}

void DiskIo::RetryAfterWaiting(bool give_up) {
  if (give_up) r_->status = std::move(wait_status_);
  Advance();
}

// The step that found no space, again: each is idempotent.
void DiskIo::ResumeAfterWaiting() {
  if (!r_->status.ok()) return Finish();
  switch (waited_in_) {
    case Step::kReplenishing: return PrepareRange();
    case Step::kFua: return NextRange();  // every range is written: the FUA flush again
    default: return Begin();  // WRITE_ZEROES' Zero, TRIM, FLUSH, CACHE: one blocking call
  }
}

void DiskIo::StopWaiting() {
  if (!waiting_counted_) return;
  waiting_counted_ = false;
  ctx_->worker->no_space()->EndWait();
}

// The reserve of ready slots runs low: refill it on the blocking pool before a write finds it
// empty. Nobody waits for it, so its error is dropped: a full volume fails the write that
// then needs a slot (kReplenishing). One at a time per disk.
void DiskIo::ReplenishSoon() {
  Storage* storage = ctx_->storage;
  if (!storage->ClaimBackgroundReplenish()) return;
  ctx_->worker->RunDetached([storage]() {
    (void)storage->ReplenishSlots();
    storage->EndBackgroundReplenish();
  });
}

// Makes r_->buf cover [start, end), keeping the bytes of [keep_offset, +keep_length).
void DiskIo::FitBuffer(uint64_t start, uint64_t end, uint64_t keep_offset, uint64_t keep_length) {
  if (r_->buf.Covers(AlignDown(start, ctx_->buffers->alignment()),
                     AlignUp(end, ctx_->buffers->alignment()))) {
    return;
  }
  IoBuffer old = r_->buf;
  ctx_->buffers->Acquire(&r_->buf, start, end);
  if (keep_length > 0) std::memcpy(r_->buf.At(keep_offset), old.At(keep_offset), keep_length);
  ctx_->buffers->Release(&old);
}

// The current contents of a widened margin: preads of its data segments, zeros elsewhere.
void DiskIo::AddFills(const std::vector<Segment>& segments, uint64_t pos) {
  for (const Segment& seg : segments) {
    char* dst = r_->buf.At(pos);
    pos += seg.length;
    if (seg.kind == Segment::Kind::kZero) {
      std::memset(dst, 0, seg.length);
      continue;
    }
    IoPiece piece = PieceFor(seg, pos - seg.length);
    if (ctx_->storage->direct_io() && !piece.remote) {
      // A fill is a partial sub-block: O_DIRECT reads the whole aligned block into a bounce
      // buffer and the fill's part is copied into the margin afterwards. The file offset of a
      // sub-block is sub-block aligned, so the same rounding holds in the file.
      const uint64_t head = seg.file_offset % kDirectIoAlignment;
      const uint64_t aligned_len = AlignUp(head + seg.length, kDirectIoAlignment);
      ctx_->buffers->Acquire(&piece.bounce, 0, aligned_len);
      piece.buf = piece.bounce.data;
      piece.file_offset = seg.file_offset - head;
      piece.length = static_cast<uint32_t>(aligned_len);
      AddCopyOut(&piece, dst, head, seg.length);
    }
    pieces_.push_back(piece);
  }
}

void DiskIo::WriteTargets() {
  uint64_t pos = plan_.start;
  for (const Segment& seg : plan_.targets) {
    if (seg.kind == Segment::Kind::kData) {
      IoPiece piece = PieceFor(seg, pos);
      piece.write = true;
      pieces_.push_back(piece);
    }
    pos += seg.length;
  }
  SubmitPieces(Step::kWriting);
}

void DiskIo::EndRange() {
  const bool ok = r_->status.ok();
  ctx_->storage->FinishWrite(plan_, ok);
  plan_ = WritePlan{};
  ctx_->worker->WriteFinished();
  if (!ok) return Finish();
  ++next_range_;
  NextRange();
}

// ---------------------------------------------------------------------------------------------
// BLOCK_STATUS

void DiskIo::BeginBlockStatus() {
  status_length_ = std::min<uint64_t>(r_->h.length, kMaxStatusQuery);
  absl::Status st = ctx_->storage->Extents(r_->h.offset, status_length_, &extents_);
  if (!st.ok()) return Fail(std::move(st));
  Finish();
}

// ---------------------------------------------------------------------------------------------
// File I/O pieces

// The data I/O for `seg`, whose bytes at virtual offset `pos` live in the request's buffer.
IoPiece DiskIo::PieceFor(const Segment& seg, uint64_t pos) {
  IoPiece piece;
  piece.io = this;
  piece.buf = r_->buf.At(pos);
  piece.file_offset = seg.file_offset;
  piece.virtual_offset = pos;
  piece.length = static_cast<uint32_t>(seg.length);
  piece.fd = seg.fd;
  piece.layer = seg.layer;
  piece.remote = seg.kind == Segment::Kind::kRemote;
  return piece;
}

// Enters `step` with every piece built so far in flight; with none, the step is over at once.
void DiskIo::SubmitPieces(Step step) {
  step_ = step;
  if (pieces_.empty()) return Advance();
  pending_ = static_cast<int>(pieces_.size());
  // Page-cache writes are copied into the cache right here. io_uring cannot do a buffered write
  // without blocking on ext4 (no FMODE_BUF_WASYNC), so it would hand each one to an io-wq
  // thread: three or four context switches and twice the CPU of the copy itself.
  absl::InlinedVector<std::pair<IoPiece*, int>, 4> written;
  for (IoPiece& p : pieces_) {
    if (p.remote) {
      ReadRemote(&p);
    } else if (p.write && !ctx_->storage->direct_io()) {
      written.push_back({&p, WriteToPageCache(p)});
    } else {
      PrepareSqe(&p);
    }
  }
  // The last of these may end the step and free pieces_: nothing touches it after.
  for (auto [p, res] : written) OnPiece(p, res);
}

int DiskIo::WriteToPageCache(const IoPiece& p) {
  const ssize_t n = pwrite(p.fd, p.buf + p.done, p.length - p.done, p.file_offset + p.done);
  return n < 0 ? -errno : static_cast<int>(n);
}

// A read of the remote base (blockstore/remote_base.h): off the ring, its completion posted
// back to this worker, where it ends as a file piece does.
void DiskIo::ReadRemote(IoPiece* p) {
  Worker* worker = ctx_->worker;
  ctx_->storage->remote_base()->ReadAsync(
      p->file_offset, absl::MakeSpan(p->buf, p->length), [worker, p](absl::Status status) {
        worker->Post([p, status = std::move(status)]() mutable {
          p->io->OnRemotePiece(p, std::move(status));
        });
      });
}

void DiskIo::OnRemotePiece(IoPiece* p, absl::Status status) {
  if (!status.ok() && r_->status.ok()) {
    r_->status = absl::Status(status.code(), absl::StrCat(DescribeRequest(r_->h), ": ",
                                                          status.message()));
    const uint64_t at = std::max(p->virtual_offset, r_->h.offset);
    if (at < r_->h.offset + r_->h.length) r_->error_offset = at;
  }
  PieceDone();
}

void DiskIo::AddCopyOut(IoPiece* p, char* dst, uint64_t offset, uint64_t length) {
  if (p->copies_begin == p->copies_end) p->copies_begin = static_cast<uint32_t>(copies_.size());
  copies_.push_back({dst, static_cast<uint32_t>(offset), static_cast<uint32_t>(length)});
  p->copies_end = static_cast<uint32_t>(copies_.size());
}

void DiskIo::PieceDone() {
  if (--pending_ > 0) return;
  pieces_.clear();
  copies_.clear();
  Advance();
}

// The SQE for what is left of `p`: all of it, or the rest after a short transfer.
void DiskIo::PrepareSqe(IoPiece* p) {
  io_uring_sqe* sqe = ctx_->worker->GetSqe();
  if (p->write) {
    io_uring_prep_write(sqe, p->fd, p->buf + p->done, p->length - p->done, p->file_offset + p->done);
  } else {
    io_uring_prep_read(sqe, p->fd, p->buf + p->done, p->length - p->done, p->file_offset + p->done);
  }
  io_uring_sqe_set_data64(sqe, MakeUserData(CompletionTag::kPiece, p));
}

void DiskIo::RecordPieceError(const IoPiece& p, int err) {
  if (!r_->status.ok()) return;  // the first error is the one the client hears of
  r_->status = StatusFromErrno(
      err, absl::StrFormat("%s: %s %s @ %#x length %#x", DescribeRequest(r_->h),
                           p.write ? "write" : "read", ctx_->storage->DescribeLayer(p.layer),
                           p.file_offset + p.done, p.length - p.done));
  const uint64_t at = std::max(p.virtual_offset + p.done, r_->h.offset);
  if (at < r_->h.offset + r_->h.length) r_->error_offset = at;
}

void DiskIo::OnPiece(IoPiece* p, int res) {
  if (res == -EAGAIN || res == -EINTR || (res > 0 && p->done + res < p->length)) {
    // Interrupted, or a short transfer: resume where it stopped.
    if (res > 0) p->done += res;
    PrepareSqe(p);
    return;
  }
  if (res < 0) {
    RecordPieceError(*p, -res);
  } else if (res == 0 && p->done < p->length) {
    if (p->write) {
      if (r_->status.ok()) {
        r_->status = absl::DataLossError(absl::StrFormat(
            "%s: write to %s @ %#x wrote nothing", DescribeRequest(r_->h),
            ctx_->storage->DescribeLayer(p->layer), p->file_offset + p->done));
      }
    } else {
      // Reading past the end of a file (a raw base shorter than the disk) reads zeros.
      std::memset(p->buf + p->done, 0, p->length - p->done);
    }
  }
  // Done: what a read into a bounce buffer holds for the request lands in its buffer now.
  if (p->bounce.data != nullptr) {
    if (r_->status.ok()) {
      for (uint32_t i = p->copies_begin; i < p->copies_end; ++i) {
        std::memcpy(copies_[i].dst, p->buf + copies_[i].offset, copies_[i].length);
      }
    }
    ctx_->buffers->Release(&p->bounce);
  }
  PieceDone();
}

}  // namespace strata
