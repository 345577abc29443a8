// chain_bench: the blockstore's metadata paths, timed without data I/O, with Google Benchmark.
//
//   lookup/D             Chain::MapRead of 4 KiB at a random 4 KiB-aligned offset of a 1 GiB
//                        disk whose chain holds D strata layers (D-1 frozen snapshots and the
//                        active layer) over a sparse raw base; each layer wrote 4 KiB at a random
//                        sub-block of a random 1/8 of the clusters (Chain::Write), then was
//                        frozen by Chain::Snapshot. Time per iteration = ns per lookup; it
//                        should not grow with D (the flattened view).
//   lookup/D/real_time/threads:2   the same, two threads sharing the chain (the metadata mutex).
//   index_memory/P/N     builds an active layer with N allocated clusters (PrepareWrite +
//                        FinishWrite of 4 KiB into N distinct clusters, no data written), in
//                        pattern P: 0 = dense (clusters 0..N-1), 1 = random 1 in 8, 2 = one per
//                        1024 clusters (isolated). Counters: heap bytes per allocated cluster
//                        (mallinfo2 in-use delta) and RSS bytes per cluster, for the active
//                        index before and after Flush, and after Snapshot (the frozen layer is
//                        flattened into the view, a new empty layer on top).
//   write_meta/first     PrepareWrite + FinishWrite of 4 KiB at the start of a cluster never
//                        written (allocates a slot; the slot's extent is fallocated in batches).
//   write_meta/fill      the same into a not yet written sub-block of an allocated cluster.
//   write_meta/rewrite   the same into an already written sub-block (in place).
//                        write_meta runs 65536 clusters in shuffled order, once each.
//
// Files go to a fresh directory under $STRATA_BENCH_DIR (default /var/tmp), removed at exit.
// Run: <build>/bench/chain_bench [--benchmark_filter=lookup] (build with -DCMAKE_BUILD_TYPE=Release).
#include <fcntl.h>
#include <malloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "benchmark/benchmark.h"
#include "blockstore/chain.h"
#include "blockstore/file.h"
#include "blockstore/layer.h"

#ifndef STRATA_BUILD_TYPE
#define STRATA_BUILD_TYPE "unknown"
#endif

namespace strata {
namespace {

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;
constexpr uint64_t kGiB = 1024 * kMiB;
constexpr uint64_t kIoSize = 4 * kKiB;

std::string g_root;  // the bench's private directory

void Die(const absl::Status& status, const char* what) {
  std::fprintf(stderr, "chain_bench: %s: %s\n", what, status.ToString().c_str());
  std::exit(1);
}
template <typename T>
T Check(absl::StatusOr<T> v, const char* what) {
  if (!v.ok()) Die(v.status(), what);
  return std::move(*v);
}
void Check(const absl::Status& s, const char* what) {
  if (!s.ok()) Die(s, what);
}

// A fresh directory under g_root holding a sparse raw base of `size` bytes and an empty active
// layer `top.strata` on it. Returns the layer's path.
std::string NewDisk(const std::string& name, uint64_t size, uint64_t cluster_size = 64 * kKiB) {
  std::string dir = g_root + "/" + name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  std::string base = dir + "/base.raw";
  int fd = ::open(base.c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0644);
  if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(size)) != 0) {
    std::perror(base.c_str());
    std::exit(1);
  }
  ::close(fd);
  LayerCreateParams params;
  params.virtual_size = size;
  params.cluster_size = static_cast<uint32_t>(cluster_size);
  params.parent_format = ParentFormat::kRaw;
  params.parent_path = "base.raw";
  params.parent_size = size;
  std::string top = dir + "/top.strata";
  Check(Layer::Create(Env::Default(), top, params), "Layer::Create");
  return top;
}

// Heap bytes in use (all arenas, mmapped blocks included) and resident set size.
struct MemSample {
  int64_t heap = 0;
  int64_t rss = 0;
};
MemSample SampleMemory() {
  struct mallinfo2 mi = mallinfo2();
  MemSample m;
  m.heap = static_cast<int64_t>(mi.uordblks + mi.hblkhd);
  std::ifstream statm("/proc/self/statm");
  int64_t size_pages = 0, rss_pages = 0;
  statm >> size_pages >> rss_pages;
  m.rss = rss_pages * sysconf(_SC_PAGESIZE);
  return m;
}

// xorshift64*: a lookup's offset costs about a nanosecond, not a cache miss into a table.
struct Rng {
  uint64_t s;
  uint64_t Next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 2685821657736338717ull;
  }
};

// --- lookup ---------------------------------------------------------------------------------

constexpr uint64_t kLookupDiskSize = 1 * kGiB;

// Chains are built once per depth and shared by every run and thread of lookup/D; main()
// closes them before removing the directory.
std::mutex g_chains_mu;
std::map<int, std::unique_ptr<Chain>> g_chains;

