#include "server/volume_watch.h"

#include <sys/statvfs.h>

#include <cerrno>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/log.h"

namespace strata {

VolumeWatch::VolumeWatch(std::string dir, NoSpaceState* state,
                         std::function<void()> retry_waiting, absl::Duration period)
    : dir_(std::move(dir)),
      state_(state),
      retry_waiting_(std::move(retry_waiting)),
      period_(period) {}

VolumeWatch::~VolumeWatch() {
  stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

absl::Status VolumeWatch::Start() {
  if (absl::Status st = Measure(); !st.ok()) return st;
  thread_ = std::thread([this] { Run(); });
  return absl::OkStatus();
}

absl::Status VolumeWatch::Measure() {
  if (dir_.empty()) return absl::OkStatus();
  struct statvfs v;
  if (statvfs(dir_.c_str(), &v) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("statvfs ", dir_));
  }
  // f_bavail: what an unprivileged writer may still use, which is what the layers may get.
  state_->OnFreeSpace(uint64_t{v.f_bavail} * v.f_frsize, uint64_t{v.f_blocks} * v.f_frsize);
  return absl::OkStatus();
}

void VolumeWatch::Run() {
  bool said_error = false;
  while (!stop_.WaitForNotificationWithTimeout(period_)) {
    absl::Status st = Measure();
    if (!st.ok() && !said_error) {
      STRATA_LOG(kError, "volume watch: %s (free space is not watched until it works again)",
                 st.message());
    }
    said_error = !st.ok();
    if (state_->waiting() > 0) retry_waiting_();
  }
}

}  // namespace strata
