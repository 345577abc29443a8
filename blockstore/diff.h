// What changed between two snapshots of one chain: the input of an incremental backup.
#ifndef STRATA_BLOCKSTORE_DIFF_H_
#define STRATA_BLOCKSTORE_DIFF_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace strata {

class Env;

// Byte ranges (offset, length), sub-block granular and merged, that may differ between
// snapshot `from` and snapshot `to` (a later one in the chain topped by `top_path`; "" = the
// disk as it is now): every sub-block some layer above `from`, up to `to`, wrote or zeroed.
absl::StatusOr<std::vector<std::pair<uint64_t, uint64_t>>> ChangedRanges(
    Env* env, const std::string& top_path, const std::string& from, const std::string& to);

}  // namespace strata

#endif  // STRATA_BLOCKSTORE_DIFF_H_
