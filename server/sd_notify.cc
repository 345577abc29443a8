#include "server/sd_notify.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>

#include "absl/strings/escaping.h"
#include "absl/strings/str_format.h"

namespace strata {
namespace {

// The address `socket` names and its exact length (an abstract name's length is part of it:
// a trailing NUL would name another socket).
absl::Status NotifyAddress(const std::string& socket, sockaddr_un* addr, socklen_t* len) {
  addr->sun_family = AF_UNIX;
  if (socket.empty() || (socket[0] != '/' && socket[0] != '@')) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "NOTIFY_SOCKET=\"%s\" is neither an absolute path nor an @abstract socket name", socket));
  }
  if (socket.size() >= sizeof(addr->sun_path)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "NOTIFY_SOCKET=\"%s\" is longer than %d bytes", socket, sizeof(addr->sun_path) - 1));
  }
  std::memcpy(addr->sun_path, socket.data(), socket.size());
  const bool abstract = socket[0] == '@';
  if (abstract) addr->sun_path[0] = '\0';
  const size_t nul = abstract ? 0 : 1;
  *len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + socket.size() + nul);
  return absl::OkStatus();
}

}  // namespace

absl::Status NotifySocket(const std::string& socket, absl::string_view state) {
  sockaddr_un addr{};
  socklen_t len = 0;
  if (absl::Status st = NotifyAddress(socket, &addr, &len); !st.ok()) return st;
  int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::ErrnoToStatus(errno, "socket(AF_UNIX, SOCK_DGRAM) for NOTIFY_SOCKET");
  ssize_t sent = sendto(fd, state.data(), state.size(), MSG_NOSIGNAL,
                        reinterpret_cast<const sockaddr*>(&addr), len);
  int e = errno;
  close(fd);
  if (sent != static_cast<ssize_t>(state.size())) {
    return absl::ErrnoToStatus(
        sent < 0 ? e : EMSGSIZE,
        absl::StrFormat("telling the service manager at NOTIFY_SOCKET=%s \"%s\"", socket,
                        absl::CHexEscape(state)));
  }
  return absl::OkStatus();
}

absl::Status NotifyServiceManager(absl::string_view state) {
  const char* socket = getenv("NOTIFY_SOCKET");
  if (socket == nullptr || *socket == '\0') return absl::OkStatus();
  return NotifySocket(socket, state);
}

}  // namespace strata
