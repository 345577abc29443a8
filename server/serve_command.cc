#include "server/serve_command.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/chain_storage.h"
#include "server/control_socket.h"
#include "server/export.h"
#include "server/live_control.h"
#include "server/server.h"

namespace strata {

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
                         with --listen and no --socket, no unix socket is created
  --export-name NAME     export name (default "")
  --read-only            refuse writes
  --cache=none|writeback none: O_DIRECT, bypass the host page cache; writeback: use it (default)
  --workers N            I/O threads (default: number of CPUs, at most 4)
  --log-level=error|info|debug   (default info; logs go to stderr)
  --foreground           do not daemonize (implied by --run)
  --pid-file FILE        write the server's pid once it is listening
  --shutdown-timeout S   on SIGTERM/SIGINT, wait at most S seconds (default 10) for clients
                         to take the replies of requests already started; then close them
  --run 'CMD'            captive mode: run CMD via /bin/sh -c with $uri, $nbd, $unixsocket
                         (or $port), $exportname set; stop when it exits and return its status
)";
}

absl::StatusOr<ServeOptions> ParseServeOptions(const std::vector<std::string>& args) {
  ServeOptions o;
  std::vector<std::string> positional;
  bool options_done = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (options_done || arg.size() < 2 || arg[0] != '-') {
      positional.push_back(arg);
      continue;
    }
    if (arg == "--") {
      options_done = true;
      continue;
    }
    if (arg == "-h" || arg == "--help") {
      o.help = true;
      continue;
    }
    std::string name = arg;
    std::optional<std::string> inline_value;
    if (size_t eq = arg.find('='); eq != std::string::npos) {
      name = arg.substr(0, eq);
      inline_value = arg.substr(eq + 1);
    }
    auto flag = [&](bool* out) -> absl::Status {
      if (inline_value) return absl::InvalidArgumentError(name + " takes no value");
      *out = true;
      return absl::OkStatus();
    };
    auto value = [&]() -> absl::StatusOr<std::string> {
      if (inline_value) return *inline_value;
      if (i + 1 >= args.size()) return absl::InvalidArgumentError(name + " needs a value");
      return args[++i];
    };
    absl::Status st;
    if (name == "--read-only") {
      st = flag(&o.read_only);
    } else if (name == "--foreground") {
      st = flag(&o.foreground);
    } else if (name == "--no-control") {
      st = flag(&o.no_control);
    } else if (name == "--socket" || name == "--control" || name == "--socket-mode" || name == "--listen" ||
               name == "--export-name" || name == "--cache" || name == "--workers" ||
               name == "--log-level" || name == "--pid-file" || name == "--run" ||
               name == "--shutdown-timeout") {
      absl::StatusOr<std::string> v = value();
      if (!v.ok()) return v.status();
      if (name == "--socket") {
        if (v->empty()) return absl::InvalidArgumentError("--socket: empty path");
        o.socket = *v;
      } else if (name == "--control") {
        if (v->empty()) return absl::InvalidArgumentError("--control: empty path");
        o.control = *v;
      } else if (name == "--socket-mode") {
        char* end = nullptr;
        unsigned long mode = strtoul(v->c_str(), &end, 8);
        if (v->empty() || *end != '\0' || mode > 0777) {
          return absl::InvalidArgumentError(
              absl::StrFormat("--socket-mode: \"%s\" is not an octal mode like 0600", *v));
        }
        o.socket_mode = static_cast<unsigned>(mode);
      } else if (name == "--listen") {
        size_t colon = v->rfind(':');
        int port;
        if (colon == std::string::npos || !absl::SimpleAtoi(v->substr(colon + 1), &port) ||
            port < 0 || port > 65535) {
          return absl::InvalidArgumentError(
              absl::StrFormat("--listen: \"%s\" is not ADDR:PORT or :PORT", *v));
        }
        std::string addr = v->substr(0, colon);
        o.listen_address = addr.empty() ? "127.0.0.1" : addr;
        o.listen_port = port;
      } else if (name == "--export-name") {
        if (v->size() > 4096) return absl::InvalidArgumentError("--export-name: over 4096 bytes");
        o.export_name = *v;
      } else if (name == "--cache") {
        if (*v == "none") {
          o.cache = CacheMode::kNone;
        } else if (*v == "writeback") {
          o.cache = CacheMode::kWriteback;
        } else {
          return absl::InvalidArgumentError(
              absl::StrFormat("--cache: \"%s\" is not none or writeback", *v));
        }
      } else if (name == "--workers") {
        if (!absl::SimpleAtoi(*v, &o.workers) || o.workers < 1 || o.workers > 64) {
          return absl::InvalidArgumentError(
              absl::StrFormat("--workers: \"%s\" is not a number from 1 to 64", *v));
        }
      } else if (name == "--log-level") {
        if (!ParseLogLevel(*v, &o.log_level)) {
          return absl::InvalidArgumentError(
              absl::StrFormat("--log-level: \"%s\" is not error, info or debug", *v));
        }
      } else if (name == "--shutdown-timeout") {
        if (!absl::SimpleAtoi(*v, &o.shutdown_timeout_s) || o.shutdown_timeout_s < 0 ||
            o.shutdown_timeout_s > 86400) {
          return absl::InvalidArgumentError(absl::StrFormat(
              "--shutdown-timeout: \"%s\" is not a number of seconds from 0 to 86400", *v));
        }
      } else if (name == "--pid-file") {
        if (v->empty()) return absl::InvalidArgumentError("--pid-file: empty path");
        o.pid_file = *v;
      } else {  // --run
        if (v->empty()) return absl::InvalidArgumentError("--run: empty command");
        o.run = *v;
      }
    } else {
      return absl::InvalidArgumentError(absl::StrFormat("unknown option %s", name));
    }
    if (!st.ok()) return st;
  }
  if (o.help) return o;
  if (positional.size() != 1) {
    return absl::InvalidArgumentError(
        positional.empty() ? "missing LAYER"
                           : absl::StrFormat("expected one LAYER, got %d arguments",
                                             positional.size()));
  }
  o.layer = positional[0];
  if (!o.run.empty()) o.foreground = true;
  if (o.no_control && o.control) {
    return absl::InvalidArgumentError("--control and --no-control contradict each other");
  }
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

