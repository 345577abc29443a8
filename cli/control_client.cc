#include "cli/control_client.h"

#include <chrono>
#include <thread>

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/args.h"
#include "cli/command.h"
#include "cli/progress.h"
#include "cli/serve_command.h"

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

std::string Age(double seconds) {
  if (seconds < 120) return absl::StrFormat("%.0fs", seconds);
  if (seconds < 7200) return absl::StrFormat("%.0fm", seconds / 60);
  if (seconds < 172800) return absl::StrFormat("%.0fh", seconds / 3600);
  return absl::StrFormat("%.0fd", seconds / 86400);
}

// A reply's field as text: "" when it is missing or null ("none" in JSON is null).
std::string Text(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : "";
}

double Number(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : 0;
}

const CommandSpec kList{.name = "list",
                        .usage = R"(usage: strata list [--output=human|json] --control SOCKET | LAYER

The layers of a served disk, top first: position, state (active, frozen, freezing), snapshot
name, data, age and file, from its server's control socket: SOCKET, or the one `strata serve
LAYER` makes by default (<layer stem>.ctl beside LAYER).

  --control SOCKET      the server's control socket
  --output=human|json   the format (default human; --json is --output=json); in JSON, what a
                        layer does not have (a snapshot name, an export) is null
  -h, --help            this text
)",
                        .args = {.valued = {"--control"}},
                        .output = true};

const CommandSpec kStats{.name = "stats",
                         .usage = R"(usage: strata stats [--output=human|json] --control SOCKET | LAYER

A served disk's counters, from its server's control socket: requests by command, errors,
bytes, latency percentiles (interpolated within power-of-two buckets), host-volume-full
(ENOSPC) episodes, a failed sync, live snapshots and their I/O pauses, and each connection.
The socket: SOCKET, or the one `strata serve LAYER` makes by default (<layer stem>.ctl beside
LAYER).

  --control SOCKET      the server's control socket
  --output=human|json   the format (default a human summary; --json is --output=json, the
                        server's whole reply)
  -h, --help            this text
)",
                         .args = {.valued = {"--control"}},
                         .output = true};

// The control request `request` for a command whose only option is --control (or LAYER); prints JSON
// replies itself. Returns the exit status when done, or nullopt with the reply in *reply.
std::optional<int> Request(int argc, char** argv, const CommandSpec& spec, const char* request,
                           Args* args, json* reply) {
  if (auto exit = ParseCommand(argc, argv, spec, args)) return *exit;
  // Either the socket, or the layer whose server's default socket it is; not both.
  if (args->Has("--control") == (args->positional.size() == 1) || args->positional.size() > 1) {
    return UsageError(spec);
  }
  const std::string socket = args->Has("--control") ? args->Get("--control")
                                                    : DefaultControlPath(args->positional[0]);
  auto r = ControlRequest(socket, {{"request", request}});
  if (!r.ok()) return Fail(spec.name, r.status());
  r->erase("ok");
  if (args->Json()) {
    std::cout << r->dump(2) << "\n";
    return 0;
  }
  *reply = *std::move(r);
  return std::nullopt;
}

}  // namespace

std::string MergeLine(const json& m) {
  const uint64_t done = m.value("bytes_done", uint64_t{0}), total = m.value("bytes_total", uint64_t{0});
  std::string line = absl::StrFormat(
      "deleting snapshot '%s': %s, %s of %s (%.0f%%), %s copied at %s/s", Text(m, "snapshot"),
      Text(m, "state"), HumanBytes(done), HumanBytes(total),
      total > 0 ? 100.0 * static_cast<double>(done) / static_cast<double>(total) : 100.0,
      HumanBytes(m.value("bytes_copied", uint64_t{0})),
      HumanBytes(static_cast<uint64_t>(Number(m, "rate_bytes_per_second"))));
  if (m.contains("eta_seconds") && m["eta_seconds"].is_number()) {
    absl::StrAppend(&line, absl::StrFormat(", ETA %.1f s", Number(m, "eta_seconds")));
  }
  if (!Text(m, "error").empty()) absl::StrAppend(&line, ": ", Text(m, "error"));
  return line;
}

namespace {

// "; 3.2 GiB free of 20.0 GiB" and the --min-free warning; empty before the first reading.
std::string VolumeLine(const json& reply) {
  const json v = reply.value("volume", json::object());
  if (!v.contains("free_bytes") || !v["free_bytes"].is_number()) return "";
  std::string line = absl::StrCat("; ", HumanBytes(v["free_bytes"].get<uint64_t>()), " free of ",
                                  HumanBytes(v.value("total_bytes", uint64_t{0})));
  if (v.value("low", false)) {
    absl::StrAppend(&line, ": LOW, below --min-free ",
                    HumanBytes(v.value("min_free_bytes", uint64_t{0})));
  }
  return line;
}

// "disk: PAUSED-CRITICAL: 12 writes wait for space ..." while writes wait; else empty.
std::string PausedCriticalLine(const json& reply) {
  if (!reply.value("paused_critical", false)) return "";
  const json enospc = reply.value("enospc", json::object());
  const int64_t waiting =
      reply.value("waiting_writes", enospc.value("waiting_writes", int64_t{0}));
  return absl::StrFormat(
      "disk: PAUSED-CRITICAL: %s for space on the host volume (each at most %d s, then "
      "ENOSPC); free space to resume",
      Count(static_cast<uint64_t>(waiting), "write waits", "writes wait"),
      enospc.value("full_timeout_seconds", int64_t{0}));
}

}  // namespace

int ListCommand(int argc, char** argv) {
  Args args;
  json reply;
  if (auto exit = Request(argc, argv, kList, "list", &args, &reply)) return *exit;
  std::printf("%-4s %-10s %-20s %-12s %-8s %s\n", "pos", "state", "snapshot", "data", "age",
              "file");
  for (const json& l : reply["layers"]) {
    std::printf("%-4d %-10s %-20s %-12s %-8s %s\n", l.value("position", 0),
                Text(l, "state").c_str(), Text(l, "snapshot").c_str(),
                HumanBytes(l.value("allocated_bytes", uint64_t{0})).c_str(),
                l.contains("age_seconds") ? Age(Number(l, "age_seconds")).c_str() : "",
                Text(l, "file").c_str());
  }
  if (reply.contains("merge") && reply["merge"].is_object()) {
    std::printf("%s\n", MergeLine(reply["merge"]).c_str());
  }
  if (std::string paused = PausedCriticalLine(reply); !paused.empty()) {
    std::printf("%s\n", paused.c_str());
  }
  return 0;
}

namespace {

// "requests 12 (read 10, write 2), errors 0, ENOSPC replies 0; read 40 KiB, written 8 KiB"
std::string CountersLine(const json& c) {
  std::string by;
  // A local: a range-for over a temporary's items() would dangle.
  const json by_command = c.value("requests_by_command", json::object());
  for (const auto& [name, n] : by_command.items()) {
    absl::StrAppend(&by, by.empty() ? " (" : ", ", name, " ", n.get<uint64_t>());
  }
  if (!by.empty()) by += ")";
  return absl::StrCat("requests ", c.value("requests", uint64_t{0}), by, ", errors ",
                      c.value("errors", uint64_t{0}), ", ENOSPC replies ",
                      c.value("enospc_replies", uint64_t{0}), "; read ",
                      HumanBytes(c.value("bytes_read", uint64_t{0})), " in ",
                      c.value("file_reads", uint64_t{0}), " file reads, written ",
                      HumanBytes(c.value("bytes_written", uint64_t{0})));
}

std::string LatencyLine(const json& l) {
  return absl::StrFormat("latency (us): mean %.1f, p50 %.1f, p90 %.1f, p99 %.1f, max %.1f",
                         Number(l, "mean"), Number(l, "p50"), Number(l, "p90"), Number(l, "p99"),
                         Number(l, "max"));
}

// Where the server's time per request went: mean µs of each stage (stats' stages_us).
std::string StagesLine(const json& stages) {
  auto mean = [&](const char* stage) { return Number(stages.value(stage, json::object()), "mean"); };
  return absl::StrFormat("stages, mean (us): before disk %.1f, disk %.1f, reply send %.1f",
                         mean("before_disk"), mean("disk"), mean("send"));
}

void PrintHealth(const json& reply) {
  const json enospc = reply.value("enospc", json::object());
  const bool pause = Text(enospc, "on_full") == "pause";
  if (enospc.value("full", false)) {
    std::printf("host volume: FULL since %s (writes needing space %s)\n",
                Text(enospc, "since").c_str(),
                pause ? "wait for it: --on-full=pause" : "fail with ENOSPC");
  } else {
    std::printf("host volume: not full (%s so far)%s\n",
                Count(enospc.value("episodes", uint64_t{0}), "full episode").c_str(),
                VolumeLine(reply).c_str());
  }
  if (std::string paused = PausedCriticalLine(reply); !paused.empty()) {
    std::printf("%s\n", paused.c_str());
  }
  const std::string failure = Text(reply, "sync_failure");
  std::printf("sync: %s\n", failure.empty() ? "ok" : absl::StrCat("FAILED (restart the server "
                                                                   "to recover): ", failure)
                                                          .c_str());
  const json s = reply.value("snapshots", json::object());
  std::printf("live snapshots: %llu taken, %llu failed",
              static_cast<unsigned long long>(s.value("taken", uint64_t{0})),
              static_cast<unsigned long long>(s.value("failed", uint64_t{0})));
  if (s.contains("pause_max_ms")) {
    std::printf("; I/O pause ms: last %.3f, p50 %.3f, p99 %.3f, max %.3f",
                Number(s, "last_pause_ms"), Number(s, "pause_p50_ms"),
                Number(s, "pause_p99_ms"), Number(s, "pause_max_ms"));
  }
  std::printf("\n");
  if (reply.contains("merge") && reply["merge"].is_object()) {
    std::printf("%s\n", MergeLine(reply["merge"]).c_str());
  }
}

}  // namespace

int StatsCommand(int argc, char** argv) {
  Args args;
  json reply;
  if (auto exit = Request(argc, argv, kStats, "stats", &args, &reply)) return *exit;
  const json total = reply.value("total", json::object());
  std::printf("uptime %s; %s open, %llu closed\n", Age(Number(reply, "uptime_seconds")).c_str(),
              Count(reply.value("connections_open", uint64_t{0}), "connection").c_str(),
              static_cast<unsigned long long>(reply.value("connections_closed", uint64_t{0})));
  std::printf("%s\n%s\n%s\n", CountersLine(total).c_str(),
              LatencyLine(total.value("latency_us", json::object())).c_str(),
              StagesLine(total.value("stages_us", json::object())).c_str());
  PrintHealth(reply);
  for (const json& c : reply.value("connections", json::array())) {
    // null until the handshake chose an export.
    const bool negotiated = c.contains("export") && c.at("export").is_string();
    std::printf("connection %llu (%s, export %s, worker %d, %s old, %lld in flight): %s\n",
                static_cast<unsigned long long>(c.value("id", uint64_t{0})),
                Text(c, "peer").c_str(),
                negotiated ? absl::StrCat("'", Text(c, "export"), "'").c_str() : "(handshake)",
                c.value("worker", 0), Age(Number(c, "age_seconds")).c_str(),
                static_cast<long long>(c.value("in_flight", int64_t{0})),
                CountersLine(c).c_str());
  }
  return 0;
}

int LiveSnapshotCommand(const std::string& socket_path, const std::string& name, bool as_json) {
  auto reply = ControlRequest(socket_path, {{"request", "snapshot"}, {"name", name}});
  if (!reply.ok()) return Fail("snapshot", reply.status());
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
  if (!reply.ok()) return Fail("revert", reply.status());
  std::printf("reverted the served disk to %s\n",
              name.empty() ? "its parent" : absl::StrCat("snapshot '", name, "'").c_str());
  return 0;
}

int LiveMergeCommand(const std::string& socket_path, const json& request, const MergeWait& wait) {
  const std::string command = request.value("request", std::string());
  auto reply = ControlRequest(socket_path, request);
  if (!reply.ok()) return Fail(command, reply.status());
  if (reply->contains("deleted")) {  // a snapshot off the served chain: gone already
    const json& d = (*reply)["deleted"];
    if (wait.json) {
      std::cout << d.dump(2) << "\n";
    } else {
      std::printf("deleted snapshot '%s' (%s, off the served chain)\n", Text(d, "snapshot").c_str(),
                  Text(d, "file").c_str());
    }
    return 0;
  }
  json job = (*reply)["job"];
  const std::string snapshot = Text(job, "snapshot");
  if (wait.no_wait) {
    if (wait.json) {
      std::cout << job.dump(2) << "\n";
    } else {
      std::printf("deleting snapshot '%s' online; `strata list --control %s` shows its progress\n",
                  snapshot.c_str(), socket_path.c_str());
    }
    return 0;
  }
  ProgressBar bar(absl::StrCat("delete '", snapshot, "'"));
  while (Text(job, "state") == "running") {
    bar.Update(job.value("bytes_done", uint64_t{0}), job.value("bytes_total", uint64_t{0}));
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    auto now = ControlRequest(socket_path, {{"request", "job"}});
    if (!now.ok()) return Fail(command, now.status());
    if (!(*now)["job"].is_object() || Text((*now)["job"], "snapshot") != snapshot) break;
    job = (*now)["job"];
  }
  bar.Finish();
  if (wait.json) std::cout << job.dump(2) << "\n";
  if (Text(job, "state") != "done") {
    return Fail(command, absl::AbortedError(absl::StrCat(
                             "deleting snapshot '", snapshot, "' ", Text(job, "state"),
                             Text(job, "error").empty() ? "" : ": ", Text(job, "error"))));
  }
  if (!wait.json) {
    std::printf("deleted snapshot '%s' online: %s copied into the layer above in %.1f s\n",
                snapshot.c_str(), HumanBytes(job.value("bytes_copied", uint64_t{0})).c_str(),
                Number(job, "elapsed_seconds"));
  }
  return 0;
}

int LiveCancelCommand(const std::string& socket_path) {
  auto reply = ControlRequest(socket_path, {{"request", "cancel"}});
  if (!reply.ok()) return Fail("cancel", reply.status());
  std::printf("cancelled the deletion of snapshot '%s' (it stays, as it was)\n",
              Text((*reply)["job"], "snapshot").c_str());
  return 0;
}

}  // namespace strata::cli
