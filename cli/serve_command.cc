// `strata serve`: the command line around a Server. Parses the options (through cli/args.h),
// opens the disk, listens, daemonizes, handles signals, the pid file and captive --run mode;
// the accept loop itself is server/listener.h's AcceptLoop.
#include "cli/serve_command.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <limits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/args.h"
#include "cli/command.h"
#include "server/control/control_socket.h"
#include "server/control/live_control.h"
#include "server/engine/chain_storage.h"
#include "server/listener.h"
#include "server/nbd/export.h"
#include "server/sd_notify.h"
#include "server/server.h"

namespace strata::cli {

absl::string_view Name(CacheMode mode) {
  switch (mode) {
    case CacheMode::kNone: return "none";
    case CacheMode::kWriteback: return "writeback";
  }
  return "?";
}

std::string ServeUsage() {
  return R"(usage: strata serve [options] LAYER

Serves the chain whose top layer is LAYER over NBD.

  --socket PATH          unix socket (default: LAYER's directory/STEM.sock)
  --socket-mode OCTAL    permissions of the socket file (default 0600)
  --control PATH         control socket for live snapshots, list, stats, info, revert
                         (default: LAYER's directory/STEM.ctl, always mode 0600)
  --no-control           no control socket
  --listen ADDR:PORT     also/instead listen on TCP (":PORT" means 127.0.0.1:PORT);
                         with --listen and no --socket, no unix socket is created; a
                         wildcard address (0.0.0.0, [::]) needs --tls=require or
                         --insecure-listen
  --insecure-listen      serve a wildcard --listen address without TLS (warned at start)
  --tls-certs DIR        TLS with X.509: DIR holds ca-cert.pem, server-cert.pem and
                         server-key.pem (certtool's names, as qemu-nbd and nbdkit)
  --tls-psk FILE         TLS with pre-shared keys: FILE holds psktool's username:hexkey lines
  --tls-verify-peer      with --tls-certs, clients must show a certificate the CA signed
  --tls=on|require|off   require (the default with --tls-certs or --tls-psk): only TLS
                         clients; on: TLS offered, plain clients served too; off: no TLS
  --export-name NAME     export name (default "")
  --read-only            refuse writes
  --cache=none|writeback none: O_DIRECT, bypass the host page cache; writeback: use it (default)
  --workers N            I/O threads (default: number of CPUs, at most 4)
  --log-level=error|info|debug   (default info)
  --log=stderr|syslog|file       where the log goes once the server serves (default: stderr
                         with --foreground, syslog in the background; file: LAYER's
                         directory/STEM.log unless --log-file)
  --log-file FILE        append the log to FILE (implies --log=file)
  --foreground           do not daemonize (implied by --run)
  --pid-file FILE        write the server's pid once it is listening
  --max-connections N    at most N NBD connections open at once; past it a new one is closed
                         as it arrives (default: the open-file limit less a reserve of 128 +
                         4 per descriptor open once the disk is, at most half the limit; at
                         most 1024)
  --max-handshakes N     at most N of them still negotiating (default 64, and never more
                         than the connections); past it the oldest is closed for the new one
  --shutdown-timeout S   on SIGTERM/SIGINT, wait at most S seconds (default 10) for clients
                         to take the replies of requests already started; then close them
  --on-full=error|pause  when the host volume is full, writes that need new space fail with
                         ENOSPC (error, the default: QEMU's client then pauses its guest), or
                         wait for space and resume by themselves (pause: a /dev/nbd guest
                         sees a stall, not I/O errors; `stats` and `list` say paused-critical)
  --full-timeout S       with --on-full=pause, a write waits at most S seconds (default 300)
  --min-free SIZE        warn once (log, `stats`) when the volume holding LAYER has less than
                         SIZE free (default 1G; 0: never)
  --max-buffer-memory SIZE   request and reply buffers of all clients together (default
                         256M, at least 64M; each connection may also hold 256K of its own):
                         a client past its share stops being read until memory is freed
  --handshake-timeout S  close a connection still negotiating after S seconds (default 10;
                         0: never)
  --request-timeout S    close a connection whose WRITE payload stops arriving for S seconds
                         (default 30; 0: never)
  --run 'CMD'            captive mode: run CMD via /bin/sh -c with $uri, $nbd, $unixsocket
                         (or $port), $exportname, $tls ("on", "require" or empty) set; stop
                         when it exits and return its status
  --allow-parent-dir DIR trust parents under DIR (repeatable; STRATA_ALLOW_PARENT_DIR holds
                         more, colon-separated): a parent outside LAYER's directory tree
                         (after symbolic links) is refused otherwise; an NBD base over TCP is
                         trusted by its URI or a prefix of it (--allow-parent-dir nbd://golden/)
  --allow-writable-base  accept an NBD base that its server lets clients write (a base that
                         changes corrupts the layers on it)
  --base-timeout S       a read of an NBD base not answered within S seconds (over every
                         reconnection meanwhile) fails with EIO (default 10)
  --copy-on-read         data read from an NBD base is also written into the top layer, so the
                         disk gradually stops depending on the base for what it reads (QEMU's
                         copy-on-read)

Under systemd (scripts/strata@.socket and strata@.service, with --foreground): sockets passed
by socket activation (LISTEN_PID, LISTEN_FDS) are served instead of --socket and --listen
(giving either then is an error); with $NOTIFY_SOCKET set, READY=1 is sent once the disk is
served and STOPPING=1 when it stops (Type=notify).
)";
}

namespace {

absl::Status NotA(absl::string_view option, const std::string& value, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrFormat("%s: \"%s\" is not %s", option, value, what));
}

// A whole number in [lo, hi]; false for anything else ("3x", "-1", "").
bool IntIn(const std::string& value, int lo, int hi, int* out) {
  return absl::SimpleAtoi(value, out) && *out >= lo && *out <= hi;
}

absl::Status ParseSocketMode(absl::string_view option, const std::string& v, ServeOptions* o) {
  char* end = nullptr;
  unsigned long mode = strtoul(v.c_str(), &end, 8);
  if (v.empty() || *end != '\0' || mode > 0777) return NotA(option, v, "an octal mode like 0600");
  o->socket_mode = static_cast<unsigned>(mode);
  return absl::OkStatus();
}

absl::Status ParseListen(absl::string_view option, const std::string& v, ServeOptions* o) {
  size_t colon = v.rfind(':');
  int port;
  if (colon == std::string::npos || !IntIn(v.substr(colon + 1), 0, 65535, &port)) {
    return NotA(option, v, "ADDR:PORT or :PORT");
  }
  std::string addr = v.substr(0, colon);
  o->listen_address = addr.empty() ? "127.0.0.1" : addr;
  o->listen_port = port;
  return absl::OkStatus();
}

// `v` as one of `choices` into *out, or the error naming them (`listed`).
template <typename E>
absl::Status ParseChoice(absl::string_view option, const std::string& v,
                         std::initializer_list<std::pair<absl::string_view, E>> choices,
                         absl::string_view listed, E* out) {
  for (const auto& [name, value] : choices) {
    if (v == name) {
      *out = value;
      return absl::OkStatus();
    }
  }
  return NotA(option, v, listed);
}

absl::Status ParseCache(absl::string_view option, const std::string& v, ServeOptions* o) {
  return ParseChoice(option, v, {{"none", CacheMode::kNone}, {"writeback", CacheMode::kWriteback}},
                     "none or writeback", &o->cache);
}

// The options whose value is a path or a command: anything but empty.
absl::Status ParseText(absl::string_view option, const std::string& v, ServeOptions* o) {
  if (v.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(option, option == "--run" ? ": empty command" : ": empty path"));
  }
  if (option == "--socket") {
    o->socket = v;
  } else if (option == "--control") {
    o->control = v;
  } else if (option == "--pid-file") {
    o->pid_file = v;
  } else if (option == "--log-file") {
    o->log_file = v;
  } else if (option == "--tls-certs") {
    o->tls_certs = v;
  } else if (option == "--tls-psk") {
    o->tls_psk = v;
  } else {
    o->run = v;
  }
  return absl::OkStatus();
}

absl::Status ParseExportName(absl::string_view option, const std::string& v, ServeOptions* o) {
  if (v.size() > 4096) return absl::InvalidArgumentError(absl::StrCat(option, ": over 4096 bytes"));
  o->export_name = v;
  return absl::OkStatus();
}

absl::Status ParseLevel(absl::string_view option, const std::string& v, ServeOptions* o) {
  if (!ParseLogLevel(v, &o->log_level)) return NotA(option, v, "error, info or debug");
  return absl::OkStatus();
}

absl::Status ParseLogDestination(absl::string_view option, const std::string& v,
                                 ServeOptions* o) {
  LogTo to;
  if (!ParseLogTo(v, &to)) return NotA(option, v, "stderr, syslog or file");
  o->log = to;
  return absl::OkStatus();
}

absl::Status ParseTls(absl::string_view option, const std::string& v, ServeOptions* o) {
  return ParseChoice(option, v,
                     {{"on", TlsMode::kOn}, {"require", TlsMode::kRequire}, {"off", TlsMode::kOff}},
                     "on, require or off", &o->tls);
}

// --workers, --max-connections, --max-handshakes and the timeouts in seconds.
absl::Status ParseNumber(absl::string_view option, const std::string& v, ServeOptions* o) {
  if (option == "--workers") {
    if (!IntIn(v, 1, 64, &o->workers)) return NotA(option, v, "a number from 1 to 64");
    return absl::OkStatus();
  }
  if (option == "--max-connections" || option == "--max-handshakes") {
    int* n = option == "--max-connections" ? &o->max_connections : &o->max_handshakes;
    if (!IntIn(v, 1, kMaxConnectionsCap, n)) {
      return NotA(option, v, absl::StrCat("a number from 1 to ", kMaxConnectionsCap));
    }
    return absl::OkStatus();
  }
  if (option == "--base-timeout") {
    if (!IntIn(v, 1, std::numeric_limits<int>::max(), &o->base_timeout_s)) {
      return NotA(option, v, "a positive number of seconds");
    }
    return absl::OkStatus();
  }
  if (option == "--full-timeout") {
    int seconds;
    if (!IntIn(v, 1, 86400, &seconds)) {
      return NotA(option, v, "a number of seconds from 1 to 86400");
    }
    o->full_volume.max_wait_ns = int64_t{seconds} * 1'000'000'000;
    return absl::OkStatus();
  }
  int* seconds = option == "--shutdown-timeout"    ? &o->shutdown_timeout_s
                 : option == "--handshake-timeout" ? &o->handshake_timeout_s
                                                   : &o->request_timeout_s;
  if (!IntIn(v, 0, 86400, seconds)) return NotA(option, v, "a number of seconds from 0 to 86400");
  return absl::OkStatus();
}

// Below two of the largest requests (32 MiB) one big client could not keep a read and a write
// going.
constexpr uint64_t kMinBufferMemory = 64ull << 20;

absl::Status ParseBufferMemory(absl::string_view option, const std::string& v, ServeOptions* o) {
  absl::StatusOr<uint64_t> bytes = ParseSize(v);
  if (!bytes.ok() || *bytes < kMinBufferMemory) return NotA(option, v, "a size of at least 64M");
  o->max_buffer_memory = *bytes;
  return absl::OkStatus();
}

absl::Status ParseOnFull(absl::string_view option, const std::string& v, ServeOptions* o) {
  using Mode = FullVolumePolicy::Mode;
  return ParseChoice(option, v, {{"error", Mode::kError}, {"pause", Mode::kPause}},
                     "error or pause", &o->full_volume.mode);
}

absl::Status ParseMinFree(absl::string_view option, const std::string& v, ServeOptions* o) {
  absl::StatusOr<uint64_t> bytes = ParseSize(v);
  if (!bytes.ok()) return NotA(option, v, "a size such as 512M or 2G");
  o->full_volume.min_free_bytes = *bytes;
  return absl::OkStatus();
}

// One option that takes a value: its name and what checks and stores the value.
struct ValuedOption {
  const char* name;
  absl::Status (*parse)(absl::string_view option, const std::string& value, ServeOptions* o);
};

constexpr ValuedOption kValuedOptions[] = {
    {"--socket", ParseText},            {"--control", ParseText},
    {"--pid-file", ParseText},          {"--run", ParseText},
    {"--socket-mode", ParseSocketMode}, {"--listen", ParseListen},
    {"--export-name", ParseExportName}, {"--cache", ParseCache},
    {"--log-level", ParseLevel},        {"--workers", ParseNumber},
    {"--shutdown-timeout", ParseNumber}, {"--log", ParseLogDestination},
    {"--log-file", ParseText},          {"--on-full", ParseOnFull},
    {"--full-timeout", ParseNumber},    {"--min-free", ParseMinFree},
    {"--max-connections", ParseNumber}, {"--max-handshakes", ParseNumber},
    {"--max-buffer-memory", ParseBufferMemory},
    {"--handshake-timeout", ParseNumber}, {"--request-timeout", ParseNumber},
    {"--tls-certs", ParseText},         {"--tls-psk", ParseText},
    {"--tls", ParseTls},
    {"--base-timeout", ParseNumber},
};

const ArgSpec& ServeSpec() {
  static const ArgSpec* const spec = [] {
    auto* s = new ArgSpec{.flags = {"--help", "--read-only", "--foreground", "--no-control",
                                    "--tls-verify-peer", "--insecure-listen",
                                    "--allow-writable-base", "--copy-on-read"},
                          .aliases = {{"-h", "--help"}},
                          .repeated = {"--allow-parent-dir"}};
    for (const ValuedOption& option : kValuedOptions) s->valued.insert(option.name);
    return s;
  }();
  return *spec;
}

// --log-file implies --log=file; without either, a foreground server logs where its user looks
// (stderr) and a daemon to syslog, as nbdkit does.
absl::Status SetLogDefault(ServeOptions* o) {
  if (!o->log_file.empty()) {
    if (o->log && *o->log != LogTo::kFile) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--log-file and --log=", Name(*o->log), " contradict each other"));
    }
    o->log = LogTo::kFile;
  }
  if (!o->log) o->log = o->foreground ? LogTo::kStderr : LogTo::kSyslog;
  return absl::OkStatus();
}

// Credentials and --tls together: TLS is required unless --tls says otherwise, and a mode that
// offers TLS needs credentials.
absl::Status CheckTls(bool tls_given, ServeOptions* o) {
  const bool credentials = !o->tls_certs.empty() || !o->tls_psk.empty();
  if (!o->tls_certs.empty() && !o->tls_psk.empty()) {
    return absl::InvalidArgumentError("--tls-certs and --tls-psk: choose one");
  }
  if (o->tls_verify_peer && o->tls_certs.empty()) {
    return absl::InvalidArgumentError("--tls-verify-peer needs --tls-certs DIR");
  }
  if (!tls_given) o->tls = credentials ? TlsMode::kRequire : TlsMode::kOff;
  if (o->tls != TlsMode::kOff && !credentials) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--tls=", Name(o->tls), " needs --tls-certs DIR or --tls-psk FILE"));
  }
  return absl::OkStatus();
}

// A wildcard address that plain clients reach.
bool PlainWildcard(const std::string& host, const ServeOptions& o) {
  return IsWildcardAddress(host) && o.tls != TlsMode::kRequire;
}

// A disk served on every interface in the clear is readable and writable by anyone who can
// reach the port: said, unless the user asked for it (--insecure-listen). `what` names the
// socket, `one_address` how to listen on one address instead.
absl::Status RefuseWildcard(const std::string& what, const std::string& one_address,
                            const ServeOptions& o) {
  return absl::InvalidArgumentError(absl::StrFormat(
      "%s serves every network interface %s: require TLS with --tls-certs DIR or --tls-psk "
      "FILE, listen on one address (%s), or pass --insecure-listen to serve in the clear",
      what, o.tls == TlsMode::kOn ? "to plain clients too (--tls=on)" : "without TLS",
      one_address));
}

absl::Status CheckWildcardListen(const ServeOptions& o) {
  if (!o.listen_address || !PlainWildcard(*o.listen_address, o) || o.insecure_listen) {
    return absl::OkStatus();
  }
  return RefuseWildcard(absl::StrFormat("--listen %s:%d", *o.listen_address, o.listen_port),
                        absl::StrFormat("\":%d\" is 127.0.0.1", o.listen_port), o);
}

}  // namespace

int DefaultMaxConnections(uint64_t open_file_limit, int open_descriptors) {
  const uint64_t reserve =
      std::min<uint64_t>(128 + 4 * static_cast<uint64_t>(open_descriptors), open_file_limit / 2);
  return static_cast<int>(std::clamp<uint64_t>(open_file_limit - reserve, 1, 1024));
}

bool IsWildcardAddress(const std::string& host) {
  std::string h = host;
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  if (h.empty() || h == "*") return true;
  in_addr v4;
  if (inet_pton(AF_INET, h.c_str(), &v4) == 1) return v4.s_addr == htonl(INADDR_ANY);
  in6_addr v6;
  return inet_pton(AF_INET6, h.c_str(), &v6) == 1 && IN6_IS_ADDR_UNSPECIFIED(&v6);
}

absl::StatusOr<ServeOptions> ParseServeOptions(const std::vector<std::string>& words) {
  absl::StatusOr<Args> args = Parse(words, ServeSpec());
  if (!args.ok()) return args.status();
  ServeOptions o;
  o.help = args->Has("--help");
  o.read_only = args->Has("--read-only");
  o.copy_on_read = args->Has("--copy-on-read");
  o.foreground = args->Has("--foreground");
  o.no_control = args->Has("--no-control");
  o.allowed_parent_dirs = AllowedParentDirs(*args);
  o.tls_verify_peer = args->Has("--tls-verify-peer");
  o.insecure_listen = args->Has("--insecure-listen");
  for (const ValuedOption& option : kValuedOptions) {
    if (!args->Has(option.name)) continue;
    absl::Status st = option.parse(option.name, args->Get(option.name), &o);
    if (!st.ok()) return st;
  }
  InstallRemoteBaseOpener(*args, absl::Seconds(o.base_timeout_s));
  if (o.help) return o;
  if (args->positional.size() != 1) {
    return absl::InvalidArgumentError(
        args->positional.empty() ? "missing LAYER"
                                 : absl::StrFormat("expected one LAYER, got %d arguments",
                                                   args->positional.size()));
  }
  o.layer = args->positional[0];
  if (!o.run.empty()) o.foreground = true;
  if (o.no_control && o.control) {
    return absl::InvalidArgumentError("--control and --no-control contradict each other");
  }
  if (absl::Status st = SetLogDefault(&o); !st.ok()) return st;
  if (absl::Status st = CheckTls(args->Has("--tls"), &o); !st.ok()) return st;
  if (absl::Status st = CheckWildcardListen(o); !st.ok()) return st;
  return o;
}

namespace {
std::string BesideLayer(const std::string& layer, absl::string_view extension) {
  absl::string_view path = layer;
  size_t slash = path.rfind('/');
  // "disk.strata" -> "./disk.sock"; "/disk.strata" -> "/disk.sock".
  absl::string_view dir = slash == absl::string_view::npos ? "." : path.substr(0, slash);
  absl::string_view base = slash == absl::string_view::npos ? path : path.substr(slash + 1);
  size_t dot = base.rfind('.');
  if (dot != absl::string_view::npos && dot > 0) base = base.substr(0, dot);
  return absl::StrCat(dir, "/", base, extension);
}
}  // namespace

std::string DefaultSocketPath(const std::string& layer) { return BesideLayer(layer, ".sock"); }
std::string DefaultControlPath(const std::string& layer) { return BesideLayer(layer, ".ctl"); }
std::string DefaultLogPath(const std::string& layer) { return BesideLayer(layer, ".log"); }

namespace {

// RFC 3986 percent-encoding of everything but unreserved characters and '/'.
std::string UriEncode(absl::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' || c == '/') {
      out.push_back(static_cast<char>(c));
    } else {
      absl::StrAppendFormat(&out, "%%%02X", c);
    }
  }
  return out;
}

