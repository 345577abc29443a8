// DiskIo: the disk half of one NBD request, from the Storage calls to the last file SQE's
// completion. Connection (connection.h) holds the NBD conversation — framing, parsing,
// validation and replies — and hands each valid request that may run to its DiskIo; the DiskIo
// calls Connection::DiskIoDone when the request's status is final.
//
// Design note. A request moves through explicit steps (DiskIo::Step) and one transition
// function, Advance(), decides what follows each of them; every completion — a file SQE, a
// blocking-pool call, a parked write's retry — ends in Advance(). A WRITE, read top to bottom:
//
//   Start            -> NextRange: the request's ranges (one for WRITE; WRITE_ZEROES gets its
//                       ranges from Storage::Zero on the blocking pool, step kZeroing)
//   PrepareRange     -> Storage::PrepareWrite (metadata, on the ring): the plan names the file
//                       targets and the head/tail fills that widen an unaligned write to whole
//                       sub-blocks. A conflict with an unaligned write in flight parks the
//                       request (kParked, Retry); an empty slot reserve sends it to the
//                       blocking pool to replenish (kReplenishing) and back; a full volume
//                       fails it, or under --on-full=pause parks it on its worker
//                       (kWaitingForSpace) until a retry finds space
//   kFilling         -> the fills' preads into the buffer's margins (O_DIRECT: via bounce
//                       buffers, copied in when they complete)
//   kWriting         -> the targets' pwrites of the whole widened buffer
//   EndRange         -> Storage::FinishWrite marks the sub-blocks present; the next range, then
//                       FUA's GroupFlush on the pool (kFua), then kDone
//
// READ maps the range (Storage::MapRead, pinning the slots it names), preads the data segments
// and zero-fills or marks as holes the rest (kReading). TRIM, FLUSH and CACHE are one blocking
// call (kBlockingCall); BLOCK_STATUS is one metadata call on the ring.
//
// Every file read or write is an IoPiece with one SQE preparation (PrepareSqe) that also
// resumes short transfers; a piece's completion has four cases (OnPiece). A read of a remote
// base (an NBD export, Segment::Kind::kRemote) is a piece too, sent through the base's client
// off the ring and completed through the worker's mailbox (OnRemotePiece). The ring thread never
// blocks: fallocate, fsync and friends run on the blocking pool (storage.h says which call may
// cost what).
#ifndef STRATA_SERVER_ENGINE_DISK_IO_H_
#define STRATA_SERVER_ENGINE_DISK_IO_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "server/engine/buffer_pool.h"
#include "server/engine/storage.h"
#include "server/nbd/handshake.h"
#include "server/nbd/request.h"

namespace strata {

class Connection;
class DiskIo;
class Worker;
struct Request;

// A request's buffer: the virtual bytes [start, start + cap) of the disk.
struct IoBuffer {
  char* data = nullptr;
  size_t cap = 0;
  uint64_t start = 0;

  char* At(uint64_t offset) const { return data + (offset - start); }
  bool Covers(uint64_t s, uint64_t e) const { return data != nullptr && start <= s && e <= start + cap; }
};

// Where one connection's buffers come from (its worker's pool), how many bytes they hold (the
// figure its flow control watches) and the budget they are charged to (shared by every
// connection; the connection is its holder). Buffers start and end on `alignment` (O_DIRECT
// and the sub-block), so a widened write fits without a copy.
class BufferAccount {
 public:
  BufferAccount(BufferPool* pool, BufferBudget* budget, BudgetWaiter* waiter)
      : pool_(pool), budget_(budget), waiter_(waiter) {}
  void set_alignment(uint64_t alignment) { alignment_ = alignment; }
  uint64_t alignment() const { return alignment_; }
  uint64_t bytes() const { return bytes_; }
  // A new request's buffer covering [start, end) placed on the alignment (at least one aligned
  // block). False, and no buffer, when the budget has no room for it now: the waiter is told
  // when it may.
  bool TryAcquire(IoBuffer* b, uint64_t start, uint64_t end);
  // The same for `length` bytes starting at virtual `offset` exactly, not aligned: a payload
  // whose offset may be anything (an invalid WRITE).
  bool TryAcquireUnaligned(IoBuffer* b, uint64_t offset, uint64_t length);
  // Like TryAcquire, but always: an admitted request's buffer growing (a write widened to
  // sub-blocks), which must not wait on others.
  void Acquire(IoBuffer* b, uint64_t start, uint64_t end);
  void Release(IoBuffer* b);

 private:
  // [*s, *e): [start, end) placed on the alignment.
  void Place(uint64_t start, uint64_t end, uint64_t* s, uint64_t* e) const;
  // Takes `size` bytes from the pool for virtual offset `start` (the budget already charged).
  void Fill(IoBuffer* b, uint64_t start, uint64_t size);

