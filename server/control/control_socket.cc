#include "server/control/control_socket.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/log.h"
#include "server/listener.h"

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

struct ControlSocket::Client {
  int fd = -1;
  std::string in;        // the start of a request line
  std::string out;       // replies; out[sent..] is not sent yet
  size_t sent = 0;
  bool closing = false;  // reads nothing more; closes once every reply is sent
  size_t queued() const { return out.size() - sent; }
};

void ControlSocket::Run() {
  std::vector<Client> clients;
  for (;;) {
    std::vector<pollfd> fds = {{wake_fd_, POLLIN, 0}, {listen_fd_, POLLIN, 0}};
    for (const Client& c : clients) {
      const short events = (c.closing ? 0 : POLLIN) | (c.queued() > 0 ? POLLOUT : 0);
      fds.push_back({c.fd, events, 0});
    }
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
        clients.push_back({.fd = fd});
      }
    }
    for (size_t i = 2; i < fds.size(); ++i) {
      Client& c = clients[i - 2];
      if (!fds[i].revents) continue;
      if (!c.closing) Receive(&c);
      if (c.fd >= 0 && c.queued() > 0) Send(&c);
      if (c.fd >= 0 && c.closing && c.queued() == 0) Drop(&c, "");
    }
    std::erase_if(clients, [](const Client& c) { return c.fd < 0; });
  }
  for (const Client& c : clients) close(c.fd);
}

void ControlSocket::Receive(Client* c) {
  char buf[4096];
  ssize_t n = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (n <= 0) {
    // The client sent all it will: the replies to its requests still go out (a client may
    // shut down its side and then read).
    c->closing = true;
    return;
  }
  c->in.append(buf, static_cast<size_t>(n));
  for (size_t nl; c->fd >= 0 && (nl = c->in.find('\n')) != std::string::npos;) {
    std::string line = c->in.substr(0, nl);
    c->in.erase(0, nl + 1);
    Queue(c, HandleControlLine(line, handler_));
  }
  if (c->fd >= 0 && c->in.size() > kMaxLine) {
    Queue(c, nlohmann::json{{"ok", false},
                            {"error", absl::StrCat("request line longer than ", kMaxLine,
                                                   " bytes")}}
                     .dump() + "\n");
    c->closing = true;
  }
}

void ControlSocket::Queue(Client* c, const std::string& reply) {
  if (c->queued() + reply.size() > kMaxQueued) {
    Drop(c, absl::StrCat(c->queued() + reply.size(), " bytes of replies unsent (over ",
                         kMaxQueued, "): the client does not read them"));
    return;
  }
  c->out += reply;
  Send(c);
}

void ControlSocket::Send(Client* c) {
  while (c->queued() > 0) {
    ssize_t n = send(c->fd, c->out.data() + c->sent, c->queued(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;  // POLLOUT resumes it
    if (n < 0) {
      // Gone without reading its replies: nothing to do about it.
      STRATA_LOG(kDebug, "control socket %s: client gone: %s", path_, strerror(errno));
      Drop(c, "");
      return;
    }
    c->sent += static_cast<size_t>(n);
  }
  // Sent bytes are dropped once they are half the buffer: linear in what is sent.
  if (c->sent * 2 >= c->out.size()) {
    c->out.erase(0, c->sent);
    c->sent = 0;
  }
}

void ControlSocket::Drop(Client* c, absl::string_view why) {
  if (!why.empty()) STRATA_LOG(kInfo, "control socket %s: client dropped: %s", path_, why);
  close(c->fd);
  c->fd = -1;
}

}  // namespace strata
