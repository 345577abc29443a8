// The offline commands of `strata`: they work on layer files directly, like qemu-img.
#include "cli/offline_commands.h"

#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "blockstore/chain.h"
#include "blockstore/check.h"
#include "blockstore/children.h"
#include "blockstore/commit.h"
#include "blockstore/diff.h"
#include "blockstore/file.h"
#include "blockstore/layer.h"
#include "blockstore/recovery.h"
#include "blockstore/revert.h"
#include "blockstore/tree.h"
#include "cli/args.h"
#include "cli/command.h"
#include "cli/control_client.h"
#include "cli/image_format.h"
#include "cli/progress.h"
#include "server/control/live_control.h"
#include "nlohmann/json.hpp"

namespace strata::cli {
namespace {

using json = nlohmann::json;

std::string TimeString(int64_t ns) {
  if (ns == 0) return "";
  time_t t = static_cast<time_t>(ns / 1000000000);
  char buf[64];
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// JSON says "none" with null, as list does (not "").
json TimeOrNull(int64_t ns) { return ns == 0 ? json(nullptr) : json(TimeString(ns)); }
json StringOrNull(const std::string& s) { return s.empty() ? json(nullptr) : json(s); }

// Finishes or rolls back every interrupted operation (recovery.h), and says so, before a
// command that changes the chain; the blockstore call that follows recovers too, but finds
// nothing left. Read-only commands do not: they must never race a running merge or server.
absl::Status RecoverFirst(Env* env, const std::string& top) {
  ProgressBar bar("resume commit");
  LockSet locks;
  auto recovered =
      RecoverChain(env, top, &locks, [&](uint64_t d, uint64_t t) { bar.Update(d, t); });
  bar.Finish();
  if (!recovered.ok()) return recovered.status();
  if (!recovered->empty()) std::fprintf(stderr, "strata: %s", recovered->c_str());
  return absl::OkStatus();
}

}  // namespace

absl::Status ParseLayerGeometry(const Args& args, CreateOptions* options) {
  for (auto [option, field] : {std::pair{"--cluster-size", &options->cluster_size},
                               std::pair{"--sub-block-size", &options->sub_block_size}}) {
    if (!args.Has(option)) continue;
    auto v = ParseSize(args.Get(option));
    if (!v.ok()) return v.status();
    *field = static_cast<uint32_t>(*v);
  }
  return absl::OkStatus();
}

namespace {

// After `create -b` or `rebase -u -b`: the user named the parent, so it was taken wherever it
// lies; but every later command on `layer` follows the link as an untrusted one
// (blockstore/parent_place.h), and says so now rather than at the next serve.
void NoteUntrustedParent(const CommandSpec& spec, const Args& args, const std::string& layer) {
  if (auto s = CheckParents(args, layer); absl::IsPermissionDenied(s)) {
    std::fprintf(stderr, "strata %s: note: every command on %s will need it trusted: %s\n",
                 spec.name, layer.c_str(), std::string(s.message()).c_str());
  }
}

// A layer created on a strata parent whose directory refused the child registry (a golden image
// shared read-only, FORMAT.md §9) is created, but no merge into that parent can know of it.
void NoteUnregistered(const CommandSpec& spec, const std::string& layer, const LayerHeader& h,
                      const CreateOptions& options) {
  if (options.parent_format != ParentFormat::kStrata) return;
  const std::string parent = ResolvePath(DirName(layer), options.parent);
  for (const RegisteredChild& c : ReadChildRegistry(Env::Default(), AbsoluteDir(parent))) {
    if (c.child_uuid == h.uuid) return;
  }
  std::fprintf(stderr,
               "strata %s: note: %s is not registered as a child of %s (its directory cannot be "
               "written: a golden image shared read-only); a merge into %s by anyone who can "
               "write there would not see it, so never merge into a shared layer\n",
               spec.name, layer.c_str(), parent.c_str(), parent.c_str());
}

const CommandSpec kCreate{
    .name = "create",
    .usage = R"(usage: strata create --size SIZE [--cluster-size SIZE] [--sub-block-size SIZE] LAYER
       strata create -b PARENT -F raw|strata|nbd [--cluster-size SIZE] [--sub-block-size SIZE] LAYER

Creates LAYER: a new empty disk with no base (--size), or a new active layer on PARENT, a raw
file, a frozen strata snapshot (a branch) or an NBD export read over the network (-F nbd:
PARENT is its URI, nbd+unix:///NAME?socket=PATH, nbd://HOST[:PORT]/NAME, nbds://...; a golden
image served once for many hosts). strata never guesses a parent's format: -F says it.
LAYER is registered beside a strata PARENT (.strata-children) so that merges into PARENT find
it; a PARENT whose directory cannot be written (a golden image shared read-only) gets no entry,
and a note says so.

  -s, --size SIZE            the disk's size: 4096, 64M, 20G, 1.5T (binary units)
  -b, --backing PARENT       the parent file (a relative path is relative to LAYER's directory)
                             or, with -F nbd, the export's URI
  -F, --backing-format FMT   raw, strata or nbd
  --cluster-size SIZE        allocation unit (default 64K)
  --sub-block-size SIZE      write and checksum unit within a cluster (default 4K)
  -h, --help                 this text
)",
    .args = {.valued = {"--size", "--backing", "--backing-format", "--cluster-size",
                        "--sub-block-size"},
             .aliases = {{"-b", "--backing"}, {"-F", "--backing-format"}, {"-s", "--size"}}},
    .follows_parents = true};

// The sizes and the parent of `strata create`, from its options.
absl::StatusOr<CreateOptions> CreateOptionsOf(const Args& args) {
  CreateOptions options;
  if (auto s = ParseLayerGeometry(args, &options); !s.ok()) return s;
  if (args.Has("--size")) {
    auto size = ParseSize(args.Get("--size"));
    if (!size.ok()) return size.status();
    options.size = *size;
    return options;
  }
  options.parent = args.Get("--backing");
  if (!args.Has("--backing-format")) {
    return absl::InvalidArgumentError(
        "-F raw|strata|nbd is required with -b: strata never guesses a parent's format");
  }
  if (auto s = ParseParentFormat(args.Get("--backing-format"), &options.parent_format);
      !s.ok()) {
    return s;
  }
  return options;
}

}  // namespace

int CreateCommand(int argc, char** argv) {
  Args args;
  if (auto exit = ParseCommand(argc, argv, kCreate, &args)) return *exit;
  if (args.positional.size() != 1 || args.Has("--size") == args.Has("--backing")) {
    return UsageError(kCreate);
  }
  auto options = CreateOptionsOf(args);
  if (!options.ok()) return Fail(kCreate.name, options.status());
  auto header = CreateLayer(args.positional[0], *options);
  if (!header.ok()) return Fail(kCreate.name, header.status());
  NoteUntrustedParent(kCreate, args, args.positional[0]);
  NoteUnregistered(kCreate, args.positional[0], *header, *options);
  std::printf("created %s: %s, cluster %s, sub-block %s%s\n", args.positional[0].c_str(),
              HumanBytes(header->virtual_size).c_str(), HumanBytes(header->cluster_size).c_str(),
              HumanBytes(header->sub_block_size).c_str(),
              options->parent.empty() ? ""
                                      : absl::StrCat(", on ", Name(options->parent_format), " ",
                                                     options->parent).c_str());
  return 0;
}

namespace {

const CommandSpec kInfo{.name = "info",
                        .usage = R"(usage: strata info [--output=human|json] LAYER

The chain topped by LAYER, top first: each layer's file, UUID, state (active or frozen),
snapshot name and time, data and on-disk bytes, and its size where it is not the disk's (a
layer below a disk grown by `strata resize`). Reads only: safe on a served disk.