Chain* LookupChain(int depth) {
  std::lock_guard<std::mutex> lock(g_chains_mu);
  auto& chains = g_chains;
  auto it = chains.find(depth);
  if (it != chains.end()) return it->second.get();

  std::string top = NewDisk(absl::StrCat("lookup", depth), kLookupDiskSize);
  auto chain = Check(Chain::Open(top), "Chain::Open");
  const uint64_t clusters = chain->size() / chain->cluster_size();
  const uint64_t sub_blocks = chain->cluster_size() / kIoSize;
  std::mt19937_64 rng(depth);
  std::vector<uint64_t> order(clusters);
  std::iota(order.begin(), order.end(), 0);
  std::string data(kIoSize, 'x');
  for (int layer = 0; layer < depth; ++layer) {
    std::shuffle(order.begin(), order.end(), rng);
    for (uint64_t i = 0; i < clusters / 8; ++i) {
      uint64_t offset = order[i] * chain->cluster_size() + (rng() % sub_blocks) * kIoSize;
      data[0] = static_cast<char>(layer);
      Check(chain->Write(offset, data), "Chain::Write");
    }
    if (layer + 1 < depth) Check(chain->Snapshot(absl::StrCat("s", layer)), "Chain::Snapshot");
  }
  Check(chain->Flush(), "Chain::Flush");
  Chain* raw = chain.get();
  chains.emplace(depth, std::move(chain));
  return raw;
}

void BM_Lookup(benchmark::State& state) {
  const int depth = static_cast<int>(state.range(0));
  Chain* chain = LookupChain(depth);
  const uint64_t blocks = chain->size() / kIoSize;
  Rng rng{0x9e3779b97f4a7c15ull * (state.thread_index() + 1)};
  std::vector<Segment> segments;
  segments.reserve(8);
  ReadPin pin;  // each MapRead releases the previous one's pin: the server's cost per read
  for (auto _ : state) {
    segments.clear();
    uint64_t offset = (rng.Next() % blocks) * kIoSize;
    absl::Status s = chain->MapRead(offset, kIoSize, &segments, &pin);
    if (!s.ok()) {
      state.SkipWithError(s.ToString().c_str());
      break;
    }
    benchmark::DoNotOptimize(segments.data());
  }
  state.SetItemsProcessed(state.iterations());
  // Layers() lists the raw base too.
  state.counters["strata_layers"] = benchmark::Counter(
      static_cast<double>(chain->Layers().size() - 1), benchmark::Counter::kAvgThreads);
}
BENCHMARK(BM_Lookup)->Name("lookup")->Arg(1)->Arg(8)->Arg(64);
BENCHMARK(BM_Lookup)->Name("lookup")->Arg(1)->Arg(64)->Threads(2)->UseRealTime();

// --- index memory ---------------------------------------------------------------------------

void BM_IndexMemory(benchmark::State& state) {
  const int pattern = static_cast<int>(state.range(0));
  const uint64_t n = static_cast<uint64_t>(state.range(1));
  const uint64_t cluster_size = 64 * kKiB;
  const uint64_t spread = pattern == 0 ? 1 : pattern == 1 ? 8 : 1024;
  std::vector<uint64_t> clusters;
  clusters.reserve(n);
  if (pattern == 1) {
    std::vector<uint64_t> all(n * spread);
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), std::mt19937_64(7));
    all.resize(n);
    std::sort(all.begin(), all.end());
    clusters = std::move(all);
  } else {
    for (uint64_t i = 0; i < n; ++i) clusters.push_back(i * spread);
  }
  std::shuffle(clusters.begin(), clusters.end(), std::mt19937_64(11));  // arrival order

  MemSample before, active, flushed, frozen;
  for (auto _ : state) {
    std::string top = NewDisk("memory", n * spread * cluster_size);
    auto chain = Check(Chain::Open(top), "Chain::Open");
    malloc_trim(0);
    before = SampleMemory();
    for (uint64_t c : clusters) {
      auto plan = Check(chain->PrepareWrite(c * cluster_size, kIoSize), "PrepareWrite");
      chain->FinishWrite(plan, true);
    }
    active = SampleMemory();
    Check(chain->Flush(), "Chain::Flush");
    malloc_trim(0);
    flushed = SampleMemory();
    Check(chain->Snapshot("frozen"), "Chain::Snapshot");
    malloc_trim(0);
    frozen = SampleMemory();
    state.PauseTiming();
    chain.reset();
    std::filesystem::remove_all(g_root + "/memory");
    state.ResumeTiming();
  }
  auto per = [&](int64_t delta) { return static_cast<double>(delta) / static_cast<double>(n); };
  state.counters["clusters"] = static_cast<double>(n);
  state.counters["heap_B_per_cl_active"] = per(active.heap - before.heap);
  state.counters["heap_B_per_cl_flushed"] = per(flushed.heap - before.heap);
  state.counters["heap_B_per_cl_frozen"] = per(frozen.heap - before.heap);
  state.counters["rss_B_per_cl_flushed"] = per(flushed.rss - before.rss);
  state.counters["rss_B_per_cl_frozen"] = per(frozen.rss - before.rss);
}
BENCHMARK(BM_IndexMemory)
    ->Name("index_memory")
    ->ArgNames({"pattern", "clusters"})
    ->Args({0, 65536})
    ->Args({1, 65536})
    ->Args({2, 4096})
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond);

