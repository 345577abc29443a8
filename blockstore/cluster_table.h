// ClusterTable<T>: a sparse array indexed by virtual cluster number, the in-memory index of a
// layer and of the flattened chain view. Two levels: a top vector of chunk pointers (8 bytes
// per 4 MiB of virtual size at 64 KiB clusters: 2 MiB for a 1 TiB disk) and chunks of
// kChunkSize entries allocated on first use, so memory follows allocated clusters, not the
// virtual size: sizeof(T) per cluster when clusters are dense, one chunk (64 entries, 768 or
// 1024 bytes) per isolated cluster at worst. A lookup is two loads.
// T must be trivially copyable with T{} meaning "empty" and a `bool empty() const`.
// Not thread-safe: the owner (Layer, Chain) locks.
#ifndef STRATA_BLOCKSTORE_CLUSTER_TABLE_H_
#define STRATA_BLOCKSTORE_CLUSTER_TABLE_H_

#include <array>
#include <cstdint>
#include <memory>
#include <vector>

namespace strata {

template <typename T>
class ClusterTable {
 public:
  static constexpr uint32_t kChunkBits = 6;
  static constexpr uint32_t kChunkSize = 1u << kChunkBits;

  T Get(uint64_t cluster) const {
    uint64_t c = cluster >> kChunkBits;
    if (c >= chunks_.size() || !chunks_[c]) return T{};
    return chunks_[c]->entries[cluster & (kChunkSize - 1)];
  }

  void Set(uint64_t cluster, const T& value) {
    uint64_t c = cluster >> kChunkBits;
    if (c >= chunks_.size()) {
      if (value.empty()) return;
      chunks_.resize(c + 1);
    }
    if (!chunks_[c]) {
      if (value.empty()) return;
      chunks_[c] = std::make_unique<Chunk>();
    }
    Chunk& chunk = *chunks_[c];
    T& slot = chunk.entries[cluster & (kChunkSize - 1)];
    if (slot.empty() && !value.empty()) {
      ++chunk.used;
      ++size_;
    } else if (!slot.empty() && value.empty()) {
      --chunk.used;
      --size_;
    }
    slot = value;
    if (chunk.used == 0) chunks_[c].reset();
  }

  // Calls f(cluster, value) for every non-empty entry in cluster order.
  template <typename F>
  void ForEach(F&& f) const {
    for (uint64_t c = 0; c < chunks_.size(); ++c) {
      if (!chunks_[c]) continue;
      for (uint32_t i = 0; i < kChunkSize; ++i) {
        const T& v = chunks_[c]->entries[i];
        if (!v.empty()) f((c << kChunkBits) | i, v);
      }
    }
  }

  size_t size() const { return size_; }
  void Clear() {
    chunks_.clear();
    size_ = 0;
  }
  size_t MemoryBytes() const {
    size_t bytes = chunks_.capacity() * sizeof(chunks_[0]);
    for (const auto& chunk : chunks_) bytes += chunk ? sizeof(Chunk) : 0;
    return bytes;
  }

 private:
  struct Chunk {
    std::array<T, kChunkSize> entries{};
    uint32_t used = 0;
  };
  std::vector<std::unique_ptr<Chunk>> chunks_;
  size_t size_ = 0;
};

}  // namespace strata

#endif  // STRATA_BLOCKSTORE_CLUSTER_TABLE_H_
