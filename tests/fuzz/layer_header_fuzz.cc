// Fuzzes the layer header decoder (blockstore/format.h, LayerHeader::DecodeFrom) on one
// 4 KiB header copy: the input after its first byte, padded with zeros or cut. A mutated
// header almost never matches its CRC, so when the first byte is odd the CRC is made to match
// and the field checks behind it are what gets fuzzed. Invariants: a header that decodes has
// a valid geometry and re-encodes to a block that decodes to the same header, and the parent
// size rule answers without crashing for it.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "blockstore/coding.h"
#include "blockstore/crc32c.h"
#include "blockstore/format.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace strata;
  if (size == 0) return 0;
  std::string block(reinterpret_cast<const char*>(data) + 1,
                    std::min<size_t>(size - 1, kHeaderBlockSize));
  block.resize(kHeaderBlockSize, '\0');
  if (data[0] & 1) {
    constexpr size_t kCrcAt = kHeaderBlockSize - 4;  // FORMAT.md §1: the CRC ends the block
    EncodeFixed32(block.data() + kCrcAt, crc32c::Mask(crc32c::Value(block.data(), kCrcAt)));
  }
  LayerHeader h;
  if (!h.DecodeFrom(block).ok()) return 0;
  if (!IsValidGeometry(h.cluster_size, h.sub_block_size)) abort();
  if (h.journal_size > kMaxJournalSize) abort();
  std::string encoded;
  h.EncodeTo(&encoded);
  if (encoded.size() != kHeaderBlockSize) abort();
  LayerHeader again;
  if (!again.DecodeFrom(encoded).ok()) abort();
  std::string reencoded;
  again.EncodeTo(&reencoded);
  if (reencoded != encoded) abort();  // decode -> encode -> decode lost or changed a field
  (void)CheckParentSize(h, h.parent_size);
  (void)CheckParentSize(h, h.virtual_size);
  return 0;
}
