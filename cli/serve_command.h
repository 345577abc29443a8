// `strata serve [options] LAYER`: the process around a Server (server/server.h) and its
// AcceptLoop (server/listener.h): option parsing, daemonizing, the pid file, captive --run
// mode and signal-driven shutdown. main.cc's command table calls ServeCommand. Option parsing
// is a pure function (ParseServeOptions) so it is unit-tested without a process.
#ifndef STRATA_CLI_SERVE_COMMAND_H_
#define STRATA_CLI_SERVE_COMMAND_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/log.h"
#include "server/engine/storage.h"

namespace strata::cli {

enum class CacheMode { kNone, kWriteback };
absl::string_view Name(CacheMode mode);

struct ServeOptions {
  std::string layer;
  std::optional<std::string> socket;  // --socket; default beside LAYER unless --listen only
  std::optional<std::string> control;  // --control; default DefaultControlPath(layer)
  bool no_control = false;             // --no-control
  unsigned socket_mode = 0600;
  std::optional<std::string> listen_address;  // --listen ADDR:PORT
  int listen_port = 0;
  std::string export_name;
  bool read_only = false;
  CacheMode cache = CacheMode::kWriteback;
  int workers = 0;  // 0: number of CPUs, at most 4
  LogLevel log_level = LogLevel::kInfo;
  // --log; after parsing always set: stderr in the foreground, syslog in the background (as
  // nbdkit), file with --log-file.
  std::optional<LogTo> log;
  std::string log_file;  // --log-file; with --log=file alone, DefaultLogPath(layer)
  bool foreground = false;
  std::string pid_file;
  std::string run;
  int shutdown_timeout_s = 10;  // --shutdown-timeout
  bool help = false;
  // --allow-parent-dir (repeatable) and STRATA_ALLOW_PARENT_DIR, made absolute: directories
  // trusted to hold the chain's parents besides LAYER's tree (blockstore/parent_place.h).
  std::vector<std::string> allowed_parent_dirs;
};

// Parses the arguments after "serve" with cli/args.h: `--opt VALUE` and `--opt=VALUE`; `--`
// ends options; a repeated option keeps its last value.
absl::StatusOr<ServeOptions> ParseServeOptions(const std::vector<std::string>& args);
std::string ServeUsage();

// LAYER's directory + "/" + LAYER's file name without extension + ".sock".
std::string DefaultSocketPath(const std::string& layer);
// LAYER's directory + "/" + LAYER's file name without extension + ".ctl".
std::string DefaultControlPath(const std::string& layer);
// LAYER's directory + "/" + LAYER's file name without extension + ".log".
std::string DefaultLogPath(const std::string& layer);
// nbd+unix:///EXPORT?socket=PATH (the export part only when non-empty), percent-encoded.
std::string UnixUri(const std::string& socket_path, const std::string& export_name);
// nbd://HOST:PORT/EXPORT.
std::string TcpUri(const std::string& host, int port, const std::string& export_name);

// `strata serve ...`: argv[1] is "serve", like every command in main.cc's table. Returns the
// process exit status: 0, 1 when serving failed, 2 for bad usage, or the --run command's.
int ServeCommand(int argc, char** argv);
// `strata serve WORDS...` (the words after "serve") in this process, for a command that needs
// a disk over NBD for one program (convert passes --run): the exit status serving returns
// (the --run program's), or why serving could not start, unprinted for the caller to say.
absl::StatusOr<int> ServeInProcess(const std::vector<std::string>& words);

}  // namespace strata::cli

#endif  // STRATA_CLI_SERVE_COMMAND_H_