// A relative PATH joined to the working directory, with its directory resolved by realpath(3):
// "../vm/disk.strata" typed in /home/u/elsewhere reads /home/u/vm/disk.strata in every log line,
// URI and reply, not /home/u/elsewhere/../vm/disk.strata. The file name itself is kept (the
// socket may not exist yet; a symlinked layer keeps its name, and its snapshots go beside it).
std::string Absolute(const std::string& path) {
  if (!path.empty() && path[0] == '/') return path;
  char cwd[PATH_MAX];
  if (getcwd(cwd, sizeof(cwd)) == nullptr) return path;
  std::string p = path;
  while (absl::StartsWith(p, "./")) p = p.substr(2);
  std::string joined = absl::StrCat(cwd, "/", p);
  size_t slash = joined.rfind('/');
  std::string base = joined.substr(slash + 1);
  char dir[PATH_MAX];
  // No such directory: the plain join, and opening the file will say what is missing.
  if (base.empty() || base == "." || base == ".." ||
      realpath(joined.substr(0, slash).c_str(), dir) == nullptr) {
    return joined;
  }
  return absl::StrCat(dir, absl::string_view(dir) == "/" ? "" : "/", base);
}

absl::Status WritePidFile(const std::string& path) {
  std::string tmp = path + ".tmp";
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::ErrnoToStatus(errno, "create pid file " + tmp);
  std::string text = absl::StrCat(getpid(), "\n");
  bool ok = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  close(fd);
  // rename: a reader never sees an empty pid file.
  if (!ok || rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::ErrnoToStatus(errno, "write pid file " + path);
  }
  return absl::OkStatus();
}

}  // namespace

