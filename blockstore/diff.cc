#include "blockstore/diff.h"

#include <map>

#include "absl/strings/str_cat.h"
#include "blockstore/file.h"
#include "blockstore/layer.h"

namespace strata {

absl::StatusOr<std::vector<std::pair<uint64_t, uint64_t>>> ChangedRanges(
    Env* env, const std::string& top_path, const std::string& from, const std::string& to) {
  // The strata layers, top first.
  std::vector<std::pair<std::string, LayerHeader>> layers;
  for (std::string path = top_path;;) {
    auto h = ReadLayerHeader(env, path);
    if (!h.ok()) return h.status();
    layers.emplace_back(path, *h);
    if (h->parent_format != ParentFormat::kStrata || layers.size() > 65535) break;
    path = ResolvePath(DirName(path), h->parent_path);
  }
  auto find = [&](const std::string& name) -> int {
    for (size_t i = 0; i < layers.size(); ++i) {
      if (layers[i].second.state == LayerState::kFrozen && layers[i].second.snapshot_name == name) {
        return static_cast<int>(i);
      }
    }
    return -1;
  };
  int from_index = find(from);
  int to_index = to.empty() ? 0 : find(to);
  if (from_index < 0 || to_index < 0) {
    return absl::NotFoundError(absl::StrCat("no snapshot '", from_index < 0 ? from : to,
                                            "' in the chain of ", top_path));
  }
  if (to_index >= from_index) {
    return absl::InvalidArgumentError(
        absl::StrCat("snapshot '", to, "' is not newer than '", from, "'"));
  }
  // Union of the sub-blocks each layer in (from, to] wrote or zeroed.
  std::map<uint64_t, uint32_t> changed;
  for (int i = to_index; i < from_index; ++i) {
    auto layer = Layer::Open(env, layers[i].first, Layer::Mode::kReadOnly);
    if (!layer.ok()) return layer.status();
    (*layer)->index().ForEach([&](uint64_t cluster, const ClusterEntry& e) {
      changed[cluster] |= e.present | e.zero;
    });
  }
  const LayerHeader& geometry = layers[0].second;
  const uint64_t cs = geometry.cluster_size, sbs = geometry.sub_block_size;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const auto& [cluster, mask] : changed) {
    for (uint32_t sb = 0; sb < geometry.SubBlocksPerCluster(); ++sb) {
      if (!(mask & (1u << sb))) continue;
      uint64_t off = cluster * cs + sb * sbs;
      uint64_t len = std::min(sbs, geometry.virtual_size - off);
      if (!ranges.empty() && ranges.back().first + ranges.back().second == off) {
        ranges.back().second += len;
      } else {
        ranges.emplace_back(off, len);
      }
    }
  }
  return ranges;
}

}  // namespace strata
