#include "blockstore/flat_view.h"

namespace strata {

Source FlatView::Resolve(uint64_t cluster, uint32_t sub_block) const {
  View v = table_.Get(cluster);
  if (v.split) return splits_[v.slot_or_split + sub_block];
  uint32_t bit = 1u << sub_block;
  if (v.present & bit) return {.slot = v.slot_or_split, .layer = v.layer, .zero = 0};
  if (v.zero & bit) return {.slot = 0, .layer = v.layer, .zero = 1};
  return {};
}

void FlatView::Overlay(uint16_t position, uint64_t cluster, const ClusterEntry& e) {
  uint32_t covers = e.present | e.zero;
  if (covers == 0) return;  // a slot reserved but never written answers nothing
  View v = table_.Get(cluster);
  uint32_t full = sub_blocks_ == 32 ? 0xffffffffu : (1u << sub_blocks_) - 1;
  uint32_t below = v.split ? full : (v.present | v.zero);
  if ((below & ~covers) == 0) {
    // Nothing below survives except the base: the new layer answers alone. (The Sources of a
    // split entry replaced here stay unused in splits_ until the view is rebuilt.)
    table_.Set(cluster, {.slot_or_split = e.slot, .present = e.present, .zero = e.zero,
                         .layer = position, .split = 0});
    return;
  }
  if (!v.split) {
    // Two layers now share the cluster: expand it into one Source per sub-block.
    uint32_t first = static_cast<uint32_t>(splits_.size());
    for (uint32_t s = 0; s < sub_blocks_; ++s) splits_.push_back(Resolve(cluster, s));
    v = {.slot_or_split = first, .present = 0, .zero = 0, .layer = position, .split = 1};
    table_.Set(cluster, v);
  }
  for (uint32_t s = 0; s < sub_blocks_; ++s) {
    uint32_t bit = 1u << s;
    if (e.present & bit) {
      splits_[v.slot_or_split + s] = {.slot = e.slot, .layer = position, .zero = 0};
    } else if (e.zero & bit) {
      splits_[v.slot_or_split + s] = {.slot = 0, .layer = position, .zero = 1};
    }
  }
}

}  // namespace strata
