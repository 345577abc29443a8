// CrashEnv: an Env for tests that models what a file system keeps across a power loss, in the
// manner of ALICE and CrashMonkey, and writes any one of those crash states onto the real files.
//
// Design note. The files are real: reads, flock and the server's own pread/pwrite on fd() see
// them as usual, with every change made so far (the page cache). Beside them the Env keeps a
// model of what is durable:
//  - per inode (a model id: real inode numbers change when a crash re-creates a file), the
//    durable content in 4 KiB blocks (absent blocks are zeros) and the durable size, plus the
//    operations since the inode's last Sync(), in program order: writes (CopyRange is writes
//    too), punched holes, size changes (growth by Allocate or by a write past the end,
//    Truncate). Sync() on any of the inode's files makes them all durable, size included.
//  - one ordered log of directory operations (create by Open{create}, Link, Rename, Remove),
//    as a journaling file system commits metadata in order. SyncDir(dir) makes durable every
//    logged operation up to the last one that touches `dir`.
// A crash state keeps, of what was pending: any subset of the writes' 4 KiB blocks, applied in
// program order, so that any version of a block may survive (a kept block may also be torn at
// its 512-byte sectors); each punch whole or not at all; a prefix of each file's size changes;
// a prefix of the directory log. A file whose creation did not persist is gone; a name whose
// removal did not persist is back, with the inode's durable content.
//
// Crash() writes one crash state onto the real files (hard links stay hard links) and makes it
// the durable state, with nothing pending: a test can crash, reopen, work and crash again. A
// CrashPoint taken with Point() can be crashed into many times, one state after another.
//
// A sweep stops an operation at each of its sync points in turn: CutPowerAtSync(n) lets n
// sync points (File::Sync, SyncDir) succeed and fails the next one and every later call, as a
// process that lost power there; the test closes everything and crashes.
//
// Not modeled: directories themselves (they exist beforehand and stay), preallocation (an
// Allocate counts only as a size change and as space a full volume lets the file keep using,
// SetVolumeFull; a crash rewrites only the blocks that differ, so a file that stays keeps its
// real extents), zeros written as data (a crash writes them as
// holes), a file's Sync() making its new name durable (ext4 does; POSIX does not promise it). Files change only through this Env once they are imported
// (Import); a file it has not seen yet is taken as durable when first used. Syncs are not
// passed on to the real files: the model alone decides what survives. Thread-safe.
#ifndef STRATA_BLOCKSTORE_CRASH_ENV_H_
#define STRATA_BLOCKSTORE_CRASH_ENV_H_

#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "blockstore/file.h"
#include "blockstore/mutex.h"

namespace strata {

class CrashFile;
struct CrashModel;

// Which crash state of a CrashPoint to write out.
struct CrashChoice {
  enum class Kind { kNothing, kEverything, kState, kRandom };
  // Only what was durable: nothing pending persisted.
  static CrashChoice Nothing() { return {Kind::kNothing, 0}; }
  // Everything pending persisted, as if every file and directory had been synced.
  static CrashChoice Everything() { return {Kind::kEverything, 0}; }
  // State `index` < CrashPoint::states() of an exhaustive enumeration (no torn blocks).
  static CrashChoice State(uint64_t index) { return {Kind::kState, index}; }
  // A random state: blocks kept with a probability drawn per crash, one in eight kept blocks
  // torn at sectors, random prefixes of the size changes and of the directory log.
  static CrashChoice Random(uint64_t seed) { return {Kind::kRandom, seed}; }
  std::string ToString() const;

  Kind kind;
  uint64_t value;
};

// The durable state and the pending operations at one instant.
class CrashPoint {
 public:
  struct Pending {
    uint64_t blocks = 0;        // pieces: one per 4 KiB block of each pending write, per punch
    uint64_t size_changes = 0;
    uint64_t metadata_ops = 0;  // directory operations not yet durable
  };
  const Pending& pending() const { return pending_; }
  // How many states CrashChoice::State enumerates: every subset of the blocks, times every
  // prefix of each file's size changes and of the directory log. Saturates at UINT64_MAX.
  uint64_t states() const { return states_; }
  // The choices a sweep tries here: every state when there are at most `exhaustive_bound`,
  // else Nothing, Everything and `samples` random states drawn from `seed`.
  std::vector<CrashChoice> Choices(uint64_t exhaustive_bound, int samples, uint64_t seed) const;
  // What `choice` keeps of the pending operations, file by file, for a failure message.
  std::string Describe(const CrashChoice& choice) const;

