#include "blockstore/crash_env.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"

namespace strata {
namespace {

class CrashFile final : public File {
 public:
  CrashFile(CrashEnv* env, std::unique_ptr<File> real, CrashEnv::Inode inode)
      : File(real->path()), env_(env), real_(std::move(real)), inode_(inode),
        dir_(DirName(path())) {}

  absl::Status Read(uint64_t offset, size_t n, char* dst) const override {
    return real_->Read(offset, n, dst);
  }
  absl::Status Write(uint64_t offset, absl::string_view data) override {
    CrashEnv::Write w{offset, std::string(data), Previous(offset, data.size())};
    if (auto s = real_->Write(offset, data); !s.ok()) return s;
    env_->RecordWrite(inode_, dir_, std::move(w));
    return absl::OkStatus();
  }
  absl::Status Sync() override {
    if (auto s = env_->RecordSync(inode_, path()); !s.ok()) return s;
    return real_->Sync();
  }
  absl::Status Allocate(uint64_t offset, uint64_t length) override {
    return real_->Allocate(offset, length);
  }
  absl::Status PunchHole(uint64_t offset, uint64_t length) override {
    // Undone by a crash like a write of zeros.
    CrashEnv::Write w{offset, std::string(length, '\0'), Previous(offset, length)};
    if (auto s = real_->PunchHole(offset, length); !s.ok()) return s;
    env_->RecordWrite(inode_, dir_, std::move(w));
    return absl::OkStatus();
  }
  absl::Status Truncate(uint64_t size) override { return real_->Truncate(size); }
  absl::StatusOr<uint64_t> Size() const override { return real_->Size(); }
  absl::StatusOr<uint64_t> AllocatedBytes() const override { return real_->AllocatedBytes(); }
  int fd() const override { return real_->fd(); }
  void set_path(std::string path) override {
    real_->set_path(path);
    File::set_path(std::move(path));
  }

 private:
  std::string Previous(uint64_t offset, size_t n) const {
    auto size = real_->Size();
    if (!size.ok() || offset >= *size) return "";
    std::string old(std::min<uint64_t>(n, *size - offset), '\0');
    if (!real_->Read(offset, old.size(), old.data()).ok()) return "";
    return old;
  }

  CrashEnv* env_;
  std::unique_ptr<File> real_;
  const CrashEnv::Inode inode_;
  const std::string dir_;
};

absl::Status WriteAt(const std::string& path, uint64_t offset, absl::string_view data) {
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, "open", path);
  ssize_t n = pwrite(fd, data.data(), data.size(), static_cast<off_t>(offset));
  close(fd);
  if (n != static_cast<ssize_t>(data.size())) return ErrnoStatus(errno, "write", path);
  return absl::OkStatus();
}

// The current name of `inode` in `dir`, or "" when it has none left.
std::string FindInode(const std::string& dir, CrashEnv::Inode inode) {
  auto names = Env::Default()->ListDir(dir);
  if (!names.ok()) return "";
  for (const std::string& name : *names) {
    std::string path = dir + "/" + name;
    struct stat st;
    if (stat(path.c_str(), &st) == 0 && st.st_dev == inode.dev && st.st_ino == inode.ino) {
      return path;
    }
  }
  return "";
}

}  // namespace

absl::StatusOr<std::unique_ptr<File>> CrashEnv::Open(const std::string& path,
                                                     const OpenOptions& options) {
  auto real = Env::Default()->Open(path, options);
  if (!real.ok()) return real.status();
  struct stat st;
  if (fstat((*real)->fd(), &st) != 0) return ErrnoStatus(errno, "fstat", path);
  return std::make_unique<CrashFile>(this, std::move(*real), Inode{st.st_dev, st.st_ino});
}

void CrashEnv::RecordWrite(Inode inode, const std::string& dir, Write write) {
  absl::MutexLock lock(&mu_);
  Unsynced& u = pending_[inode];
  u.dir = dir;
  u.writes.push_back(std::move(write));
}

absl::Status CrashEnv::RecordSync(Inode inode, const std::string& path) {
  absl::MutexLock lock(&mu_);
  if (syncs_until_failure_ == 0) {
    return absl::DataLossError(absl::StrCat("fdatasync ", path, ": injected I/O error"));
  }
  if (syncs_until_failure_ > 0) --syncs_until_failure_;
  pending_.erase(inode);
  return absl::OkStatus();
}

void CrashEnv::FailSyncsAfter(int after) {
  absl::MutexLock lock(&mu_);
  syncs_until_failure_ = after;
}

void CrashEnv::Crash() {
  absl::MutexLock lock(&mu_);
  for (auto& [inode, unsynced] : pending_) {
    const std::string path = FindInode(unsynced.dir, inode);
    if (path.empty()) continue;  // removed: nothing to roll back
    const std::vector<Write>& writes = unsynced.writes;
    // Back to the last synced state...
    for (auto it = writes.rbegin(); it != writes.rend(); ++it) {
      (void)WriteAt(path, it->offset, it->previous);
      if (it->previous.size() < it->data.size()) {
        // The write extended the file: what lay past the old end reads as zeros again.
        (void)WriteAt(path, it->offset + it->previous.size(),
                      std::string(it->data.size() - it->previous.size(), '\0'));
      }
    }
    // ...then a random subset of what was not synced, some writes torn.
    for (const Write& w : writes) {
      uint64_t roll = rng_() % 4;
      if (roll == 0) continue;  // lost
      size_t keep = w.data.size();
      if (roll == 1 && keep > 512) keep = (rng_() % (keep / 512)) * 512;  // torn
      (void)WriteAt(path, w.offset, absl::string_view(w.data).substr(0, keep));
    }
  }
  pending_.clear();
}

}  // namespace strata
