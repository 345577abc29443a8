// `strata check`: verifies a chain without trusting it — every header copy, checkpoint table
// and journal record checksum, index entry bounds, slots claimed twice, leaked space, parent
// links, and leftovers of interrupted operations (recovery.h). Repairs only what cannot lose
// data: interrupted operations (finished or rolled back by RecoverChain), a damaged header copy
// (rewritten from the good one) and leaked space (punched out). A repair refuses while the
// disk is open for writing (its top layer's lock); a plain check of a served disk says that
// its view may be stale.
#ifndef STRATA_BLOCKSTORE_CHECK_H_
#define STRATA_BLOCKSTORE_CHECK_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace strata {

class Env;

struct CheckReport {
  std::vector<std::string> problems;   // the chain is damaged or inconsistent
  std::vector<std::string> repairable; // safe to fix with --repair (leaks, a bad header copy,
                                       // an interrupted operation)
  std::vector<std::string> repaired;   // fixed by this run
  std::vector<std::string> notes;      // facts worth showing (layers checked, journal records)
  bool clean() const { return problems.empty() && repairable.empty(); }
};

// A non-OK status only when the check itself could not run (e.g. the top file is missing, or
// a repair found the disk in use). A parent that is not a regular file, or lies outside the
// top's tree and `allowed_parent_dirs` (parent_place.h), is a problem no repair fixes.
absl::StatusOr<CheckReport> CheckChain(Env* env, const std::string& top_path, bool repair,
                                       const std::vector<std::string>& allowed_parent_dirs = {});

}  // namespace strata

#endif  // STRATA_BLOCKSTORE_CHECK_H_
