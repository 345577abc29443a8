// NBD_CMD_BLOCK_STATUS answered from blockstore extents: the bridge between the chain's view
// of where bytes live (Extent) and the metadata contexts a client selected (base:allocation,
// strata:layer; PROTOCOL.md).
#ifndef STRATA_SERVER_ENGINE_BLOCK_STATUS_H_
#define STRATA_SERVER_ENGINE_BLOCK_STATUS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "blockstore/chain.h"
#include "server/nbd/handshake.h"
#include "server/nbd/protocol.h"

namespace strata {

// base:allocation flags of an extent: HOLE unless backed by data, ZERO when it reads as zeros.
uint32_t BaseAllocationFlags(const Extent& e);
// strata:layer value: depth from the top of the layer answering the extent (1 = the active
// layer = top_position, 2 = its parent, ..., the raw base = top_position + 1), 0 = no layer.
uint32_t StrataLayerDepth(const Extent& e, int top_position);

// Appends the reply to BLOCK_STATUS request `h` covering [h.offset, h.offset + length) to
// *header: one chunk per context `session` selected, the last one flagged DONE.
void EncodeBlockStatusReply(const Negotiated& session, const nbd::RequestHeader& h,
                            uint64_t length, const std::vector<Extent>& extents,
                            int top_position, std::string* header);

}  // namespace strata

#endif  // STRATA_SERVER_ENGINE_BLOCK_STATUS_H_
