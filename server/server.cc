#include "server/server.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/log.h"

namespace strata {

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

  struct stat st;
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      close(fd);
      return absl::AlreadyExistsError(absl::StrFormat("%s exists and is not a socket", path));
    }
    // A socket file: live if someone accepts on it, else a leftover of a killed server.
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    bool live = probe >= 0 && connect(probe, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    if (probe >= 0) close(probe);
    if (live) {
      close(fd);
      return absl::AlreadyExistsError(
          absl::StrFormat("%s: another server is listening on this socket", path));
    }
    unlink(path.c_str());
  }
  // Create the file with no access for group and others from the start (no window where the
  // umask's permissions apply), then set exactly the requested mode.
  mode_t old = umask(0177);
  int ret = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  int bind_errno = errno;
  umask(old);
  if (ret != 0) {
    close(fd);
    return absl::ErrnoToStatus(bind_errno, absl::StrCat("bind ", path));
  }
  if (chmod(path.c_str(), mode) != 0 || listen(fd, SOMAXCONN) != 0) {
    int e = errno;
    close(fd);
    unlink(path.c_str());
    return absl::ErrnoToStatus(e, absl::StrCat("chmod/listen ", path));
  }
  return Listener{fd, absl::StrCat("unix:", path), path};
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
  absl::Status last = absl::UnavailableError("no address");
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      last = absl::ErrnoToStatus(errno, "socket(TCP)");
      continue;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, SOMAXCONN) != 0) {
      last = absl::ErrnoToStatus(errno, absl::StrFormat("bind/listen %s:%d", address, port));
      close(fd);
      continue;
    }
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
    char shown[INET6_ADDRSTRLEN] = "?";
    int real_port = 0;
    std::string description;
    if (ss.ss_family == AF_INET6) {
      auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
      inet_ntop(AF_INET6, &a->sin6_addr, shown, sizeof(shown));
      real_port = ntohs(a->sin6_port);
      description = absl::StrFormat("tcp:[%s]:%d", shown, real_port);
    } else {
      auto* a = reinterpret_cast<sockaddr_in*>(&ss);
      inet_ntop(AF_INET, &a->sin_addr, shown, sizeof(shown));
      real_port = ntohs(a->sin_port);
      description = absl::StrFormat("tcp:%s:%d", shown, real_port);
    }
    freeaddrinfo(res);
    return Listener{fd, description, ""};
  }
  freeaddrinfo(res);
  return last;
}

void CloseListener(Listener* l) {
  if (l->fd >= 0) close(l->fd);
  l->fd = -1;
  if (!l->unix_path.empty()) unlink(l->unix_path.c_str());
  l->unix_path.clear();
}

Server::Server(const ExportTable* exports, ServerOptions options)
    : exports_(exports), options_(options) {}

Server::~Server() { Shutdown(); }

absl::Status Server::Start() {
  pool_ = std::make_unique<BlockingPool>(options_.blocking_threads);
  for (int i = 0; i < options_.workers; ++i) {
    auto w = std::make_unique<Worker>(i, exports_, pool_.get(), &no_space_, options_.limits);
    absl::Status st = w->Init();
    if (!st.ok()) return st;
    workers_.push_back(std::move(w));
  }
  for (auto& w : workers_) w->Start();
  return absl::OkStatus();
}

void Server::AddConnection(int fd, std::string peer) {
  unsigned i = next_worker_.fetch_add(1) % workers_.size();
  workers_[i]->AddConnection(fd, std::move(peer));
}

absl::Status Server::RunPaused(const std::function<absl::Status()>& fn, absl::Duration* pause,
                              absl::Duration drain_timeout) {
  absl::MutexLock serialize(&pause_mu_);
  const absl::Time begin = absl::Now();
  // Shared with the workers' callbacks: after a timeout we return while a worker may still
  // drain later and call back, so the count cannot live on this stack frame.
  struct Drain {
    absl::Mutex mu;
    int left ABSL_GUARDED_BY(mu) = 0;
  };
  auto drain = std::make_shared<Drain>();
  {
    absl::MutexLock lock(&drain->mu);
    drain->left = static_cast<int>(workers_.size());
  }
  for (auto& w : workers_) {
    w->Pause([drain] {
      absl::MutexLock lock(&drain->mu);
      --drain->left;
    });
  }
  int left;
  {
    absl::MutexLock lock(&drain->mu);
    auto drained = [d = drain.get()]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(d->mu) { return d->left == 0; };
    drain->mu.AwaitWithTimeout(absl::Condition(&drained), drain_timeout);
    left = drain->left;
  }
  absl::Status st;
  if (left > 0) {
    st = absl::DeadlineExceededError(absl::StrFormat(
        "%d of %d workers still had requests running or replies unsent after %s (a client "
        "that stops reading its socket holds its replies); nothing was done, I/O resumed",
        left, workers_.size(), absl::FormatDuration(drain_timeout)));
  } else {
    st = fn();
  }
  for (auto& w : workers_) w->Resume();
  if (pause != nullptr) *pause = absl::Now() - begin;
  return st;
}

absl::StatusOr<std::vector<WorkerStats>> Server::CollectStats(absl::Duration timeout) {
  struct Gather {
    absl::Mutex mu;
    std::vector<WorkerStats> stats ABSL_GUARDED_BY(mu);
    size_t done ABSL_GUARDED_BY(mu) = 0;
  };
  auto g = std::make_shared<Gather>();
  const size_t n = workers_.size();
  for (auto& w : workers_) {
    w->CollectStats([g](WorkerStats ws) {
      absl::MutexLock lock(&g->mu);
      g->stats.push_back(std::move(ws));
      ++g->done;
    });
  }
  absl::MutexLock lock(&g->mu);
  auto all = [gp = g.get(), n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(gp->mu) { return gp->done == n; };
  if (!g->mu.AwaitWithTimeout(absl::Condition(&all), timeout)) {
    return absl::DeadlineExceededError(
        absl::StrFormat("stats: %d of %d workers did not answer within %s", n - g->done, n,
                        absl::FormatDuration(timeout)));
  }
  return g->stats;
}

void Server::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  for (auto& w : workers_) w->Shutdown();
  const absl::Time deadline = absl::Now() + options_.shutdown_grace;
  bool forced = false;
  for (auto& w : workers_) {
    if (!forced && !w->WaitStopped(deadline)) {
      forced = true;
      STRATA_LOG(kError, "shutdown: connections still open after %s (a client that does not "
                         "read its replies?): closing their sockets",
                 absl::FormatDuration(options_.shutdown_grace));
      for (auto& x : workers_) x->AbortConnections();
    }
  }
  for (auto& w : workers_) w->Join();
  workers_.clear();
  pool_.reset();  // runs what is queued, then joins
}

}  // namespace strata
