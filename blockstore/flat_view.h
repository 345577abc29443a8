// FlatView: the frozen part of a chain (raw base + frozen layers) flattened into one index, so
// a read resolves any sub-block with one lookup whatever the chain depth (qcow2 walks the
// backing chain per cluster instead).
//
// Each cluster has one 16-byte View entry. In the common case one layer answers every
// sub-block it holds and the base (or nothing) answers the rest; the entry then carries that
// layer's position, slot and masks. When two or more frozen layers each answer part of a
// cluster, the entry points into a side table with one Source per sub-block ("split"
// clusters, 8 bytes per sub-block); they arise only where later snapshots wrote parts of a
// cluster an earlier one also wrote.
// Not thread-safe: Chain locks.
#ifndef STRATA_BLOCKSTORE_FLAT_VIEW_H_
#define STRATA_BLOCKSTORE_FLAT_VIEW_H_

#include <cstdint>
#include <vector>

#include "blockstore/cluster_table.h"
#include "blockstore/format.h"

namespace strata {

// Who answers one sub-block: layer position (0 = the base or nobody), zero marker, slot.
struct Source {
  uint32_t slot = 0;
  uint16_t layer = 0;
  uint8_t zero = 0;
};

class FlatView {
 public:
  explicit FlatView(uint32_t sub_blocks_per_cluster) : sub_blocks_(sub_blocks_per_cluster) {}

  // Puts layer `position`'s entry for `cluster` on top of what the view holds. Layers must
  // be overlaid bottom-up.
  void Overlay(uint16_t position, uint64_t cluster, const ClusterEntry& entry);
  // The source of sub-block `sub_block` of `cluster`.
  Source Resolve(uint64_t cluster, uint32_t sub_block) const;

  size_t clusters() const { return table_.size(); }
  size_t split_clusters() const { return splits_.size() / sub_blocks_; }
  size_t MemoryBytes() const {
    return table_.MemoryBytes() + splits_.capacity() * sizeof(Source);
  }

  struct View {
    uint32_t slot_or_split = 0;  // split: index of the first Source in splits_
    uint32_t present = 0;
    uint32_t zero = 0;
    uint16_t layer = 0;
    uint16_t split = 0;
    bool empty() const { return layer == 0 && split == 0; }
  };
  static_assert(sizeof(View) == 16, "16 bytes per allocated cluster (FORMAT.md)");

 private:
  uint32_t sub_blocks_;
  ClusterTable<View> table_;
  std::vector<Source> splits_;
};

}  // namespace strata

#endif  // STRATA_BLOCKSTORE_FLAT_VIEW_H_
