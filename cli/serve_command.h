// `strata serve [options] LAYER`: the process around a Server (server/server.h) and its
// AcceptLoop (server/listener.h): option parsing, daemonizing, the pid file, captive --run
// mode and signal-driven shutdown. main.cc's command table calls ServeCommand. Option parsing
// is a pure function (ParseServeOptions) so it is unit-tested without a process.
#ifndef STRATA_CLI_SERVE_COMMAND_H_
#define STRATA_CLI_SERVE_COMMAND_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/log.h"
#include "server/engine/stats.h"
#include "server/engine/storage.h"
#include "server/nbd/handshake.h"

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
  // --insecure-listen: a wildcard --listen address without --tls=require is served (warned).
  bool insecure_listen = false;
  std::string tls_certs;  // --tls-certs DIR: ca-cert.pem, server-cert.pem, server-key.pem
  std::string tls_psk;    // --tls-psk FILE: psktool's "username:hexkey" lines
  bool tls_verify_peer = false;  // --tls-verify-peer: clients need a certificate the CA signed
  // --tls; after parsing: kRequire when credentials are given and --tls is not, else kOff.
  TlsMode tls = TlsMode::kOff;
  std::string export_name;
  bool read_only = false;
  bool copy_on_read = false;  // --copy-on-read: reads of an NBD base are kept in the top layer
  int base_timeout_s = 10;    // --base-timeout: a read of an NBD base answered by then, or EIO
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
  FullVolumePolicy full_volume;  // --on-full, --full-timeout, --min-free
  int max_connections = 0;      // --max-connections; 0: DefaultMaxConnections
  int max_handshakes = 64;      // --max-handshakes (at most max_connections when serving)
  uint64_t max_buffer_memory = 256ull << 20;  // --max-buffer-memory
  int handshake_timeout_s = 10;               // --handshake-timeout (0: none)
  int request_timeout_s = 30;                 // --request-timeout (0: none)
  bool help = false;
  // --allow-parent-dir (repeatable) and STRATA_ALLOW_PARENT_DIR, made absolute: directories
  // trusted to hold the chain's parents besides LAYER's tree (blockstore/parent_place.h).
  std::vector<std::string> allowed_parent_dirs;
};

// The largest --max-connections and --max-handshakes taken.
inline constexpr int kMaxConnectionsCap = 1 << 20;
// The default --max-connections: room for every connection in the open-file limit after a
// reserve for what else the server opens — 128 (control clients, rings, listeners, the log) and
// 4 for each descriptor open once the disk is open (its layer files; snapshot exports opened
// later open their layers again), at most half the limit — and at most 1024.
int DefaultMaxConnections(uint64_t open_file_limit, int open_descriptors);

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
// nbd+unix:///EXPORT?socket=PATH (the export part only when non-empty), percent-encoded;
// nbds+unix with `tls`.
std::string UnixUri(const std::string& socket_path, const std::string& export_name,
                    bool tls = false);
// nbd://HOST:PORT/EXPORT, or nbds:// with `tls`.
std::string TcpUri(const std::string& host, int port, const std::string& export_name,
                   bool tls = false);
// True for an address that listens on every interface: 0.0.0.0, ::, [::], * or empty.
bool IsWildcardAddress(const std::string& host);

// `strata serve ...`: argv[1] is "serve", like every command in main.cc's table. Returns the
// process exit status: 0, 1 when serving failed, 2 for bad usage, or the --run command's.
int ServeCommand(int argc, char** argv);
// `strata serve WORDS...` (the words after "serve") in this process, for a command that needs
// a disk over NBD for one program (convert passes --run): the exit status serving returns
// (the --run program's), or why serving could not start, unprinted for the caller to say.
absl::StatusOr<int> ServeInProcess(const std::vector<std::string>& words);

}  // namespace strata::cli

#endif  // STRATA_CLI_SERVE_COMMAND_H_
