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
#include "blockstore/commit.h"
#include "blockstore/diff.h"
#include "blockstore/file.h"
#include "blockstore/layer.h"
#include "blockstore/recovery.h"
#include "cli/args.h"
#include "cli/control_client.h"
#include "cli/progress.h"
#include "nlohmann/json.hpp"

namespace strata::cli {
namespace {

using json = nlohmann::json;

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "strata: %s\n", std::string(status.message()).c_str());
  return 1;
}

int Usage(const char* text) {
  std::fprintf(stderr, "usage: %s\n", text);
  return 2;
}

std::string TimeString(int64_t ns) {
  if (ns == 0) return "";
  time_t t = static_cast<time_t>(ns / 1000000000);
  char buf[64];
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// Finishes or rolls back every interrupted operation (recovery.h), and says so, before a
// command that changes the chain; the blockstore call that follows recovers too, but finds
// nothing left. Read-only commands do not: they must never race a running merge or server.
absl::Status RecoverFirst(Env* env, const std::string& top) {
  ProgressBar bar("resume commit");
  LockSet locks;
  auto recovered =
      RecoverChain(env, top, &locks, [&](uint64_t d, uint64_t t) { bar.Update(d, t); });
  if (!recovered.ok()) return recovered.status();
  if (!recovered->empty()) std::fprintf(stderr, "strata: %s", recovered->c_str());
  return absl::OkStatus();
}

}  // namespace

int CreateCommand(int argc, char** argv) {
  constexpr char kUsage[] =
      "strata create (--size SIZE | -b PARENT -F raw|strata) [--cluster-size SIZE] "
      "[--sub-block-size SIZE] LAYER";
  auto args = Parse(argc, argv, 2,
                    {.valued = {"--size", "--backing", "--backing-format", "--cluster-size",
                                "--sub-block-size"},
                     .aliases = {{"-b", "--backing"}, {"-F", "--backing-format"},
                                 {"-s", "--size"}}});
  if (!args.ok()) return Fail(args.status());
  if (args->positional.size() != 1 || args->Has("--size") == args->Has("--backing")) {
    return Usage(kUsage);
  }
  CreateOptions options;
  for (auto [option, field] : {std::pair{"--cluster-size", &options.cluster_size},
                               std::pair{"--sub-block-size", &options.sub_block_size}}) {
    if (!args->Has(option)) continue;
    auto v = ParseSize(args->Get(option));
    if (!v.ok()) return Fail(v.status());
    *field = static_cast<uint32_t>(*v);
  }
  if (args->Has("--size")) {
    auto size = ParseSize(args->Get("--size"));
    if (!size.ok()) return Fail(size.status());
    options.size = *size;
  } else {
    options.parent = args->Get("--backing");
    if (!args->Has("--backing-format")) {
      return Fail(absl::InvalidArgumentError(
          "-F raw|strata is required with -b: strata never guesses a parent's format"));
    }
    if (auto s = ParseParentFormat(args->Get("--backing-format"), &options.parent_format);
        !s.ok()) {
      return Fail(s);
    }
  }
  auto header = CreateLayer(args->positional[0], options);
  if (!header.ok()) return Fail(header.status());
  if (options.parent_format == ParentFormat::kStrata) {
    // So that a merge into the parent finds this branch and refuses to change it.
    const std::string parent = ResolvePath(DirName(args->positional[0]), options.parent);
    if (auto s = RecordBranchDir(Env::Default(), parent, args->positional[0]); !s.ok()) {
      return Fail(s);
    }
  }
  std::printf("created %s: %s, cluster %s, sub-block %s%s\n", args->positional[0].c_str(),
              HumanBytes(header->virtual_size).c_str(), HumanBytes(header->cluster_size).c_str(),
              HumanBytes(header->sub_block_size).c_str(),
              options.parent.empty() ? ""
                                     : absl::StrCat(", on ", Name(options.parent_format), " ",
                                                    options.parent).c_str());
  return 0;
}

