#include "server/listener.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/log.h"

namespace strata {
namespace {

// The numeric host ("127.0.0.1", "::1") of an IPv4 or IPv6 address; *port gets the port.
std::string NumericHost(const sockaddr_storage& ss, int* port) {
  char host[INET6_ADDRSTRLEN] = "?";
  if (ss.ss_family == AF_INET6) {
    auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
    *port = ntohs(a->sin6_port);
  } else {
    auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
    *port = ntohs(a->sin_port);
  }
  return host;
}

// "127.0.0.1:10809" or "[::1]:10809".
std::string HostPort(const std::string& host, int port) {
  return absl::StrFormat(host.find(':') == std::string::npos ? "%s:%d" : "[%s]:%d", host, port);
}

std::string PeerName(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "?";
  if (ss.ss_family != AF_INET && ss.ss_family != AF_INET6) return "unix socket";
  int port;
  std::string host = NumericHost(ss, &port);
  return HostPort(host, port);
}

// A listening TCP socket at the address `ss` it is bound to.
Listener TcpListener(int fd, const sockaddr_storage& ss) {
  Listener l{.fd = fd};
  l.host = NumericHost(ss, &l.port);
  l.description = absl::StrCat("tcp:", HostPort(l.host, l.port));
  return l;
}

// A listening unix socket bound to `addr` (of `len` bytes): a file, an abstract name (shown as
// "@NAME", as systemd writes it) or nothing (an unnamed socket).
Listener UnixListener(int fd, const sockaddr_un& addr, socklen_t len) {
  const size_t name_len = len > offsetof(sockaddr_un, sun_path)
                              ? std::min<size_t>(len - offsetof(sockaddr_un, sun_path),
                                                 sizeof(addr.sun_path))
                              : 0;
  Listener l{.fd = fd};
  if (name_len == 0) {
    l.description = absl::StrFormat("unix:(unnamed socket at fd %d)", fd);
  } else if (addr.sun_path[0] == '\0') {
    l.description = absl::StrCat("unix:@", absl::string_view(addr.sun_path + 1, name_len - 1));
  } else {
    l.unix_path = std::string(addr.sun_path, strnlen(addr.sun_path, name_len));
    l.description = absl::StrCat("unix:", l.unix_path);
  }
  return l;
}

// Why nobody can accept on `fd`, if so. A socket unit with Accept=yes passes a connection, not
// a listener; ListenDatagram= passes a datagram socket.
absl::Status CheckListening(int fd) {
  int type = 0;
  socklen_t len = sizeof(type);
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "fd %d is %s: the service manager must pass listening sockets (ListenStream= in the "
        ".socket unit)",
        fd, errno == EBADF ? "not open" : errno == ENOTSOCK ? "not a socket" : strerror(errno)));
  }
  if (type != SOCK_STREAM) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "fd %d is not a stream socket (type %d): NBD needs ListenStream= in the .socket unit",
        fd, type));
  }
  int listening = 0;
  len = sizeof(listening);
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 || !listening) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "fd %d is a stream socket that does not listen: a .socket unit with Accept=yes passes "
        "connections; strata needs Accept=no (the default)",
        fd));
  }
  return absl::OkStatus();
}

// Whether a server accepts on the unix socket at `addr`; a socket file nobody accepts on is
// the leftover of a killed server.
bool SocketIsLive(const sockaddr_un& addr) {
  int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (probe < 0) return false;
  bool live = connect(probe, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0;
  close(probe);
  return live;
}

// Removes a stale socket file at `path`; refuses a live socket or any other kind of file.
absl::Status ClearSocketPath(const std::string& path, const sockaddr_un& addr) {
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) return absl::OkStatus();
  if (!S_ISSOCK(st.st_mode)) {
    return absl::AlreadyExistsError(absl::StrFormat("%s exists and is not a socket", path));
  }
  if (SocketIsLive(addr)) {
    return absl::AlreadyExistsError(
        absl::StrFormat("%s: another server is listening on this socket", path));
  }
  unlink(path.c_str());
  return absl::OkStatus();
}

// Binds and listens on `fd` at `path` with exactly `mode`.
absl::Status BindUnix(int fd, const std::string& path, const sockaddr_un& addr, unsigned mode) {
  // Create the file with no access for group and others from the start (no window where the
  // umask's permissions apply), then set exactly the requested mode.
  mode_t old = umask(0177);
  int ret = bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
  int bind_errno = errno;
  umask(old);
  if (ret != 0) return absl::ErrnoToStatus(bind_errno, absl::StrCat("bind ", path));
  if (chmod(path.c_str(), mode) != 0 || listen(fd, SOMAXCONN) != 0) {
    int e = errno;
    unlink(path.c_str());
    return absl::ErrnoToStatus(e, absl::StrCat("chmod/listen ", path));
  }
  return absl::OkStatus();
}

