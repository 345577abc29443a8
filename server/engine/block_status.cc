#include "server/engine/block_status.h"

#include <utility>

#include "server/nbd/request.h"

namespace strata {
namespace {

// The most descriptors one chunk carries; clients ask again from where it stopped.
constexpr size_t kMaxDescriptors = 16384;

}  // namespace

uint32_t BaseAllocationFlags(const Extent& e) {
  return (e.data ? 0 : nbd::kStateHole) | (e.zero ? nbd::kStateZero : 0);
}

uint32_t StrataLayerDepth(const Extent& e, int top_position) {
  if (e.layer < 0) return 0;
  return static_cast<uint32_t>(top_position - e.layer + 1);
}

void EncodeBlockStatusReply(const Negotiated& session, const nbd::RequestHeader& h,
                            uint64_t length, const std::vector<Extent>& extents,
                            int top_position, std::string* header) {
  const size_t max = (h.flags & nbd::kCmdFlagReqOne) ? 1 : kMaxDescriptors;
  std::vector<std::pair<uint32_t, std::vector<Descriptor>>> chunks;
  if (session.base_allocation) {
    chunks.push_back({kContextIdBaseAllocation,
                      ToDescriptors(extents, h.offset, length, max, BaseAllocationFlags)});
  }
  if (session.strata_layer) {
    chunks.push_back({kContextIdStrataLayer,
                      ToDescriptors(extents, h.offset, length, max, [top_position](const Extent& e) {
                        return StrataLayerDepth(e, top_position);
                      })});
  }
  for (size_t i = 0; i < chunks.size(); ++i) {
    auto& [id, descriptors] = chunks[i];
    // The spec requires at least one descriptor; status 0 is always a safe answer.
    if (descriptors.empty()) descriptors.push_back({static_cast<uint32_t>(length), 0});
    EncodeBlockStatusChunk(h.handle, i + 1 == chunks.size(), id, descriptors, header);
  }
}

}  // namespace strata
