// Little-endian fixed-width encoding, the only byte-order code in blockstore. Recent gcc and
// clang compile each of these to a single mov on x86-64.
#ifndef STRATA_BLOCKSTORE_CODING_H_
#define STRATA_BLOCKSTORE_CODING_H_

#include <cstdint>
#include <cstring>

namespace strata {

// REQUIRES: dst has room for the value.
inline void EncodeFixed16(char* dst, uint16_t v) {
  for (int i = 0; i < 2; ++i) dst[i] = static_cast<char>(v >> (8 * i));
}
inline void EncodeFixed32(char* dst, uint32_t v) {
  for (int i = 0; i < 4; ++i) dst[i] = static_cast<char>(v >> (8 * i));
}
inline void EncodeFixed64(char* dst, uint64_t v) {
  for (int i = 0; i < 8; ++i) dst[i] = static_cast<char>(v >> (8 * i));
}
inline uint16_t DecodeFixed16(const char* src) {
  const auto* p = reinterpret_cast<const uint8_t*>(src);
  return static_cast<uint16_t>(p[0] | (p[1] << 8));
}
inline uint32_t DecodeFixed32(const char* src) {
  const auto* p = reinterpret_cast<const uint8_t*>(src);
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
inline uint64_t DecodeFixed64(const char* src) {
  const auto* p = reinterpret_cast<const uint8_t*>(src);
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace strata

#endif  // STRATA_BLOCKSTORE_CODING_H_
