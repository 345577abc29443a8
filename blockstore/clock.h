// The one wall clock of strata: what layer headers record (created_ns, frozen_ns) and what the
// server reports as wall time. Wall time, not CLOCK_MONOTONIC, because these values are read
// as dates later, by other processes and after reboots.
#ifndef STRATA_BLOCKSTORE_CLOCK_H_
#define STRATA_BLOCKSTORE_CLOCK_H_

#include <time.h>

#include <cstdint>

namespace strata {

// Unix time in nanoseconds (CLOCK_REALTIME).
inline int64_t WallClockNs() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

}  // namespace strata

#endif  // STRATA_BLOCKSTORE_CLOCK_H_