std::string UnixUri(const std::string& socket_path, const std::string& export_name, bool tls) {
  return absl::StrCat(tls ? "nbds" : "nbd", "+unix:///", UriEncode(export_name),
                      "?socket=", UriEncode(socket_path));
}

std::string TcpUri(const std::string& host, int port, const std::string& export_name,
                   bool tls) {
  std::string h = host.find(':') != std::string::npos && host[0] != '[' ? "[" + host + "]" : host;
  return absl::StrFormat("%s://%s:%d/%s", tls ? "nbds" : "nbd", h, port, UriEncode(export_name));
}

namespace {

// Once the log has left stderr (SwitchLog), a failure is told where the log goes: a daemon's
// caller is gone by then.
int Fail(absl::string_view message) {
  if (LogRedirected()) {
    STRATA_LOG(kError, "%s", message);
  } else {
    fprintf(stderr, "strata serve: %s\n", std::string(message).c_str());
  }
  return 1;
}

// syslog(3) drops lines silently where no syslog daemon listens (a container, a minimal VM):
// say so while the caller still reads stderr.
void WarnIfNoSyslog(const ServeOptions& o) {
  if (*o.log != LogTo::kSyslog || access("/dev/log", F_OK) == 0) return;
  fprintf(stderr,
          "strata serve: warning: no syslog here (/dev/log: %s): the server's log is lost; "
          "--log-file FILE keeps it\n",
          strerror(errno));
}

// Opened before daemonizing, so that a log file that cannot be written is told to the caller.
// -1 when the log does not go to a file.
absl::StatusOr<int> OpenLogFile(const ServeOptions& o) {
  if (*o.log != LogTo::kFile) return -1;
  int fd = open(o.log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd >= 0) return fd;
  int err = errno;
  return absl::Status(absl::ErrnoToStatus(err, "").code(),
                      absl::StrFormat("cannot open log file %s: %s (--log-file elsewhere, or "
                                      "--log=syslog)",
                                      o.log_file, strerror(err)));
}

// A chain holds one descriptor per layer (two with --cache=none), each connection and ring a
// few more: the usual soft limit of 1024 is too low for a disk with many snapshots, and the
// hard limit is what the administrator allows.
void RaiseOpenFileLimit() {
  struct rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur >= limit.rlim_max) return;
  limit.rlim_cur = limit.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &limit) != 0) {
    STRATA_LOG(kInfo, "could not raise the open-file limit: %s", strerror(errno));
  }
}

