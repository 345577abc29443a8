#include "blockstore/children.h"

#include <cstdlib>
#include <algorithm>

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

std::vector<std::string> RecordedBranchDirs(Env* env, const std::string& dir) {
  auto file = env->Open(dir + "/" + kBranchDirsFile, {});
  if (!file.ok()) return {};  // none recorded
  auto size = (*file)->Size();
  std::string text(size.ok() ? *size : 0, '\0');
  if (!(*file)->Read(0, text.size(), text.data()).ok()) return {};
  return absl::StrSplit(text, '\n', absl::SkipEmpty());
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
  std::vector<std::string> dirs = known;
  for (const std::string& dir : known) {
    for (const std::string& recorded : RecordedBranchDirs(env, dir)) AddUnique(&dirs, recorded);
  }
  return dirs;
}

absl::StatusOr<std::vector<Child>> FindChildren(Env* env, const std::vector<std::string>& dirs,
                                                const Uuid& parent_uuid) {
  std::vector<Child> out;
  for (const std::string& dir : dirs) {
    auto names = env->ListDir(dir);
    if (absl::IsNotFound(names.status())) continue;  // a recorded directory removed since
    if (!names.ok()) return names.status();
    for (const std::string& name : *names) {
      std::string path = dir + "/" + name;
      auto h = ReadLayerHeader(env, path);  // files that are not layers fail here: skipped
      if (h.ok() && h->parent_format == ParentFormat::kStrata && h->parent_uuid == parent_uuid) {
        out.push_back({path, h->uuid});
      }
    }
  }
  return out;
}

}  // namespace strata
