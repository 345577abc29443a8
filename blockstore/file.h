// The file layer under blockstore: positional I/O on layer and base files, the few directory
// operations the chain needs, behind an Env so tests can inject crashes (see crash_env.h), as
// LevelDB's Env does, and the advisory file locks. Errors name the file and the offset.
#ifndef STRATA_BLOCKSTORE_FILE_H_
#define STRATA_BLOCKSTORE_FILE_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace strata {

class File {
 public:
  explicit File(std::string path) : path_(std::move(path)) {}
  virtual ~File() = default;
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  // Reads exactly n bytes at offset; a short read is kDataLoss ("truncated").
  virtual absl::Status Read(uint64_t offset, size_t n, char* dst) const = 0;
  virtual absl::Status Write(uint64_t offset, absl::string_view data) = 0;
  // Makes every completed Write durable (fdatasync).
  virtual absl::Status Sync() = 0;
  // Reserves [offset, offset + length) on the host volume, growing the file (fallocate).
  // kResourceExhausted when the volume is full.
  virtual absl::Status Allocate(uint64_t offset, uint64_t length) = 0;
  // Returns [offset, offset + length) to the host volume; reads as zeros afterwards.
  virtual absl::Status PunchHole(uint64_t offset, uint64_t length) = 0;
  virtual absl::Status Truncate(uint64_t size) = 0;
  virtual absl::StatusOr<uint64_t> Size() const = 0;
  // Bytes the file occupies on the host (st_blocks * 512).
  virtual absl::StatusOr<uint64_t> AllocatedBytes() const = 0;
  // The descriptor for callers that do their own I/O (the server's io_uring ring).
  virtual int fd() const = 0;
  const std::string& path() const { return path_; }
  // The file was renamed or linked while open: messages name it by `path` from now on.
  // REQUIRES: no other thread uses the file meanwhile.
  virtual void set_path(std::string path) { path_ = std::move(path); }

 private:
  std::string path_;
};

// A hint that [offset, offset + length) of `file` will be read or written soon: the kernel
// starts reading it into the page cache (allocating the pages) without waiting. Changes no
// data; ignored where it does not apply.
void AdviseWillNeed(const File& file, uint64_t offset, uint64_t length);

// The ranges of [offset, offset + length) of `path`, open as `fd`, that hold data, as
// [start, end) pairs in order (SEEK_DATA / SEEK_HOLE): the rest are holes, which read as zeros.
// A file system without hole reporting answers the whole range as data.
absl::StatusOr<std::vector<std::pair<uint64_t, uint64_t>>> DataRanges(int fd, absl::string_view path,
                                                                      uint64_t offset, uint64_t length);

// Every file Env::Default() opens must be a regular file off the kernel's pseudo file systems
// (/proc, /sys, ...): a layer, a base, a journal. A FIFO, device, socket or directory is
// refused by fstat before anything reads it, and the open itself never waits (O_NONBLOCK, so a
// FIFO with no writer cannot hang it; cleared again, since io_uring honours it on files).
// kFailedPrecondition saying what the file is.
struct OpenOptions {
  bool writable = false;
  bool create = false;      // fails if the file exists (O_EXCL)
  bool direct_io = false;   // O_DIRECT
  bool no_follow = false;   // O_NOFOLLOW: a symbolic link as the last component is refused
};

class Env {
 public:
  virtual ~Env() = default;
  static Env* Default();

  virtual absl::StatusOr<std::unique_ptr<File>> Open(const std::string& path,
                                                     const OpenOptions& options) = 0;
  virtual absl::Status Rename(const std::string& from, const std::string& to) = 0;
  virtual absl::Status Link(const std::string& from, const std::string& to) = 0;
  virtual absl::Status Remove(const std::string& path) = 0;
  virtual bool Exists(const std::string& path) = 0;
  // Makes renames, links and removals in `dir` durable.
  virtual absl::Status SyncDir(const std::string& dir) = 0;
  // Regular files in `dir` (names only).
  virtual absl::StatusOr<std::vector<std::string>> ListDir(const std::string& dir) = 0;
  // Copies `length` bytes of `from` @ from_off to `to` @ to_off: in the kernel when it can
  // (copy_file_range), else through user space. Not durable until `to` is synced.
  virtual absl::Status CopyRange(File* from, uint64_t from_off, File* to, uint64_t to_off,
                                 uint64_t length);
};

