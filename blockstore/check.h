// `strata check`: verifies a chain without trusting it — every header copy, checkpoint table
// and journal record checksum, index entry bounds, slots claimed twice, leaked space, parent
// links, and leftovers of interrupted snapshots or merges. Repairs only what cannot lose data:
// a damaged header copy (rewritten from the good one) and leaked space (punched out).
#ifndef STRATA_BLOCKSTORE_CHECK_H_
#define STRATA_BLOCKSTORE_CHECK_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace strata {

class Env;

struct CheckReport {
  std::vector<std::string> problems;   // the chain is damaged or inconsistent
  std::vector<std::string> repairable; // safe to fix with --repair (leaks, a bad header copy)
  std::vector<std::string> repaired;   // fixed by this run
  std::vector<std::string> notes;      // facts worth showing (layers checked, journal records)
  bool clean() const { return problems.empty() && repairable.empty(); }
};

// A non-OK status only when the check itself could not run (e.g. the top file is missing).
absl::StatusOr<CheckReport> CheckChain(Env* env, const std::string& top_path, bool repair);

}  // namespace strata

#endif  // STRATA_BLOCKSTORE_CHECK_H_
