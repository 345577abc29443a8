// strata: serve a layered virtual disk over NBD, and manage its layers offline.
#include <cstdio>
#include <cstring>

#include "blockstore/format.h"
#include "cli/backup_command.h"
#include "cli/bench_command.h"
#include "cli/control_client.h"
#include "cli/convert_command.h"
#include "cli/offline_commands.h"
#include "cli/resize_command.h"
#include "cli/serve_command.h"

// Set by cli/CMakeLists.txt at configure time; a build without CMake still compiles.
#ifndef STRATA_VERSION
#define STRATA_VERSION "unknown"
#endif
#ifndef STRATA_GIT_REVISION
#define STRATA_GIT_REVISION "unknown"
#endif
// CMAKE_BUILD_TYPE: `strata bench` warns when the binary it measures was built without
// optimization ("Debug", or "none" for an empty build type).
#ifndef STRATA_BUILD_TYPE
#define STRATA_BUILD_TYPE "unknown"
#endif

namespace {

constexpr char kHelp[] = R"(strata - a layered copy-on-write virtual disk served over NBD

usage: strata COMMAND [options] ARGS
       strata COMMAND --help | strata help COMMAND    one command's usage and options
       strata --version                               version, git revision, build type,
                                                      layer format

Serving:
  serve [options] LAYER                  serve the chain topped by LAYER over NBD
Live, through a server's control socket (default <layer stem>.ctl beside the layer):
  snapshot --control SOCKET NAME         atomic snapshot while clients keep writing
  list --control SOCKET | LAYER         layers: snapshots, files, sizes, ages
  stats --control SOCKET | LAYER        requests, latency, ENOSPC, snapshot pauses, connections
  revert --control SOCKET [NAME]         go back to the parent (or NAME); no client connected
  delete-snapshot --control SOCKET NAME  delete any snapshot while clients keep writing
  commit --control SOCKET [LAYER]        merge LAYER's parent into it (default: the active layer)
  cancel --control SOCKET                stop a running deletion; the snapshot stays
Layers (offline, like qemu-img):
  create --size SIZE LAYER               a new empty disk with no base
  create -b PARENT -F raw|strata LAYER   a new active layer on a raw base or a frozen snapshot
  info LAYER                             the chain: files, UUIDs, states, snapshots, sizes
  map LAYER                              which layer holds which range (like qemu-img map)
  map --diff SNAP [--to SNAP2] LAYER     ranges changed since snapshot SNAP (incremental backup)
  check [--repair] LAYER                 verify checksums, index, links; repair leaks
                                         (exit 0 clean, 1 could not check, 2 corrupt,
                                         3 only repairable findings, as qemu-img check)
  export LAYER OUT.raw                   the flattened disk as a sparse raw file
  backup [--from SNAP1] --to SNAP2 LAYER OUT  full or incremental backup of a snapshot into
                                         a raw file (live through @SNAP2, or offline)
  snapshot LAYER NAME                    freeze LAYER as snapshot NAME, new empty layer on top
  commit [--resume] LAYER                merge LAYER into its parent (crash-safe)
  commit --into-base [--drop] LAYER      write the lowest LAYER into the raw base file
  delete-snapshot LAYER NAME             delete snapshot NAME by merging (crash-safe), or
                                         one a revert left off the chain (`tree`)
  revert LAYER [SNAPSHOT]                discard changes since the parent (or SNAPSHOT)
  resize LAYER [+]SIZE                   grow the disk to SIZE, or by +SIZE (offline)
  rebase -u -b NEW_PARENT LAYER          fix LAYER's parent path after moving a chain (checked)
  tree LAYER                             every snapshot and branch, on the chain or off it
Disks in and out (with qemu-img; holes and zeros stay sparse):
  convert SRC DST.strata                 import a qcow2, VHDX, VMDK, VDI, VHD or raw image
  convert -O FMT LAYER OUT               export the disk topped by LAYER as qcow2, vmdk, ...
Measuring:
  bench [--quick] [options]              copy-on-write overhead beside qemu-nbd, nbdkit, qcow2
                                         and the device: report.md, results.json, charts

info, map, check, tree, list, stats and backup take --output=human|json (--json is --output=json).
)";

struct Command {
  const char* name;
  int (*run)(int, char**);
};

constexpr Command kCommands[] = {
    {"serve", strata::cli::ServeCommand},
    {"create", strata::cli::CreateCommand},     {"info", strata::cli::InfoCommand},
    {"map", strata::cli::MapCommand},           {"check", strata::cli::CheckCommand},
    {"export", strata::cli::ExportCommand},     {"snapshot", strata::cli::SnapshotCommand},
    {"commit", strata::cli::CommitCommand},     {"revert", strata::cli::RevertCommand},
    {"delete-snapshot", strata::cli::DeleteSnapshotCommand},
    {"cancel", strata::cli::CancelCommand},     {"rebase", strata::cli::RebaseCommand},
    {"convert", strata::cli::ConvertCommand},   {"tree", strata::cli::TreeCommand},
    {"backup", strata::cli::BackupCommand},
    {"resize", strata::cli::ResizeCommand},
    {"list", strata::cli::ListCommand},         {"stats", strata::cli::StatsCommand},
    {"bench", strata::cli::BenchCommand},
};

const Command* Find(const char* name) {
  for (const Command& c : kCommands) {
    if (!std::strcmp(name, c.name)) return &c;
  }
  std::fprintf(stderr, "strata: unknown command '%s' (strata --help lists them)\n", name);
  return nullptr;
}

int Version() {
  std::printf("strata %s (git %s, %s build), layer format version %u\n", STRATA_VERSION,
              STRATA_GIT_REVISION, STRATA_BUILD_TYPE, strata::kFormatVersion);
  return 0;
}

// `strata help CMD` is `strata CMD --help`: each command owns its usage text.
int Help(const char* name) {
  const Command* c = Find(name);
  if (c == nullptr) return 2;
  char strata[] = "strata", help[] = "--help";
  char* argv[] = {strata, const_cast<char*>(c->name), help, nullptr};
  return c->run(3, argv);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fputs(kHelp, stderr);
    return 2;
  }
  if (!std::strcmp(argv[1], "--version") || !std::strcmp(argv[1], "-V")) return Version();
  if (!std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") ||
      !std::strcmp(argv[1], "help")) {
    if (argc >= 3 && !std::strcmp(argv[1], "help")) return Help(argv[2]);
    std::fputs(kHelp, stdout);
    return 0;
  }
  const Command* c = Find(argv[1]);
  return c == nullptr ? 2 : c->run(argc, argv);
}