// The whole content of the small file at `path` (a journal).
absl::StatusOr<std::string> ReadWholeFile(Env* env, const std::string& path);
// Replaces the small file at `path` with `contents` durably and atomically: written to
// `path.tmp`, synced, renamed over `path`, directory synced. A crash leaves the old or the new.
absl::Status ReplaceFile(Env* env, const std::string& path, absl::string_view contents);

// Copies `length` bytes with File::Read and File::Write, a buffer at a time: Env::CopyRange's
// fallback, and how a test Env sees a copy.
absl::Status CopyThroughUserSpace(File* from, uint64_t from_off, File* to, uint64_t to_off,
                                  uint64_t length);

// Advisory whole-file locks (flock(2), never waiting): a writable chain holds its top layer
// exclusively and the layers below shared; a command that changes files (commit, revert,
// recovery) holds each file it changes exclusively. So a second writer, or a merge under a
// server, is refused instead of corrupting the chain.
enum class LockMode { kShared, kExclusive };
// Locks `file`'s descriptor. kFailedPrecondition naming the file when another process holds a
// conflicting lock; ErrnoStatus for any other failure.
absl::Status TryLock(const File& file, LockMode mode);
// True when another process holds an exclusive lock on `path`: a server or a merge has it open
// for writing. Finds out with a shared lock on a descriptor of its own, dropped on return.
bool LockedExclusivelyByOther(Env* env, const std::string& path);

// kFailedPrecondition unless `twin`, opened again by `first`'s path (an O_DIRECT twin), is the
// same file: a rename over the path in between must not swap the data under a checked header.
absl::Status CheckSameFile(const File& first, const File& twin);

// Path helpers (no I/O).
std::string DirName(const std::string& path);
std::string BaseName(const std::string& path);
// `relative` resolved against directory `dir`; an absolute `relative` is returned as is.
std::string ResolvePath(const std::string& dir, const std::string& relative);

// How a child layer in directory `child_dir` records its parent `parent`: the file name when
// both share a directory (the pair can move together), else the absolute path.
std::string ParentLink(const std::string& child_dir, const std::string& parent);

// Turns errno into a Status naming the operation and file; ENOSPC and EDQUOT (the host volume
// is full) are kResourceExhausted. The errno rides along as a payload (StatusErrno): a status
// code alone cannot tell a read-only mount (EROFS) from a busy file (EBUSY).
absl::Status ErrnoStatus(int err, absl::string_view op, absl::string_view path,
                         int64_t offset = -1);
// The errno an ErrnoStatus or StatusFromErrno was made from; 0 for any other status.
int StatusErrno(const absl::Status& s);
// `s` with `prefix` and ": " before its message, keeping its code and payloads (its errno).
absl::Status WithContext(const absl::Status& s, absl::string_view prefix);
// Whether `s` is a write the file system or the permissions refuse (EROFS: a read-only mount;
// EACCES: a file or directory the user may not write), as on a golden image shared read-only
// between hosts.
bool IsWriteRefused(const absl::Status& s);
inline bool IsNoSpace(const absl::Status& s) {
  return s.code() == absl::StatusCode::kResourceExhausted;
}
// absl::ErrnoToStatus, except that EIO and EUCLEAN (data the device or file system could not
// read or keep, or found corrupt) are kDataLoss: absl leaves them kUnknown. Carries `err`
// (StatusErrno).
absl::Status StatusFromErrno(int err, absl::string_view message);

}  // namespace strata

#endif  // STRATA_BLOCKSTORE_FILE_H_
