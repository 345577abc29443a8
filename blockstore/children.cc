#include "blockstore/children.h"

#include <cstdlib>
#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "blockstore/file.h"
#include "blockstore/layer.h"

namespace strata {

std::string AbsoluteDir(const std::string& path) {
  char* real = realpath(DirName(path).c_str(), nullptr);
  std::string abs = real ? real : DirName(path);
  free(real);
  return abs;
}

std::string AbsolutePath(const std::string& path) {
  return absl::StrCat(AbsoluteDir(path), "/", BaseName(path));
}

namespace {

// A child in the registry's own directory is written by its file name, as a child names a
// parent beside it: a copied or moved directory then names its own files, never the
// original's (copies share UUIDs, and a merge would relink the original's children).
std::string EncodeRegistry(const std::string& dir, const std::vector<RegisteredChild>& entries) {
  std::string text;
  for (const RegisteredChild& c : entries) {
    absl::StrAppend(&text, UuidToString(c.parent_uuid), " ", UuidToString(c.child_uuid), " ",
                    DirName(c.path) == dir ? BaseName(c.path) : c.path, "\n");
  }
  return text;
}

// RegisterChild into the registry of directory `dir` (absolute).
absl::Status RegisterInDir(Env* env, const std::string& dir, const Uuid& parent_uuid,
                           const std::string& child_path, const Uuid& child_uuid) {
  const std::string path = AbsolutePath(child_path);
  if (absl::StrContains(path, '\n')) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot register ", child_path, " in ", dir,
                     ": its path has a line break"));
  }
  std::vector<RegisteredChild> entries = ReadChildRegistry(env, dir);
  std::erase_if(entries, [&](const RegisteredChild& c) {
    return c.path == path || c.child_uuid == child_uuid;
  });
  entries.push_back({parent_uuid, child_uuid, path});
  return ReplaceFile(env, dir + "/" + kChildRegistryFile, EncodeRegistry(dir, entries));
}

// The layer files in `dirs` (in `dir`, with header `h`) for which `match(dir, h)` is true.
absl::StatusOr<std::vector<Child>> FindLayers(
    Env* env, const std::vector<std::string>& dirs,
    const std::function<bool(const std::string& dir, const LayerHeader& h)>& match) {
  std::vector<Child> out;
  absl::Status listed = ForEachLayer(
      env, dirs, [&](const std::string& dir, const std::string& path, const LayerHeader& h) {
        if (match(dir, h)) out.push_back({path, h.uuid});
      });
  if (!listed.ok()) return listed;
  return out;
}

}  // namespace

absl::Status ForEachLayer(Env* env, const std::vector<std::string>& dirs,
                          const LayerVisitor& visit) {
  absl::Status first_error;
  for (const std::string& dir : dirs) {
    auto names = env->ListDir(dir);
    if (absl::IsNotFound(names.status())) continue;  // a registered directory removed since
    if (!names.ok()) {
      first_error.Update(names.status());
      continue;
    }
    for (const std::string& name : *names) {
      const std::string path = dir + "/" + name;
      auto h = ReadLayerHeader(env, path);  // files that are not layers fail here: skipped
      if (h.ok()) visit(dir, path, *h);
    }
  }
  return first_error;
}

void AddUnique(std::vector<std::string>* dirs, const std::string& dir) {
  if (std::find(dirs->begin(), dirs->end(), dir) == dirs->end()) dirs->push_back(dir);
}

std::vector<ChainLayer> ReadChainHeaders(Env* env, const std::string& top_path) {
  std::vector<ChainLayer> layers;
  std::string path = top_path;
  for (int depth = 0; depth < 65536; ++depth) {
    auto h = ReadLayerHeader(env, path);
    if (!h.ok()) break;
    layers.push_back({path, *h});
    if (h->parent_format != ParentFormat::kStrata) break;
    path = ResolvePath(DirName(path), h->parent_path);
  }
  return layers;
}

