// FailEnv, for tests: the real file system, except that the directory operations a test picks
// fail. It interrupts a merge, snapshot or revert at an exact step (the process "dies" there:
// the test stops using the operation and recovers with the real Env), whatever CrashEnv's
// persistence model does.
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

class FailEnv : public Env {
 public:
  // Called before each rename ("rename", target path) and removal ("remove", path): true
  // makes that call fail.
  using Predicate = std::function<bool(absl::string_view op, const std::string& path)>;
  explicit FailEnv(Predicate fail) : fail_(std::move(fail)) {}

  absl::StatusOr<std::unique_ptr<File>> Open(const std::string& path,
                                             const OpenOptions& options) override {
    return real()->Open(path, options);
  }
  absl::Status Rename(const std::string& from, const std::string& to) override {
    if (fail_("rename", to)) return Injected("rename", to);
    return real()->Rename(from, to);
  }
  absl::Status Link(const std::string& from, const std::string& to) override {
    return real()->Link(from, to);
  }
  absl::Status Remove(const std::string& path) override {
    if (fail_("remove", path)) return Injected("remove", path);
    return real()->Remove(path);
  }
  bool Exists(const std::string& path) override { return real()->Exists(path); }
  absl::Status SyncDir(const std::string& dir) override { return real()->SyncDir(dir); }
  absl::StatusOr<std::vector<std::string>> ListDir(const std::string& dir) override {
    return real()->ListDir(dir);
  }
  absl::Status CopyRange(File* from, uint64_t from_off, File* to, uint64_t to_off,
                         uint64_t length) override {
    return real()->CopyRange(from, from_off, to, to_off, length);
  }

 private:
  static Env* real() { return Env::Default(); }
  static absl::Status Injected(absl::string_view op, const std::string& path) {
    return absl::UnavailableError(absl::StrCat("injected failure: ", op, " ", path));
  }
  Predicate fail_;
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
