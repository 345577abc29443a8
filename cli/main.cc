// strata: serve a layered virtual disk over NBD, and manage its layers offline.
#include <cstdio>
#include <cstring>

#include "cli/control_client.h"
#include "cli/offline_commands.h"
#include "cli/serve_command.h"

namespace {

constexpr char kHelp[] = R"(strata - a layered copy-on-write virtual disk served over NBD

usage: strata COMMAND [options] ARGS

Serving:
  serve [options] LAYER                  serve the chain topped by LAYER over NBD
                                         (strata serve --help for options)
Live, through a server's control socket (default <layer stem>.ctl beside the layer):
  snapshot --control SOCKET NAME         atomic snapshot while clients keep writing
  list --control SOCKET [--json]         layers: snapshots, files, sizes, ages
  stats --control SOCKET                 per-connection counters, latency, ENOSPC, pauses
  revert --control SOCKET [NAME]         go back to the parent (or NAME); no client connected
Layers (offline, like qemu-img):
  create --size SIZE LAYER               a new empty disk with no base
  create -b PARENT -F raw|strata LAYER   a new active layer on a raw base or a frozen snapshot
  info [--json] LAYER                    the chain: files, UUIDs, states, snapshots, sizes
  map [--json] LAYER                     which layer holds which range (like qemu-img map)
  map --diff SNAP [--to SNAP2] LAYER     ranges changed since snapshot SNAP (incremental backup)
  check [--repair] LAYER                 verify checksums, index, links; repair leaks
  export LAYER OUT.raw                   the flattened disk as a sparse raw file
  snapshot LAYER NAME                    freeze LAYER as snapshot NAME, new empty layer on top
  commit [--resume] LAYER                merge LAYER into its parent (crash-safe)
  delete-snapshot LAYER NAME             delete snapshot NAME by merging (crash-safe)
  revert LAYER [SNAPSHOT]                discard changes since the parent (or SNAPSHOT)
)";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "help")) {
    std::fputs(kHelp, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  struct Command {
    const char* name;
    int (*run)(int, char**);
  };
  static const Command kCommands[] = {
      {"serve", strata::cli::ServeCommand},
      {"create", strata::cli::CreateCommand},     {"info", strata::cli::InfoCommand},
      {"map", strata::cli::MapCommand},           {"check", strata::cli::CheckCommand},
      {"export", strata::cli::ExportCommand},     {"snapshot", strata::cli::SnapshotCommand},
      {"commit", strata::cli::CommitCommand},     {"revert", strata::cli::RevertCommand},
      {"delete-snapshot", strata::cli::DeleteSnapshotCommand},
      {"list", strata::cli::ListCommand},         {"stats", strata::cli::StatsCommand},
  };
  for (const Command& c : kCommands) {
    if (!std::strcmp(argv[1], c.name)) return c.run(argc, argv);
  }
  std::fprintf(stderr, "strata: unknown command '%s' (strata --help lists them)\n", argv[1]);
  return 2;
}
