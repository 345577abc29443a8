// FailEnv, for tests: the real file system, except that the directory operations, opens and
// file writes and syncs a test picks fail. It interrupts a merge, snapshot or revert at an
// exact step (the process "dies" there: the test stops using the operation and recovers with
// the real Env, or, for a step that must be undone, sees it undone), whatever CrashEnv's
// persistence model does. With an allocate hook it also sees (and may fail or hold up) every
// File::Allocate, the only call that takes space from the host volume.
#ifndef STRATA_BLOCKSTORE_FAIL_ENV_H_
#define STRATA_BLOCKSTORE_FAIL_ENV_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "blockstore/file.h"

namespace strata::testing {

// Called before each File::Allocate of a file the Env opened: a non-OK status fails the call
// (a full volume: kResourceExhausted), and the hook may block (an allocation in progress).
using AllocateHook =
    std::function<absl::Status(const std::string& path, uint64_t offset, uint64_t length)>;

// The real file with every call passed on: a test's File overrides the calls it changes.
class ForwardingFile : public File {
 public:
  explicit ForwardingFile(std::unique_ptr<File> real)
      : File(real->path()), real_(std::move(real)) {}
  absl::Status Read(uint64_t offset, size_t n, char* dst) const override {
    return real_->Read(offset, n, dst);
  }
  absl::Status Write(uint64_t offset, absl::string_view data) override {
    return real_->Write(offset, data);
  }
  absl::Status Sync() override { return real_->Sync(); }
  absl::Status Allocate(uint64_t offset, uint64_t length) override {
    return real_->Allocate(offset, length);
  }
  absl::Status PunchHole(uint64_t offset, uint64_t length) override {
    return real_->PunchHole(offset, length);
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
  std::unique_ptr<File> real_;
};

class FailEnv : public Env {
 public:
  // Called before each rename ("rename", target path), removal ("remove", path), open
  // ("open", path; an open for writing or creating asks "open-write" first), directory sync
  // ("syncdir", directory), and each Write or Sync of a file it opened ("write" / "sync", the
  // file's path): true makes that call fail, with kUnavailable, or with errno `err` when it is
  // not 0 (EROFS: a read-only mount), as the real call would.
  using Predicate = std::function<bool(absl::string_view op, const std::string& path)>;
  explicit FailEnv(Predicate fail, int err = 0)
      : fail_(std::make_shared<Predicate>(std::move(fail))), err_(err) {}
  // Files opened from now on call `hook` before each Allocate. REQUIRES: no concurrent Open.
  void set_allocate_hook(AllocateHook hook) {
    hook_ = std::make_shared<AllocateHook>(std::move(hook));
  }

  absl::StatusOr<std::unique_ptr<File>> Open(const std::string& path,
                                             const OpenOptions& options) override {
    if ((options.writable || options.create) && (*fail_)("open-write", path)) {
      return Injected(err_, "open", path);
    }
    if ((*fail_)("open", path)) return Injected(err_, "open", path);
    auto file = real()->Open(path, options);
    if (!file.ok()) return file;
    return std::make_unique<FailingFile>(std::move(*file), fail_, hook_, err_);
  }
  absl::Status Rename(const std::string& from, const std::string& to) override {
    if ((*fail_)("rename", to)) return Injected(err_, "rename", to);
    return real()->Rename(from, to);
  }
  absl::Status Link(const std::string& from, const std::string& to) override {
    return real()->Link(from, to);
  }
  absl::Status Remove(const std::string& path) override {
    if ((*fail_)("remove", path)) return Injected(err_, "remove", path);
    return real()->Remove(path);
  }
  bool Exists(const std::string& path) override { return real()->Exists(path); }
  absl::Status SyncDir(const std::string& dir) override {
    if ((*fail_)("syncdir", dir)) return Injected(err_, "syncdir", dir);
    return real()->SyncDir(dir);
  }
  absl::StatusOr<std::vector<std::string>> ListDir(const std::string& dir) override {
    return real()->ListDir(dir);
  }
  absl::Status CopyRange(File* from, uint64_t from_off, File* to, uint64_t to_off,
                         uint64_t length) override {
    return real()->CopyRange(from, from_off, to, to_off, length);
  }

 private:
  // The real file, with Write and Sync asking the predicate and Allocate through the hook.
  class FailingFile : public ForwardingFile {
   public:
    FailingFile(std::unique_ptr<File> real, std::shared_ptr<Predicate> fail,
                std::shared_ptr<AllocateHook> hook, int err)
        : ForwardingFile(std::move(real)), fail_(std::move(fail)), hook_(std::move(hook)),
          err_(err) {}
    absl::Status Write(uint64_t offset, absl::string_view data) override {
      if ((*fail_)("write", path())) return Injected(err_, "write", path());
      return ForwardingFile::Write(offset, data);
    }
    absl::Status Sync() override {
      if ((*fail_)("sync", path())) return Injected(err_, "sync", path());
      return ForwardingFile::Sync();
    }
    absl::Status Allocate(uint64_t offset, uint64_t length) override {
      if (hook_ != nullptr) {
        if (absl::Status s = (*hook_)(path(), offset, length); !s.ok()) return s;
      }
      return ForwardingFile::Allocate(offset, length);
    }

   private:
    std::shared_ptr<Predicate> fail_;
    std::shared_ptr<AllocateHook> hook_;
    int err_;
  };

  static Env* real() { return Env::Default(); }
  static absl::Status Injected(int err, absl::string_view op, const std::string& path) {
    if (err != 0) return ErrnoStatus(err, absl::StrCat("injected failure: ", op), path);
    return absl::UnavailableError(absl::StrCat("injected failure: ", op, " ", path));
  }
  std::shared_ptr<Predicate> fail_;
  std::shared_ptr<AllocateHook> hook_;
  int err_;
};

// Fails the n-th (1-based) call of `op` whose path ends with `suffix`.
inline FailEnv::Predicate FailNth(std::string op, std::string suffix, int n) {
  auto seen = std::make_shared<int>(0);
  return [=](absl::string_view o, const std::string& path) {
    return o == op && absl::EndsWith(path, suffix) && ++*seen == n;
  };
}

}  // namespace strata::testing

#endif  // STRATA_BLOCKSTORE_FAIL_ENV_H_