// One TCP listener on `ai`, described by the address it really got.
absl::StatusOr<Listener> ListenTcpOn(const addrinfo& ai, const std::string& address, int port) {
  int fd = socket(ai.ai_family, ai.ai_socktype | SOCK_CLOEXEC, ai.ai_protocol);
  if (fd < 0) return absl::ErrnoToStatus(errno, "socket(TCP)");
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(fd, ai.ai_addr, ai.ai_addrlen) != 0 || listen(fd, SOMAXCONN) != 0) {
    int e = errno;
    close(fd);
    return absl::ErrnoToStatus(e, absl::StrFormat("bind/listen %s:%d", address, port));
  }
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  return TcpListener(fd, ss);
}

}  // namespace

absl::StatusOr<Listener> ListenUnix(const std::string& path, unsigned mode) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "socket path %s is longer than %d bytes", path, sizeof(addr.sun_path) - 1));
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::ErrnoToStatus(errno, "socket(AF_UNIX)");
  absl::Status st = ClearSocketPath(path, addr);
  if (st.ok()) st = BindUnix(fd, path, addr, mode);
  if (!st.ok()) {
    close(fd);
    return st;
  }
  return Listener{.fd = fd,
                  .description = absl::StrCat("unix:", path),
                  .unix_path = path,
                  .remove_file = true};
}

absl::StatusOr<Listener> ListenTcp(const std::string& address, int port) {
  std::string host = address;
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  std::string service = absl::StrCat(port);
  if (int rc = getaddrinfo(host.c_str(), service.c_str(), &hints, &res); rc != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--listen %s:%d: %s", address, port, gai_strerror(rc)));
  }
  // The first address that binds wins (e.g. "localhost" may resolve to ::1 and 127.0.0.1).
  absl::StatusOr<Listener> l = absl::UnavailableError("no address");
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    l = ListenTcpOn(*ai, address, port);
    if (l.ok()) break;
  }
  freeaddrinfo(res);
  return l;
}

void CloseListener(Listener* l) {
  if (l->fd >= 0) close(l->fd);
  l->fd = -1;
  if (l->remove_file) unlink(l->unix_path.c_str());
  l->remove_file = false;
}

absl::StatusOr<Listener> AdoptListener(int fd) {
  if (absl::Status st = CheckListening(fd); !st.ok()) return st;
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrFormat("getsockname of fd %d", fd));
  }
  // Our children (a --run command) must not hold the listener open after we stop.
  fcntl(fd, F_SETFD, FD_CLOEXEC);
  if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6) return TcpListener(fd, ss);
  if (ss.ss_family == AF_UNIX) return UnixListener(fd, reinterpret_cast<sockaddr_un&>(ss), len);
  return absl::FailedPreconditionError(absl::StrFormat(
      "fd %d is a socket of address family %d: strata serves unix and TCP sockets", fd,
      ss.ss_family));
}

namespace {

// The value of `name` ("" when unset), which is then unset.
std::string TakeEnv(const char* name) {
  const char* value = getenv(name);
  std::string taken = value == nullptr ? "" : value;
  unsetenv(name);
  return taken;
}

// Every descriptor from first_fd on, `n` of them, or the first one's error.
absl::StatusOr<std::vector<Listener>> AdoptAll(int first_fd, int n) {
  std::vector<Listener> listeners;
  for (int fd = first_fd; fd < first_fd + n; ++fd) {
    absl::StatusOr<Listener> l = AdoptListener(fd);
    if (!l.ok()) {
      for (Listener& adopted : listeners) CloseListener(&adopted);
      return l.status();
    }
    listeners.push_back(*std::move(l));
  }
  return listeners;
}

}  // namespace

