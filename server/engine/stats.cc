#include "server/engine/stats.h"

#include <time.h>

#include <algorithm>
#include <cmath>

#include "blockstore/clock.h"
#include "server/log.h"

namespace strata {

void LatencyHistogram::Merge(const LatencyHistogram& o) {
  for (int i = 0; i < kBuckets; ++i) buckets[i] += o.buckets[i];
  count += o.count;
  sum_ns += o.sum_ns;
  max_ns = std::max(max_ns, o.max_ns);
}

uint64_t LatencyHistogram::PercentileNs(double p) const {
  if (count == 0) return 0;
  // The rank of the sample we want, 1-based: p50 of 10 samples is the 5th.
  uint64_t rank = static_cast<uint64_t>(p * static_cast<double>(count) + 0.999999);
  rank = std::clamp<uint64_t>(rank, 1, count);
  uint64_t before = 0;
  for (int i = 0; i < kBuckets; ++i) {
    if (before + buckets[i] < rank) {
      before += buckets[i];
      continue;
    }
    // Linear within the bucket, as if its samples were spread evenly over it: a bucket's edge
    // would read 32.767 us for every p50 between 16.4 and 32.8 us. The bucket holding the
    // largest sample ends at that sample.
    const double lo = i == 0 ? 0 : std::ldexp(1.0, i);
    const double hi = std::min(std::ldexp(1.0, i + 1), static_cast<double>(max_ns));
    const double within = static_cast<double>(rank - before) / static_cast<double>(buckets[i]);
    const double value = lo + within * std::max(0.0, hi - lo);
    return std::min<uint64_t>(static_cast<uint64_t>(std::llround(value)), max_ns);
  }
  return max_ns;
}

uint64_t IoCounters::total_requests() const {
  uint64_t n = 0;
  for (uint64_t r : requests) n += r;
  return n;
}

void IoCounters::Merge(const IoCounters& o) {
  for (int i = 0; i <= kCountedCommands; ++i) requests[i] += o.requests[i];
  errors += o.errors;
  enospc_replies += o.enospc_replies;
  bytes_read += o.bytes_read;
  bytes_written += o.bytes_written;
  latency.Merge(o.latency);
}

int64_t MonotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

void NoSpaceState::OnNoSpace() {
  replies_.fetch_add(1, std::memory_order_relaxed);
  last_mono_ns_.store(MonotonicNs(), std::memory_order_relaxed);
  const int64_t wall = WallClockNs();
  last_wall_ns_.store(wall, std::memory_order_relaxed);
  bool was_full = false;
  if (full_.compare_exchange_strong(was_full, true)) {
    since_wall_ns_.store(wall, std::memory_order_relaxed);
    episodes_.fetch_add(1, std::memory_order_relaxed);
    STRATA_LOG(kError,
               "host volume full: writes that need new space fail with ENOSPC; reads, rewrites "
               "and flushes continue (free space on the volume and the server recovers by "
               "itself)");
  }
}

void NoSpaceState::MaybeLeave() {
  if (MonotonicNs() - last_mono_ns_.load(std::memory_order_relaxed) < kLeaveAfterNs) return;
  bool was_full = true;
  if (full_.compare_exchange_strong(was_full, false)) {
    STRATA_LOG(kInfo, "host volume no longer full: writes succeed again (%d ENOSPC replies so far)",
               replies());
  }
}

}  // namespace strata
