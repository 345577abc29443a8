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
  file_reads += o.file_reads;
  bytes_written += o.bytes_written;
  latency.Merge(o.latency);
  before_disk.Merge(o.before_disk);
  disk.Merge(o.disk);
  send.Merge(o.send);
}

int64_t MonotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

absl::string_view Name(FullVolumePolicy::Mode mode) {
  return mode == FullVolumePolicy::Mode::kPause ? "pause" : "error";
}

void NoSpaceState::OnNoSpace() {
  replies_.fetch_add(1, std::memory_order_relaxed);
  MarkFull("writes that need new space fail with ENOSPC");
}

bool NoSpaceState::BeginWait() {
  if (policy_.mode != FullVolumePolicy::Mode::kPause) return false;
  int64_t n = waiting_.load(std::memory_order_relaxed);
  do {
    if (n >= policy_.max_waiting) return false;
  } while (!waiting_.compare_exchange_weak(n, n + 1));
  waits_.fetch_add(1, std::memory_order_relaxed);
  if (n == 0) {
    STRATA_LOG(kError,
               "disk paused-critical: writes that need new space wait for it (--on-full=pause, "
               "at most %d s each, then ENOSPC); free space on the host volume to resume",
               policy_.max_wait_ns / 1'000'000'000);
  }
  MarkFull("writes that need new space wait for it");
  return true;
}

void NoSpaceState::EndWait() {
  if (waiting_.fetch_sub(1, std::memory_order_relaxed) == 1) {
    STRATA_LOG(kInfo, "disk no longer paused-critical: no write waits for space");
  }
}

void NoSpaceState::MarkFull(const char* consequence) {
  last_mono_ns_.store(MonotonicNs(), std::memory_order_relaxed);
  const int64_t wall = WallClockNs();
  last_wall_ns_.store(wall, std::memory_order_relaxed);
  bool was_full = false;
  if (full_.compare_exchange_strong(was_full, true)) {
    since_wall_ns_.store(wall, std::memory_order_relaxed);
    episodes_.fetch_add(1, std::memory_order_relaxed);
    STRATA_LOG(kError,
               "host volume full: %s; reads, rewrites and flushes continue (free space on the "
               "volume and the server recovers by itself)",
               consequence);
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

void NoSpaceState::OnFreeSpace(uint64_t free_bytes, uint64_t total_bytes) {
  free_bytes_.store(free_bytes, std::memory_order_relaxed);
  total_bytes_.store(total_bytes, std::memory_order_relaxed);
  const bool low = free_bytes < policy_.min_free_bytes;
  if (low_.exchange(low, std::memory_order_relaxed) == low) return;
  if (low) {
    STRATA_LOG(kError,
               "host volume low on space: %d MiB free of %d MiB, below --min-free %d MiB; "
               "free space before it fills (--on-full=%s)",
               free_bytes >> 20, total_bytes >> 20, policy_.min_free_bytes >> 20,
               Name(policy_.mode));
  } else {
    STRATA_LOG(kInfo, "host volume has space again: %d MiB free, above --min-free %d MiB",
               free_bytes >> 20, policy_.min_free_bytes >> 20);
  }
}

}  // namespace strata