  --output=human|json   the format (default human; --json is --output=json); in JSON,
                        what a layer does not have (a snapshot name, a time) is null
  -h, --help            this text
)",
                        .output = true,
                        .positional = 1,
                        .follows_parents = true};

json InfoJson(const Chain& chain, const std::vector<LayerInfo>& layers) {
  json out = {{"virtual_size", chain.size()},
              {"cluster_size", chain.cluster_size()},
              {"sub_block_size", chain.sub_block_size()},
              {"layers", json::array()}};
  for (auto it = layers.rbegin(); it != layers.rend(); ++it) {
    json l = {{"position", it->position}, {"file", it->path},
              {"allocated_bytes", it->allocated_bytes}, {"file_bytes", it->file_bytes}};
    if (it->is_remote_base) {
      l["format"] = "nbd";
      l["virtual_size"] = it->allocated_bytes;
      l["remote"] = RemoteBaseJson(*it);
    } else if (it->is_raw_base) {
      l["format"] = "raw";
      l["virtual_size"] = it->allocated_bytes;
    } else {
      l["format"] = "strata";
      l["virtual_size"] = it->header.virtual_size;
      l["uuid"] = UuidToString(it->header.uuid);
      l["state"] = std::string(Name(it->header.state));
      l["snapshot"] = StringOrNull(it->header.snapshot_name);
      l["created"] = TimeOrNull(it->header.created_ns);
      l["frozen"] = TimeOrNull(it->header.frozen_ns);
      if (it->header.parent_format != ParentFormat::kNone) {
        l["parent"] = it->header.parent_path;
        l["parent_format"] = std::string(Name(it->header.parent_format));
        if (!IsNil(it->header.parent_uuid)) l["parent_uuid"] = UuidToString(it->header.parent_uuid);
      }
    }
    out["layers"].push_back(l);
  }
  return out;
}

void PrintInfoHuman(const Chain& chain, const std::vector<LayerInfo>& layers) {
  std::printf("disk: %s (%llu bytes), cluster %s, sub-block %s, %s (top first)\n",
              HumanBytes(chain.size()).c_str(), static_cast<unsigned long long>(chain.size()),
              HumanBytes(chain.cluster_size()).c_str(),
              HumanBytes(chain.sub_block_size()).c_str(), Count(layers.size(), "layer").c_str());
  for (auto it = layers.rbegin(); it != layers.rend(); ++it) {
    // Only a layer below a grown disk (resize.h) has a size of its own.
    const uint64_t size = it->is_raw_base ? it->allocated_bytes : it->header.virtual_size;
    const std::string own_size =
        size == chain.size() ? "" : absl::StrCat(", ", HumanBytes(size), " (", size, " bytes)");
    if (it->is_remote_base) {
      std::printf("  [%d] %s  NBD base%s, %s\n", it->position, it->path.c_str(), own_size.c_str(),
                  it->remote.connected ? Count(it->remote.connections, "connection").c_str()
                                       : "not connected");
      continue;
    }
    if (it->is_raw_base) {
      std::printf("  [%d] %s  raw base%s, %s on disk\n", it->position, it->path.c_str(),
                  own_size.c_str(), HumanBytes(it->file_bytes).c_str());
      continue;
    }
    const LayerHeader& h = it->header;
    std::string state(Name(h.state));
    if (!h.snapshot_name.empty()) absl::StrAppend(&state, " snapshot '", h.snapshot_name, "'");
    if (h.frozen_ns) absl::StrAppend(&state, " at ", TimeString(h.frozen_ns));
    state += own_size;
    std::printf("  [%d] %s  %s\n      uuid %s, data %s, file %s on disk, created %s\n",
                it->position, it->path.c_str(), state.c_str(), UuidToString(h.uuid).c_str(),
                HumanBytes(it->allocated_bytes).c_str(), HumanBytes(it->file_bytes).c_str(),
                TimeString(h.created_ns).c_str());
  }
}

// A node of the snapshot tree, with its children: what `tree --output=json` prints and
// `info --json` holds as "tree".
json TreeNodeJson(const TreeNode& node, const std::string& top) {
  const LayerHeader& h = node.header;
  json out = {{"file", node.path},
              {"uuid", UuidToString(h.uuid)},
              {"state", std::string(Name(h.state))},
              {"snapshot", StringOrNull(h.snapshot_name)},
              {"created", TimeOrNull(h.created_ns)},
              {"frozen", TimeOrNull(h.frozen_ns)},
              {"current_chain", node.on_chain},
              {"top", node.path == AbsolutePath(top)},
              {"children", json::array()},
              {"gone_children", json::array()}};
  for (const TreeNode& child : node.children) out["children"].push_back(TreeNodeJson(child, top));
  for (const RegisteredChild& gone : node.gone) {
    out["gone_children"].push_back({{"file", gone.path}, {"uuid", UuidToString(gone.child_uuid)}});
  }
  return out;
}

json TreeJson(const SnapshotTree& tree, const std::string& top) {
  json out = {{"raw_base", StringOrNull(tree.raw_base)}, {"layers", json::array()}};
  for (const TreeNode& root : tree.roots) out["layers"].push_back(TreeNodeJson(root, top));
  return out;
}

// Snapshots of the tree off the chain topped by `top` (dead branches and other disks' layers).
int CountOffChain(const std::vector<TreeNode>& nodes) {
  int n = 0;
  for (const TreeNode& node : nodes) {
    n += (node.on_chain ? 0 : 1) + CountOffChain(node.children);
  }
  return n;
}

}  // namespace