 private:
  friend class CrashEnv;
  std::shared_ptr<const CrashModel> model_;
  Pending pending_;
  uint64_t states_ = 1;
};

class CrashEnv : public Env {
 public:
  // `seed` drives Crash() without a choice.
  explicit CrashEnv(uint64_t seed = 0);
  ~CrashEnv() override;

  // Takes every regular file under `root` (recursively) as durable now, hard links as one
  // inode. A CrashPoint knows only the files seen before it was taken: Crash() removes the
  // others as if created after it. So a sweep imports its setup first.
  absl::Status Import(const std::string& root);

  absl::StatusOr<std::unique_ptr<File>> Open(const std::string& path,
                                             const OpenOptions& options) override;
  absl::Status Rename(const std::string& from, const std::string& to) override;
  absl::Status Link(const std::string& from, const std::string& to) override;
  absl::Status Remove(const std::string& path) override;
  bool Exists(const std::string& path) override;
  absl::Status SyncDir(const std::string& dir) override;
  absl::StatusOr<std::vector<std::string>> ListDir(const std::string& dir) override;
  // Through user space, as writes the model records.
  absl::Status CopyRange(File* from, uint64_t from_off, File* to, uint64_t to_off,
                         uint64_t length) override;

  CrashPoint Point() const;
  // Writes crash state `choice` of `at` onto the real files and makes it the durable state;
  // the power is back on. Returns a fingerprint of the state (equal states, equal prints).
  // REQUIRES: every File opened through this Env is closed (else kFailedPrecondition).
  absl::StatusOr<uint64_t> Crash(const CrashPoint& at, const CrashChoice& choice);
  absl::StatusOr<uint64_t> Crash(const CrashChoice& choice) { return Crash(Point(), choice); }
  // A random state of now, drawn from the constructor's seed.
  absl::StatusOr<uint64_t> Crash();

  // After `after` more successful sync points every sync point fails, until cleared with -1:
  // a disk that dies at a chosen point of an operation (the process lives on).
  void FailSyncsAfter(int after);
  // Sync points 0 .. n-1 from now succeed; at sync point n the power goes: it and every later
  // call fails with kUnavailable until Crash(). -1 disarms. A sweep runs an operation for
  // n = 0, 1, ... until it completes with power_cut() false.
  void CutPowerAtSync(int n);
  bool power_cut() const;
  // While full, a write or fallocate that needs space a file does not hold fails with ENOSPC,
  // as on a host volume with no free space: past the file's size, or over a hole it punched
  // or grew by a truncate. A crash keeps the setting (it frees no space).
  void SetVolumeFull(bool full);

  // The open File whose fd() is `fd`, or nullptr: for a test that does a server's I/O on a
  // Segment's descriptor and must go through the model.
  File* FileForFd(int fd) const;

 private:
  friend class CrashFile;
  absl::Status CheckPowerLocked(absl::string_view op, const std::string& path) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status SyncPointLocked(absl::string_view op, const std::string& path)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // `path` with its directory resolved (relative to the working directory, symlinks
  // followed): the model's name for it. Directories are not modeled, so they exist and stay.
  std::string CanonicalLocked(const std::string& path) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The model inode named `path` (canonical), taking an unknown existing file as durable;
  // 0 when there is no such file.
  uint64_t InodeAtLocked(const std::string& path) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status ImportLocked(const std::string& path, uint64_t* inode)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Turns the real files, named and filled as the model holds them now, into those of `next`.
  absl::Status MaterializeLocked(const CrashModel& next) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  void Closed(CrashFile* file);

  mutable Mutex mu_;
  std::unique_ptr<CrashModel> model_ ABSL_GUARDED_BY(mu_);
  uint64_t next_inode_ ABSL_GUARDED_BY(mu_) = 1;
  std::mt19937_64 rng_ ABSL_GUARDED_BY(mu_);
  int syncs_until_failure_ ABSL_GUARDED_BY(mu_) = -1;
  int syncs_until_cut_ ABSL_GUARDED_BY(mu_) = -1;
  bool power_cut_ ABSL_GUARDED_BY(mu_) = false;
  bool volume_full_ ABSL_GUARDED_BY(mu_) = false;
  std::map<int, CrashFile*> open_ ABSL_GUARDED_BY(mu_);  // by real descriptor
  std::map<std::string, std::string> dirs_ ABSL_GUARDED_BY(mu_);  // absolute -> resolved
};

}  // namespace strata

#endif  // STRATA_BLOCKSTORE_CRASH_ENV_H_
