// Readiness for a service manager (systemd's Type=notify, the sd_notify(3) protocol), written
// by hand rather than linking libsystemd: one datagram of newline-separated VAR=VALUE lines
// ("READY=1", "STOPPING=1", "STATUS=...", "MAINPID=...") sent to the unix socket that
// $NOTIFY_SOCKET names. Under no service manager $NOTIFY_SOCKET is unset and nothing is sent.
#ifndef STRATA_SERVER_SD_NOTIFY_H_
#define STRATA_SERVER_SD_NOTIFY_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace strata {

// Sends `state` to the socket $NOTIFY_SOCKET names; OK without sending when it is unset or
// empty. The variable stays set: the server notifies again when it stops.
absl::Status NotifyServiceManager(absl::string_view state);

// Sends `state` as one datagram to `socket`: an absolute path, or "@NAME" for NAME in the
// abstract namespace (as systemd writes it; the address is then '\0' NAME, of exactly that
// length, with no terminating NUL).
absl::Status NotifySocket(const std::string& socket, absl::string_view state);

}  // namespace strata

#endif  // STRATA_SERVER_SD_NOTIFY_H_