int InfoCommand(int argc, char** argv) {
  Args args;
  if (auto exit = ParseCommand(argc, argv, kInfo, &args)) return *exit;
  const std::string top = args.positional[0];
  if (auto s = RefuseForeignImage(top); !s.ok()) return Fail(kInfo.name, s);
  auto chain = Chain::Open(top, {.writable = false, .lock = false,
                                 .allowed_parent_dirs = AllowedParentDirs(args)});
  if (!chain.ok()) return Fail(kInfo.name, chain.status());
  const std::vector<LayerInfo> layers = (*chain)->Layers();
  auto tree = ReadSnapshotTree(Env::Default(), top);
  if (args.Json()) {
    json out = InfoJson(**chain, layers);
    if (tree.ok()) out["tree"] = TreeJson(*tree, top);
    std::cout << out.dump(2) << "\n";
    return 0;
  }
  PrintInfoHuman(**chain, layers);
  if (int off = tree.ok() ? CountOffChain(tree->roots) : 0; off > 0) {
    std::printf("%s off this chain (dead branches or other disks' layers): `strata tree %s`\n",
                Count(off, "layer").c_str(), top.c_str());
  }
  return 0;
}

namespace {

const CommandSpec kTree{.name = "tree",
                        .usage = R"(usage: strata tree [--output=human|json] LAYER

Every snapshot and branch that descends from the bottom of LAYER's chain: the chain itself
(marked *), snapshots a revert left off it, branches created on a snapshot with `strata
create -b` in any directory, other layers on the same raw base, and registered children
that are gone (deleted, or moved without `strata rebase -u`). Reads only: safe on a served
disk. A snapshot off the chain can be deleted with `strata delete-snapshot LAYER NAME`.

  --output=human|json   the format (default human; --json is --output=json)
  -h, --help            this text
)",
                        .output = true,
                        .positional = 1,
                        .follows_parents = true};

// The file as the human tree shows it: its name when it lies beside the top, else its path.
std::string ShownPath(const std::string& path, const std::string& top_dir) {
  return DirName(path) == top_dir ? BaseName(path) : path;
}

void PrintTreeNodes(const std::vector<TreeNode>& nodes, const std::string& indent,
                    const std::string& top) {
  const std::string top_dir = AbsoluteDir(top);
  for (size_t i = 0; i < nodes.size(); ++i) {
    const TreeNode& node = nodes[i];
    const bool last = i + 1 == nodes.size() && node.gone.empty();
    const LayerHeader& h = node.header;
    std::string what(Name(h.state));
    if (!h.snapshot_name.empty()) absl::StrAppend(&what, " snapshot '", h.snapshot_name, "'");
    if (h.frozen_ns) absl::StrAppend(&what, " at ", TimeString(h.frozen_ns));
    if (node.path == AbsolutePath(top)) absl::StrAppend(&what, ", the disk");
    std::printf("%s%s %s%s  %s\n", indent.c_str(), last ? "\u2514\u2500" : "\u251c\u2500",
                node.on_chain ? "*" : "", ShownPath(node.path, top_dir).c_str(), what.c_str());
    const std::string below = indent + (last ? "   " : "\u2502  ");
    PrintTreeNodes(node.children, below, top);
    for (size_t g = 0; g < node.gone.size(); ++g) {
      std::printf("%s%s ? %s  registered child, gone (`strata check --repair` forgets it)\n",
                  below.c_str(), g + 1 == node.gone.size() ? "\u2514\u2500" : "\u251c\u2500",
                  node.gone[g].path.c_str());
    }
  }
}

}  // namespace