std::string Absolute(const std::string& path) {
  if (!path.empty() && path[0] == '/') return path;
  char cwd[PATH_MAX];
  if (getcwd(cwd, sizeof(cwd)) == nullptr) return path;
  std::string p = path;
  while (absl::StartsWith(p, "./")) p = p.substr(2);
  return absl::StrCat(cwd, "/", p);
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

std::string PeerName(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "?";
  char host[INET6_ADDRSTRLEN] = "?";
  if (ss.ss_family == AF_INET) {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
    return absl::StrFormat("%s:%d", host, ntohs(a->sin_port));
  }
  if (ss.ss_family == AF_INET6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
    return absl::StrFormat("[%s]:%d", host, ntohs(a->sin6_port));
  }
  return "unix socket";
}

int Fail(const std::string& message) {
  fprintf(stderr, "strata serve: %s\n", message.c_str());
  return 1;
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

}  // namespace

std::string UnixUri(const std::string& socket_path, const std::string& export_name) {
  return absl::StrCat("nbd+unix:///", UriEncode(export_name), "?socket=", UriEncode(socket_path));
}

std::string TcpUri(const std::string& host, int port, const std::string& export_name) {
  std::string h = host.find(':') != std::string::npos && host[0] != '[' ? "[" + host + "]" : host;
  return absl::StrFormat("nbd://%s:%d/%s", h, port, UriEncode(export_name));
}

namespace {

// Parses the arguments into *o and resolves every path in it. Returns the exit code when there
// is nothing to serve (--help, a usage error).
std::optional<int> PrepareOptions(int argc, char** argv, ServeOptions* o) {
  std::vector<std::string> args(argv + std::min(argc, 1), argv + argc);
  absl::StatusOr<ServeOptions> parsed = ParseServeOptions(args);
  if (!parsed.ok()) {
    fprintf(stderr, "strata serve: %s\n%s", std::string(parsed.status().message()).c_str(),
            ServeUsage().c_str());
    return 2;
  }
  *o = *std::move(parsed);
  if (o->help) {
    fputs(ServeUsage().c_str(), stdout);
    return 0;
  }
  SetLogLevel(o->log_level);
  if (o->workers == 0) {
    o->workers = std::clamp<int>(static_cast<int>(std::thread::hardware_concurrency()), 1, 4);
  }
  // The daemon changes to "/": every path the user gave is resolved against the working
  // directory now, or the control socket, the snapshot files and the @NAME exports would be
  // looked for under "/".
  o->layer = Absolute(o->layer);
  if (o->control) o->control = Absolute(*o->control);
  if (o->socket) o->socket = Absolute(*o->socket);
  if (!o->pid_file.empty()) o->pid_file = Absolute(o->pid_file);
  return std::nullopt;
}

absl::StatusOr<std::unique_ptr<ChainStorage>> OpenDisk(const ServeOptions& o) {
  absl::StatusOr<std::unique_ptr<ChainStorage>> storage =
      OpenChainStorage(o.layer, !o.read_only, o.cache == CacheMode::kNone);
  if (!storage.ok() && storage.status().code() == absl::StatusCode::kFailedPrecondition &&
      !o.read_only) {
    return absl::FailedPreconditionError(absl::StrCat(
        storage.status().message(), " (a frozen snapshot can be served with --read-only)"));
  }
  return storage;
}

// Where the server listens, and the URI that names it.
struct Endpoints {
  std::vector<Listener> listeners;
  std::string uri, unix_path;
  int tcp_port = 0;
  void Close() {
    for (Listener& l : listeners) CloseListener(&l);
  }
};

// Opens the listeners (non-blocking); on failure none is left open.
absl::Status Listen(const ServeOptions& o, Endpoints* e) {
  if (o.socket || !o.listen_address) {
    e->unix_path = Absolute(o.socket.value_or(DefaultSocketPath(o.layer)));
    absl::StatusOr<Listener> l = ListenUnix(e->unix_path, o.socket_mode);
    if (!l.ok()) return l.status();
    e->listeners.push_back(*l);
    e->uri = UnixUri(e->unix_path, o.export_name);
  }
  if (o.listen_address) {
    absl::StatusOr<Listener> l = ListenTcp(*o.listen_address, o.listen_port);
    if (!l.ok()) {
      e->Close();
      return l.status();
    }
    e->listeners.push_back(*l);
    e->tcp_port = std::stoi(l->description.substr(l->description.rfind(':') + 1));
    if (e->uri.empty()) e->uri = TcpUri(*o.listen_address, e->tcp_port, o.export_name);
  }
  for (Listener& l : e->listeners) fcntl(l.fd, F_SETFL, fcntl(l.fd, F_GETFL) | O_NONBLOCK);
  return absl::OkStatus();
}

// Forks the daemon (before any thread exists): the parent waits until it serves, tells the
// user where, and exits. Returns the parent's exit code, or nullopt in the daemon, with
// *ready_fd the pipe to write once serving.
std::optional<int> Daemonize(const ServeOptions& o, const std::string& uri, int* ready_fd) {
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) != 0) return Fail(absl::StrCat("pipe: ", strerror(errno)));
  pid_t pid = fork();
  if (pid < 0) return Fail(absl::StrCat("fork: ", strerror(errno)));
  if (pid > 0) {
    // Parent: wait until the daemon is serving, then tell the user where.
    close(pipefd[1]);
    char c;
    ssize_t n;
    do {
      n = read(pipefd[0], &c, 1);
    } while (n < 0 && errno == EINTR);
    if (n != 1) {
      int status = 0;
      waitpid(pid, &status, 0);
      return WIFEXITED(status) && WEXITSTATUS(status) != 0 ? WEXITSTATUS(status) : 1;
    }
    printf("serving %s at %s\nnbdinfo '%s'\n", o.layer.c_str(), uri.c_str(), uri.c_str());
    fflush(stdout);
    _exit(0);  // the daemon owns the socket file and the storage now
  }
  close(pipefd[0]);
  *ready_fd = pipefd[1];
  setsid();
  if (chdir("/") != 0) {
    // Harmless: every path we keep is absolute.
  }
  int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (devnull >= 0) {
    dup2(devnull, STDIN_FILENO);
    dup2(devnull, STDOUT_FILENO);
    close(devnull);
  }
  // stderr stays: it is where the log goes.
  return std::nullopt;
}

