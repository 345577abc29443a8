// The offline subcommands of `strata` (argv[1] is the subcommand). Each returns the exit
// status: 0 success, 1 error (printed on stderr), 2 usage; `check` exits as qemu-img check
// does: 0 clean, 1 could not check (or usage), 2 corruption, 3 only repairable findings.
#ifndef STRATA_CLI_OFFLINE_COMMANDS_H_
#define STRATA_CLI_OFFLINE_COMMANDS_H_

#include "absl/status/status.h"
#include "blockstore/chain.h"
#include "cli/args.h"

namespace strata::cli {

// --cluster-size and --sub-block-size, as `create` takes them, into *options (convert too).
absl::Status ParseLayerGeometry(const Args& args, CreateOptions* options);

int CreateCommand(int argc, char** argv);
int InfoCommand(int argc, char** argv);
int MapCommand(int argc, char** argv);
int CheckCommand(int argc, char** argv);
int ExportCommand(int argc, char** argv);
int SnapshotCommand(int argc, char** argv);
int CommitCommand(int argc, char** argv);
int DeleteSnapshotCommand(int argc, char** argv);
int RevertCommand(int argc, char** argv);
int CancelCommand(int argc, char** argv);
int RebaseCommand(int argc, char** argv);
int TreeCommand(int argc, char** argv);

}  // namespace strata::cli

#endif  // STRATA_CLI_OFFLINE_COMMANDS_H_
