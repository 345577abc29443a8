// CrashEnv: an Env for tests that simulates power loss, like LevelDB's fault-injection Env.
// Files are real; every write since a file's last Sync() is remembered with the bytes it
// replaced, per inode (as the page cache does: a file renamed or linked while open keeps its
// unsynced writes under every name). Crash() rolls every file back to its last synced state
// and then re-applies a random subset of the unsynced writes, in order, some torn at a
// 512-byte boundary: any state a disk with a volatile cache may leave. Directory operations and size changes (allocate,
// truncate) count as durable at once, a simplification stated in FORMAT.md.
#ifndef STRATA_BLOCKSTORE_CRASH_ENV_H_
#define STRATA_BLOCKSTORE_CRASH_ENV_H_

#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "blockstore/file.h"

namespace strata {

class CrashEnv : public Env {
 public:
  explicit CrashEnv(uint64_t seed) : rng_(seed) {}

  absl::StatusOr<std::unique_ptr<File>> Open(const std::string& path,
                                             const OpenOptions& options) override;
  absl::Status Rename(const std::string& from, const std::string& to) override {
    return Env::Default()->Rename(from, to);
  }
  absl::Status Link(const std::string& from, const std::string& to) override {
    return Env::Default()->Link(from, to);
  }
  absl::Status Remove(const std::string& path) override { return Env::Default()->Remove(path); }
  bool Exists(const std::string& path) override { return Env::Default()->Exists(path); }
  absl::Status SyncDir(const std::string& dir) override { return Env::Default()->SyncDir(dir); }
  absl::StatusOr<std::vector<std::string>> ListDir(const std::string& dir) override {
    return Env::Default()->ListDir(dir);
  }

  // REQUIRES: every File opened through this Env is closed.
  void Crash();
  // After `after` more successful Sync() calls every Sync() fails, until cleared with -1:
  // a disk that dies at a chosen point of an operation.
  void FailSyncsAfter(int after);

  // Internal, for CrashFile.
  struct Write {
    uint64_t offset;
    std::string data;      // what was written
    std::string previous;  // what it replaced (shorter if past the old end)
  };
  struct Inode {
    uint64_t dev, ino;
    auto operator<=>(const Inode&) const = default;
  };
  // `dir`: where the file was opened; at a crash the inode is looked up there by number.
  void RecordWrite(Inode inode, const std::string& dir, Write write);
  absl::Status RecordSync(Inode inode, const std::string& path);

 private:
  struct Unsynced {
    std::string dir;
    std::vector<Write> writes;
  };
  absl::Mutex mu_;
  std::map<Inode, Unsynced> pending_ ABSL_GUARDED_BY(mu_);
  std::mt19937_64 rng_ ABSL_GUARDED_BY(mu_);
  int syncs_until_failure_ ABSL_GUARDED_BY(mu_) = -1;
};

}  // namespace strata

#endif  // STRATA_BLOCKSTORE_CRASH_ENV_H_
