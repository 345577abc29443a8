// Where connections come from: listening sockets (unix and TCP) and the AcceptLoop, one thread
// that accepts on them and hands every connection on (to Server::AddConnection) until it is
// stopped. Signals, daemonizing and the pid file are the process's business (cli/serve_command).
#ifndef STRATA_SERVER_LISTENER_H_
#define STRATA_SERVER_LISTENER_H_

#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace strata {

// A listening socket.
struct Listener {
  int fd = -1;
  std::string description;  // "unix:/path" or "tcp:127.0.0.1:10809"
  std::string unix_path;    // unlinked at close when set
  int port = 0;             // TCP: the port listened on (the real one when 0 was asked for)
};

// Creates a unix socket at `path` with permissions `mode`, replacing a stale socket file (one
// nobody listens on) but refusing a live one or any other kind of file.
absl::StatusOr<Listener> ListenUnix(const std::string& path, unsigned mode);
// Listens on ADDR:PORT (an IPv4 or [IPv6] address, or a host name such as localhost); port 0
// picks a free port (the description and `port` have the real one).
absl::StatusOr<Listener> ListenTcp(const std::string& address, int port);
// Closes the socket and removes its socket file. Idempotent.
void CloseListener(Listener* l);

// Accepts on a set of listeners from its own thread. Owns the listeners from Add on.
class AcceptLoop {
 public:
  // Gets each accepted socket (owning it) and the peer's name ("unix:/path" for a unix
  // socket, "127.0.0.1:50312" for TCP). Runs on the loop's thread.
  using Handler = std::function<void(int fd, std::string peer)>;

  explicit AcceptLoop(Handler on_connection);
  ~AcceptLoop();  // Stop()
  AcceptLoop(const AcceptLoop&) = delete;
  AcceptLoop& operator=(const AcceptLoop&) = delete;

  // Takes `listener`. Only before Start.
  void Add(Listener listener);
  const std::vector<Listener>& listeners() const { return listeners_; }
  // Starts the thread that polls every listener and a wake-up eventfd.
  absl::Status Start();
  // Wakes the thread, joins it, then closes every listener (their socket files go): a client
  // connecting now is refused instead of waiting in a backlog nobody reads. Connections
  // already handed on stay. Idempotent; call from the thread that called Start.
  void Stop();

 private:
  void Run();
  void AcceptAll(const Listener& l);

  Handler on_connection_;
  std::vector<Listener> listeners_;
  int wake_fd_ = -1;
  std::thread thread_;
};

}  // namespace strata

#endif  // STRATA_SERVER_LISTENER_H_
