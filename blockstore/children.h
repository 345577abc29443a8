// Finding a layer's children: the layers whose header names it as their strata parent. A
// layer records only its parent, so a merge or a stream, which must not change a layer some
// child still reads through, looks for children where strata can know they are: the chain's
// directories and those recorded beside them in `.strata-branches` (RecordBranchDir, commit.h).
#ifndef STRATA_BLOCKSTORE_CHILDREN_H_
#define STRATA_BLOCKSTORE_CHILDREN_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "blockstore/format.h"

namespace strata {

class Env;

// Beside a layer: the directories of children created on it from elsewhere, one absolute path
// a line, replaced by rename.
inline constexpr char kBranchDirsFile[] = ".strata-branches";

// `path`'s directory, absolute: what a journal records, meaning the same from anywhere.
std::string AbsoluteDir(const std::string& path);
// The directories recorded in `dir`/.strata-branches (none when it is missing or unreadable).
std::vector<std::string> RecordedBranchDirs(Env* env, const std::string& dir);
void AddUnique(std::vector<std::string>* dirs, const std::string& dir);
// The strata layers of the chain topped by `top_path`, top first, as their files say now;
// the walk ends at a raw base or at the first header that does not read.
struct ChainLayer {
  std::string path;
  LayerHeader header;
};
std::vector<ChainLayer> ReadChainHeaders(Env* env, const std::string& top_path);
// The absolute directories of `layers` (ReadChainHeaders), and `top_path`'s in any case.
std::vector<std::string> ChainDirs(const std::string& top_path,
                                   const std::vector<ChainLayer>& layers);
std::vector<std::string> ChainDirs(Env* env, const std::string& top_path);
// `known` and every directory recorded beside them. A child anywhere else is not found (the
// README says what to do about it).
std::vector<std::string> SearchDirs(Env* env, const std::vector<std::string>& known);

struct Child {
  std::string path;
  Uuid uuid;
};
// Layer files in `dirs` whose header names `parent_uuid` as their strata parent.
absl::StatusOr<std::vector<Child>> FindChildren(Env* env, const std::vector<std::string>& dirs,
                                                const Uuid& parent_uuid);

}  // namespace strata

#endif  // STRATA_BLOCKSTORE_CHILDREN_H_
