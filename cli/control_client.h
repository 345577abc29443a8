// The client side of the control socket (server/control_socket.h): `strata snapshot --control`,
// `strata list`, `strata stats`, `strata revert --control`. Users never need socat.
#ifndef STRATA_CLI_CONTROL_CLIENT_H_
#define STRATA_CLI_CONTROL_CLIENT_H_

#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace strata::cli {

// Sends one request and returns the reply; an {"ok": false} reply becomes an error status
// carrying the server's message. Waits at most `timeout_s` for the reply.
absl::StatusOr<nlohmann::json> ControlRequest(const std::string& socket_path,
                                              const nlohmann::json& request, int timeout_s = 60);

int ListCommand(int argc, char** argv);
int StatsCommand(int argc, char** argv);
// `strata snapshot --control PATH NAME` and `strata revert --control PATH [NAME]`.
int LiveSnapshotCommand(const std::string& socket_path, const std::string& name, bool json);
int LiveRevertCommand(const std::string& socket_path, const std::string& name);
// `strata delete-snapshot --control` and `strata commit --control`: sends `request`, then
// (unless no_wait) follows the job with a progress bar until it ends.
struct MergeWait {
  bool no_wait = false;
  bool json = false;
};
int LiveMergeCommand(const std::string& socket_path, const nlohmann::json& request,
                     const MergeWait& wait);
// `strata cancel --control`.
int LiveCancelCommand(const std::string& socket_path);

}  // namespace strata::cli

#endif  // STRATA_CLI_CONTROL_CLIENT_H_