std::vector<std::string> ChainDirs(const std::string& top_path,
                                   const std::vector<ChainLayer>& layers) {
  std::vector<std::string> dirs = {AbsoluteDir(top_path)};
  for (const ChainLayer& layer : layers) AddUnique(&dirs, AbsoluteDir(layer.path));
  return dirs;
}

std::vector<std::string> ChainDirs(Env* env, const std::string& top_path) {
  return ChainDirs(top_path, ReadChainHeaders(env, top_path));
}

std::vector<std::string> SearchDirs(Env* env, const std::vector<std::string>& known) {
  std::vector<std::string> dirs;  // each once: a directory listed twice lists its children twice
  for (const std::string& dir : known) AddUnique(&dirs, dir);
  for (const std::string& dir : known) {
    for (const RegisteredChild& child : ReadChildRegistry(env, dir)) {
      AddUnique(&dirs, DirName(child.path));
    }
    const std::string recorded = ReadWholeFile(env, dir + "/" + kBranchDirsFile).value_or("");
    for (absl::string_view older : absl::StrSplit(recorded, '\n', absl::SkipEmpty())) {
      AddUnique(&dirs, std::string(older));
    }
  }
  return dirs;
}

std::vector<RegisteredChild> ReadChildRegistry(Env* env, const std::string& dir) {
  std::vector<RegisteredChild> entries;
  const std::string text = ReadWholeFile(env, dir + "/" + kChildRegistryFile).value_or("");
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    std::vector<absl::string_view> fields = absl::StrSplit(line, absl::MaxSplits(' ', 2));
    // A path is absolute, or the file name of a child beside the registry.
    if (fields.size() != 3 || fields[2].empty() ||
        (fields[2][0] != '/' && absl::StrContains(fields[2], '/'))) {
      continue;
    }
    absl::StatusOr<Uuid> parent = ParseUuid(fields[0]), child = ParseUuid(fields[1]);
    if (!parent.ok() || !child.ok()) continue;
    const std::string path = fields[2][0] == '/' ? std::string(fields[2])
                                                 : absl::StrCat(dir, "/", fields[2]);
    entries.push_back({*parent, *child, path});
  }
  return entries;
}

absl::Status RegisterChild(Env* env, const std::string& parent_path, const Uuid& parent_uuid,
                           const std::string& child_path, const Uuid& child_uuid) {
  return RegisterInDir(env, AbsoluteDir(parent_path), parent_uuid, child_path, child_uuid);
}

absl::Status RegisterChildUnlessReadOnly(Env* env, const std::string& parent_path,
                                         const Uuid& parent_uuid, const std::string& child_path,
                                         const Uuid& child_uuid) {
  absl::Status s = RegisterChild(env, parent_path, parent_uuid, child_path, child_uuid);
  if (s.ok() || IsWriteRefused(s)) return absl::OkStatus();
  return WithContext(s, absl::StrCat("cannot register ", child_path, " as a child of ",
                                     parent_path, " (FORMAT.md §9, child registry)"));
}

bool StillStanding(Env* env, const RegisteredChild& child) {
  // A nil parent UUID registers a layer on a raw base (of the registry's directory).
  const ParentFormat format = IsNil(child.parent_uuid) ? ParentFormat::kRaw : ParentFormat::kStrata;
  auto stands = [&](const std::string& path, bool same_layer) {
    auto h = ReadLayerHeader(env, path);
    return h.ok() && h->parent_format == format && h->parent_uuid == child.parent_uuid &&
           (!same_layer || h->uuid == child.child_uuid);
  };
  if (stands(child.path, false)) return true;
  // A live snapshot of a registered disk keeps the layer in its directory under the
  // snapshot's name (`<stem>@NAME.strata`): the same layer, found by its UUID.
  auto names = env->ListDir(DirName(child.path));
  if (!names.ok()) return false;
  for (const std::string& name : *names) {
    if (stands(DirName(child.path) + "/" + name, true)) return true;
  }
  return false;
}

std::vector<RegisteredChild> GoneChildren(Env* env, const std::string& dir,
                                          const Uuid& parent_uuid) {
  std::vector<RegisteredChild> gone;
  for (RegisteredChild& c : ReadChildRegistry(env, dir)) {
    if (c.parent_uuid == parent_uuid && !StillStanding(env, c)) gone.push_back(std::move(c));
  }
  return gone;
}

