// ControlSocket: the serving process's control channel, a unix socket (mode 0600) speaking
// newline-delimited JSON: one request object per line, one reply object per line, each reply
// with "ok": true/false and, on failure, an "error" a person can act on.
//
// One thread with poll() serves every control client; it never touches a ring, so a slow or
// broken control client cannot stall the data path. Requests are handled one at a time, in
// arrival order (so concurrent snapshot requests are serialized). A line longer than
// kMaxLine gets an error reply and the connection closed; malformed JSON or an unknown
// request gets an error reply and the connection stays. Replies can be large (a `list` of a
// deep chain, `stats` of many connections): each client has an output queue sent as its
// socket accepts it (POLLOUT), and a client whose unsent replies pass kMaxQueued is dropped.
//
// Clients are bounded (kMaxClients) without locking anyone out: a client that sends no complete
// request for `idle_timeout` (and has no reply left to take) is closed, and when kMaxClients are
// connected a new one takes the place of the client idle longest. Held-open idle connections
// (64 of them refused every other client before) thus cost a real client nothing. Only when
// every client is still being sent replies is a new one refused. Each of these is logged, at
// most a few lines a second.
#ifndef STRATA_SERVER_CONTROL_CONTROL_SOCKET_H_
#define STRATA_SERVER_CONTROL_CONTROL_SOCKET_H_

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"

namespace strata {

class ControlSocket {
 public:
  static constexpr size_t kMaxLine = 64 << 10;
  static constexpr int kMaxClients = 64;
  // Unsent reply bytes per client: a `list` of the deepest chain (65 535 layers, about 300
  // bytes each) is about 20 MiB; past this the client is not reading and is dropped.
  static constexpr size_t kMaxQueued = 64 << 20;
  // `strata` sends its request as soon as it connects: 10 s of silence is no client of ours.
  static constexpr absl::Duration kIdleTimeout = absl::Seconds(10);
  // Returns the reply for one request (without "ok": the socket adds it, from the status).
  using Handler = std::function<absl::Status(const nlohmann::json& request, nlohmann::json* reply)>;

  // Listens on `path` (a stale socket file is replaced, a live one refused) and serves
  // requests on a thread of its own until destroyed.
  static absl::StatusOr<std::unique_ptr<ControlSocket>> Start(
      const std::string& path, unsigned mode, Handler handler,
      absl::Duration idle_timeout = kIdleTimeout);
  ~ControlSocket();  // stops the thread, closes every client, unlinks the socket

  const std::string& path() const { return path_; }

 private:
  struct Client;
  ControlSocket() = default;
  void Run();
  // Takes a new client; when kMaxClients are there, the one idle longest makes room for it.
  void Accept(std::vector<Client>* clients);
  // Closes the clients idle past idle_timeout_; returns how long until the next one is (-1:
  // none, for poll).
  int CloseIdle(std::vector<Client>* clients);
  // Reads what the client sent and queues the replies of its complete lines.
  void Receive(Client* c);
  // Queues a reply; drops the client when its queue would pass kMaxQueued.
  void Queue(Client* c, const std::string& reply);
  // Sends queued bytes until the socket would block.
  void Send(Client* c);
  void Drop(Client* c, absl::string_view why);

  std::string path_;
  int listen_fd_ = -1;
  int wake_fd_ = -1;  // eventfd: tells the thread to stop
  Handler handler_;
  absl::Duration idle_timeout_;
  std::thread thread_;
};

// The reply to a request line, for the socket and for tests: parses, dispatches, wraps.
std::string HandleControlLine(const std::string& line, const ControlSocket::Handler& handler);

// Calls on_line with each complete line of *input (without its '\n') until it returns false,
// then drops the lines taken from *input at once, so a buffer of many short lines costs time
// linear in its size (erasing line by line moved the rest of the buffer once per line).
// on_line must not change *input.
void TakeLines(std::string* input, const std::function<bool(const std::string& line)>& on_line);

}  // namespace strata

#endif  // STRATA_SERVER_CONTROL_CONTROL_SOCKET_H_
