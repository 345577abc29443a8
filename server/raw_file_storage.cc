// RawFileStorage: a raw file behind the Storage interface. It exists so that the server can be
// unit-tested and benchmarked without a layer chain, and it deliberately reproduces Chain's
// awkward cases: writes widened to 4 KiB sub-blocks with head/tail fills, and kUnavailable for
// a widened write whose edge sub-block is in use by another write in flight.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <list>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "server/storage.h"

namespace strata {

absl::Status Storage::Cache(uint64_t, uint64_t) { return absl::OkStatus(); }

absl::Status Storage::GroupFlush() {
  absl::MutexLock lock(&flush_mu_);
  // The flush that covers us must begin after now: the one after any flush already running.
  const uint64_t target = flush_started_ + 1;
  for (;;) {
    if (flush_done_ >= target) return flush_status_;
    if (!flush_running_) break;
    flush_mu_.Await(absl::Condition(
        +[](Storage* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->flush_mu_) { return !s->flush_running_; },
        this));
  }
  // Leader: run one flush for everyone who arrived up to now.
  flush_running_ = true;
  flush_started_ = target;
  flush_mu_.Unlock();
  absl::Status st = Flush();
  flush_mu_.Lock();
  flush_running_ = false;
  flush_done_ = target;
  flush_status_ = st;
  return st;
}

namespace {

constexpr uint64_t kSubBlock = 4096;

class RawFileStorage final : public Storage {
 public:
  RawFileStorage(std::string path, int fd, uint64_t size, bool writable, bool direct_io)
      : path_(std::move(path)), fd_(fd), size_(size), writable_(writable), direct_io_(direct_io) {}
  ~RawFileStorage() override { close(fd_); }

  uint64_t size() const override { return size_; }
  uint32_t sub_block_size() const override { return kSubBlock; }
  bool writable() const override { return writable_; }
  bool direct_io() const override { return direct_io_; }
  int top_position() const override { return 0; }
  std::string Describe() const override { return absl::StrFormat("raw file %s", path_); }

  absl::Status MapRead(uint64_t offset, uint64_t length,
                       std::vector<Segment>* out) const override {
    if (offset > size_ || length > size_ - offset) return OutOfRange("read", offset, length);
    if (length == 0) return absl::OkStatus();
    out->push_back(Data(offset, length));
    return absl::OkStatus();
  }

  absl::StatusOr<WritePlan> PrepareWrite(uint64_t offset, uint64_t length) override {
    if (!writable_) return absl::FailedPreconditionError(absl::StrFormat("%s: read-only", path_));
    if (offset > size_ || length > size_ - offset) return OutOfRange("write", offset, length);
    WritePlan plan;
    plan.start = offset / kSubBlock * kSubBlock;
    plan.end = std::min(size_, (offset + length + kSubBlock - 1) / kSubBlock * kSubBlock);
    if (plan.start < offset) plan.head_fill.push_back(Data(plan.start, offset - plan.start));
    if (plan.end > offset + length) {
      plan.tail_fill.push_back(Data(offset + length, plan.end - offset - length));
    }
    plan.targets.push_back(Data(plan.start, plan.end - plan.start));
    absl::MutexLock lock(&mu_);
    for (const Inflight& other : inflight_) {
      // A read-modify-write of an edge sub-block must not race another write of that
      // sub-block, in either direction.
      if (Overlaps(plan, other.start, other.end) && (plan.widened() || other.widened)) {
        return absl::UnavailableError(absl::StrFormat(
            "%s: write [%#x, +%#x) waits for a write in flight on the same sub-block", path_,
            offset, length));
      }
    }
    inflight_.push_back({plan.start, plan.end, plan.widened()});
    return plan;
  }

  void FinishWrite(const WritePlan& plan, bool) override {
    absl::MutexLock lock(&mu_);
    for (auto it = inflight_.begin(); it != inflight_.end(); ++it) {
      if (it->start == plan.start && it->end == plan.end && it->widened == plan.widened()) {
        inflight_.erase(it);
        return;
      }
    }
  }

