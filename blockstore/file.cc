#include "blockstore/file.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace strata {

namespace {

constexpr char kErrnoPayload[] = "strata/errno";

absl::Status WithErrno(absl::Status s, int err) {
  s.SetPayload(kErrnoPayload, absl::Cord(absl::StrCat(err)));
  return s;
}

}  // namespace

absl::Status ErrnoStatus(int err, absl::string_view op, absl::string_view path, int64_t offset) {
  std::string where = offset >= 0 ? absl::StrCat(path, " @ ", offset) : std::string(path);
  if (err == ENOSPC || err == EDQUOT) {
    return WithErrno(
        absl::ResourceExhaustedError(absl::StrCat(op, " ", where, ": host volume full")), err);
  }
  return StatusFromErrno(err, absl::StrCat(op, " ", where));
}

absl::Status StatusFromErrno(int err, absl::string_view message) {
  if (err == EIO || err == EUCLEAN) {
    return WithErrno(absl::DataLossError(absl::StrCat(message, ": ", strerror(err))), err);
  }
  return WithErrno(absl::ErrnoToStatus(err, message), err);
}

int StatusErrno(const absl::Status& s) {
  auto payload = s.GetPayload(kErrnoPayload);
  int err = 0;
  if (!payload.has_value() || !absl::SimpleAtoi(std::string(*payload), &err)) return 0;
  return err;
}

absl::Status WithContext(const absl::Status& s, absl::string_view prefix) {
  absl::Status out(s.code(), absl::StrCat(prefix, ": ", s.message()));
  s.ForEachPayload([&](absl::string_view type, const absl::Cord& payload) {
    out.SetPayload(type, payload);
  });
  return out;
}

bool IsWriteRefused(const absl::Status& s) {
  const int err = StatusErrno(s);
  return err == EROFS || err == EACCES;
}