int TreeCommand(int argc, char** argv) {
  Args args;
  if (auto exit = ParseCommand(argc, argv, kTree, &args)) return *exit;
  const std::string top = args.positional[0];
  if (auto s = RefuseForeignImage(top); !s.ok()) return Fail(kTree.name, s);
  if (auto s = CheckParents(args, top); !s.ok()) return Fail(kTree.name, s);
  auto tree = ReadSnapshotTree(Env::Default(), top);
  if (!tree.ok()) return Fail(kTree.name, tree.status());
  if (args.Json()) {
    std::cout << TreeJson(*tree, top).dump(2) << "\n";
    return 0;
  }
  std::printf("%s\n", tree->raw_base.empty() ? "(no raw base)"
                                             : absl::StrCat(tree->raw_base, "  raw base").c_str());
  PrintTreeNodes(tree->roots, "", top);
  std::printf("(* = the chain of %s)\n", top.c_str());
  return 0;
}

namespace {

const CommandSpec kMap{.name = "map",
                       .usage = R"(usage: strata map [--output=human|json] LAYER
       strata map [--output=human|json] --diff SNAPSHOT [--to SNAPSHOT2] LAYER

Which layer holds each range of the disk topped by LAYER: data, zeros, or unallocated.
With --diff, only the ranges changed since snapshot SNAPSHOT (up to SNAPSHOT2, else up to
LAYER): what an incremental backup copies. Reads only: safe on a served disk.

  --output=human|json   the format (default human; --json is --output=json). JSON has
                        qemu-img map's fields: start, length, depth (0 = LAYER), present,
                        zero, data, offset (in the layer's file, when the range lies there
                        in one piece), and strata's layer (chain position) and file
  --diff SNAPSHOT       changes since SNAPSHOT
  --to SNAPSHOT2        ... up to SNAPSHOT2
  -h, --help            this text
)",
                       .args = {.valued = {"--diff", "--to"}},
                       .output = true,
                       .positional = 1,
                       .follows_parents = true};

// `map --diff FROM [--to TO]`: the ranges that changed between two snapshots.
int PrintDiff(const std::string& top, const Args& args) {
  auto ranges = ChangedRanges(Env::Default(), top, args.Get("--diff"), args.Get("--to"));
  if (!ranges.ok()) return Fail(kMap.name, ranges.status());
  if (args.Json()) {
    json out = json::array();
    for (const auto& [off, len] : *ranges) out.push_back({{"start", off}, {"length", len}});
    std::cout << out.dump(1) << "\n";
    return 0;
  }
  uint64_t total = 0;
  std::printf("%-18s %-18s\n", "Offset", "Length");
  for (const auto& [off, len] : *ranges) {
    std::printf("0x%-16llx 0x%-16llx\n", static_cast<unsigned long long>(off),
                static_cast<unsigned long long>(len));
    total += len;
  }
  std::printf("%s changed since '%s'\n", HumanBytes(total).c_str(), args.Get("--diff").c_str());
  return 0;
}

std::string FileOf(const std::vector<LayerInfo>& layers, int position) {
  for (const auto& l : layers) {
    if (l.position == position) return l.path;
  }
  return "";
}

// As `qemu-img map --output=json`: depth counts from the top (0); an unallocated range has
// the depth of the bottom layer, the last one asked, as qemu-img gives for its chain.
void PrintMapJson(const std::vector<Extent>& extents, const std::vector<LayerInfo>& layers) {
  const int top = layers.back().position, bottom = layers.front().position;
  json out = json::array();
  for (const Extent& e : extents) {
    const bool present = e.layer >= 0;
    json j = {{"start", e.offset},          {"length", e.length},
              {"depth", top - (present ? e.layer : bottom)},
              {"present", present},         {"zero", e.zero},
              {"data", e.data},             {"layer", present ? json(e.layer) : json(nullptr)},
              {"file", present ? json(FileOf(layers, e.layer)) : json(nullptr)}};
    if (e.data && e.file_offset >= 0) j["offset"] = e.file_offset;
    out.push_back(j);
  }
  std::cout << out.dump(1) << "\n";
}

void PrintMapHuman(const std::vector<Extent>& extents, const std::vector<LayerInfo>& layers) {
  std::printf("%-18s %-18s %-6s %-11s %s\n", "Offset", "Length", "Layer", "Kind", "File");
  for (const Extent& e : extents) {
    const char* kind = e.layer < 0 ? "unallocated" : e.data ? "data" : "zero";
    std::printf("0x%-16llx 0x%-16llx %-6s %-11s %s\n",
                static_cast<unsigned long long>(e.offset),
                static_cast<unsigned long long>(e.length),
                e.layer < 0 ? "-" : std::to_string(e.layer).c_str(), kind,
                e.layer < 0 ? "" : FileOf(layers, e.layer).c_str());
  }
}

}  // namespace

int MapCommand(int argc, char** argv) {
  Args args;
  if (auto exit = ParseCommand(argc, argv, kMap, &args)) return *exit;
  const std::string top = args.positional[0];
  if (args.Has("--diff")) {
    if (auto s = CheckParents(args, top); !s.ok()) return Fail(kMap.name, s);
    return PrintDiff(top, args);
  }
  auto chain = Chain::Open(top, {.writable = false, .lock = false,
                                 .allowed_parent_dirs = AllowedParentDirs(args)});
  if (!chain.ok()) return Fail(kMap.name, chain.status());
  std::vector<Extent> extents;
  if (auto s = (*chain)->Extents(0, (*chain)->size(), &extents); !s.ok()) {
    return Fail(kMap.name, s);
  }
  if (args.Json()) {
    PrintMapJson(extents, (*chain)->Layers());
  } else {
    PrintMapHuman(extents, (*chain)->Layers());
  }
  return 0;
}