// The descriptors this process has open now.
int OpenDescriptors() {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return 0;
  int n = 0;
  while (readdir(dir) != nullptr) ++n;
  closedir(dir);
  return std::max(0, n - 3);  // ".", ".." and the directory's own descriptor
}

uint64_t OpenFileLimit() {
  struct rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return 1024;
  return limit.rlim_cur;
}

// Fills in the defaults that depend on the machine and the working directory.
ServeOptions Resolve(ServeOptions o) {
  if (o.workers == 0) {
    o.workers = std::clamp<int>(static_cast<int>(std::thread::hardware_concurrency()), 1, 4);
  }
  // The daemon changes to "/": every path the user gave is resolved against the working
  // directory now, or the control socket, the snapshot files and the @NAME exports would be
  // looked for under "/".
  o.layer = Absolute(o.layer);
  if (o.control) o.control = Absolute(*o.control);
  if (o.socket) o.socket = Absolute(*o.socket);
  if (!o.pid_file.empty()) o.pid_file = Absolute(o.pid_file);
  // An NBD base's URI prefix (nbd://golden/) is trusted as given: it is no path.
  for (std::string& dir : o.allowed_parent_dirs) {
    if (!absl::StrContains(dir, "://")) dir = Absolute(dir);
  }
  if (!o.tls_certs.empty()) o.tls_certs = Absolute(o.tls_certs);
  if (!o.tls_psk.empty()) o.tls_psk = Absolute(o.tls_psk);
  if (o.log == LogTo::kFile) {
    o.log_file = Absolute(o.log_file.empty() ? DefaultLogPath(o.layer) : o.log_file);
  }
  return o;
}

