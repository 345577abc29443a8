#include "cli/command.h"

#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "blockstore/file.h"
#include "blockstore/parent_place.h"
#include "blockstore/remote_base.h"
#include "server/remote/nbd_base.h"

namespace strata::cli {

namespace {

constexpr char kAllowParentDir[] = "--allow-parent-dir";
constexpr char kAllowWritableBase[] = "--allow-writable-base";
constexpr char kAllowParentDirUsage[] = R"(
A parent outside LAYER's directory tree (after symbolic links) is refused unless trusted:
  --allow-parent-dir DIR   trust parents under DIR (repeatable; STRATA_ALLOW_PARENT_DIR holds
                           more, colon-separated); an NBD base (-F nbd) over TCP is trusted
                           by its URI or a prefix of it: --allow-parent-dir nbd://golden/
  --allow-writable-base    accept an NBD base that its server lets clients write (a base
                           that changes corrupts the layers on it; STRATA_ALLOW_WRITABLE_BASE=1)
)";

}  // namespace

void InstallRemoteBaseOpener(const Args& args, absl::Duration read_timeout) {
  const char* env = std::getenv("STRATA_ALLOW_WRITABLE_BASE");
  NbdBaseOptions options;
  options.allow_writable =
      args.Has(kAllowWritableBase) || (env != nullptr && std::string(env) == "1");
  options.read_timeout = read_timeout;
  SetDefaultRemoteBaseOpener(NbdBaseOpener(options));
}

namespace {

void PrintUsage(const CommandSpec& spec, FILE* out) {
  std::fputs(spec.usage, out);
  if (spec.follows_parents) std::fputs(kAllowParentDirUsage, out);
}

}  // namespace

std::vector<std::string> AllowedParentDirs(const Args& args) {
  std::vector<std::string> dirs;
  if (auto it = args.lists.find(kAllowParentDir); it != args.lists.end()) dirs = it->second;
  if (const char* env = std::getenv("STRATA_ALLOW_PARENT_DIR"); env != nullptr) {
    for (absl::string_view dir : absl::StrSplit(env, ':', absl::SkipEmpty())) {
      dirs.emplace_back(dir);
    }
  }
  return dirs;
}

absl::Status CheckParents(const Args& args, const std::string& top) {
  return CheckChainParents(Env::Default(), {top, AllowedParentDirs(args)});
}

std::optional<int> ParseCommand(int argc, char** argv, const CommandSpec& spec, Args* args) {
  ArgSpec arg_spec = spec.args;
  if (spec.follows_parents) {
    arg_spec.repeated.insert(kAllowParentDir);
    arg_spec.flags.insert(kAllowWritableBase);
  }
  arg_spec.flags.insert("--help");
  arg_spec.aliases.emplace("-h", "--help");
  if (spec.output) {
    arg_spec.flags.insert("--json");
    arg_spec.valued.insert("--output");
  }
  auto parsed = Parse(argc, argv, 2, arg_spec);
  if (!parsed.ok()) return UsageError(spec, parsed.status().message());
  if (parsed->Has("--help")) {
    PrintUsage(spec, stdout);
    return 0;
  }
  if (spec.output) {
    if (parsed->Has("--json")) parsed->values["--output"] = "json";
    const std::string output = parsed->Get("--output", "human");
    if (output != "human" && output != "json") {
      return UsageError(spec, absl::StrCat("--output is human or json, not '", output, "'"));
    }
  }
  if (spec.positional >= 0 && parsed->positional.size() != static_cast<size_t>(spec.positional)) {
    return UsageError(spec);
  }
  *args = *std::move(parsed);
  if (spec.follows_parents) InstallRemoteBaseOpener(*args);
  return std::nullopt;
}

int UsageError(const CommandSpec& spec, absl::string_view why) {
  if (!why.empty()) std::fprintf(stderr, "strata %s: %s\n", spec.name, std::string(why).c_str());
  PrintUsage(spec, stderr);
  return spec.usage_exit;
}

int Fail(absl::string_view command, const absl::Status& status) {
  std::fprintf(stderr, "strata %s: %s\n", std::string(command).c_str(),
               std::string(status.message()).c_str());
  return 1;
}

std::string Count(uint64_t n, absl::string_view singular, absl::string_view plural) {
  if (n == 1) return absl::StrCat(n, " ", singular);
  return plural.empty() ? absl::StrCat(n, " ", singular, "s") : absl::StrCat(n, " ", plural);
}

}  // namespace strata::cli
