#include "blockstore/remote_base.h"

#include "blockstore/mutex.h"

namespace strata {
namespace {

RemoteBaseOpener& DefaultOpener() {
  static RemoteBaseOpener* opener = new RemoteBaseOpener();
  return *opener;
}

}  // namespace

void SetDefaultRemoteBaseOpener(RemoteBaseOpener opener) { DefaultOpener() = std::move(opener); }
const RemoteBaseOpener& DefaultRemoteBaseOpener() { return DefaultOpener(); }

absl::Status RemoteBase::Read(uint64_t offset, absl::Span<char> out) {
  Notification finished;
  absl::Status result;
  ReadAsync(offset, out, [&](absl::Status status) {
    result = std::move(status);
    finished.Notify();
  });
  finished.WaitForNotification();
  return result;
}

}  // namespace strata