namespace {

// Exit statuses as qemu-img check's; a usage error is 1 too, so that 2 means only corruption.
constexpr int kCheckClean = 0, kCheckCouldNotCheck = 1, kCheckCorrupt = 2, kCheckRepairable = 3;

const CommandSpec kCheck{.name = "check",
                         .usage = R"(usage: strata check [--repair] [--quiet] [--output=human|json] LAYER

Verifies the chain topped by LAYER without trusting it: every header copy, checkpoint table and
journal checksum, index entry, slot claimed twice, leaked space, parent link, and what an
interrupted operation left. --repair fixes only what cannot lose data: it finishes or rolls
back interrupted operations, punches leaked space and rewrites a damaged header copy; it refuses
while the disk is served. A plain check of a served disk says its view may be stale.

Exit status, as qemu-img check's: 0 no problems, 1 the check could not run (a missing or
unreadable file, a bad command line), 2 problems (corruption), 3 only repairable findings.

  --repair              repair what is safe to repair
  --quiet               no "ok:" lines
  --output=human|json   the format (default human; --json is --output=json); JSON has
                        qemu-img's counts (corruptions, leaks = repairable findings,
                        leaks-fixed) and the findings themselves
  -h, --help            this text
)",
                         .args = {.flags = {"--repair", "--quiet"}},
                         .output = true,
                         .usage_exit = kCheckCouldNotCheck,
                         .positional = 1,
                         .follows_parents = true};

int CheckExit(const CheckReport& report) {
  if (!report.problems.empty()) return kCheckCorrupt;
  return report.repairable.empty() ? kCheckClean : kCheckRepairable;
}

void PrintCheckJson(const std::string& top, const CheckReport& report) {
  const json out = {{"filename", top},
                    {"format", "strata"},
                    {"check-errors", 0},
                    {"corruptions", report.problems.size()},
                    {"leaks", report.repairable.size()},
                    {"leaks-fixed", report.repaired.size()},
                    {"problems", report.problems},
                    {"repairable", report.repairable},
                    {"repaired", report.repaired},
                    {"notes", report.notes}};
  std::cout << out.dump(2) << "\n";
}

void PrintCheckHuman(const std::string& top, const CheckReport& report, bool quiet) {
  if (!quiet) {
    for (const auto& n : report.notes) std::printf("ok: %s\n", n.c_str());
  }
  for (const auto& r : report.repaired) std::printf("repaired: %s\n", r.c_str());
  for (const auto& r : report.repairable) {
    std::printf("repairable (run with --repair): %s\n", r.c_str());
  }
  for (const auto& p : report.problems) std::printf("error: %s\n", p.c_str());
  if (report.clean()) {
    std::printf("%s: no problems found\n", top.c_str());
  } else {
    std::printf("%s: %s, %zu repairable\n", top.c_str(),
                Count(report.problems.size(), "problem").c_str(), report.repairable.size());
  }
}

}  // namespace

int CheckCommand(int argc, char** argv) {
  Args args;
  if (auto exit = ParseCommand(argc, argv, kCheck, &args)) return *exit;
  const std::string top = args.positional[0];
  auto report = CheckChain(Env::Default(), top, args.Has("--repair"), AllowedParentDirs(args));
  if (!report.ok()) return Fail(kCheck.name, report.status());  // kCheckCouldNotCheck
  if (args.Json()) {
    PrintCheckJson(top, *report);
  } else {
    PrintCheckHuman(top, *report, args.Has("--quiet"));
  }
  return CheckExit(*report);
}

namespace {

const CommandSpec kExport{.name = "export",
                          .usage = R"(usage: strata export LAYER OUT.raw

Writes the disk topped by LAYER, flattened, to OUT.raw as a sparse raw file (zeros stay
holes), with a progress bar when stderr is a terminal. Takes shared locks: a served disk is
refused (export one of its snapshots instead).

  -h, --help   this text
)",
                          .positional = 2,
                          .follows_parents = true};

// Copies the data extents of `chain` into `fd` (`out_path` for messages).
absl::Status CopyData(const Chain& chain, int fd, const std::string& out_path) {
  const uint64_t size = chain.size();
  if (ftruncate(fd, static_cast<off_t>(size)) != 0) return ErrnoStatus(errno, "truncate", out_path);
  std::vector<Extent> extents;
  if (auto s = chain.Extents(0, size, &extents); !s.ok()) return s;
  std::string buf;
  ProgressBar bar("export");
  for (const Extent& e : extents) {
    if (!e.data) continue;  // zeros stay holes in the output
    for (uint64_t off = e.offset; off < e.offset + e.length;) {
      uint64_t n = std::min<uint64_t>(8 << 20, e.offset + e.length - off);
      buf.resize(n);
      if (auto s = chain.Read(off, absl::MakeSpan(buf.data(), n)); !s.ok()) return s;
      if (pwrite(fd, buf.data(), n, static_cast<off_t>(off)) != static_cast<ssize_t>(n)) {
        return ErrnoStatus(errno, "write", out_path, static_cast<int64_t>(off));
      }
      off += n;
      bar.Update(off, size);
    }
  }
  bar.Update(size, size);
  if (fsync(fd) != 0) return ErrnoStatus(errno, "fsync", out_path);
  return absl::OkStatus();
}

}  // namespace