int InfoCommand(int argc, char** argv) {
  auto args = Parse(argc, argv, 2, {.flags = {"--json"}});
  if (!args.ok()) return Fail(args.status());
  if (args->positional.size() != 1) return Usage("strata info [--json] LAYER");
  const std::string top = args->positional[0];
  auto chain = Chain::Open(top, {.writable = false, .lock = false});
  if (!chain.ok()) return Fail(chain.status());
  auto layers = (*chain)->Layers();
  if (args->Has("--json")) {
    json out = {{"virtual_size", (*chain)->size()},
                {"cluster_size", (*chain)->cluster_size()},
                {"sub_block_size", (*chain)->sub_block_size()},
                {"layers", json::array()}};
    for (auto it = layers.rbegin(); it != layers.rend(); ++it) {
      json l = {{"position", it->position}, {"file", it->path},
                {"allocated_bytes", it->allocated_bytes}, {"file_bytes", it->file_bytes}};
      if (it->is_raw_base) {
        l["format"] = "raw";
      } else {
        l["format"] = "strata";
        l["uuid"] = UuidToString(it->header.uuid);
        l["state"] = std::string(Name(it->header.state));
        l["snapshot"] = it->header.snapshot_name;
        l["created"] = TimeString(it->header.created_ns);
        l["frozen"] = TimeString(it->header.frozen_ns);
        if (it->header.parent_format != ParentFormat::kNone) {
          l["parent"] = it->header.parent_path;
          l["parent_format"] = std::string(Name(it->header.parent_format));
        }
      }
      out["layers"].push_back(l);
    }
    std::cout << out.dump(2) << "\n";
    return 0;
  }
  std::printf("disk: %s (%llu bytes), cluster %s, sub-block %s, %zu layers (top first)\n",
              HumanBytes((*chain)->size()).c_str(),
              static_cast<unsigned long long>((*chain)->size()),
              HumanBytes((*chain)->cluster_size()).c_str(),
              HumanBytes((*chain)->sub_block_size()).c_str(), layers.size());
  for (auto it = layers.rbegin(); it != layers.rend(); ++it) {
    if (it->is_raw_base) {
      std::printf("  [%d] %s  raw base, %s on disk\n", it->position, it->path.c_str(),
                  HumanBytes(it->file_bytes).c_str());
      continue;
    }
    const LayerHeader& h = it->header;
    std::string state(Name(h.state));
    if (!h.snapshot_name.empty()) absl::StrAppend(&state, " snapshot '", h.snapshot_name, "'");
    if (h.frozen_ns) absl::StrAppend(&state, " at ", TimeString(h.frozen_ns));
    std::printf("  [%d] %s  %s\n      uuid %s, data %s, file %s on disk, created %s\n",
                it->position, it->path.c_str(), state.c_str(), UuidToString(h.uuid).c_str(),
                HumanBytes(it->allocated_bytes).c_str(), HumanBytes(it->file_bytes).c_str(),
                TimeString(h.created_ns).c_str());
  }
  return 0;
}

