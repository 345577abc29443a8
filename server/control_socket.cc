#include "server/control_socket.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/log.h"
#include "server/server.h"

namespace strata {

std::string HandleControlLine(const std::string& line, const ControlSocket::Handler& handler) {
  nlohmann::json reply = nlohmann::json::object();
  nlohmann::json request = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  absl::Status status;
  if (request.is_discarded() || !request.is_object()) {
    status = absl::InvalidArgumentError(
        "a request is one JSON object per line, e.g. {\"request\": \"list\"}");
  } else if (!request.contains("request") || !request["request"].is_string()) {
    status = absl::InvalidArgumentError("missing \"request\" (a string: snapshot, list, stats, "
                                        "info, revert)");
  } else {
    status = handler(request, &reply);
  }
  reply["ok"] = status.ok();
  if (!status.ok()) reply["error"] = std::string(status.message());
  return reply.dump() + "\n";
}

absl::StatusOr<std::unique_ptr<ControlSocket>> ControlSocket::Start(const std::string& path,
                                                                    unsigned mode,
                                                                    Handler handler) {
  auto listener = ListenUnix(path, mode);
  if (!listener.ok()) return listener.status();
  auto socket = std::unique_ptr<ControlSocket>(new ControlSocket());
  socket->path_ = path;
  socket->listen_fd_ = listener->fd;
  socket->wake_fd_ = eventfd(0, EFD_CLOEXEC);
  if (socket->wake_fd_ < 0) return absl::ErrnoToStatus(errno, "eventfd");
  socket->handler_ = std::move(handler);
  socket->thread_ = std::thread([s = socket.get()] { s->Run(); });
  return socket;
}

ControlSocket::~ControlSocket() {
  if (thread_.joinable()) {
    uint64_t one = 1;
    (void)!write(wake_fd_, &one, sizeof(one));
    thread_.join();
  }
  if (listen_fd_ >= 0) close(listen_fd_);
  if (wake_fd_ >= 0) close(wake_fd_);
  unlink(path_.c_str());
}

void ControlSocket::Run() {
  struct Client {
    int fd;
    std::string in;
  };
  std::vector<Client> clients;
  for (;;) {
    std::vector<pollfd> fds = {{wake_fd_, POLLIN, 0}, {listen_fd_, POLLIN, 0}};
    for (const Client& c : clients) fds.push_back({c.fd, POLLIN, 0});
    if (poll(fds.data(), fds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      STRATA_LOG(kError, "control socket %s: poll: %s", path_, strerror(errno));
      break;
    }
    if (fds[0].revents) break;
    if (fds[1].revents & POLLIN) {
      int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd >= 0 && clients.size() >= kMaxClients) {
        close(fd);  // bounded: a flood of control clients cannot exhaust descriptors
      } else if (fd >= 0) {
        clients.push_back({fd, ""});
      }
    }
    for (size_t i = 2; i < fds.size(); ++i) {
      if (!fds[i].revents) continue;
      Client& c = clients[i - 2];
      char buf[4096];
      ssize_t n = recv(c.fd, buf, sizeof(buf), 0);
      bool drop = n <= 0;
      if (n > 0) c.in.append(buf, static_cast<size_t>(n));
      for (size_t nl; !drop && (nl = c.in.find('\n')) != std::string::npos;) {
        std::string reply = HandleControlLine(c.in.substr(0, nl), handler_);
        c.in.erase(0, nl + 1);
        // Replies are small; a client that does not read them is dropped, not waited for.
        drop = send(c.fd, reply.data(), reply.size(), MSG_NOSIGNAL | MSG_DONTWAIT) !=
               static_cast<ssize_t>(reply.size());
      }
      if (!drop && c.in.size() > kMaxLine) {
        std::string reply = nlohmann::json{{"ok", false},
                                           {"error", absl::StrCat("request line longer than ",
                                                                  kMaxLine, " bytes")}}
                                .dump() + "\n";
        (void)send(c.fd, reply.data(), reply.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        drop = true;
      }
      if (drop) {
        close(c.fd);
        c.fd = -1;
      }
    }
    std::erase_if(clients, [](const Client& c) { return c.fd < 0; });
  }
  for (const Client& c : clients) close(c.fd);
}

}  // namespace strata
