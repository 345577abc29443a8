#include "server/control/control_socket.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
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

void TakeLines(std::string* input, const std::function<bool(const std::string& line)>& on_line) {
  size_t start = 0;
  std::string line;
  for (size_t nl; (nl = input->find('\n', start)) != std::string::npos;) {
    line.assign(*input, start, nl - start);
    start = nl + 1;
    if (!on_line(line)) break;
  }
  input->erase(0, start);
}

absl::StatusOr<std::unique_ptr<ControlSocket>> ControlSocket::Start(const std::string& path,
                                                                    unsigned mode,
                                                                    Handler handler,
                                                                    absl::Duration idle_timeout) {
  auto listener = ListenUnix(path, mode);
  if (!listener.ok()) return listener.status();
  auto socket = std::unique_ptr<ControlSocket>(new ControlSocket());
  socket->path_ = path;
  socket->listen_fd_ = listener->fd;
  socket->wake_fd_ = eventfd(0, EFD_CLOEXEC);
  if (socket->wake_fd_ < 0) return absl::ErrnoToStatus(errno, "eventfd");
  socket->handler_ = std::move(handler);
  socket->idle_timeout_ = idle_timeout;
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
  absl::Time active;     // connected, or last sent a complete request
  size_t queued() const { return out.size() - sent; }
  // Waiting for nothing from us: may be closed for idling.
  bool idle() const { return queued() == 0; }
};

void ControlSocket::Accept(std::vector<Client>* clients) {
  int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
  if (fd < 0) return;
  const absl::Time now = absl::Now();
  if (clients->size() >= static_cast<size_t>(kMaxClients)) {
    Client* oldest = nullptr;
    for (Client& c : *clients) {
      if (c.fd >= 0 && c.idle() && (oldest == nullptr || c.active < oldest->active)) oldest = &c;
    }
    if (oldest == nullptr) {
      close(fd);  // bounded: a flood of control clients cannot exhaust descriptors
      STRATA_LOG_LIMITED(kError,
                         "control socket %s: connection refused: %d clients, each still being "
                         "sent replies",
                         path_, kMaxClients);
      return;
    }
    const std::string why = absl::StrCat(
        kMaxClients, " clients connected; this one idle longest (",
        absl::FormatDuration(absl::Trunc(now - oldest->active, absl::Milliseconds(1))),
        "), for a new one");
    STRATA_LOG_LIMITED(kError, "control socket %s: client closed: %s", path_, why);
    Drop(oldest, "");
    std::erase_if(*clients, [](const Client& c) { return c.fd < 0; });
  }
  clients->push_back({.fd = fd, .active = now});
}

int ControlSocket::CloseIdle(std::vector<Client>* clients) {
  const absl::Time now = absl::Now();
  absl::Duration next = absl::InfiniteDuration();
  for (Client& c : *clients) {
    if (c.fd < 0 || !c.idle()) continue;
    const absl::Duration left = c.active + idle_timeout_ - now;
    if (left <= absl::ZeroDuration()) {
      STRATA_LOG_LIMITED(kInfo, "control socket %s: client closed: no complete request in %s",
                         path_, absl::FormatDuration(idle_timeout_));
      Drop(&c, "");
    } else {
      next = std::min(next, left);
    }
  }
  std::erase_if(*clients, [](const Client& c) { return c.fd < 0; });
  if (next == absl::InfiniteDuration()) return -1;
  return static_cast<int>(absl::ToInt64Milliseconds(absl::Ceil(next, absl::Milliseconds(1))));
}

void ControlSocket::Run() {
  std::vector<Client> clients;
  for (;;) {
    const int timeout_ms = CloseIdle(&clients);
    std::vector<pollfd> fds = {{wake_fd_, POLLIN, 0}, {listen_fd_, POLLIN, 0}};
    for (const Client& c : clients) {
      const short events = (c.closing ? 0 : POLLIN) | (c.queued() > 0 ? POLLOUT : 0);
      fds.push_back({c.fd, events, 0});
    }
    if (poll(fds.data(), fds.size(), timeout_ms) < 0) {
      if (errno == EINTR) continue;
      STRATA_LOG(kError, "control socket %s: poll: %s", path_, strerror(errno));
      break;
    }
    if (fds[0].revents) break;
    // Clients first: Accept may drop one and renumber the rest.
    for (size_t i = 2; i < fds.size(); ++i) {
      Client& c = clients[i - 2];
      if (!fds[i].revents) continue;
      if (!c.closing) Receive(&c);
      if (c.fd >= 0 && c.queued() > 0) Send(&c);
      if (c.fd >= 0 && c.closing && c.queued() == 0) Drop(&c, "");
    }
    std::erase_if(clients, [](const Client& c) { return c.fd < 0; });
    if (fds[1].revents & POLLIN) Accept(&clients);
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
  TakeLines(&c->in, [&](const std::string& line) {
    Queue(c, HandleControlLine(line, handler_));
    c->active = absl::Now();
    return c->fd >= 0;  // Queue dropped a client that does not read its replies
  });
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
  if (!why.empty()) {
    STRATA_LOG_LIMITED(kInfo, "control socket %s: client dropped: %s", path_, why);
  }
  close(c->fd);
  c->fd = -1;
}

}  // namespace strata
