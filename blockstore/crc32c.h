// CRC32C (Castagnoli), the checksum of every metadata block in a layer file. Uses the SSE4.2
// crc32 instruction when the CPU has it and a table otherwise (Abseil 20220623 has no absl/crc).
#ifndef STRATA_BLOCKSTORE_CRC32C_H_
#define STRATA_BLOCKSTORE_CRC32C_H_

#include <cstddef>
#include <cstdint>

namespace strata::crc32c {

// Returns the CRC32C of data[0, n) continuing from `init` (the CRC of preceding bytes).
uint32_t Extend(uint32_t init, const char* data, size_t n);
inline uint32_t Value(const char* data, size_t n) { return Extend(0, data, n); }

// A CRC stored next to the data it covers is masked, as LevelDB does, so that the CRC of a
// block that contains embedded CRCs is not trivially related to them.
inline uint32_t Mask(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }
inline uint32_t Unmask(uint32_t masked) {
  uint32_t rot = masked - 0xa282ead8u;
  return (rot >> 17) | (rot << 15);
}

}  // namespace strata::crc32c

#endif  // STRATA_BLOCKSTORE_CRC32C_H_
