// Where the parents of a chain may live. A layer names its parent by a path in its header, so a
// layer file that came from elsewhere (an upload, a copied image) could name any file the
// process can read (`../../etc/shadow`, `/proc/self/mem`) and have it served as the disk's base.
// So every parent strata follows is opened without following a symbolic link as its last
// component, must be a regular file (file.h, OpenOptions), and must lie, after resolving the
// symbolic links of its directories (the path of the open descriptor), within the directory
// tree of the layer the user named (its directory and below; when that is a symbolic link,
// also the directory of the file it points to) or within a directory the user trusts by name (`--allow-parent-dir DIR`, or STRATA_ALLOW_PARENT_DIR: the cli reads both).
// Layers strata makes itself (snapshots, a revert's new layer) sit beside the top, inside.
#ifndef STRATA_BLOCKSTORE_PARENT_PLACE_H_
#define STRATA_BLOCKSTORE_PARENT_PLACE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "blockstore/file.h"
#include "blockstore/format.h"

namespace strata {

// The chain a parent is followed for: its top as the user named it, and the directories
// trusted besides the top's own tree.
struct ParentScope {
  std::string top_path;
  std::vector<std::string> allowed_dirs;
};

// Opens the parent at `path` (of `format`) that layer `child_path` names, refusing a symbolic
// link, anything but a regular file, and a file outside `scope` (kPermissionDenied saying
// which --allow-parent-dir would trust it). Every error names the layer, the parent and why.
absl::StatusOr<std::unique_ptr<File>> OpenParentFile(Env* env, const std::string& child_path,
                                                     const std::string& path, ParentFormat format,
                                                     const ParentScope& scope,
                                                     OpenOptions options = {});

// Whether layer `child_path` may follow its parent link to the NBD export `uri` (format nbd):
// schemes nbd, nbds, nbd+unix and nbds+unix only; the local files a URI can name (socket=,
// tls-certificates=, tls-psk-file=) must lie within `scope` as a parent file must; and a TCP
// export is trusted only by name, an entry of scope.allowed_dirs that is a prefix of the URI
// (`--allow-parent-dir nbd://golden.example/`). kPermissionDenied saying what would trust it.
absl::Status CheckRemoteParent(const std::string& child_path, const std::string& uri,
                               const ParentScope& scope);

// Follows the parent links of the chain topped by scope.top_path, opening each parent as
// OpenParentFile does, for a command that walks the chain by itself (commit, revert, tree...)
// before it touches a file. A link to a missing or undecodable file ends the walk without an
// error: the command reports it in its own terms.
absl::Status CheckChainParents(Env* env, const ParentScope& scope);

}  // namespace strata

#endif  // STRATA_BLOCKSTORE_PARENT_PLACE_H_