  absl::Status Zero(uint64_t offset, uint64_t length, bool may_trim,
                    std::vector<std::pair<uint64_t, uint64_t>>* data_ranges) override {
    if (!writable_) return absl::FailedPreconditionError(absl::StrFormat("%s: read-only", path_));
    if (offset > size_ || length > size_ - offset) return OutOfRange("zero", offset, length);
    const uint64_t end = offset + length;
    const uint64_t a = std::min(end, (offset + kSubBlock - 1) / kSubBlock * kSubBlock);
    const uint64_t b = std::max(a, end / kSubBlock * kSubBlock);
    if (offset < a) data_ranges->push_back({offset, a - offset});
    if (a < b) {
      if (may_trim) {
        if (fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, a, b - a) != 0) {
          return absl::ErrnoToStatus(errno, absl::StrFormat("%s: punch hole [%#x, %#x)", path_, a, b));
        }
      } else {
        // NO_HOLE: the caller writes zero data (exercises the server's zero-write path).
        data_ranges->push_back({a, b - a});
      }
    }
    if (b < end) data_ranges->push_back({b, end - b});
    return absl::OkStatus();
  }

  absl::Status Trim(uint64_t offset, uint64_t length) override {
    if (!writable_) return absl::FailedPreconditionError(absl::StrFormat("%s: read-only", path_));
    if (offset > size_ || length > size_ - offset) return OutOfRange("trim", offset, length);
    const uint64_t a = (offset + kSubBlock - 1) / kSubBlock * kSubBlock;
    const uint64_t b = (offset + length) / kSubBlock * kSubBlock;
    if (a < b && fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, a, b - a) != 0) {
      return absl::ErrnoToStatus(errno, absl::StrFormat("%s: punch hole [%#x, %#x)", path_, a, b));
    }
    return absl::OkStatus();
  }

  absl::Status Flush() override {
    if (fdatasync(fd_) != 0) return absl::ErrnoToStatus(errno, path_ + ": fdatasync");
    return absl::OkStatus();
  }

  absl::Status Extents(uint64_t offset, uint64_t length, std::vector<Extent>* out) const override {
    if (offset > size_ || length > size_ - offset) return OutOfRange("extents", offset, length);
    const uint64_t end = offset + length;
    uint64_t pos = offset;
    while (pos < end) {
      off_t data = lseek(fd_, pos, SEEK_DATA);
      uint64_t data_start = data < 0 ? end : std::min<uint64_t>(data, end);
      if (data_start > pos) {
        Append(out, {pos, data_start - pos, 0, /*zero=*/true, /*data=*/false});
        pos = data_start;
        continue;
      }
      off_t hole = lseek(fd_, pos, SEEK_HOLE);
      uint64_t data_end = hole < 0 ? end : std::min<uint64_t>(hole, end);
      if (data_end <= pos) data_end = end;
      Append(out, {pos, data_end - pos, 0, false, true});
      pos = data_end;
    }
    return absl::OkStatus();
  }

  absl::Status Cache(uint64_t offset, uint64_t length) override {
    if (!direct_io_) posix_fadvise(fd_, offset, length, POSIX_FADV_WILLNEED);
    return absl::OkStatus();
  }

 private:
  struct Inflight {
    uint64_t start, end;
    bool widened;
  };
  static bool Overlaps(const WritePlan& plan, uint64_t start, uint64_t end) {
    return plan.start < end && start < plan.end;
  }
  static void Append(std::vector<Extent>* out, Extent e) {
    if (!out->empty() && out->back().data == e.data && out->back().zero == e.zero &&
        out->back().offset + out->back().length == e.offset) {
      out->back().length += e.length;
    } else {
      out->push_back(e);
    }
  }
  Segment Data(uint64_t offset, uint64_t length) const {
    Segment s;
    s.kind = Segment::Kind::kData;
    s.length = length;
    s.fd = fd_;
    s.file_offset = offset;
    return s;
  }
  absl::Status OutOfRange(const char* what, uint64_t offset, uint64_t length) const {
    return absl::OutOfRangeError(absl::StrFormat("%s: %s [%#x, +%#x) beyond the end (%#x)", path_,
                                                 what, offset, length, size_));
  }

  const std::string path_;
  const int fd_;
  const uint64_t size_;
  const bool writable_;
  const bool direct_io_;
  absl::Mutex mu_;
  std::list<Inflight> inflight_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<std::unique_ptr<Storage>> OpenRawFileStorage(const std::string& path,
                                                            bool writable, bool direct_io) {
  int flags = (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC | (direct_io ? O_DIRECT : 0);
  int fd = open(path.c_str(), flags);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrFormat("open %s", path));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    close(fd);
    return absl::ErrnoToStatus(e, absl::StrFormat("stat %s", path));
  }
  return std::unique_ptr<Storage>(
      new RawFileStorage(path, fd, static_cast<uint64_t>(st.st_size), writable, direct_io));
}

}  // namespace strata
