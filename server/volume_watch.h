// VolumeWatch: the server's once-a-second look at the host volume. It reads the free space of
// the volume holding the disk's layers (fstatvfs of their directory) into NoSpaceState, which
// warns once when it falls below --min-free and shows it in `stats`, and while writes wait for
// space (--on-full=pause) it has them try again, so they resume by themselves when space
// returns. One thread that sleeps: the ring threads never make a call that may block, and a
// statvfs on a network file system may.
#ifndef STRATA_SERVER_VOLUME_WATCH_H_
#define STRATA_SERVER_VOLUME_WATCH_H_

#include <functional>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "blockstore/mutex.h"
#include "server/engine/stats.h"

namespace strata {

class VolumeWatch {
 public:
  // `dir` may be empty (nothing to measure: only the retries). `retry_waiting` runs on the
  // watch's thread and must only post work to the workers.
  VolumeWatch(std::string dir, NoSpaceState* state, std::function<void()> retry_waiting,
              absl::Duration period = absl::Seconds(1));
  ~VolumeWatch();  // stops the thread
  VolumeWatch(const VolumeWatch&) = delete;
  VolumeWatch& operator=(const VolumeWatch&) = delete;

  // Takes the first reading (an error names the directory) and starts the thread.
  absl::Status Start();

 private:
  absl::Status Measure();
  void Run();

  const std::string dir_;
  NoSpaceState* const state_;
  const std::function<void()> retry_waiting_;
  const absl::Duration period_;
  Notification stop_;
  std::thread thread_;
};

}  // namespace strata

#endif  // STRATA_SERVER_VOLUME_WATCH_H_
