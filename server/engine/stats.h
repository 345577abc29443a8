// Server statistics for the control socket's `stats` request.
//
// Design note. The hot path must stay cheap, so counters are plain integers owned by the
// connection that updates them on its worker's ring thread; nobody else writes them. A `stats`
// request posts a closure to every worker (Worker::CollectStats), which copies its connections'
// counters on the ring thread — no atomics, no locks on the data path. Counters of closed
// connections are folded into a per-worker total so the server-wide figures never go
// backwards. The one server-wide state is the host volume's (full, low, writes waiting for space), a
// few atomics touched only when a write finds no space, plus one relaxed load per successful
// write.
#ifndef STRATA_SERVER_ENGINE_STATS_H_
#define STRATA_SERVER_ENGINE_STATS_H_

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace strata {

// Request latencies in power-of-two buckets of nanoseconds: bucket i counts [2^i, 2^(i+1)).
// A percentile is interpolated linearly within its bucket (the samples taken as evenly spread
// over it, the top bucket ending at max), so it is off by less than the bucket's width.
struct LatencyHistogram {
  static constexpr int kBuckets = 64;
  uint64_t buckets[kBuckets] = {};
  uint64_t count = 0;
  uint64_t max_ns = 0;
  uint64_t sum_ns = 0;

  void Add(uint64_t ns) {
    int b = ns == 0 ? 0 : 63 - __builtin_clzll(ns);
    ++buckets[b];
    ++count;
    sum_ns += ns;
    if (ns > max_ns) max_ns = ns;
  }
  void Merge(const LatencyHistogram& o);
  // p in [0, 1]; 0 when empty.
  uint64_t PercentileNs(double p) const;
};

// NBD commands 0..kResize are counted by number; anything else under kOtherCommand.
inline constexpr int kCountedCommands = 9;
inline constexpr int kOtherCommand = kCountedCommands;

struct IoCounters {
  uint64_t requests[kCountedCommands + 1] = {};
  uint64_t errors = 0;
  uint64_t enospc_replies = 0;
  uint64_t bytes_read = 0;
  uint64_t bytes_written = 0;
  // Reads of layer and base files that READ requests issued (after CoalesceReads): over the
  // READ count, how many I/Os a read costs the host (more when scattered writes split its
  // clusters).
  uint64_t file_reads = 0;
  // From the request's parse to its reply being queued: what the server took.
  LatencyHistogram latency;
  // The same time split in stages, plus the reply's time on the way out, so a profile can say
  // where a request waits: parse -> disk I/O started (a WRITE's payload arriving, a pause),
  // the disk I/O itself (the storage, the device, blocking-pool hops), and reply queued -> the
  // completion of the send that carried its last byte (with TLS: encrypted into records), which
  // the client may have read already: replies ahead of it, a client not reading.
  LatencyHistogram before_disk;
  LatencyHistogram disk;
  LatencyHistogram send;

  uint64_t total_requests() const;
  void Merge(const IoCounters& o);
};

// One connection, as copied by its worker for a `stats` request.
struct ConnectionStats {
  uint64_t id = 0;
  int worker = 0;
  std::string peer;
  std::string export_name;
  bool negotiated = false;  // past the handshake
  int64_t in_flight = 0;    // requests parsed and not yet replied
  // The next request's buffer was refused (BufferBudget): not reading until budget is freed.
  bool waiting_for_budget = false;
  int64_t opened_ns = 0;    // CLOCK_MONOTONIC
  IoCounters io;
};

struct WorkerStats {
  std::vector<ConnectionStats> connections;
  IoCounters closed;          // connections that are gone
  uint64_t connections_closed = 0;
};

// CLOCK_MONOTONIC in nanoseconds (vDSO, tens of ns). Wall time is blockstore/clock.h's
// WallClockNs().
int64_t MonotonicNs();

// What a write that needs space the host volume no longer has does (`strata serve --on-full`,
// `--full-timeout`, `--min-free`).
struct FullVolumePolicy {
  enum class Mode { kError, kPause };
  // kError: ENOSPC at once (QEMU's own client then pauses the guest: werror=enospc).
  // kPause: the write waits for space (Hyper-V's Paused-Critical), so a /dev/nbd guest sees a
  // stall rather than I/O errors that remount its file system read-only.
  Mode mode = Mode::kError;
  int64_t max_wait_ns = 300'000'000'000;  // then ENOSPC after all
  int64_t max_waiting = 1024;             // writes waiting at once; the next fails at once
  uint64_t min_free_bytes = 1ull << 30;   // below this much free space: warn (0: never)
};
absl::string_view Name(FullVolumePolicy::Mode mode);

// The host volume's state, shared by every worker. Full: set by the first ENOSPC reply or the
// first write that waits for space, cleared by a successful write at least kLeaveAfterNs after
// the last of those (a rewrite of already allocated space succeeds while the volume is still
// full, so one success alone proves nothing). Low: the volume watch (volume_watch.h) saw less
// free space than the policy's min_free_bytes. Each change of state logs one line.
class NoSpaceState {
 public:
  static constexpr int64_t kLeaveAfterNs = 1'000'000'000;
  explicit NoSpaceState(FullVolumePolicy policy = {}) : policy_(policy) {}
  const FullVolumePolicy& policy() const { return policy_; }

  // An ENOSPC reply is being sent.
  void OnNoSpace();
  // A write needs space that is not there: true if it may wait for it (--on-full=pause and
  // fewer than max_waiting writes already wait); then EndWait follows when it stops waiting.
  bool BeginWait();
  void EndWait();
  // A WRITE or WRITE_ZEROES succeeded. Cheap unless the volume is marked full.
  void OnWriteSucceeded() {
    if (full_.load(std::memory_order_relaxed)) MaybeLeave();
  }
  // The volume watch's reading of the free space.
  void OnFreeSpace(uint64_t free_bytes, uint64_t total_bytes);

  bool full() const { return full_.load(std::memory_order_relaxed); }
  // Writes waiting for space now: the disk is paused-critical while this is not 0.
  int64_t waiting() const { return waiting_.load(std::memory_order_relaxed); }
  uint64_t waits() const { return waits_.load(std::memory_order_relaxed); }
  uint64_t replies() const { return replies_.load(std::memory_order_relaxed); }
  // Wall time (ns) the current (or last) full period began; 0 if never.
  int64_t since_wall_ns() const { return since_wall_ns_.load(std::memory_order_relaxed); }
  int64_t last_wall_ns() const { return last_wall_ns_.load(std::memory_order_relaxed); }
  uint64_t episodes() const { return episodes_.load(std::memory_order_relaxed); }
  bool low() const { return low_.load(std::memory_order_relaxed); }
  uint64_t free_bytes() const { return free_bytes_.load(std::memory_order_relaxed); }
  uint64_t total_bytes() const { return total_bytes_.load(std::memory_order_relaxed); }

 private:
  void MarkFull(const char* consequence);
  void MaybeLeave();
  const FullVolumePolicy policy_;
  std::atomic<bool> full_{false};
  std::atomic<uint64_t> replies_{0};
  std::atomic<uint64_t> episodes_{0};
  std::atomic<int64_t> waiting_{0};
  std::atomic<uint64_t> waits_{0};
  std::atomic<int64_t> last_mono_ns_{0};
  std::atomic<int64_t> since_wall_ns_{0};
  std::atomic<int64_t> last_wall_ns_{0};
  std::atomic<bool> low_{false};
  std::atomic<uint64_t> free_bytes_{0};
  std::atomic<uint64_t> total_bytes_{0};
};

}  // namespace strata

#endif  // STRATA_SERVER_ENGINE_STATS_H_
