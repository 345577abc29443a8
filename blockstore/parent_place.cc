#include "blockstore/parent_place.h"

#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "blockstore/format.h"
#include "blockstore/layer.h"

namespace strata {
namespace {

// `path` with every symbolic link resolved; "" when it does not exist.
std::string RealPath(const std::string& path) {
  char buf[PATH_MAX];
  return realpath(path.c_str(), buf) == nullptr ? "" : std::string(buf);
}

// Where the open descriptor of `file` really is: the kernel's name for it, which no symbolic
// link or `..` can disguise.
absl::StatusOr<std::string> OpenedPath(const File& file) {
  char buf[PATH_MAX];
  const std::string link = absl::StrCat("/proc/self/fd/", file.fd());
  const ssize_t n = readlink(link.c_str(), buf, sizeof(buf) - 1);
  if (n < 0) return ErrnoStatus(errno, "readlink", link);
  return std::string(buf, static_cast<size_t>(n));
}

bool Within(const std::string& path, const std::string& dir) {
  if (dir.empty()) return false;
  if (dir == "/") return true;
  return absl::StartsWith(path, dir) && path.size() > dir.size() && path[dir.size()] == '/';
}

// "layer vm.strata: raw base /x/base.raw": how messages name a link.
std::string Link(const std::string& child_path, const std::string& path, ParentFormat format) {
  return absl::StrCat("layer ", child_path, ": ",
                      format == ParentFormat::kRaw ? "raw base " : "parent ", path);
}

// Whether the file whose real path is `real` lies where `scope` trusts parents; else
// kPermissionDenied naming `what` and the option that trusts it.
absl::Status CheckRealPlace(const std::string& real, const std::string& what,
                            const ParentScope& scope) {
  // The top's directory as named, and where the top really is when it is a symbolic link
  // (a disk linked into /var/lib/strata keeps its base beside its real file).
  const std::string top_dir = RealPath(DirName(scope.top_path));
  const std::string real_top = RealPath(scope.top_path);
  if (Within(real, top_dir) || (!real_top.empty() && Within(real, DirName(real_top)))) {
    return absl::OkStatus();
  }
  for (const std::string& dir : scope.allowed_dirs) {
    if (Within(real, RealPath(dir))) return absl::OkStatus();
  }
  std::string trusted = top_dir;
  if (!scope.allowed_dirs.empty()) {
    absl::StrAppend(&trusted, " and ", absl::StrJoin(scope.allowed_dirs, ", "));
  }
  return absl::PermissionDeniedError(absl::StrCat(
      what, " (", real, ") lies outside ", trusted,
      ": pass --allow-parent-dir ", DirName(real),
      " (or set STRATA_ALLOW_PARENT_DIR) to trust it"));
}

absl::Status CheckPlace(const File& parent, const std::string& link, const ParentScope& scope) {
  auto real = OpenedPath(parent);
  if (!real.ok()) return real.status();
  return CheckRealPlace(*real, link, scope);
}

// `text` with its %XX escapes decoded, as libnbd decodes a URI's query.
std::string PercentDecoded(absl::string_view text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    int hex = 0;
    if (text[i] == '%' && i + 2 < text.size() && absl::SimpleHexAtoi(text.substr(i + 1, 2), &hex)) {
      out.push_back(static_cast<char>(hex));
      i += 2;
    } else {
      out.push_back(text[i]);
    }
  }
  return out;
}

// A local file a base URI names (a unix socket, TLS credentials): where a parent may lie.
absl::Status CheckUriFile(const std::string& link, absl::string_view key, const std::string& path,
                          const ParentScope& scope) {
  if (path.empty() || path[0] != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat(link, ": ", key, "= must be an absolute path"));
  }
  // A socket or key file that does not exist yet cannot be resolved: its directory can.
  std::string real = RealPath(path);
  if (real.empty()) {
    const std::string dir = RealPath(DirName(path));
    real = dir.empty() ? path : absl::StrCat(dir, "/", path.substr(path.rfind('/') + 1));
  }
  return CheckRealPlace(real, absl::StrCat(link, " ", key, "=", path), scope);
}

}  // namespace

absl::Status CheckRemoteParent(const std::string& child_path, const std::string& uri,
                               const ParentScope& scope) {
  const std::string link = absl::StrCat("layer ", child_path, ": NBD base ", uri);
  const size_t colon = uri.find("://");
  const std::string scheme = colon == std::string::npos ? "" : uri.substr(0, colon);
  if (scheme != "nbd" && scheme != "nbds" && scheme != "nbd+unix" && scheme != "nbds+unix") {
    return absl::InvalidArgumentError(absl::StrCat(
        link, ": not an NBD URI strata follows (nbd://, nbds://, nbd+unix://, nbds+unix://)"));
  }
  const size_t query = uri.find('?');
  if (query != std::string::npos) {
    for (absl::string_view param : absl::StrSplit(uri.substr(query + 1), '&')) {
      const size_t eq = param.find('=');
      const absl::string_view key = param.substr(0, eq);
      const std::string value =
          eq == absl::string_view::npos ? "" : PercentDecoded(param.substr(eq + 1));
      if (key == "socket" || key == "tls-certificates" || key == "tls-psk-file") {
        if (auto s = CheckUriFile(link, key, value, scope); !s.ok()) return s;
      } else if (key != "tls-username") {
        return absl::InvalidArgumentError(
            absl::StrCat(link, ": unknown URI parameter '", key, "'"));
      }
    }
  }
  if (absl::EndsWith(scheme, "+unix")) return absl::OkStatus();
  for (const std::string& prefix : scope.allowed_dirs) {
    if (absl::StrContains(prefix, "://") && absl::StartsWith(uri, prefix)) {
      return absl::OkStatus();
    }
  }
  return absl::PermissionDeniedError(absl::StrCat(
      link, " is a network export, trusted only by name: pass --allow-parent-dir ",
      uri.substr(0, query), " (or a prefix of it) to trust it"));
}

absl::StatusOr<std::unique_ptr<File>> OpenParentFile(Env* env, const std::string& child_path,
                                                     const std::string& path, ParentFormat format,
                                                     const ParentScope& scope,
                                                     OpenOptions options) {
  options.no_follow = true;
  const std::string link = Link(child_path, path, format);
  auto file = env->Open(path, options);
  if (!file.ok()) return WithContext(file.status(), link);
  if (auto s = CheckPlace(**file, link, scope); !s.ok()) return s;
  return file;
}

absl::Status CheckChainParents(Env* env, const ParentScope& scope) {
  auto header = ReadLayerHeader(env, scope.top_path);
  std::string path = scope.top_path;
  // Each step opens one more file; a loop of links ends at the depth bound.
  for (int depth = 0; header.ok() && depth < 65536; ++depth) {
    if (header->parent_format == ParentFormat::kNone) break;
    if (header->parent_format == ParentFormat::kNbd) {
      return CheckRemoteParent(path, header->parent_path, scope);
    }
    const std::string parent = ResolvePath(DirName(path), header->parent_path);
    auto file = OpenParentFile(env, path, parent, header->parent_format, scope);
    if (absl::IsNotFound(file.status())) break;
    if (!file.ok()) return file.status();
    if (header->parent_format == ParentFormat::kRaw) break;
    header = ReadLayerHeader(file->get());
    path = parent;
  }
  return absl::OkStatus();
}

}  // namespace strata