absl::StatusOr<std::vector<Listener>> PassedListeners(int first_fd) {
  const std::string pid = TakeEnv("LISTEN_PID");
  const std::string fds = TakeEnv("LISTEN_FDS");
  TakeEnv("LISTEN_FDNAMES");
  if (fds.empty()) return std::vector<Listener>();
  int listen_pid = 0;
  if (!absl::SimpleAtoi(pid, &listen_pid) || listen_pid != getpid()) {
    // They were meant for the process that started us (it did not unset them).
    STRATA_LOG(kInfo, "LISTEN_FDS=%s is for LISTEN_PID=%s, not this process (%d): ignored", fds,
               pid, getpid());
    return std::vector<Listener>();
  }
  int n = 0;
  if (!absl::SimpleAtoi(fds, &n) || n < 0 || n > 1024) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "LISTEN_FDS=\"%s\" is not a number of passed sockets (socket activation)", fds));
  }
  absl::StatusOr<std::vector<Listener>> listeners = AdoptAll(first_fd, n);
  if (listeners.ok()) return listeners;
  return absl::Status(listeners.status().code(),
                      absl::StrFormat("socket activation (LISTEN_FDS=%d): %s", n,
                                      listeners.status().message()));
}

AcceptLoop::AcceptLoop(Handler on_connection) : on_connection_(std::move(on_connection)) {}

AcceptLoop::~AcceptLoop() { Stop(); }

void AcceptLoop::Add(Listener listener) { listeners_.push_back(std::move(listener)); }

absl::Status AcceptLoop::Start() {
  wake_fd_ = eventfd(0, EFD_CLOEXEC);
  if (wake_fd_ < 0) return absl::ErrnoToStatus(errno, "eventfd for the accept loop");
  spare_fd_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
  // Non-blocking, so AcceptAll can take every pending connection and stop at EAGAIN.
  for (Listener& l : listeners_) fcntl(l.fd, F_SETFL, fcntl(l.fd, F_GETFL) | O_NONBLOCK);
  thread_ = std::thread([this] { Run(); });
  return absl::OkStatus();
}

void AcceptLoop::Stop() {
  if (thread_.joinable()) {
    uint64_t one = 1;
    (void)!write(wake_fd_, &one, sizeof(one));
    thread_.join();
  }
  if (wake_fd_ >= 0) close(wake_fd_);
  wake_fd_ = -1;
  if (spare_fd_ >= 0) close(spare_fd_);
  spare_fd_ = -1;
  for (Listener& l : listeners_) CloseListener(&l);
}

// How long accepting pauses once the process is out of descriptors: a pending connection
// would otherwise wake poll at once, again and again (the loop spun at 99% CPU).
constexpr int kOutOfDescriptorsPauseMs = 100;

void AcceptLoop::Run() {
  std::vector<pollfd> fds = {{wake_fd_, POLLIN, 0}};
  for (const Listener& l : listeners_) fds.push_back({l.fd, POLLIN, 0});
  bool paused = false;
  for (;;) {
    // While paused only the wake-up is polled, for the pause.
    if (poll(fds.data(), paused ? 1 : fds.size(), paused ? kOutOfDescriptorsPauseMs : -1) < 0) {
      if (errno == EINTR) continue;
      STRATA_LOG(kError, "accept loop: poll: %s; no more connections are accepted",
                 strerror(errno));
      return;
    }
    if (fds[0].revents & POLLIN) return;
    if (paused) {
      paused = false;
      continue;
    }
    for (size_t i = 1; i < fds.size(); ++i) {
      if ((fds[i].revents & POLLIN) && !AcceptAll(listeners_[i - 1])) paused = true;
    }
  }
}

void AcceptLoop::Shed(const Listener& l, int err) {
  if (spare_fd_ >= 0) {
    close(spare_fd_);
    int fd = accept4(l.fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd >= 0) {
      close(fd);
      ++shed_;
    }
    spare_fd_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
  }
  const auto now = std::chrono::steady_clock::now();
  if (now - last_shed_log_ < std::chrono::seconds(1)) return;
  last_shed_log_ = now;
  STRATA_LOG(kError,
             "accept on %s: %s: connections are closed as they arrive until descriptors free up "
             "(%llu closed since the last such line; raise the limit with `ulimit -n`)",
             l.description, strerror(err), static_cast<unsigned long long>(shed_));
  shed_ = 0;
}

bool AcceptLoop::AcceptAll(const Listener& l) {
  for (;;) {
    int fd = accept4(l.fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      const int err = errno;
      if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
        Shed(l, err);
        return false;
      }
      if (err != EAGAIN && err != EINTR && err != ECONNABORTED) {
        STRATA_LOG_LIMITED(kError, "accept on %s: %s", l.description, strerror(err));
      }
      return true;
    }
    if (l.tcp()) {
      // NBD replies are small and latency-bound: do not let Nagle hold them back.
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    on_connection_(fd, l.tcp() ? PeerName(fd) : l.description);
  }
}

}  // namespace strata