// --- write metadata -------------------------------------------------------------------------

enum class WriteKind { kFirst = 0, kFill = 1, kRewrite = 2 };
constexpr int64_t kWriteClusters = 65536;

template <WriteKind kind>
void BM_WriteMeta(benchmark::State& state) {
  const uint64_t cluster_size = 64 * kKiB;
  std::string top = NewDisk("write", kWriteClusters * cluster_size);
  auto chain = Check(Chain::Open(top), "Chain::Open");
  std::vector<uint64_t> order(kWriteClusters);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937_64(42));
  if (kind != WriteKind::kFirst) {  // allocate every cluster with sub-block 0 written
    for (uint64_t c : order) {
      auto plan = Check(chain->PrepareWrite(c * cluster_size, kIoSize), "PrepareWrite");
      chain->FinishWrite(plan, true);
    }
    Check(chain->Flush(), "Chain::Flush");
  }
  const uint64_t sub = kind == WriteKind::kFill ? kIoSize : 0;
  size_t i = 0;
  for (auto _ : state) {
    auto plan = chain->PrepareWrite(order[i++] * cluster_size + sub, kIoSize);
    if (!plan.ok()) {
      state.SkipWithError(plan.status().ToString().c_str());
      break;
    }
    chain->FinishWrite(*plan, true);
  }
  state.SetItemsProcessed(state.iterations());
  chain.reset();
  std::filesystem::remove_all(g_root + "/write");
}
BENCHMARK(BM_WriteMeta<WriteKind::kFirst>)->Name("write_meta/first")->Iterations(kWriteClusters);
BENCHMARK(BM_WriteMeta<WriteKind::kFill>)->Name("write_meta/fill")->Iterations(kWriteClusters);
BENCHMARK(BM_WriteMeta<WriteKind::kRewrite>)->Name("write_meta/rewrite")->Iterations(kWriteClusters);

// Random 4 KiB writes into the active layer of lookup's chains (1, 8 and 64 layers), once the
// lookups ran: the write path touches only the active layer's index, whatever lies below.
void BM_WriteMetaAtDepth(benchmark::State& state) {
  Chain* chain = LookupChain(static_cast<int>(state.range(0)));
  const uint64_t blocks = chain->size() / kIoSize;
  Rng rng{0x2545f4914f6cdd1dull};
  for (auto _ : state) {
    auto plan = chain->PrepareWrite((rng.Next() % blocks) * kIoSize, kIoSize);
    if (!plan.ok()) {
      state.SkipWithError(plan.status().ToString().c_str());
      break;
    }
    chain->FinishWrite(*plan, true);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_WriteMetaAtDepth)->Name("write_meta/depth")->Arg(1)->Arg(8)->Arg(64)
    ->Iterations(kWriteClusters);

void AddContext() {
  benchmark::AddCustomContext("strata_build_type", STRATA_BUILD_TYPE);
#if !defined(__OPTIMIZE__)
  benchmark::AddCustomContext("WARNING", "Optimization is disabled: benchmarks unnecessarily slow");
  std::fprintf(stderr, "WARNING: Optimization is disabled: benchmarks unnecessarily slow\n");
#endif
#if !defined(NDEBUG)
  benchmark::AddCustomContext("WARNING_asserts", "Assertions are enabled; benchmarks unnecessarily slow");
  std::fprintf(stderr, "WARNING: Assertions are enabled; benchmarks unnecessarily slow\n");
#endif
#if defined(__SANITIZE_ADDRESS__)
  benchmark::AddCustomContext("WARNING_asan", "AddressSanitizer build: timings and memory are not representative");
#endif
  benchmark::AddCustomContext("bench_dir", g_root);
}

}  // namespace
}  // namespace strata

int main(int argc, char** argv) {
  const char* parent = std::getenv("STRATA_BENCH_DIR");
  std::string tmpl = std::string(parent ? parent : "/var/tmp") + "/strata-chain-bench.XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) {
    std::perror(tmpl.c_str());
    return 1;
  }
  strata::g_root = tmpl;
  strata::AddContext();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  strata::g_chains.clear();
  std::filesystem::remove_all(strata::g_root);
  return 0;
}