// SIGINT, SIGTERM and SIGCHLD are blocked (threads inherit the mask) and read from the
// returned signalfd in the accept loop; -1 on failure. *old_mask is the mask before.
int BlockSignals(sigset_t* old_mask) {
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGCHLD);
  pthread_sigmask(SIG_BLOCK, &mask, old_mask);
  signal(SIGPIPE, SIG_IGN);
  return signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
}

// Starts --run's command with the NBD variables nbdkit's --run sets; its pid (-1: fork failed).
pid_t StartRunCommand(const ServeOptions& o, const Endpoints& e, const sigset_t& old_mask) {
  pid_t child = fork();
  if (child != 0) return child;
  pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  signal(SIGPIPE, SIG_DFL);
  setenv("uri", e.uri.c_str(), 1);
  setenv("exportname", o.export_name.c_str(), 1);
  std::string nbd;
  if (!e.unix_path.empty()) {
    setenv("unixsocket", e.unix_path.c_str(), 1);
    nbd = absl::StrCat("nbd:unix:", e.unix_path);
  } else {
    setenv("port", absl::StrCat(e.tcp_port).c_str(), 1);
    nbd = absl::StrFormat("nbd:%s:%d", *o.listen_address, e.tcp_port);
  }
  if (!o.export_name.empty()) absl::StrAppend(&nbd, ":exportname=", o.export_name);
  setenv("nbd", nbd.c_str(), 1);
  execl("/bin/sh", "sh", "-c", o.run.c_str(), static_cast<char*>(nullptr));
  _exit(127);
}

