// Finding a layer's children: the layers whose header names it as their strata parent. A
// layer records only its parent, so a merge or a stream, which must not change a layer some
// child still reads through, looks for children where strata can know they are: the chain's
// directories, and every child registered beside a layer when it was created on it from
// anywhere (the child registry, like `rbd children`), which also tells when a registered
// child is gone.
#ifndef STRATA_BLOCKSTORE_CHILDREN_H_
#define STRATA_BLOCKSTORE_CHILDREN_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "blockstore/format.h"

namespace strata {

class Env;

// The child registry (FORMAT.md §9): in a layer's directory, one line for every child created
// on a layer (or raw base) of that directory by `strata create -b` or linked to one by
// `strata rebase -u`, wherever the child lives: "<parent uuid> <child uuid> <child path>" (a
// nil parent UUID for a raw base; the path absolute, or a file name beside the registry),
// replaced as a whole (ReplaceFile). RegisteredChild paths are always absolute.
inline constexpr char kChildRegistryFile[] = ".strata-children";
// What older versions recorded instead: the directories of such children, one per line. Still
// searched, never written.
inline constexpr char kBranchDirsFile[] = ".strata-branches";

// `path`'s directory, absolute: what a journal records, meaning the same from anywhere.
std::string AbsoluteDir(const std::string& path);
// `path` with its directory made absolute (AbsoluteDir + its file name).
std::string AbsolutePath(const std::string& path);
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
// `known` and the directories of every child registered (or recorded in `.strata-branches`)
// there. A child elsewhere that no registry names is not found (the README says so).
std::vector<std::string> SearchDirs(Env* env, const std::vector<std::string>& known);

struct RegisteredChild {
  Uuid parent_uuid;
  Uuid child_uuid;
  std::string path;  // absolute (a file name in the registry is resolved against its directory)
};
// The entries of `dir`'s registry (none when it is missing; lines that do not parse are
// skipped: the file is only ever replaced whole).
std::vector<RegisteredChild> ReadChildRegistry(Env* env, const std::string& dir);
// Registers the layer `child_uuid` at `child_path` as a child of the strata layer
// `parent_uuid` at `parent_path`, in the parent's directory, before the child is created or
// relinked (a crash in between leaves a registered child that is gone: a merge refuses until
// `check --repair` forgets it, never a child no merge can find). An entry for the same path
// or the same child is replaced (a child moved and rebased).
absl::Status RegisterChild(Env* env, const std::string& parent_path, const Uuid& parent_uuid,
                           const std::string& child_path, const Uuid& child_uuid);
// RegisterChild, except that a parent's directory that refuses the write (IsWriteRefused:
// EROFS or EACCES, a frozen layer shared between hosts on a read-only mount or owned by another
// user) leaves the child unregistered and is not an error (FORMAT.md §9): no merge into that
// parent can run there either, since its journal goes beside it. Any other failure is returned,
// saying which child could not be registered where.
absl::Status RegisterChildUnlessReadOnly(Env* env, const std::string& parent_path,
                                         const Uuid& parent_uuid, const std::string& child_path,
                                         const Uuid& child_uuid);
// Whether the registered child is still where it was registered, standing on its parent (the
// file at its path may have been replaced, e.g. by a revert: it still counts if it names the
// same parent).
bool StillStanding(Env* env, const RegisteredChild& child);
// The children registered on `parent_uuid` in `dir` that are no longer standing (deleted, or
// moved without `strata rebase -u`).
std::vector<RegisteredChild> GoneChildren(Env* env, const std::string& dir,
                                          const Uuid& parent_uuid);
// Drops from `dir`'s registry every entry for which `drop` is true; returns how many.
absl::StatusOr<int> PruneChildRegistry(Env* env, const std::string& dir,
                                       const std::function<bool(const RegisteredChild&)>& drop);
// Keeps the registries true when a merge or stream takes layer `gone` out of the tree: its
// entry (in its parent's directory `gone_parent_dir`; "" when its parent is not strata) goes,
// and the children registered on it (in its own directory `gone_dir`) are registered on
// `heir` (`heir_path`; nil when they now stand on a raw base, which has no registry). Also
// moves `heir`'s own entry, in `heir_parent_dir`, to `heir_path` when the heir moved there.
// Idempotent: a resumed merge or stream runs it again.
struct RegistryHandOver {
  Uuid gone;
  std::string gone_parent_dir, gone_dir;
  Uuid heir;
  std::string heir_path, heir_parent_dir;
};
absl::Status HandOverRegistrations(Env* env, const RegistryHandOver& h);

// Calls `visit` with every layer file in `dirs`: its directory, path and header (files that
// are not layers are skipped). A directory that is gone is skipped; the first other listing
// error is returned once the rest were visited.
using LayerVisitor =
    std::function<void(const std::string& dir, const std::string& path, const LayerHeader& h)>;
absl::Status ForEachLayer(Env* env, const std::vector<std::string>& dirs,
                          const LayerVisitor& visit);

struct Child {
  std::string path;
  Uuid uuid;
};
// Layer files in `dirs` whose header names `parent_uuid` as their strata parent.
absl::StatusOr<std::vector<Child>> FindChildren(Env* env, const std::vector<std::string>& dirs,
                                                const Uuid& parent_uuid);

// Layer files in `dirs` whose header names the raw file `base` as their parent.
absl::StatusOr<std::vector<Child>> FindRawChildren(Env* env, const std::vector<std::string>& dirs,
                                                   const std::string& base);

// Refuses, naming them, when the frozen layer at `parent_path` (UUID `parent_uuid`) has
// children other than `keep` (found in `search_dirs`, a SearchDirs result) or registered
// children that are gone (a moved child would break): a merge or stream would change what they
// read. `what` starts the message ("cannot delete snapshot 'x'").
absl::Status RefuseOtherChildren(Env* env, const std::vector<std::string>& search_dirs,
                                 const std::string& parent_path, const Uuid& parent_uuid,
                                 const Uuid& keep, absl::string_view what);

}  // namespace strata

#endif  // STRATA_BLOCKSTORE_CHILDREN_H_