absl::StatusOr<std::unique_ptr<ChainStorage>> OpenStorage(const ServeOptions& o) {
  absl::StatusOr<std::unique_ptr<ChainStorage>> storage =
      OpenChainStorage(o.layer, !o.read_only, o.cache == CacheMode::kNone, o.allowed_parent_dirs);
  if (storage.ok()) (*storage)->set_copy_on_read(o.copy_on_read);
  if (storage.ok() || storage.status().code() != absl::StatusCode::kFailedPrecondition ||
      o.read_only) {
    return storage;
  }
  return absl::FailedPreconditionError(absl::StrCat(
      storage.status().message(), " (a frozen snapshot can be served with --read-only)"));
}

// The disk as the default export.
void AddDiskExport(const ServeOptions& o, ChainStorage* storage, ExportTable* exports) {
  std::shared_ptr<Export> e = NewExport(o.export_name, storage);
  e->read_only = e->read_only || o.read_only;
  exports->Add(std::move(e));
}

// Where clients reach the disk: what the "serving" lines print and --run's variables hold.
struct Endpoint {
  std::string uri;        // the unix socket's when there is one, else the TCP address's
  std::string unix_path;  // empty when only TCP is served (or the unix socket has no file)
  std::string tcp_host;   // TCP: the address as the URI names it
  int tcp_port = 0;       // TCP: 0 when the endpoint is a unix socket
};

// Where `l` is reached; `tcp_host` names a TCP listener's address (as --listen gave it). A unix
// socket without a file (abstract, passed by a service manager) has no URI: its description.
// The URI is nbds:// when TLS is required (a client told to use TLS refuses a plain server).
Endpoint EndpointOf(const Listener& l, const std::string& tcp_host, const ServeOptions& o) {
  const bool tls = o.tls == TlsMode::kRequire;
  if (l.tcp()) {
    return {.uri = TcpUri(tcp_host, l.port, o.export_name, tls), .tcp_host = tcp_host,
            .tcp_port = l.port};
  }
  if (l.unix_path.empty()) return {.uri = l.description};
  return {.uri = UnixUri(l.unix_path, o.export_name, tls), .unix_path = l.unix_path};
}

// "unix:/a.sock, tcp:127.0.0.1:10809".
std::string Describe(const std::vector<Listener>& listeners) {
  std::string where;
  for (const Listener& l : listeners) {
    absl::StrAppend(&where, where.empty() ? "" : ", ", l.description);
  }
  return where;
}

// Opens the unix socket (unless --listen alone) and the TCP one (with --listen), handing them
// to `acceptor`, which closes them whatever happens next.
absl::StatusOr<Endpoint> Bind(const ServeOptions& o, AcceptLoop* acceptor) {
  std::optional<Endpoint> e;
  if (o.socket || !o.listen_address) {
    absl::StatusOr<Listener> l =
        ListenUnix(Absolute(o.socket.value_or(DefaultSocketPath(o.layer))), o.socket_mode);
    if (!l.ok()) return l.status();
    e = EndpointOf(*l, "", o);
    acceptor->Add(*std::move(l));
  }
  if (o.listen_address) {
    absl::StatusOr<Listener> l = ListenTcp(*o.listen_address, o.listen_port);
    if (!l.ok()) return l.status();
    if (!e) e = EndpointOf(*l, *o.listen_address, o);
    acceptor->Add(*std::move(l));
  }
  return *e;
}

// The sockets a service manager passed (socket activation) take the place of --socket and
// --listen: asking for both is a mistake in the unit, said rather than guessed at.
absl::StatusOr<Endpoint> Listen(const ServeOptions& o, AcceptLoop* acceptor) {
  absl::StatusOr<std::vector<Listener>> passed = PassedListeners();
  if (!passed.ok()) return passed.status();
  if (passed->empty()) return Bind(o, acceptor);
  Endpoint e = EndpointOf(passed->front(), passed->front().host, o);
  std::string where = Describe(*passed);
  for (Listener& l : *passed) acceptor->Add(std::move(l));
  if (o.socket || o.listen_address) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "the service manager passed %s (LISTEN_FDS): drop --socket and --listen from the "
        "command, or start it without socket activation",
        where));
  }
  // The same rule as --listen: a unit's ListenStream=10809 binds every interface.
  for (const Listener& l : acceptor->listeners()) {
    if (!l.tcp() || !PlainWildcard(l.host, o) || o.insecure_listen) continue;
    return RefuseWildcard(
        absl::StrFormat("the socket the service manager passed (%s, LISTEN_FDS)", l.description),
        absl::StrFormat("ListenStream=127.0.0.1:%d in the .socket unit", l.port), o);
  }
  return e;
}