std::string DirName(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string BaseName(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string ResolvePath(const std::string& dir, const std::string& relative) {
  if (!relative.empty() && relative[0] == '/') return relative;
  return dir + "/" + relative;
}

std::string ParentLink(const std::string& child_dir, const std::string& parent) {
  if (DirName(parent) == child_dir) return BaseName(parent);
  char* real = realpath(parent.c_str(), nullptr);
  std::string abs = real ? real : parent;
  free(real);
  return abs;
}

namespace {

class PosixFile final : public File {
 public:
  PosixFile(std::string path, int fd) : File(std::move(path)), fd_(fd) {}
  ~PosixFile() override { close(fd_); }

  absl::Status Read(uint64_t offset, size_t n, char* dst) const override {
    size_t done = 0;
    while (done < n) {
      ssize_t r = pread(fd_, dst + done, n - done, static_cast<off_t>(offset + done));
      if (r < 0) {
        if (errno == EINTR) continue;
        return ErrnoStatus(errno, "read", path(), static_cast<int64_t>(offset + done));
      }
      if (r == 0) {
        return absl::DataLossError(absl::StrCat("read ", path(), " @ ", offset + done,
                                                ": truncated (", n - done, " bytes missing)"));
      }
      done += static_cast<size_t>(r);
    }
    return absl::OkStatus();
  }

  absl::Status Write(uint64_t offset, absl::string_view data) override {
    size_t done = 0;
    while (done < data.size()) {
      ssize_t r = pwrite(fd_, data.data() + done, data.size() - done,
                         static_cast<off_t>(offset + done));
      if (r < 0) {
        if (errno == EINTR) continue;
        return ErrnoStatus(errno, "write", path(), static_cast<int64_t>(offset + done));
      }
      done += static_cast<size_t>(r);
    }
    return absl::OkStatus();
  }

  absl::Status Sync() override {
    if (fdatasync(fd_) != 0) return ErrnoStatus(errno, "fdatasync", path());
    return absl::OkStatus();
  }

  absl::Status Allocate(uint64_t offset, uint64_t length) override {
    int r = fallocate(fd_, 0, static_cast<off_t>(offset), static_cast<off_t>(length));
    if (r != 0 && errno == EOPNOTSUPP) {
      // tmpfs and some network file systems lack fallocate: growing the size is enough there.
      auto size = Size();
      if (!size.ok()) return size.status();
      if (*size >= offset + length) return absl::OkStatus();
      r = ftruncate(fd_, static_cast<off_t>(offset + length));
    }
    if (r != 0) return ErrnoStatus(errno, "fallocate", path(), static_cast<int64_t>(offset));
    return absl::OkStatus();
  }

  absl::Status PunchHole(uint64_t offset, uint64_t length) override {
    if (fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                  static_cast<off_t>(length)) != 0) {
      return ErrnoStatus(errno, "punch hole", path(), static_cast<int64_t>(offset));
    }
    return absl::OkStatus();
  }

  absl::Status Truncate(uint64_t size) override {
    if (ftruncate(fd_, static_cast<off_t>(size)) != 0) {
      return ErrnoStatus(errno, "truncate", path(), static_cast<int64_t>(size));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<uint64_t> Size() const override {
    struct stat st;
    if (fstat(fd_, &st) != 0) return ErrnoStatus(errno, "stat", path());
    if (S_ISBLK(st.st_mode)) {
      off_t end = lseek(fd_, 0, SEEK_END);
      if (end < 0) return ErrnoStatus(errno, "seek", path());
      return static_cast<uint64_t>(end);
    }
    return static_cast<uint64_t>(st.st_size);
  }

  absl::StatusOr<uint64_t> AllocatedBytes() const override {
    struct stat st;
    if (fstat(fd_, &st) != 0) return ErrnoStatus(errno, "stat", path());
    return static_cast<uint64_t>(st.st_blocks) * 512;
  }

  int fd() const override { return fd_; }

 private:
  int fd_;
};

// What the open descriptor `fd` is when it is not a file strata may read as a layer or base
// (OpenOptions); "" when it is one.
std::string NotARegularFile(int fd) {
  struct stat st;
  if (fstat(fd, &st) != 0) return absl::StrCat("fstat failed: ", strerror(errno));
  if (S_ISDIR(st.st_mode)) return "a directory";
  if (S_ISFIFO(st.st_mode)) return "a FIFO";
  if (S_ISCHR(st.st_mode)) return "a character device";
  if (S_ISBLK(st.st_mode)) return "a block device";
  if (S_ISSOCK(st.st_mode)) return "a socket";
  if (!S_ISREG(st.st_mode)) return "not a regular file";
  // Files there are S_ISREG but are views of the kernel or of processes (/proc/self/mem).
  struct statfs fs;
  if (fstatfs(fd, &fs) != 0) return absl::StrCat("fstatfs failed: ", strerror(errno));
  switch (static_cast<unsigned long>(fs.f_type)) {
    case PROC_SUPER_MAGIC: return "a file on /proc";
    case SYSFS_MAGIC: return "a file on /sys";
    case DEBUGFS_MAGIC: case TRACEFS_MAGIC: case SECURITYFS_MAGIC: case CGROUP_SUPER_MAGIC:
    case CGROUP2_SUPER_MAGIC: case BPF_FS_MAGIC:
      return "a file on a kernel pseudo file system";
  }
  return "";
}

class PosixEnv final : public Env {
 public:
  absl::StatusOr<std::unique_ptr<File>> Open(const std::string& path,
                                             const OpenOptions& options) override {
    int flags = O_CLOEXEC | O_NONBLOCK | (options.writable ? O_RDWR : O_RDONLY);
    if (options.create) flags |= O_CREAT | O_EXCL;
    if (options.direct_io) flags |= O_DIRECT;
    if (options.no_follow) flags |= O_NOFOLLOW;
    int fd = open(path.c_str(), flags, 0644);
    if (fd < 0 && errno == ELOOP && options.no_follow) {
      return absl::FailedPreconditionError(
          absl::StrCat("open ", path, ": a symbolic link (a parent is never opened through one)"));
    }
    if (fd < 0) return ErrnoStatus(errno, "open", path);
    auto file = std::make_unique<PosixFile>(path, fd);
    if (std::string what = NotARegularFile(fd); !what.empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat("open ", path, ": ", what, ", not a regular file"));
    }
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) != 0) {
      return ErrnoStatus(errno, "fcntl", path);
    }
    return file;
  }

  absl::Status Rename(const std::string& from, const std::string& to) override {
    if (rename(from.c_str(), to.c_str()) != 0) {
      return ErrnoStatus(errno, "rename", absl::StrCat(from, " -> ", to));
    }
    return absl::OkStatus();
  }

  absl::Status Link(const std::string& from, const std::string& to) override {
    if (link(from.c_str(), to.c_str()) != 0) {
      return ErrnoStatus(errno, "link", absl::StrCat(from, " -> ", to));
    }
    return absl::OkStatus();
  }

  absl::Status Remove(const std::string& path) override {
    if (unlink(path.c_str()) != 0 && errno != ENOENT) return ErrnoStatus(errno, "remove", path);
    return absl::OkStatus();
  }

  bool Exists(const std::string& path) override { return access(path.c_str(), F_OK) == 0; }

  absl::Status SyncDir(const std::string& dir) override {
    int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return ErrnoStatus(errno, "open directory", dir);
    int r = fsync(fd);
    int err = errno;
    close(fd);
    if (r != 0) return ErrnoStatus(err, "fsync directory", dir);
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<std::string>> ListDir(const std::string& dir) override {
    DIR* d = opendir(dir.c_str());
    if (d == nullptr) return ErrnoStatus(errno, "list directory", dir);
    std::vector<std::string> names;
    while (dirent* e = readdir(d)) {
      if (e->d_type == DT_REG || e->d_type == DT_UNKNOWN) names.emplace_back(e->d_name);
    }
    closedir(d);
    return names;
  }
};

}  // namespace

absl::StatusOr<std::string> ReadWholeFile(Env* env, const std::string& path) {
  auto file = env->Open(path, {});
  if (!file.ok()) return file.status();
  auto size = (*file)->Size();
  if (!size.ok()) return size.status();
  std::string text(*size, '\0');
  if (auto s = (*file)->Read(0, text.size(), text.data()); !s.ok()) return s;
  return text;
}

absl::Status ReplaceFile(Env* env, const std::string& path, absl::string_view contents) {
  const std::string tmp = path + ".tmp";
  (void)env->Remove(tmp);
  auto file = env->Open(tmp, {.writable = true, .create = true});
  if (!file.ok()) return file.status();
  absl::Status s = (*file)->Write(0, contents);
  if (s.ok()) s = (*file)->Sync();
  file->reset();
  if (s.ok()) s = env->Rename(tmp, path);
  if (s.ok()) s = env->SyncDir(DirName(path));
  return s;
}

absl::Status CopyThroughUserSpace(File* from, uint64_t from_off, File* to, uint64_t to_off,
                                  uint64_t length) {
  constexpr uint64_t kCopyBuffer = 8ull << 20;
  std::string buffer(std::min(length, kCopyBuffer), '\0');
  while (length > 0) {
    const size_t n = std::min<uint64_t>(length, buffer.size());
    if (auto s = from->Read(from_off, n, buffer.data()); !s.ok()) return s;
    if (auto s = to->Write(to_off, absl::string_view(buffer.data(), n)); !s.ok()) return s;
    from_off += n;
    to_off += n;
    length -= n;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::pair<uint64_t, uint64_t>>> DataRanges(int fd, absl::string_view path,
                                                                      uint64_t offset, uint64_t length) {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  const uint64_t end = offset + length;
  for (uint64_t pos = offset; pos < end;) {
    off_t data = lseek(fd, static_cast<off_t>(pos), SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;  // no data from pos to the end of the file
      return ErrnoStatus(errno, "seek data", path,
                         static_cast<int64_t>(pos));
    }
    if (uint64_t(data) >= end) break;
    off_t hole = lseek(fd, data, SEEK_HOLE);
    if (hole < 0) {
      return ErrnoStatus(errno, "seek hole", path,
                         static_cast<int64_t>(data));
    }
    out.emplace_back(uint64_t(data), std::min<uint64_t>(uint64_t(hole), end));
    pos = uint64_t(hole);
  }
  return out;
}

void AdviseWillNeed(const File& file, uint64_t offset, uint64_t length) {
  (void)posix_fadvise(file.fd(), static_cast<off_t>(offset), static_cast<off_t>(length),
                      POSIX_FADV_WILLNEED);
}

absl::Status Env::CopyRange(File* from, uint64_t from_off, File* to, uint64_t to_off,
                            uint64_t length) {
  while (length > 0) {
    loff_t in = static_cast<loff_t>(from_off), out = static_cast<loff_t>(to_off);
    ssize_t n = copy_file_range(from->fd(), &in, to->fd(), &out, length, 0);
    if (n <= 0) {
      if (n < 0 && errno != EXDEV && errno != EINVAL && errno != EOPNOTSUPP && errno != ENOSYS) {
        return ErrnoStatus(errno, "copy_file_range", to->path(), static_cast<int64_t>(to_off));
      }
      // The kernel cannot copy between these files: the rest goes through user space.
      return CopyThroughUserSpace(from, from_off, to, to_off, length);
    }
    from_off += n;
    to_off += n;
    length -= n;
  }
  return absl::OkStatus();
}

namespace {

// flock(2) without waiting: 0, or the errno (EWOULDBLOCK: another process holds a conflicting
// lock).
int TryFlock(int fd, LockMode mode) {
  const int op = (mode == LockMode::kExclusive ? LOCK_EX : LOCK_SH) | LOCK_NB;
  return flock(fd, op) == 0 ? 0 : errno;
}

}  // namespace

absl::Status TryLock(const File& file, LockMode mode) {
  const int err = TryFlock(file.fd(), mode);
  if (err == 0) return absl::OkStatus();
  if (err == EWOULDBLOCK) {
    return absl::FailedPreconditionError(absl::StrCat(
        file.path(), " is in use by another process (a running `strata serve`, or another "
                     "strata command such as `strata commit`): stop it first, or inspect it "
                     "with a read-only command"));
  }
  return ErrnoStatus(err, "flock", file.path());
}

bool LockedExclusivelyByOther(Env* env, const std::string& path) {
  auto file = env->Open(path, {});
  return file.ok() && TryFlock((*file)->fd(), LockMode::kShared) == EWOULDBLOCK;
}

absl::Status CheckSameFile(const File& first, const File& twin) {
  struct stat a, b;
  if (fstat(first.fd(), &a) != 0) return ErrnoStatus(errno, "stat", first.path());
  if (fstat(twin.fd(), &b) != 0) return ErrnoStatus(errno, "stat", twin.path());
  if (a.st_dev == b.st_dev && a.st_ino == b.st_ino) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat(first.path(), " was replaced while it was being opened"));
}

Env* Env::Default() {
  static PosixEnv env;
  return &env;
}

}  // namespace strata