int ExportCommand(int argc, char** argv) {
  Args args;
  if (auto exit = ParseCommand(argc, argv, kExport, &args)) return *exit;
  const std::string top = args.positional[0], out_path = args.positional[1];
  // Shared locks: a served disk (exclusive lock) cannot be exported inconsistently; export
  // its snapshot instead.
  auto chain = Chain::Open(top, {.writable = false, .allowed_parent_dirs = AllowedParentDirs(args)});
  if (!chain.ok()) return Fail(kExport.name, chain.status());
  int fd = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Fail(kExport.name, ErrnoStatus(errno, "create", out_path));
  absl::Status s = CopyData(**chain, fd, out_path);
  close(fd);
  if (!s.ok()) return Fail(kExport.name, s);
  std::printf("exported %s (%s) to %s\n", top.c_str(), HumanBytes((*chain)->size()).c_str(),
              out_path.c_str());
  return 0;
}

namespace {

const CommandSpec kRebase{.name = "rebase",
                          .usage = R"(usage: strata rebase -u -b NEW_PARENT [-F raw|strata] LAYER

After a chain's files moved, points LAYER (active or frozen) at its parent's new path without
touching data, like `qemu-img rebase -u`. Checked: NEW_PARENT must be the parent LAYER's header
names (the same size, and for a strata parent the same UUID), else refused with what differs.
Offline: takes LAYER's exclusive lock (a served disk is refused). Fix a chain top-down or
bottom-up, one link per layer; `strata info` shows when the chain opens again.

  -u, --unsafe               only the link changes (required: strata never copies in a rebase)
  -b, --backing NEW_PARENT   the parent's new path (relative: to LAYER's directory)
  -F, --backing-format FMT   raw or strata (default: the format LAYER records)
  -h, --help                 this text
)",
                          .args = {.flags = {"--unsafe"},
                                   .valued = {"--backing", "--backing-format"},
                                   .aliases = {{"-u", "--unsafe"},
                                               {"-b", "--backing"},
                                               {"-F", "--backing-format"}}},
                          .positional = 1,
                          .follows_parents = true};

}  // namespace

int RebaseCommand(int argc, char** argv) {
  Args args;
  if (auto exit = ParseCommand(argc, argv, kRebase, &args)) return *exit;
  if (!args.Has("--unsafe")) {
    return UsageError(kRebase, "only -u is supported: it fixes a moved parent's path, and "
                               "strata never copies data to change a parent");
  }
  if (!args.Has("--backing")) return UsageError(kRebase, "-b NEW_PARENT is required");
  RebaseOptions options{.parent = args.Get("--backing")};
  if (args.Has("--backing-format")) {
    if (auto s = ParseParentFormat(args.Get("--backing-format"), &options.parent_format);
        !s.ok()) {
      return UsageError(kRebase, s.message());
    }
  }
  const std::string layer = args.positional[0];
  auto header = RebaseLayer(layer, options);
  if (!header.ok()) return Fail(kRebase.name, header.status());
  NoteUntrustedParent(kRebase, args, layer);
  std::printf("%s now links to its %s parent %s\n", layer.c_str(),
              std::string(Name(header->parent_format)).c_str(), header->parent_path.c_str());
  return 0;
}

namespace {

const CommandSpec kSnapshot{.name = "snapshot",
                            .usage = R"(usage: strata snapshot LAYER NAME
       strata snapshot --control SOCKET [--json] NAME

Offline: freezes LAYER's content as snapshot NAME (LAYER's stem@NAME.strata beside it); LAYER
becomes a new empty layer on it. Live (--control): the same on a served disk, through its
server's control socket, while clients keep writing.

  --control SOCKET   the server's control socket (default <layer stem>.ctl beside the layer)
  --json             the server's reply as JSON (live only)
  -h, --help         this text
)",
                            .args = {.flags = {"--json"}, .valued = {"--control"}},
                            .follows_parents = true};

}  // namespace

int SnapshotCommand(int argc, char** argv) {
  Args args;
  if (auto exit = ParseCommand(argc, argv, kSnapshot, &args)) return *exit;
  if (args.Has("--control") && args.positional.size() == 1) {
    return LiveSnapshotCommand(args.Get("--control"), args.positional[0], args.Has("--json"));
  }
  if (args.positional.size() != 2) return UsageError(kSnapshot);
  const std::string top = args.positional[0];
  if (auto s = CheckParents(args, top); !s.ok()) return Fail(kSnapshot.name, s);
  if (auto s = RecoverFirst(Env::Default(), top); !s.ok()) return Fail(kSnapshot.name, s);
  auto chain = Chain::Open(top, {.allowed_parent_dirs = AllowedParentDirs(args)});
  if (!chain.ok()) return Fail(kSnapshot.name, chain.status());
  auto result = (*chain)->Snapshot(args.positional[1]);
  if (!result.ok()) return Fail(kSnapshot.name, result.status());
  std::printf("snapshot '%s' of %s frozen as %s\n", args.positional[1].c_str(), top.c_str(),
              result->frozen_path.c_str());
  return 0;
}

