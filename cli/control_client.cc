#include "cli/control_client.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/args.h"

namespace strata::cli {

using json = nlohmann::json;

absl::StatusOr<json> ControlRequest(const std::string& socket_path, const json& request,
                                    int timeout_s) {
  sockaddr_un addr{};
  if (socket_path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("socket path too long: ", socket_path));
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::ErrnoToStatus(errno, "socket");
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.size() + 1);
  timeval tv{timeout_s, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    int err = errno;
    close(fd);
    return absl::UnavailableError(absl::StrCat(
        "cannot reach the control socket ", socket_path, ": ", strerror(err),
        " (is `strata serve` running? its control socket is <layer stem>.ctl by default)"));
  }
  std::string line = request.dump() + "\n";
  if (send(fd, line.data(), line.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(line.size())) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("sending to ", socket_path, ": ", strerror(errno)));
  }
  // Replies can be megabytes (a list of a deep chain): only new bytes are searched.
  std::string reply;
  char buf[1 << 16];
  size_t end = std::string::npos;
  while (end == std::string::npos) {
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) {
      close(fd);
      return absl::UnavailableError(absl::StrCat(
          "no reply from ", socket_path, n < 0 ? absl::StrCat(": ", strerror(errno)) : ""));
    }
    end = reply.size();
    reply.append(buf, static_cast<size_t>(n));
    end = reply.find('\n', end);
  }
  close(fd);
  json parsed = json::parse(reply.substr(0, end), nullptr, false);
  if (parsed.is_discarded() || !parsed.is_object()) {
    return absl::DataLossError("malformed reply from the server");
  }
  if (!parsed.value("ok", false)) {
    return absl::FailedPreconditionError(parsed.value("error", std::string("request failed")));
  }
  return parsed;
}

namespace {

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "strata: %s\n", std::string(s.message()).c_str());
  return 1;
}

std::string Age(double seconds) {
  if (seconds < 120) return absl::StrFormat("%.0fs", seconds);
  if (seconds < 7200) return absl::StrFormat("%.0fm", seconds / 60);
  if (seconds < 172800) return absl::StrFormat("%.0fh", seconds / 3600);
  return absl::StrFormat("%.0fd", seconds / 86400);
}

}  // namespace

int ListCommand(int argc, char** argv) {
  auto args = Parse(argc, argv, 2, {.flags = {"--json"}, .valued = {"--control"}});
  if (!args.ok()) return Fail(args.status());
  if (!args->Has("--control") || !args->positional.empty()) {
    std::fprintf(stderr, "usage: strata list --control SOCKET [--json]\n");
    return 2;
  }
  auto reply = ControlRequest(args->Get("--control"), {{"request", "list"}});
  if (!reply.ok()) return Fail(reply.status());
  if (args->Has("--json")) {
    std::cout << reply->dump(2) << "\n";
    return 0;
  }
  std::printf("%-4s %-10s %-20s %-12s %-8s %s\n", "pos", "state", "snapshot", "data", "age",
              "file");
  for (const json& l : (*reply)["layers"]) {
    std::printf("%-4d %-10s %-20s %-12s %-8s %s\n", l.value("position", 0),
                l.value("state", std::string()).c_str(),
                l.value("snapshot", std::string()).c_str(),
                HumanBytes(l.value("allocated_bytes", uint64_t{0})).c_str(),
                l.contains("age_seconds") ? Age(l["age_seconds"].get<double>()).c_str() : "",
                l.value("file", std::string()).c_str());
  }
  return 0;
}

int StatsCommand(int argc, char** argv) {
  auto args = Parse(argc, argv, 2, {.flags = {"--json"}, .valued = {"--control"}});
  if (!args.ok()) return Fail(args.status());
  if (!args->Has("--control") || !args->positional.empty()) {
    std::fprintf(stderr, "usage: strata stats --control SOCKET [--json]\n");
    return 2;
  }
  auto reply = ControlRequest(args->Get("--control"), {{"request", "stats"}});
  if (!reply.ok()) return Fail(reply.status());
  reply->erase("ok");
  std::cout << reply->dump(2) << "\n";
  return 0;
}

int LiveSnapshotCommand(const std::string& socket_path, const std::string& name, bool as_json) {
  auto reply = ControlRequest(socket_path, {{"request", "snapshot"}, {"name", name}});
  if (!reply.ok()) return Fail(reply.status());
  if (as_json) {
    std::cout << reply->dump(2) << "\n";
    return 0;
  }
  std::printf("snapshot '%s' taken live: %s (I/O paused %.3f ms)\n", name.c_str(),
              reply->value("file", std::string()).c_str(), reply->value("pause_ms", 0.0));
  return 0;
}

int LiveRevertCommand(const std::string& socket_path, const std::string& name) {
  json request = {{"request", "revert"}};
  if (!name.empty()) request["name"] = name;
  auto reply = ControlRequest(socket_path, request);
  if (!reply.ok()) return Fail(reply.status());
  std::printf("reverted the served disk to %s\n",
              name.empty() ? "its parent" : absl::StrCat("snapshot '", name, "'").c_str());
  return 0;
}

}  // namespace strata::cli
