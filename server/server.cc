#include "server/server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/blocking_counter.h"
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
  sockaddr_storage ss{};
  socklen_t len;
  int family;
  std::string host = address;
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  auto* v4 = reinterpret_cast<sockaddr_in*>(&ss);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&ss);
  if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
    family = AF_INET;
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    len = sizeof(*v4);
  } else if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
    family = AF_INET6;
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    len = sizeof(*v6);
  } else {
    return absl::InvalidArgumentError(
        absl::StrFormat("--listen: \"%s\" is not a numeric IPv4 or IPv6 address", address));
  }
  int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::ErrnoToStatus(errno, "socket(TCP)");
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || listen(fd, SOMAXCONN) != 0) {
    int e = errno;
    close(fd);
    return absl::ErrnoToStatus(e, absl::StrFormat("bind/listen %s:%d", address, port));
  }
  getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  int real_port = ntohs(family == AF_INET ? v4->sin_port : v6->sin6_port);
  std::string shown = family == AF_INET6 ? absl::StrCat("[", host, "]") : host;
  return Listener{fd, absl::StrFormat("tcp:%s:%d", shown, real_port), ""};
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
    auto w = std::make_unique<Worker>(i, exports_, pool_.get(), options_.limits);
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

absl::Status Server::RunPaused(const std::function<absl::Status()>& fn, absl::Duration* pause) {
  absl::MutexLock serialize(&pause_mu_);
  const absl::Time begin = absl::Now();
  absl::BlockingCounter drained(static_cast<int>(workers_.size()));
  for (auto& w : workers_) w->Pause([&drained] { drained.DecrementCount(); });
  drained.Wait();
  absl::Status st = fn();
  // fn may have changed the chain (a snapshot adds a layer): let storage re-read what it caches.
  for (const auto& e : exports_->List()) e->storage->Refresh();
  for (auto& w : workers_) w->Resume();
  if (pause != nullptr) *pause = absl::Now() - begin;
  return st;
}

void Server::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  for (auto& w : workers_) w->Shutdown();
  for (auto& w : workers_) w->Join();
  workers_.clear();
  pool_.reset();  // runs what is queued, then joins
}

}  // namespace strata
