// Fuzzes the layer header decoder (blockstore/format.h, LayerHeader::DecodeFrom) on one
// 4 KiB header copy (shorter inputs are padded with zeros, longer ones cut). Invariants: a
// header that decodes has a valid geometry and re-encodes to a block that decodes to the same
// header, and the parent size rule answers without crashing for it.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "blockstore/format.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace strata;
  std::string block(reinterpret_cast<const char*>(data), std::min<size_t>(size, kHeaderBlockSize));
  block.resize(kHeaderBlockSize, '\0');
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
