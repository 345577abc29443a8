// Fuzzes the text journals' decoders (blockstore/format.h): the merge journal `<C>.merge` and
// the stream journal `<X>.stream`. The first byte picks which. Invariant: a journal that
// decodes re-encodes to one that decodes to an equal record.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "absl/strings/string_view.h"
#include "blockstore/format.h"

namespace {

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
  const absl::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] & 1) {
    RoundTrip<strata::StreamJournalRecord>(text);
  } else {
    RoundTrip<strata::MergeJournalRecord>(text);
  }
  return 0;
}