// Handles the signals read from `sig_fd`; false once the server is to shut down (*exit_code
// then set from --run's command when that ended).
bool HandleSignals(int sig_fd, pid_t* child, int* exit_code) {
  bool running = true;
  signalfd_siginfo si;
  while (read(sig_fd, &si, sizeof(si)) == sizeof(si)) {
    if (si.ssi_signo == SIGCHLD) {
      int status;
      if (*child > 0 && waitpid(*child, &status, WNOHANG) == *child) {
        *exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        STRATA_LOG(kInfo, "--run command exited with status %d: shutting down", *exit_code);
        *child = -1;
        running = false;
      }
    } else {
      STRATA_LOG(kInfo, "received %s: shutting down", strsignal(si.ssi_signo));
      running = false;
    }
  }
  return running;
}

// Accepts every pending connection on `l` and hands it to the server.
void AcceptAll(const Listener& l, Server* server) {
  for (;;) {
    int fd = accept4(l.fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
        STRATA_LOG(kError, "accept on %s: %s", l.description, strerror(errno));
      }
      return;
    }
    if (l.unix_path.empty()) {
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    server->AddConnection(fd, l.unix_path.empty() ? PeerName(fd) : l.description);
  }
}

// Accepts until a signal or the captive command ends; returns the exit code so far.
int AcceptLoop(int sig_fd, const Endpoints& e, Server* server, pid_t child) {
  int exit_code = 0;
  bool running = true;
  while (running) {
    std::vector<pollfd> fds;
    fds.push_back({sig_fd, POLLIN, 0});
    for (const Listener& l : e.listeners) fds.push_back({l.fd, POLLIN, 0});
    if (poll(fds.data(), fds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      STRATA_LOG(kError, "poll: %s", strerror(errno));
      break;
    }
    if (fds[0].revents & POLLIN) running = HandleSignals(sig_fd, &child, &exit_code);
    for (size_t i = 1; running && i < fds.size(); ++i) {
      if (fds[i].revents & POLLIN) AcceptAll(e.listeners[i - 1], server);
    }
  }
  return exit_code;
}

// Starts the control socket on `live` (null with --no-control).
absl::StatusOr<std::unique_ptr<ControlSocket>> StartControl(const ServeOptions& o,
                                                            const std::string& path,
                                                            LiveControl* live) {
  if (o.no_control) return nullptr;
  absl::StatusOr<std::unique_ptr<ControlSocket>> c = ControlSocket::Start(
      path, 0600, [live](const nlohmann::json& request, nlohmann::json* reply) {
        return live->Handle(request, reply);
      });
  if (!c.ok()) {
    return absl::Status(c.status().code(), absl::StrCat("control socket: ", c.status().message(),
                                                        " (--control PATH elsewhere, or "
                                                        "--no-control)"));
  }
  return c;
}

// Tells whoever started us that we serve: the daemon's parent (which prints where), else the
// user.
void AnnounceReady(const ServeOptions& o, const std::string& uri, int ready_fd) {
  if (ready_fd >= 0) {
    char c = 'R';
    ssize_t ignored = write(ready_fd, &c, 1);
    (void)ignored;
    close(ready_fd);
  } else {
    printf("serving %s at %s\nnbdinfo '%s'\n", o.layer.c_str(), uri.c_str(), uri.c_str());
    fflush(stdout);
  }
}

// Serves `exports` (the disk `storage` first) on *e until a signal or --run's command ends,
// then stops accepting, finishes in-flight requests and flushes. Returns the exit code, or
// why serving could not start (the listeners closed).
absl::StatusOr<int> Serve(const ServeOptions& o, ExportTable* exports, ChainStorage* storage,
                          Endpoints* e, int ready_fd, int sig_fd, const sigset_t& old_mask) {
  ServerOptions server_options;
  server_options.workers = o.workers;
  server_options.shutdown_grace = absl::Seconds(o.shutdown_timeout_s);
  Server server(exports, server_options);
  if (absl::Status st = server.Start(); !st.ok()) {
    e->Close();
    return st;
  }
  // Live control: snapshot exports of the chain's existing snapshots, and the control socket.
  LiveControlOptions live_options;
  if (!o.no_control) {
    live_options.control_path = Absolute(o.control.value_or(DefaultControlPath(o.layer)));
  }
  LiveControl live(&server, exports, storage, live_options);
  live.AddSnapshotExports();
  absl::StatusOr<std::unique_ptr<ControlSocket>> control =
      StartControl(o, live_options.control_path, &live);
  absl::Status st = control.status();
  if (st.ok() && !o.pid_file.empty()) st = WritePidFile(o.pid_file);
  if (st.ok()) {
    std::string where;
    for (const Listener& l : e->listeners) {
      absl::StrAppend(&where, where.empty() ? "" : ", ", l.description);
    }
    STRATA_LOG(kInfo, "serving %s (%s, cache=%s%s) on %s with %d workers%s", o.layer,
               exports->Find("")->description, Name(o.cache),
               exports->Find("")->read_only ? ", read-only" : "", where, o.workers,
               *control ? absl::StrCat("; control socket ", (*control)->path()) : "");
  }
  pid_t child = -1;
  if (st.ok() && !o.run.empty()) {
    child = StartRunCommand(o, *e, old_mask);
    if (child < 0) st = absl::InternalError(absl::StrCat("fork for --run: ", strerror(errno)));
  }
  if (!st.ok()) {
    if (control.ok()) control->reset();
    server.Shutdown();
    e->Close();
    return st;
  }
  if (o.run.empty()) AnnounceReady(o, e->uri, ready_fd);
  int exit_code = AcceptLoop(sig_fd, *e, &server, child);
  // The control socket first: it waits for a request in progress (a pause is bounded).
  control->reset();
  e->Close();
  server.Shutdown();
  if (storage->writable()) {
    if (absl::Status flushed = storage->Flush(); !flushed.ok()) {
      STRATA_LOG(kError, "final flush failed: %s", flushed.message());
      if (exit_code == 0) exit_code = 1;
    }
  }
  return exit_code;
}

}  // namespace