// " (TLS required, X.509 certificates in DIR)" and the like; empty without TLS.
std::string DescribeTls(const ServeOptions& o) {
  if (o.tls == TlsMode::kOff) return "";
  return absl::StrFormat(
      " (TLS %s, %s)", o.tls == TlsMode::kRequire ? "required" : "offered, plain clients served",
      o.tls_certs.empty() ? absl::StrCat("pre-shared keys in ", o.tls_psk)
                          : absl::StrCat("X.509 certificates in ", o.tls_certs,
                                         o.tls_verify_peer ? ", client certificates verified"
                                                           : ""));
}

// The nbdinfo line a user can paste: libnbd takes the credentials in the URI's query.
std::string NbdinfoHint(const ServeOptions& o, const std::string& uri) {
  if (o.tls != TlsMode::kRequire) return uri;
  return absl::StrCat(uri, uri.find('?') == std::string::npos ? "?" : "&",
                      o.tls_certs.empty() ? "tls-psk-file=CLIENT.psk&tls-username=USER"
                                          : "tls-certificates=DIR-WITH-ca-cert.pem");
}

void PrintServing(const ServeOptions& o, const std::string& uri) {
  printf("serving %s at %s%s\nnbdinfo '%s'\n", o.layer.c_str(), uri.c_str(),
         DescribeTls(o).c_str(), NbdinfoHint(o, uri).c_str());
  fflush(stdout);
}

// Tells a service manager (Type=notify; nothing without $NOTIFY_SOCKET) how the server is. A
// failure is logged, not fatal: the disk is served either way, and systemd says itself when a
// start's readiness never came.
void Notify(const std::string& state) {
  if (absl::Status st = NotifyServiceManager(state); !st.ok()) {
    STRATA_LOG(kError, "%s", st.message());
  }
}

// Readiness, from the process the service manager started: its own pid in the foreground, the
// daemon's from the daemon's parent (systemd takes MAINPID= only from the main process).
void NotifyReady(pid_t main_pid, const std::string& layer, const std::string& uri) {
  Notify(absl::StrFormat("READY=1\nMAINPID=%d\nSTATUS=serving %s at %s", main_pid, layer, uri));
}

// The parent of a daemon: waits until the daemon serves, then tells the user where and exits 0;
// if the daemon dies first, exits with its status (it has said why on stderr). Exits with _exit:
// the daemon owns the socket files and the storage now, and no destructor may touch them.
[[noreturn]] void AwaitDaemon(pid_t daemon, int ready_fd, const ServeOptions& o,
                              const std::string& uri) {
  char c;
  ssize_t n;
  do {
    n = read(ready_fd, &c, 1);
  } while (n < 0 && errno == EINTR);
  if (n == 1) {
    NotifyReady(daemon, o.layer, uri);
    PrintServing(o, uri);
    _exit(0);
  }
  int status = 0;
  waitpid(daemon, &status, 0);
  _exit(WIFEXITED(status) && WEXITSTATUS(status) != 0 ? WEXITSTATUS(status) : 1);
}

void ToDevNull(std::initializer_list<int> fds) {
  int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (devnull < 0) return;
  for (int fd : fds) dup2(devnull, fd);
  close(devnull);
}

// The daemon's side: its own session, "/" as working directory (it must not hold a mount
// busy), stdin and stdout on /dev/null. stderr stays until the server serves (SwitchLog): a
// start that fails after the fork is still told to the caller.
void Detach() {
  setsid();
  if (chdir("/") != 0) {
    // Harmless: every path we keep is absolute.
  }
  ToDevNull({STDIN_FILENO, STDOUT_FILENO});
}

// Sends the log where --log says, once the server serves. A daemon lets go of the caller's
// stderr here (onto the log file, or /dev/null with syslog), or `out=$(strata serve ...)` would
// wait until the server exits; --log=stderr keeps it, as asked. In the foreground stderr stays:
// it is the terminal's, and the --run command's.
void SwitchLog(const ServeOptions& o, int log_fd) {
  if (*o.log == LogTo::kStderr) return;
  if (!o.foreground) {
    if (log_fd >= 0) {
      dup2(log_fd, STDERR_FILENO);
    } else {
      ToDevNull({STDERR_FILENO});
    }
  }
  if (log_fd >= 0) {
    LogToFile(log_fd);
  } else {
    LogToSyslog();
  }
}

// Forks (before any thread exists: a fork keeps only the calling thread). Returns, in the
// daemon only, the pipe on which it writes one byte once it serves; the parent never returns.
absl::StatusOr<int> Daemonize(const ServeOptions& o, const std::string& uri) {
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) != 0) return absl::ErrnoToStatus(errno, "pipe");
  pid_t pid = fork();
  if (pid < 0) return absl::ErrnoToStatus(errno, "fork");
  if (pid > 0) {
    close(pipefd[1]);
    AwaitDaemon(pid, pipefd[0], o, uri);
  }
  close(pipefd[0]);
  Detach();
  return pipefd[1];
}

// SIGINT, SIGTERM and SIGCHLD, blocked in every thread (threads started later inherit the
// mask) and read from a signalfd by WaitForShutdown.
struct ShutdownSignals {
  int fd = -1;
  sigset_t old_mask;  // what a --run child gets back
  ~ShutdownSignals() {
    if (fd >= 0) close(fd);
  }
};

absl::Status BlockSignals(ShutdownSignals* s) {
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGCHLD);
  pthread_sigmask(SIG_BLOCK, &mask, &s->old_mask);
  // A client that disconnects mid-reply must cost a failed send, not the process.
  signal(SIGPIPE, SIG_IGN);
  s->fd = signalfd(-1, &mask, SFD_CLOEXEC);
  if (s->fd < 0) return absl::ErrnoToStatus(errno, "signalfd");
  return absl::OkStatus();
}

// The TLS credentials, loaded once, before the server starts (null without TLS).
absl::StatusOr<std::unique_ptr<TlsCredentials>> LoadTls(const ServeOptions& o) {
  if (o.tls == TlsMode::kOff) return nullptr;
  absl::StatusOr<std::unique_ptr<TlsCredentials>> credentials =
      o.tls_certs.empty() ? TlsCredentials::LoadPsk(o.tls_psk)
                          : TlsCredentials::LoadX509(o.tls_certs, o.tls_verify_peer);
  if (credentials.ok()) return credentials;
  return absl::Status(credentials.status().code(),
                      absl::StrCat(o.tls_certs.empty() ? "--tls-psk: " : "--tls-certs: ",
                                   credentials.status().message()));
}

