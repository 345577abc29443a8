// A minimal control-socket client for integration tests: one request line, one reply line,
// bounded by a receive timeout so a broken server fails the test instead of hanging it.
#ifndef STRATA_TESTS_CONTROL_UTIL_H_
#define STRATA_TESTS_CONTROL_UTIL_H_

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "nlohmann/json.hpp"

namespace strata_test {

// A connected control socket, or -1.
inline int ControlConnect(const std::string& path, int timeout_s = 30) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  timeval tv{timeout_s, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

// One reply line (without the newline); "" when the server closed or timed out.
inline std::string ControlReadLine(int fd) {
  std::string line;
  char c;
  while (recv(fd, &c, 1, 0) == 1) {
    if (c == '\n') return line;
    line.push_back(c);
  }
  return "";
}

inline bool ControlSend(int fd, const std::string& bytes) {
  return send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size());
}

// Sends `request` on a fresh connection; the parsed reply, or {"ok": false, "error": why}.
inline nlohmann::json Control(const std::string& path, const nlohmann::json& request,
                              int timeout_s = 30) {
  int fd = ControlConnect(path, timeout_s);
  if (fd < 0) return {{"ok", false}, {"error", "cannot connect to " + path}};
  std::string line;
  if (ControlSend(fd, request.dump() + "\n")) line = ControlReadLine(fd);
  close(fd);
  nlohmann::json reply = nlohmann::json::parse(line, nullptr, false);
  if (reply.is_discarded() || !reply.is_object()) {
    return {{"ok", false}, {"error", "no or malformed reply: \"" + line + "\""}};
  }
  return reply;
}

}  // namespace strata_test

#endif  // STRATA_TESTS_CONTROL_UTIL_H_