namespace {

const CommandSpec kCommit{.name = "commit",
                          .usage = R"(usage: strata commit [--resume] LAYER
       strata commit --into-base [--drop] LAYER
       strata commit --control SOCKET [--no-wait] [--rate-limit BYTES] [--json] [LAYER]

Merges LAYER into its parent snapshot, crash-safe (a merge interrupted at any instant is
finished by the next command that changes the disk). Refuses while the disk is served, or
when the parent has other children (a branch would silently change).
--into-base: writes LAYER, the lowest layer of a disk on a raw base, into the raw file (as
`qemu-img commit` does; zeroed ranges are punched, the base stays sparse), crash-safe too.
An active LAYER is left as a new empty layer on the base (or removed with --drop: the raw
file alone is the disk); a snapshot's child is linked to the base and the snapshot removed.
Refuses when the base is read-only, in use, smaller than LAYER's data, or has other layers
on it (another disk would change).
Live (--control): the same on a served disk while clients keep writing: the parent's data is
copied up into LAYER (default: the active layer) and the parent removed (see delete-snapshot).

  --resume            only finish an interrupted operation, from whichever directory
  --into-base         commit into the raw base file instead of a strata parent
  --drop              with --into-base, an active LAYER: remove it instead of emptying it
  --control SOCKET    the server's control socket (default <layer stem>.ctl beside the layer)
  --no-wait           return once the merge started (`strata list --control` follows it)
  --rate-limit BYTES  copy at most BYTES per second (K, M, G suffixes)
  --json              print the job's final state as JSON
  -h, --help          this text
)",
                          .args = {.flags = {"--resume", "--no-wait", "--json", "--into-base", "--drop"},
                                   .valued = {"--control", "--rate-limit"}},
                          .follows_parents = true};

// `delete-snapshot --control` and `commit --control`: the live form.
int LiveMerge(const Args& args, nlohmann::json request, const CommandSpec& spec) {
  if (args.Has("--rate-limit")) {
    auto rate = ParseSize(args.Get("--rate-limit"));
    if (!rate.ok()) return Fail(spec.name, rate.status());
    request["rate_limit"] = *rate;
  }
  return LiveMergeCommand(args.Get("--control"), request,
                          {.no_wait = args.Has("--no-wait"), .json = args.Has("--json")});
}

}  // namespace

namespace {

// `commit --into-base`, after recovery.
int CommitIntoBaseCommand(const std::string& layer, bool drop) {
  auto header = ReadLayerHeader(Env::Default(), layer);
  if (!header.ok()) return Fail(kCommit.name, header.status());
  ProgressBar bar("commit");
  auto result = CommitIntoBase(
      Env::Default(), layer,
      {.drop = drop, .progress = [&](uint64_t d, uint64_t t) { bar.Update(d, t); }});
  bar.Finish();
  if (!result.ok()) return Fail(kCommit.name, result.status());
  const char* now = drop ? "removed: the raw base alone is the disk"
                    : header->state == LayerState::kActive
                        ? "now an empty layer on it"
                        : "removed: its child stands on the base";
  std::printf("committed %s (%s of data) into its raw base %s; %s %s\n", layer.c_str(),
              HumanBytes(result->bytes_copied).c_str(), result->merged_into.c_str(),
              layer.c_str(), now);
  return 0;
}

}  // namespace

int CommitCommand(int argc, char** argv) {
  Args args;
  if (auto exit = ParseCommand(argc, argv, kCommit, &args)) return *exit;
  if (args.Has("--control") && args.positional.size() <= 1) {
    nlohmann::json request = {{"request", "commit"}};
    if (!args.positional.empty()) request["layer"] = args.positional[0];
    return LiveMerge(args, request, kCommit);
  }
  if (args.positional.size() != 1) return UsageError(kCommit);
  if (args.Has("--drop") && !args.Has("--into-base")) {
    return UsageError(kCommit, "--drop goes with --into-base");
  }
  if (args.Has("--into-base") && args.Has("--control")) {
    return UsageError(kCommit, "--into-base is offline only");
  }
  const std::string layer = args.positional[0];
  if (auto s = CheckParents(args, layer); !s.ok()) return Fail(kCommit.name, s);
  if (auto s = RecoverFirst(Env::Default(), layer); !s.ok()) return Fail(kCommit.name, s);
  if (args.Has("--resume")) {
    std::printf("%s: no interrupted operation left\n", layer.c_str());
    return 0;
  }
  if (args.Has("--into-base")) return CommitIntoBaseCommand(layer, args.Has("--drop"));
  ProgressBar bar("commit");
  auto result = CommitLayer(Env::Default(), layer, [&](uint64_t d, uint64_t t) { bar.Update(d, t); });
  bar.Finish();
  if (!result.ok()) return Fail(kCommit.name, result.status());
  std::printf("committed %s (%s of data) into its parent, now %s\n", layer.c_str(),
              HumanBytes(result->bytes_copied).c_str(), result->merged_into.c_str());
  return 0;
}

namespace {

const CommandSpec kDeleteSnapshot{.name = "delete-snapshot",
                                  .usage = R"(usage: strata delete-snapshot LAYER NAME
       strata delete-snapshot --control SOCKET [--no-wait] [--rate-limit BYTES] [--json] NAME

Deletes snapshot NAME of the disk topped by LAYER by merging the layer above it into it,
crash-safe; the disk's path never changes. Refuses while the disk is served, or when the
snapshot has other children (a branch would silently change: `strata tree LAYER` shows them).
A snapshot off LAYER's chain (one a revert left behind, see `strata tree`) is deleted
whether the disk is served or not: removed when nothing stands on it, else the one layer on
it is merged into it. Its name is free again afterwards.
Live (--control): deletes snapshot NAME of a served disk while clients keep reading and
writing. What NAME holds and the layer above lacks is copied up into that layer, which is then
linked past NAME; NAME's file goes. Any snapshot can be deleted, the newest too. Killed or
powered off at any instant, the next `strata serve` resumes it; clients reading @NAME keep
reading it until they disconnect, new ones are refused.

  --control SOCKET    the server's control socket (default <layer stem>.ctl beside the layer)
  --no-wait           return once the deletion started (`strata list --control` follows it)
  --rate-limit BYTES  copy at most BYTES per second (K, M, G suffixes)
  --json              print the job's final state as JSON
  -h, --help          this text
)",
                                  .args = {.flags = {"--no-wait", "--json"},
                                           .valued = {"--control", "--rate-limit"}},
                                  .follows_parents = true};

}  // namespace