absl::StatusOr<int> PruneChildRegistry(Env* env, const std::string& dir,
                                       const std::function<bool(const RegisteredChild&)>& drop) {
  std::vector<RegisteredChild> entries = ReadChildRegistry(env, dir);
  const int dropped = static_cast<int>(std::erase_if(entries, drop));
  if (dropped == 0) return 0;
  if (auto s = ReplaceFile(env, dir + "/" + kChildRegistryFile, EncodeRegistry(dir, entries));
      !s.ok()) {
    return s;
  }
  return dropped;
}

absl::Status HandOverRegistrations(Env* env, const RegistryHandOver& h) {
  std::vector<RegisteredChild> orphans;  // dropped from gone_dir, registered on the heir below
  auto dropped = PruneChildRegistry(env, h.gone_dir, [&](const RegisteredChild& c) {
    if (c.parent_uuid != h.gone) return false;
    orphans.push_back(c);
    return true;
  });
  if (!dropped.ok()) return dropped.status();
  if (!h.gone_parent_dir.empty()) {
    auto forgot = PruneChildRegistry(env, h.gone_parent_dir, [&](const RegisteredChild& c) {
      return c.child_uuid == h.gone;
    });
    if (!forgot.ok()) return forgot.status();
  }
  if (IsNil(h.heir)) return absl::OkStatus();
  for (const RegisteredChild& c : orphans) {
    if (auto s = RegisterChild(env, h.heir_path, h.heir, c.path, c.child_uuid); !s.ok()) return s;
  }
  if (h.heir_parent_dir.empty()) return absl::OkStatus();
  for (const RegisteredChild& c : ReadChildRegistry(env, h.heir_parent_dir)) {
    if (c.child_uuid == h.heir && c.path != AbsolutePath(h.heir_path)) {
      return RegisterInDir(env, h.heir_parent_dir, c.parent_uuid, h.heir_path, h.heir);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<Child>> FindChildren(Env* env, const std::vector<std::string>& dirs,
                                                const Uuid& parent_uuid) {
  return FindLayers(env, dirs, [&](const std::string&, const LayerHeader& h) {
    return h.parent_format == ParentFormat::kStrata && h.parent_uuid == parent_uuid;
  });
}

absl::StatusOr<std::vector<Child>> FindRawChildren(Env* env, const std::vector<std::string>& dirs,
                                                   const std::string& base) {
  const std::string want = AbsolutePath(base);
  return FindLayers(env, dirs, [&](const std::string& dir, const LayerHeader& h) {
    return h.parent_format == ParentFormat::kRaw &&
           AbsolutePath(ResolvePath(dir, h.parent_path)) == want;
  });
}

absl::Status RefuseOtherChildren(Env* env, const std::vector<std::string>& search_dirs,
                                 const std::string& parent_path, const Uuid& parent_uuid,
                                 const Uuid& keep, absl::string_view what) {
  auto children = FindChildren(env, search_dirs, parent_uuid);
  if (!children.ok()) return children.status();
  std::vector<std::string> others;
  for (const Child& c : *children) {
    if (c.uuid != keep) others.push_back(c.path);
  }
  if (!others.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, ": other layers stand on it (", absl::StrJoin(others, ", "),
                     "); their content would change (`strata tree` shows them)"));
  }
  std::vector<std::string> gone;
  for (const RegisteredChild& c : GoneChildren(env, AbsoluteDir(parent_path), parent_uuid)) {
    gone.push_back(c.path);
  }
  if (!gone.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        what, ": ", parent_path, " has registered children that are no longer where they were "
        "created (", absl::StrJoin(gone, ", "), "): if they were deleted, `strata check --repair` "
        "of the disk forgets them; if one was moved, `strata rebase -u -b ", parent_path,
        " -F strata NEW-PATH` registers where it is now"));
  }
  return absl::OkStatus();
}

}  // namespace strata