// `map --diff FROM [--to TO]`: the ranges that changed between two snapshots.
int PrintDiff(const std::string& top, const Args& args) {
  auto ranges = ChangedRanges(Env::Default(), top, args.Get("--diff"), args.Get("--to"));
  if (!ranges.ok()) return Fail(ranges.status());
  if (args.Has("--json")) {
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

int MapCommand(int argc, char** argv) {
  auto args = Parse(argc, argv, 2, {.flags = {"--json"}, .valued = {"--diff", "--to"}});
  if (!args.ok()) return Fail(args.status());
  if (args->positional.size() != 1) {
    return Usage("strata map [--json] [--diff SNAPSHOT [--to SNAPSHOT]] LAYER");
  }
  const std::string top = args->positional[0];
  if (args->Has("--diff")) return PrintDiff(top, *args);
  auto chain = Chain::Open(top, {.writable = false, .lock = false});
  if (!chain.ok()) return Fail(chain.status());
  std::vector<Extent> extents;
  if (auto s = (*chain)->Extents(0, (*chain)->size(), &extents); !s.ok()) return Fail(s);
  auto layers = (*chain)->Layers();
  int top_position = layers.back().position;
  auto file_of = [&](int position) -> std::string {
    for (const auto& l : layers) {
      if (l.position == position) return l.path;
    }
    return "";
  };
  if (args->Has("--json")) {
    // Field names as `qemu-img map --output=json`; depth 0 is the top layer.
    json out = json::array();
    for (const Extent& e : extents) {
      json j = {{"start", e.offset}, {"length", e.length}, {"data", e.data}, {"zero", e.zero},
                {"present", e.layer >= 0}, {"layer", e.layer}};
      if (e.layer >= 0) {
        j["depth"] = top_position - e.layer;
        j["file"] = file_of(e.layer);
      }
      out.push_back(j);
    }
    std::cout << out.dump(1) << "\n";
    return 0;
  }
  std::printf("%-18s %-18s %-6s %-11s %s\n", "Offset", "Length", "Layer", "Kind", "File");
  for (const Extent& e : extents) {
    const char* kind = e.layer < 0 ? "unallocated" : e.data ? "data" : "zero";
    std::printf("0x%-16llx 0x%-16llx %-6s %-11s %s\n",
                static_cast<unsigned long long>(e.offset),
                static_cast<unsigned long long>(e.length),
                e.layer < 0 ? "-" : std::to_string(e.layer).c_str(), kind,
                e.layer < 0 ? "" : file_of(e.layer).c_str());
  }
  return 0;
}

int CheckCommand(int argc, char** argv) {
  auto args = Parse(argc, argv, 2, {.flags = {"--repair", "--quiet"}});
  if (!args.ok()) return Fail(args.status());
  if (args->positional.size() != 1) return Usage("strata check [--repair] [--quiet] LAYER");
  auto report = CheckChain(Env::Default(), args->positional[0], args->Has("--repair"));
  if (!report.ok()) return Fail(report.status());
  if (!args->Has("--quiet")) {
    for (const auto& n : report->notes) std::printf("ok: %s\n", n.c_str());
  }
  for (const auto& r : report->repaired) std::printf("repaired: %s\n", r.c_str());
  for (const auto& r : report->repairable) {
    std::printf("repairable (run with --repair): %s\n", r.c_str());
  }
  for (const auto& p : report->problems) std::printf("error: %s\n", p.c_str());
  if (report->clean()) {
    std::printf("%s: no problems found\n", args->positional[0].c_str());
    return 0;
  }
  std::printf("%s: %zu problems, %zu repairable\n", args->positional[0].c_str(),
              report->problems.size(), report->repairable.size());
  return report->problems.empty() ? 4 : 3;
}

int ExportCommand(int argc, char** argv) {
  auto args = Parse(argc, argv, 2, {});
  if (!args.ok()) return Fail(args.status());
  if (args->positional.size() != 2) return Usage("strata export LAYER OUT.raw");
  const std::string top = args->positional[0], out_path = args->positional[1];
  // Shared locks: a served disk (exclusive lock) cannot be exported inconsistently; export
  // its snapshot instead.
  auto chain = Chain::Open(top, {.writable = false});
  if (!chain.ok()) return Fail(chain.status());
  int fd = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Fail(ErrnoStatus(errno, "create", out_path));
  const uint64_t size = (*chain)->size();
  absl::Status s;
  if (ftruncate(fd, static_cast<off_t>(size)) != 0) s = ErrnoStatus(errno, "truncate", out_path);
  std::vector<Extent> extents;
  if (s.ok()) s = (*chain)->Extents(0, size, &extents);
  std::string buf;
  ProgressBar bar("export");
  for (const Extent& e : extents) {
    if (!s.ok()) break;
    if (!e.data) continue;  // zeros stay holes in the output
    for (uint64_t off = e.offset; off < e.offset + e.length && s.ok();) {
      uint64_t n = std::min<uint64_t>(8 << 20, e.offset + e.length - off);
      buf.resize(n);
      s = (*chain)->Read(off, absl::MakeSpan(buf.data(), n));
      if (s.ok() && pwrite(fd, buf.data(), n, static_cast<off_t>(off)) != static_cast<ssize_t>(n)) {
        s = ErrnoStatus(errno, "write", out_path, static_cast<int64_t>(off));
      }
      off += n;
      bar.Update(off, size);
    }
  }
  if (s.ok() && fsync(fd) != 0) s = ErrnoStatus(errno, "fsync", out_path);
  close(fd);
  if (!s.ok()) return Fail(s);
  bar.Update(size, size);
  std::printf("exported %s (%s) to %s\n", top.c_str(), HumanBytes(size).c_str(),
              out_path.c_str());
  return 0;
}

int SnapshotCommand(int argc, char** argv) {
  auto args = Parse(argc, argv, 2, {.flags = {"--json"}, .valued = {"--control"}});
  if (!args.ok()) return Fail(args.status());
  if (args->Has("--control") && args->positional.size() == 1) {
    return LiveSnapshotCommand(args->Get("--control"), args->positional[0], args->Has("--json"));
  }
  if (args->positional.size() != 2) {
    return Usage("strata snapshot LAYER NAME | strata snapshot --control SOCKET NAME");
  }
  const std::string top = args->positional[0];
  if (auto s = RecoverFirst(Env::Default(), top); !s.ok()) return Fail(s);
  auto chain = Chain::Open(top);
  if (!chain.ok()) return Fail(chain.status());
  auto result = (*chain)->Snapshot(args->positional[1]);
  if (!result.ok()) return Fail(result.status());
  std::printf("snapshot '%s' of %s frozen as %s\n", args->positional[1].c_str(), top.c_str(),
              result->frozen_path.c_str());
  return 0;
}

int CommitCommand(int argc, char** argv) {
  auto args = Parse(argc, argv, 2, {.flags = {"--resume"}});
  if (!args.ok()) return Fail(args.status());
  if (args->positional.size() != 1) return Usage("strata commit [--resume] LAYER");
  const std::string layer = args->positional[0];
  if (auto s = RecoverFirst(Env::Default(), layer); !s.ok()) return Fail(s);
  if (args->Has("--resume")) {
    std::printf("%s: no interrupted operation left\n", layer.c_str());
    return 0;
  }
  ProgressBar bar("commit");
  auto result = CommitLayer(Env::Default(), layer, [&](uint64_t d, uint64_t t) { bar.Update(d, t); });
  if (!result.ok()) return Fail(result.status());
  std::printf("committed %s (%s of data) into its parent, now %s\n", layer.c_str(),
              HumanBytes(result->bytes_copied).c_str(), result->merged_into.c_str());
  return 0;
}

int DeleteSnapshotCommand(int argc, char** argv) {
  auto args = Parse(argc, argv, 2, {});
  if (!args.ok()) return Fail(args.status());
  if (args->positional.size() != 2) return Usage("strata delete-snapshot LAYER NAME");
  const std::string top = args->positional[0];
  if (auto s = RecoverFirst(Env::Default(), top); !s.ok()) return Fail(s);
  ProgressBar bar("merge");
  auto result = DeleteSnapshot(Env::Default(), top, args->positional[1],
                               [&](uint64_t d, uint64_t t) { bar.Update(d, t); });
  if (!result.ok()) return Fail(result.status());
  std::printf("deleted snapshot '%s': merged %s of data into %s\n", args->positional[1].c_str(),
              HumanBytes(result->bytes_copied).c_str(), result->merged_into.c_str());
  return 0;
}

int RevertCommand(int argc, char** argv) {
  auto args = Parse(argc, argv, 2, {.valued = {"--control"}});
  if (!args.ok()) return Fail(args.status());
  if (args->Has("--control") && args->positional.size() <= 1) {
    return LiveRevertCommand(args->Get("--control"),
                             args->positional.empty() ? "" : args->positional[0]);
  }
  if (args->positional.empty() || args->positional.size() > 2) {
    return Usage("strata revert LAYER [SNAPSHOT]");
  }
  const std::string top = args->positional[0];
  std::string snapshot = args->positional.size() == 2 ? args->positional[1] : "";
  if (auto s = RecoverFirst(Env::Default(), top); !s.ok()) return Fail(s);
  if (auto s = Revert(Env::Default(), top, snapshot); !s.ok()) return Fail(s);
  std::printf("reverted %s to %s\n", top.c_str(),
              snapshot.empty() ? "its parent" : absl::StrCat("snapshot '", snapshot, "'").c_str());
  return 0;
}

}  // namespace strata::cli