  BufferPool* pool_;
  BufferBudget* budget_;
  BudgetWaiter* waiter_;
  uint64_t alignment_ = kDirectIoAlignment;
  uint64_t bytes_ = 0;
};

// One file read or write SQE of a request (user_data = tagged pointer to it).
struct IoPiece {
  DiskIo* io = nullptr;
  char* buf = nullptr;
  uint64_t file_offset = 0;
  uint64_t virtual_offset = 0;  // for the error reply's offset
  uint32_t length = 0;
  uint32_t done = 0;
  int fd = -1;
  int layer = -1;  // Segment::layer, for error messages
  bool write = false;
  bool remote = false;  // a read of the remote base (Segment::Kind::kRemote), not an SQE
  // A read into a bounce buffer (`buf` is bounce.data): an O_DIRECT fill of a partial
  // sub-block, or coalesced runs (DiskIo::CoalesceReads). Once read, DiskIo::copies_
  // [copies_begin, copies_end) are copied out of it into the request's buffer.
  IoBuffer bounce;
  uint32_t copies_begin = 0;
  uint32_t copies_end = 0;
};

// Bytes of a bounce buffer that belong to the request: `length` at `offset` go to `dst`.
struct CopyOut {
  char* dst = nullptr;
  uint32_t offset = 0;
  uint32_t length = 0;
};

// What every request of one connection runs against.
struct DiskIoContext {
  Connection* conn = nullptr;
  Worker* worker = nullptr;
  Storage* storage = nullptr;
  BufferAccount* buffers = nullptr;
  const Negotiated* session = nullptr;
};

class DiskIo {
 public:
  enum class Step : uint8_t {
    kIdle,          // not started
    kBlockingCall,  // TRIM, FLUSH or CACHE on the blocking pool
    kReading,       // READ: the data preads
    kZeroing,       // WRITE_ZEROES: Storage::Zero on the blocking pool
    kParked,        // PrepareWrite conflicted with an unaligned write in flight: until Retry
    kReplenishing,  // PrepareWrite found no ready slot: Storage::ReplenishSlots on the pool
    kWaitingForSpace,  // the volume had no space for it (--on-full=pause): until the worker's
                       // once-a-second retry runs the step that found none again
    kFilling,       // the plan's head/tail fill preads
    kWriting,       // the plan's target pwrites
    kFua,           // a FUA write's GroupFlush on the blocking pool
    kDone,          // the status is final; the connection replies
  };
  static absl::string_view Name(Step step);

  DiskIo() = default;
  DiskIo(const DiskIo&) = delete;
  DiskIo& operator=(const DiskIo&) = delete;

  // Runs request `r` (validated; WRITE payload received into r->buf).
  void Start(const DiskIoContext* ctx, Request* r);
  // A parked write: PrepareWrite again.
  void Retry();
  // A write waiting for space (Worker::WaitForSpace): try again, or fail with ENOSPC.
  void RetryAfterWaiting(bool give_up);
  void OnPiece(IoPiece* piece, int res);
  // A remote base read (IoPiece::remote) finished, on the worker's thread.
  void OnRemotePiece(IoPiece* piece, absl::Status status);

  Step step() const { return step_; }
  // READ: what the reply sends (data runs and holes), once done.
  const std::vector<ReadRun>& runs() const { return runs_; }
  // BLOCK_STATUS: the extents found and the length they answer for, once done.
  const std::vector<Extent>& extents() const { return extents_; }
  uint64_t status_length() const { return status_length_; }

 private:
  void Advance();
  void Begin();
  void Finish();
  void Fail(absl::Status status);
  void RunOnPool(Step step, std::function<absl::Status()> work);
  // READ
  void BeginRead();
  void AddReadSegment(const Segment& seg, uint64_t pos, bool holes);
  void CoalesceReads();
  IoPiece SpanOf(const std::vector<size_t>& members);
  void CopyOnRead();
  // WRITE, WRITE_ZEROES
  void BeginZero();
  void NextRange();
  void PrepareRange();
  void ReplenishSoon();
  bool WaitForSpace();
  void ResumeAfterWaiting();
  void StopWaiting();
  void FitBuffer(uint64_t start, uint64_t end, uint64_t keep_offset, uint64_t keep_length);
  void AddFills(const std::vector<Segment>& segments, uint64_t pos);
  void WriteTargets();
  void EndRange();
  void BeginBlockStatus();
  // File I/O
  IoPiece PieceFor(const Segment& seg, uint64_t pos);
  void SubmitPieces(Step step);
  void PrepareSqe(IoPiece* p);
  // pwrite of what is left of `p` (a page-cache write): bytes written, or -errno.
  static int WriteToPageCache(const IoPiece& p);
  void ReadRemote(IoPiece* p);
  void PieceDone();
  void RecordPieceError(const IoPiece& p, int err);
  // `p` read `length` bytes from bounce.data + offset into `dst`, once it completes.
  void AddCopyOut(IoPiece* p, char* dst, uint64_t offset, uint64_t length);

  const DiskIoContext* ctx_ = nullptr;
  Request* r_ = nullptr;
  Step step_ = Step::kIdle;

  std::vector<IoPiece> pieces_;  // in flight: SQEs point into it, so it never grows meanwhile
  std::vector<CopyOut> copies_;  // of pieces_' bounce buffers
  int pending_ = 0;

  // READ
  std::vector<Segment> segments_;  // from read_start_
  uint64_t read_start_ = 0;
  ReadPin read_pin_;  // keeps segments_' slots from reuse until the preads completed
  std::vector<ReadRun> runs_;

  // WRITE / WRITE_ZEROES: ranges written one after the other, each through one plan.
  std::vector<std::pair<uint64_t, uint64_t>> ranges_;
  size_t next_range_ = 0;
  WritePlan plan_;  // in force (FinishWrite owed) exactly in kFilling and kWriting
  // --on-full=pause: counted in NoSpaceState::waiting() since wait_since_ns_; the ENOSPC
  // status it would have failed with.
  bool waiting_counted_ = false;
  int64_t wait_since_ns_ = 0;
  Step waited_in_ = Step::kIdle;  // the step to run again
  absl::Status wait_status_;

  // BLOCK_STATUS
  std::vector<Extent> extents_;
  uint64_t status_length_ = 0;
};

}  // namespace strata

#endif  // STRATA_SERVER_ENGINE_DISK_IO_H_
