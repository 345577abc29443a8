// What every subcommand shares: `--help`, `--output=human|json` (with `--json` as its alias),
// the exit status of a usage error, and how an error reaches a person: "strata CMD: message",
// the message alone and never the status code's name ("FAILED_PRECONDITION: ...").
#ifndef STRATA_CLI_COMMAND_H_
#define STRATA_CLI_COMMAND_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "cli/args.h"
#include "server/remote/nbd_base.h"

namespace strata::cli {

struct CommandSpec {
  const char* name;       // "info"
  const char* usage;      // the whole help text, "usage: ..." first, ending in a newline
  ArgSpec args;           // the command's own options; --help/-h are added
  bool output = false;    // takes --output=human|json and --json
  // `check` uses 1, as qemu-img does, because its 2 means corruption.
  int usage_exit = 2;
  // How many positional arguments ParseCommand requires; -1: the command checks them.
  int positional = -1;
  // The command follows a chain's parent links: it takes --allow-parent-dir (repeatable), and
  // its usage says so.
  bool follows_parents = false;
};

// The directories trusted to hold parents besides the named layer's own tree
// (blockstore/parent_place.h): every --allow-parent-dir, then each entry of the
// colon-separated STRATA_ALLOW_PARENT_DIR.
std::vector<std::string> AllowedParentDirs(const Args& args);
// Lets chains on an NBD base (blockstore/remote_base.h) connect, through libnbd, with
// --allow-writable-base (or STRATA_ALLOW_WRITABLE_BASE=1) from `args`, each read of the base
// answered within `read_timeout` or failed (`strata serve --base-timeout`).
void InstallRemoteBaseOpener(const Args& args,
                             absl::Duration read_timeout = NbdBaseOptions().read_timeout);
// For a command that walks the chain topped by `top` itself (commit, revert, tree...): refuses
// it, before any file changes, when a parent is not a regular file or lies where `args` does
// not trust (blockstore's CheckChainParents).
absl::Status CheckParents(const Args& args, const std::string& top);

// Parses argv[2..argc) into *args. Returns the exit status when the command must stop here:
// 0 after printing the usage on stdout for --help, spec.usage_exit after a usage error.
// With spec.output, --json becomes --output=json and Args::Json() tells which one was asked.
std::optional<int> ParseCommand(int argc, char** argv, const CommandSpec& spec, Args* args);
// "strata CMD: why" (when `why` is not empty) and the usage on stderr; returns spec.usage_exit.
int UsageError(const CommandSpec& spec, absl::string_view why = "");
// "strata CMD: message" on stderr; returns 1.
int Fail(absl::string_view command, const absl::Status& status);
// "1 layer", "3 layers"; `plural` defaults to `singular` + "s".
std::string Count(uint64_t n, absl::string_view singular, absl::string_view plural = "");

}  // namespace strata::cli

#endif  // STRATA_CLI_COMMAND_H_