int ServeMain(int argc, char** argv) {
  ServeOptions o;
  if (std::optional<int> done = PrepareOptions(argc, argv, &o)) return *done;
  RaiseOpenFileLimit();
  absl::StatusOr<std::unique_ptr<ChainStorage>> storage = OpenDisk(o);
  if (!storage.ok()) return Fail(std::string(storage.status().message()));
  ExportTable exports;
  // Read-only when --read-only opened the chain so (or it could only be opened so).
  exports.Add(NewExport(o.export_name, (*storage)->Describe(), storage->get()));
  Endpoints e;
  if (absl::Status st = Listen(o, &e); !st.ok()) return Fail(std::string(st.message()));
  int ready_fd = -1;
  if (!o.foreground) {
    if (std::optional<int> parent = Daemonize(o, e.uri, &ready_fd)) return *parent;
  }
  sigset_t old_mask;
  const int sig_fd = BlockSignals(&old_mask);
  if (sig_fd < 0) {
    e.Close();
    return Fail(absl::StrCat("signalfd: ", strerror(errno)));
  }
  absl::StatusOr<int> exit_code =
      Serve(o, &exports, storage->get(), &e, ready_fd, sig_fd, old_mask);
  if (!exit_code.ok()) return Fail(std::string(exit_code.status().message()));
  storage->reset();
  if (!o.pid_file.empty()) unlink(o.pid_file.c_str());
  close(sig_fd);
  STRATA_LOG(kInfo, "stopped");
  return *exit_code;
}

}  // namespace strata