// REQUIRES: the disk is open (its descriptors count in the default --max-connections).
ServerOptions MakeServerOptions(const ServeOptions& o, const TlsCredentials* tls) {
  ServerOptions options;
  options.workers = o.workers;
  options.tls = {.mode = o.tls, .credentials = tls};
  options.admission.max_connections =
      o.max_connections > 0 ? o.max_connections
                            : DefaultMaxConnections(OpenFileLimit(), OpenDescriptors());
  options.admission.max_handshakes =
      std::min(o.max_handshakes, options.admission.max_connections);
  options.shutdown_grace = absl::Seconds(o.shutdown_timeout_s);
  options.full_volume = o.full_volume;
  // Resolve() made the layer's path absolute: the daemon serves from "/".
  options.volume_dir = o.layer.substr(0, o.layer.rfind('/') + 1);
  options.max_buffer_memory = o.max_buffer_memory;
  options.limits.handshake_timeout = absl::Seconds(o.handshake_timeout_s);
  options.limits.request_timeout = absl::Seconds(o.request_timeout_s);
  return options;
}

LiveControlOptions MakeLiveOptions(const ServeOptions& o) {
  LiveControlOptions options;
  if (!o.no_control) {
    options.control_path = Absolute(o.control.value_or(DefaultControlPath(o.layer)));
  }
  return options;
}

// The control socket, or nullptr with --no-control.
absl::StatusOr<std::unique_ptr<ControlSocket>> StartControl(const ServeOptions& o,
                                                            const std::string& path,
                                                            LiveControl* live) {
  if (o.no_control) return nullptr;
  absl::StatusOr<std::unique_ptr<ControlSocket>> control = ControlSocket::Start(
      path, 0600, [live](const nlohmann::json& request, nlohmann::json* reply) {
        return live->Handle(request, reply);
      });
  if (control.ok()) return control;
  return absl::Status(control.status().code(),
                      absl::StrCat("control socket: ", control.status().message(),
                                   " (--control PATH elsewhere, or --no-control)"));
}

// The --pid-file: written once the server is listening, removed when it stops.
class PidFile {
 public:
  ~PidFile() {
    if (!path_.empty()) unlink(path_.c_str());
  }
  absl::Status Write(const std::string& path) {
    if (path.empty()) return absl::OkStatus();
    if (absl::Status st = WritePidFile(path); !st.ok()) return st;
    path_ = path;
    return absl::OkStatus();
  }

 private:
  std::string path_;
};

// The warnings for what --insecure-listen let through: one per wildcard listener.
std::vector<std::string> InsecureWarnings(const ServeOptions& o, const AcceptLoop& acceptor) {
  std::vector<std::string> warnings;
  for (const Listener& l : acceptor.listeners()) {
    if (!l.tcp() || !PlainWildcard(l.host, o)) continue;
    warnings.push_back(absl::StrFormat(
        "WARNING: --insecure-listen: %s is served on every network interface without "
        "required TLS: anyone who reaches the port can read and write the disk",
        l.description));
  }
  return warnings;
}

void LogServing(const ServeOptions& o, const ExportTable& exports, const AcceptLoop& acceptor,
                const AdmissionLimits& caps, const ControlSocket* control) {
  std::string where = Describe(acceptor.listeners());
  std::shared_ptr<const Export> disk = exports.Find("");
  STRATA_LOG(kInfo,
             "serving %s (%s, cache=%s%s) on %s%s with %d workers, at most %d connections (%d in "
             "handshake)%s",
             o.layer, disk->description, Name(o.cache), disk->read_only ? ", read-only" : "",
             where, DescribeTls(o), o.workers, caps.max_connections, caps.max_handshakes,
             control ? absl::StrCat("; control socket ", control->path()) : "");
  for (const std::string& warning : InsecureWarnings(o, acceptor)) {
    STRATA_LOG(kError, "%s", warning);
  }
}

// $uri, $exportname, $unixsocket or $port, and $nbd (qemu's nbd: syntax) for the --run command.
void SetCaptiveEnvironment(const ServeOptions& o, const Endpoint& e) {
  setenv("uri", e.uri.c_str(), 1);
  setenv("exportname", o.export_name.c_str(), 1);
  setenv("tls", o.tls == TlsMode::kOff ? "" : std::string(Name(o.tls)).c_str(), 1);
  std::string nbd;
  if (e.tcp_port != 0) {
    setenv("port", absl::StrCat(e.tcp_port).c_str(), 1);
    nbd = absl::StrFormat("nbd:%s:%d", e.tcp_host, e.tcp_port);
  } else {
    setenv("unixsocket", e.unix_path.c_str(), 1);
    nbd = absl::StrCat("nbd:unix:", e.unix_path);
  }
  if (!o.export_name.empty()) absl::StrAppend(&nbd, ":exportname=", o.export_name);
  setenv("nbd", nbd.c_str(), 1);
}

// Starts the --run command through /bin/sh with the signals it would have had without us.
absl::StatusOr<pid_t> RunCaptive(const ServeOptions& o, const Endpoint& e,
                                 const sigset_t& old_mask) {
  pid_t child = fork();
  if (child < 0) return absl::ErrnoToStatus(errno, "fork for --run");
  if (child > 0) return child;
  pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  signal(SIGPIPE, SIG_DFL);
  // The command is not the service: its own sd_notify calls must not speak for the server.
  unsetenv("NOTIFY_SOCKET");
  SetCaptiveEnvironment(o, e);
  execl("/bin/sh", "sh", "-c", o.run.c_str(), static_cast<char*>(nullptr));
  _exit(127);
}

// Says the server is ready to whoever waits for it: starts the --run command (returning its
// pid), or wakes the daemon's waiting parent, or prints where it serves; and, in the
// foreground, the service manager. Returns -1 but for --run.
absl::StatusOr<pid_t> Announce(const ServeOptions& o, const Endpoint& e,
                               const ShutdownSignals& signals, int ready_fd) {
  if (ready_fd < 0) NotifyReady(getpid(), o.layer, e.uri);
  if (!o.run.empty()) return RunCaptive(o, e, signals.old_mask);
  if (ready_fd >= 0) {
    char c = 'R';
    ssize_t ignored = write(ready_fd, &c, 1);
    (void)ignored;
    close(ready_fd);
  } else {
    PrintServing(o, e.uri);
  }
  return -1;
}