namespace {

int DeleteOffChain(const std::string& top, const std::string& name) {
  ProgressBar bar("merge");
  auto done = DeleteOffChainSnapshot(Env::Default(), top, name,
                                     [&](uint64_t d, uint64_t t) { bar.Update(d, t); });
  bar.Finish();
  if (!done.ok()) return Fail(kDeleteSnapshot.name, done.status());
  if (done->merged_into.empty()) {
    std::printf("deleted snapshot '%s' (%s, off the chain of %s)\n", name.c_str(),
                done->path.c_str(), top.c_str());
  } else {
    std::printf("deleted snapshot '%s' (off the chain of %s): merged %s of data into %s\n",
                name.c_str(), top.c_str(), HumanBytes(done->bytes_copied).c_str(),
                done->merged_into.c_str());
  }
  return 0;
}

}  // namespace

int DeleteSnapshotCommand(int argc, char** argv) {
  Args args;
  if (auto exit = ParseCommand(argc, argv, kDeleteSnapshot, &args)) return *exit;
  if (args.Has("--control") && args.positional.size() == 1) {
    return LiveMerge(args, {{"request", "delete-snapshot"}, {"name", args.positional[0]}},
                     kDeleteSnapshot);
  }
  if (args.positional.size() != 2) return UsageError(kDeleteSnapshot);
  const std::string top = args.positional[0];
  if (auto s = CheckParents(args, top); !s.ok()) return Fail(kDeleteSnapshot.name, s);
  // Off the chain nothing of the disk changes: no need to hold (or recover) its chain, and
  // a served disk's dead branches go the same way.
  if (IsOffChainSnapshot(Env::Default(), top, args.positional[1])) {
    return DeleteOffChain(top, args.positional[1]);
  }
  if (auto s = RecoverFirst(Env::Default(), top); !s.ok()) return Fail(kDeleteSnapshot.name, s);
  ProgressBar bar("merge");
  auto result = DeleteSnapshot(Env::Default(), top, args.positional[1],
                               [&](uint64_t d, uint64_t t) { bar.Update(d, t); });
  bar.Finish();
  if (!result.ok()) return Fail(kDeleteSnapshot.name, result.status());
  std::printf("deleted snapshot '%s': merged %s of data into %s\n", args.positional[1].c_str(),
              HumanBytes(result->bytes_copied).c_str(), result->merged_into.c_str());
  return 0;
}

namespace {

const CommandSpec kCancel{.name = "cancel",
                          .usage = R"(usage: strata cancel --control SOCKET

Stops the snapshot deletion (delete-snapshot or commit --control) a server runs, or gives up
one that failed: the snapshot stays as it was, and the disk reads as before.

  --control SOCKET   the server's control socket (default <layer stem>.ctl beside the layer)
  -h, --help         this text
)",
                          .args = {.valued = {"--control"}}};

}  // namespace

int CancelCommand(int argc, char** argv) {
  Args args;
  if (auto exit = ParseCommand(argc, argv, kCancel, &args)) return *exit;
  if (!args.Has("--control") || !args.positional.empty()) return UsageError(kCancel);
  return LiveCancelCommand(args.Get("--control"));
}

namespace {

const CommandSpec kRevert{.name = "revert",
                          .usage = R"(usage: strata revert LAYER [SNAPSHOT]
       strata revert --control SOCKET [SNAPSHOT]

Discards the changes since LAYER's parent snapshot (or since snapshot SNAPSHOT, dropping the
snapshots above it). Live (--control): the same on a served disk with no client connected.
A revert that fails says why and changes nothing: the disk stays as it was (and served).

  --control SOCKET   the server's control socket (default <layer stem>.ctl beside the layer)
  -h, --help         this text
)",
                          .args = {.valued = {"--control"}},
                          .follows_parents = true};

}  // namespace

int RevertCommand(int argc, char** argv) {
  Args args;
  if (auto exit = ParseCommand(argc, argv, kRevert, &args)) return *exit;
  if (args.Has("--control") && args.positional.size() <= 1) {
    return LiveRevertCommand(args.Get("--control"),
                             args.positional.empty() ? "" : args.positional[0]);
  }
  if (args.positional.empty() || args.positional.size() > 2) return UsageError(kRevert);
  const std::string top = args.positional[0];
  std::string snapshot = args.positional.size() == 2 ? args.positional[1] : "";
  if (auto s = CheckParents(args, top); !s.ok()) return Fail(kRevert.name, s);
  if (auto s = RecoverFirst(Env::Default(), top); !s.ok()) return Fail(kRevert.name, s);
  if (auto s = Revert(Env::Default(), top, snapshot); !s.ok()) return Fail(kRevert.name, s);
  std::printf("reverted %s to %s\n", top.c_str(),
              snapshot.empty() ? "its parent" : absl::StrCat("snapshot '", snapshot, "'").c_str());
  return 0;
}

}  // namespace strata::cli
