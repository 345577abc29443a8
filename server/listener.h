// Where connections come from: listening sockets (unix and TCP, created here or passed by a
// service manager: socket activation) and the AcceptLoop, one thread that accepts on them and
// hands every connection on (to Server::AddConnection) until it is stopped. Signals,
// daemonizing and the pid file are the process's business (cli/serve_command).
#ifndef STRATA_SERVER_LISTENER_H_
#define STRATA_SERVER_LISTENER_H_

#include <functional>
#include <string>
#include <chrono>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace strata {

// A listening socket.
struct Listener {
  int fd = -1;
  std::string description;  // "unix:/path" or "tcp:127.0.0.1:10809"
  std::string unix_path;    // a unix socket's file ("" for TCP, an abstract or unnamed socket)
  // CloseListener removes unix_path: this process created the file. A socket passed by a
  // service manager is not ours to remove: it outlives this server, for the next one.
  bool remove_file = false;
  std::string host;  // TCP: the address listened on, numeric ("127.0.0.1", "::1"); "" for unix
  int port = 0;      // TCP: the port listened on (the real one when 0 was asked for)
  bool tcp() const { return !host.empty(); }
};

// Creates a unix socket at `path` with permissions `mode`, replacing a stale socket file (one
// nobody listens on) but refusing a live one or any other kind of file.
absl::StatusOr<Listener> ListenUnix(const std::string& path, unsigned mode);
// Listens on ADDR:PORT (an IPv4 or [IPv6] address, or a host name such as localhost); port 0
// picks a free port (the description and `port` have the real one).
absl::StatusOr<Listener> ListenTcp(const std::string& address, int port);
// Closes the socket and removes the socket file it created. Idempotent.
void CloseListener(Listener* l);

// Where a service manager passes the first socket (SD_LISTEN_FDS_START).
inline constexpr int kFirstPassedFd = 3;
// Socket activation, systemd's protocol (sd_listen_fds(3)), as nbdkit and qemu-nbd take it:
// when $LISTEN_PID is this process and $LISTEN_FDS is N >= 1, the N listening sockets at
// first_fd, first_fd + 1, ...; none (an empty vector) when the variables are unset or meant for
// another process. Unsets LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES either way, so children do
// not take the sockets as theirs, and marks the sockets close-on-exec. An error names the
// descriptor that is not a listening stream socket.
absl::StatusOr<std::vector<Listener>> PassedListeners(int first_fd = kFirstPassedFd);
// `fd` as a Listener, if it is a listening stream socket (unix or TCP); its file is not removed
// at close.
absl::StatusOr<Listener> AdoptListener(int fd);

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
  // Wakes the thread, joins it, then closes every listener (the socket files it created go): a
  // client connecting now is refused instead of waiting in a backlog nobody reads (a passed
  // socket stays open in the service manager, which starts the next server on it). Connections
  // already handed on stay. Idempotent; call from the thread that called Start.
  void Stop();

 private:
  void Run();
  // Returns false when out of descriptors (the loop then pauses accepting).
  bool AcceptAll(const Listener& l);
  // Out of descriptors: the oldest pending connection on `l` is accepted on the spare
  // descriptor and closed at once (its client sees the close instead of waiting in a backlog
  // nobody reads), and a line is logged at most once a second.
  void Shed(const Listener& l, int err);

  Handler on_connection_;
  std::vector<Listener> listeners_;
  int wake_fd_ = -1;
  int spare_fd_ = -1;  // kept open to be given up when accept finds no descriptor left
  uint64_t shed_ = 0;  // connections closed for want of descriptors since the last log line
  std::chrono::steady_clock::time_point last_shed_log_{};
  std::thread thread_;
};

}  // namespace strata

#endif  // STRATA_SERVER_LISTENER_H_