// Blocks until SIGINT or SIGTERM, or until the --run command `child` (when > 0) exits.
// Returns the exit status: 0, or the command's (128 + signal if it was killed).
int WaitForShutdown(int signal_fd, pid_t child) {
  for (;;) {
    signalfd_siginfo si;
    ssize_t n = read(signal_fd, &si, sizeof(si));
    if (n < 0 && errno == EINTR) continue;
    if (n != sizeof(si)) {
      STRATA_LOG(kError, "reading signals: %s: shutting down", strerror(errno));
      return 0;
    }
    if (si.ssi_signo != SIGCHLD) {
      STRATA_LOG(kInfo, "received %s: shutting down", strsignal(si.ssi_signo));
      return 0;
    }
    int status;
    if (child > 0 && waitpid(child, &status, WNOHANG) == child) {
      int exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      STRATA_LOG(kInfo, "--run command exited with status %d: shutting down", exit_code);
      return exit_code;
    }
  }
}

// Flushes and closes the disk once no request runs. Returns exit_code, or 1 in its place if
// the flush failed.
int CloseStorage(std::unique_ptr<ChainStorage> storage, int exit_code) {
  if (storage->writable()) {
    if (absl::Status st = storage->Flush(); !st.ok()) {
      STRATA_LOG(kError, "final flush failed: %s", st.message());
      if (exit_code == 0) exit_code = 1;
    }
  }
  return exit_code;
}

// Serves until a signal or the end of the --run command; returns the exit status, or why it
// could not start.
absl::StatusOr<int> Serve(const ServeOptions& o) {
  absl::StatusOr<int> log_fd = OpenLogFile(o);
  if (!log_fd.ok()) return log_fd.status();
  absl::StatusOr<std::unique_ptr<ChainStorage>> storage = OpenStorage(o);
  if (!storage.ok()) return storage.status();
  absl::StatusOr<std::unique_ptr<TlsCredentials>> tls = LoadTls(o);
  if (!tls.ok()) return tls.status();
  ExportTable exports;
  AddDiskExport(o, storage->get(), &exports);
  Server server(&exports, MakeServerOptions(o, tls->get()));
  // Declared after the server so that it stops before the server does on every path.
  AcceptLoop acceptor([&server](int fd, std::string peer) {
    server.AddConnection(fd, std::move(peer));
  });
  absl::StatusOr<Endpoint> endpoint = Listen(o, &acceptor);
  if (!endpoint.ok()) return endpoint.status();
  // The log line (LogServing) reaches stderr only with --log=stderr: the caller hears it too.
  if (*o.log != LogTo::kStderr) {
    for (const std::string& warning : InsecureWarnings(o, acceptor)) {
      fprintf(stderr, "strata serve: %s\n", warning.c_str());
    }
  }
  absl::StatusOr<int> ready_fd =
      o.foreground ? absl::StatusOr<int>(-1) : Daemonize(o, endpoint->uri);
  if (!ready_fd.ok()) return ready_fd.status();
  ShutdownSignals signals;
  if (absl::Status st = BlockSignals(&signals); !st.ok()) return st;
  if (absl::Status st = server.Start(); !st.ok()) return st;
  // Live control: snapshot exports of the chain's existing snapshots, and the control socket.
  LiveControlOptions live_options = MakeLiveOptions(o);
  LiveControl live(&server, &exports, storage->get(), live_options);
  live.AddSnapshotExports();
  live.ResumeMerges();
  absl::StatusOr<std::unique_ptr<ControlSocket>> control =
      StartControl(o, live_options.control_path, &live);
  if (!control.ok()) return control.status();
  PidFile pid_file;
  if (absl::Status st = pid_file.Write(o.pid_file); !st.ok()) return st;
  SwitchLog(o, *log_fd);
  LogServing(o, exports, acceptor, server.admission().limits(), control->get());
  absl::StatusOr<pid_t> child = Announce(o, *endpoint, signals, *ready_fd);
  if (!child.ok()) return child.status();
  if (absl::Status st = acceptor.Start(); !st.ok()) return st;
  int exit_code = WaitForShutdown(signals.fd, *child);
  Notify("STOPPING=1\nSTATUS=stopping: finishing the requests in flight, flushing the disk");
  // Stop accepting, finish in-flight requests, flush, close. The control socket first: it
  // waits for a request in progress (a pause is bounded).
  control->reset();
  live.StopMerges();  // a deletion in progress resumes at the next start
  acceptor.Stop();
  server.Shutdown();
  return CloseStorage(*std::move(storage), exit_code);
}

absl::StatusOr<int> ResolveAndServe(ServeOptions parsed) {
  ServeOptions o = Resolve(std::move(parsed));
  SetLogLevel(o.log_level);
  WarnIfNoSyslog(o);
  RaiseOpenFileLimit();
  return Serve(o);
}

}  // namespace

absl::StatusOr<int> ServeInProcess(const std::vector<std::string>& words) {
  absl::StatusOr<ServeOptions> parsed = ParseServeOptions(words);
  if (!parsed.ok()) return parsed.status();
  return ResolveAndServe(*std::move(parsed));
}

int ServeCommand(int argc, char** argv) {
  std::vector<std::string> words(argv + std::min(argc, 2), argv + argc);
  absl::StatusOr<ServeOptions> parsed = ParseServeOptions(words);
  if (!parsed.ok()) {
    fprintf(stderr, "strata serve: %s\n%s", std::string(parsed.status().message()).c_str(),
            ServeUsage().c_str());
    return 2;
  }
  if (parsed->help) {
    fputs(ServeUsage().c_str(), stdout);
    return 0;
  }
  absl::StatusOr<int> exit_code = ResolveAndServe(*std::move(parsed));
  if (!exit_code.ok()) return Fail(exit_code.status().message());
  STRATA_LOG(kInfo, "stopped");
  return *exit_code;
}

}  // namespace strata::cli
