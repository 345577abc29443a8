// Built instead of chain_storage.cc while the blockstore library does not exist yet, so that the
// server links and its tests run against RawFileStorage.
#include "server/storage.h"

namespace strata {

absl::StatusOr<std::unique_ptr<Storage>> OpenChainStorage(const std::string& top_path, bool,
                                                          bool) {
  return absl::UnimplementedError(
      top_path + ": this build has no blockstore library (strata_blockstore); cannot open a chain");
}

}  // namespace strata
