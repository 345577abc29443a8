// Fuzzes the text journals' decoders (blockstore/format.h): the merge journal `<C>.merge` and
// the stream journal `<X>.stream`. Bit 0 of the first byte picks which; a mutated journal
// almost never matches its `crc=` line, so when bit 1 is set the text gets a correct one
// (replacing its last) and the field parsing behind it is what gets fuzzed. Invariant: a
// journal that decodes re-encodes to one that decodes to an equal record.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/strings/str_cat.h"
#include "blockstore/crc32c.h"
#include "blockstore/format.h"

namespace {

// The body (everything before the last `crc=`) with the line the encoder would end it with.
std::string WithMatchingCrc(absl::string_view text) {
  absl::string_view body = text.substr(0, text.rfind(strata::kMergeJournalCrcKey));
  return absl::StrCat(body, strata::kMergeJournalCrcKey,
                      strata::crc32c::Value(body.data(), body.size()), "\n");
}

template <typename Record>
void RoundTrip(absl::string_view text) {
  Record r;
  if (!r.DecodeFrom(text).ok()) return;
  std::string encoded;
  r.EncodeTo(&encoded);
  Record again;
  if (!again.DecodeFrom(encoded).ok() || !(again == r)) abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] & 2) text = WithMatchingCrc(text);
  if (data[0] & 1) {
    RoundTrip<strata::StreamJournalRecord>(text);
  } else {
    RoundTrip<strata::MergeJournalRecord>(text);
  }
  return 0;
}
