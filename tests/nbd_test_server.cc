#include "nbd_test_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#ifndef STRATA_BIN_DEFAULT
#define STRATA_BIN_DEFAULT "strata"
#endif

namespace strata_test {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string Env(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return (v != nullptr && *v != '\0') ? std::string(v) : fallback;
}

bool InPath(const std::string& tool) {
  std::string out;
  return RunCommand({"sh", "-c", "command -v " + tool}, &out, 5000) == 0;
}

uint64_t Mix(uint64_t x) {  // splitmix64 finalizer
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Execs argv in the child, in `cwd` unless empty; never returns. stdout and stderr go to out_fd.
[[noreturn]] void ExecChild(const std::vector<std::string>& argv, int out_fd,
                            const std::string& cwd = "") {
  // The child gets its own process group so that nothing we send ever hits the test runner.
  setpgid(0, 0);
  if (!cwd.empty() && chdir(cwd.c_str()) != 0) {
    dprintf(out_fd, "chdir %s: %s\n", cwd.c_str(), strerror(errno));
    _exit(127);
  }
  int devnull = open("/dev/null", O_RDONLY);
  if (devnull >= 0) dup2(devnull, 0);
  if (out_fd >= 0) {
    dup2(out_fd, 1);
    dup2(out_fd, 2);
  }
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  execvp(args[0], args.data());
  dprintf(2, "exec %s: %s\n", args[0], strerror(errno));
  _exit(127);
}

// Waits for `pid` up to timeout_ms; returns its wait status, or -1 if still running.
int WaitPid(pid_t pid, int timeout_ms) {
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    int status = 0;
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    if (r < 0 && errno != EINTR) return -1;
    if (Clock::now() >= deadline) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool ConnectOnce(const std::string& socket_path, int tcp_port) {
  int fd;
  int r;
  if (tcp_port != 0) {
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_port = htons(static_cast<uint16_t>(tcp_port));
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    r = connect(fd, reinterpret_cast<sockaddr*>(&sin), sizeof sin);
  } else {
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", socket_path.c_str());
    r = connect(fd, reinterpret_cast<sockaddr*>(&sun), sizeof sun);
  }
  if (r == 0) {
    // Read the server's greeting before closing, so the probe looks like a client that gave up
    // during the handshake rather than a half-open socket.
    char buf[18];
    timeval tv{2, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    (void)!recv(fd, buf, sizeof buf, MSG_WAITALL);
  }
  close(fd);
  return r == 0;
}

}  // namespace

ServerKind SelectedServer() {
  std::string s = Env("STRATA_TEST_SERVER", "strata");
  if (s == "qemu-nbd") return ServerKind::kQemuNbd;
  if (s == "nbdkit") return ServerKind::kNbdkit;
  return ServerKind::kStrata;
}

const char* ServerName(ServerKind kind) {
  switch (kind) {
    case ServerKind::kStrata: return "strata";
    case ServerKind::kQemuNbd: return "qemu-nbd";
    case ServerKind::kNbdkit: return "nbdkit";
  }
  return "?";
}

std::string StrataBinary() { return Env("STRATA_BIN", STRATA_BIN_DEFAULT); }

bool BackgroundServeMode() {
  return SelectedServer() == ServerKind::kStrata &&
         Env("STRATA_TEST_SERVE_MODE", "foreground") == "background";
}

std::string MissingPrerequisite() {
  switch (SelectedServer()) {
    case ServerKind::kStrata: {
      std::string bin = StrataBinary();
      if (access(bin.c_str(), X_OK) != 0) return "strata binary not built: " + bin;
      return "";
    }
    case ServerKind::kQemuNbd:
      if (!InPath("qemu-nbd") || !InPath("qemu-img")) return "qemu-nbd/qemu-img not installed";
      return "";
    case ServerKind::kNbdkit:
      if (!InPath("nbdkit")) return "nbdkit not installed";
      return "";
  }
  return "unknown server";
}

uint8_t BaseByte(uint64_t off) {
  uint64_t sector = off >> 9;
  uint8_t b = static_cast<uint8_t>(Mix(sector) >> 8) + static_cast<uint8_t>(off & 511);
  return b == 0 ? 0x5a : b;
}

void FillBase(uint8_t* buf, uint64_t off, size_t len) {
  for (size_t i = 0; i < len; i++) buf[i] = BaseByte(off + i);
}

void FillPattern(uint8_t* buf, uint64_t off, size_t len, uint32_t seed) {
  size_t i = 0;
  while (i < len) {
    uint64_t pos = off + i;
    uint64_t word = Mix((pos >> 3) ^ (static_cast<uint64_t>(seed) << 48));
    for (unsigned b = pos & 7; b < 8 && i < len; b++, i++) {
      buf[i] = static_cast<uint8_t>(word >> (8 * b));
    }
  }
}

std::vector<uint8_t> Pattern(uint64_t off, size_t len, uint32_t seed) {
  std::vector<uint8_t> v(len);
  FillPattern(v.data(), off, len, seed);
  return v;
}

int64_t FirstMismatch(const uint8_t* buf, const uint8_t* want, size_t len) {
  if (memcmp(buf, want, len) == 0) return -1;
  for (size_t i = 0; i < len; i++) {
    if (buf[i] != want[i]) return static_cast<int64_t>(i);
  }
  return -1;
}

bool AllZero(const uint8_t* buf, size_t len) {
  for (size_t i = 0; i < len; i++) {
    if (buf[i] != 0) return false;
  }
  return true;
}

int RunCommand(const std::vector<std::string>& argv, std::string* output, int timeout_ms) {
  char tmpl[] = "/tmp/strata-test-cmd-XXXXXX";
  int fd = mkstemp(tmpl);
  if (fd < 0) return -1;
  unlink(tmpl);
  pid_t pid = fork();
  if (pid < 0) {
    close(fd);
    return -1;
  }
  if (pid == 0) ExecChild(argv, fd);
  int status = WaitPid(pid, timeout_ms);
  bool timed_out = status == -1;
  if (timed_out) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
  }
  if (output != nullptr) {
    output->clear();
    lseek(fd, 0, SEEK_SET);
    char buf[4096];
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0) output->append(buf, n);
    if (timed_out) *output += "\n[killed after timeout]";
  }
  close(fd);
  if (timed_out || !WIFEXITED(status)) return -1;
  return WEXITSTATUS(status);
}

// ---------------------------------------------------------------------------------------------

NbdTestServer::NbdTestServer() : kind_(SelectedServer()) {
  char tmpl[] = "/tmp/strata-it-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) {
    ADD_FAILURE() << "mkdtemp: " << strerror(errno);
    return;
  }
  dir_ = tmpl;
  socket_ = dir_ + "/disk.sock";
  base_ = dir_ + "/base.raw";
  log_ = dir_ + "/server.log";
  switch (kind_) {
    case ServerKind::kStrata: layer_ = dir_ + "/disk.strata"; break;
    case ServerKind::kQemuNbd: layer_ = dir_ + "/disk.qcow2"; break;
    case ServerKind::kNbdkit: layer_ = dir_ + "/disk.raw"; break;
  }
}

NbdTestServer::~NbdTestServer() {
  if (pid_ > 0) {
    kill(pid_, SIGTERM);
    if (WaitPid(pid_, 10000) == -1) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    pid_ = -1;
  }
  if (!dir_.empty() && std::getenv("STRATA_TEST_KEEP") == nullptr) {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
}

bool NbdTestServer::CreateChain(const ChainOptions& options) {
  chain_ = options;
  std::string out;
  if (options.with_base) {
    // The base: BaseByte() pattern, then a sparse hole up to the disk size.
    int fd = open(base_.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0) {
      ADD_FAILURE() << base_ << ": " << strerror(errno);
      return false;
    }
    std::vector<uint8_t> buf(kMiB);
    for (uint64_t off = 0; off < options.base_data; off += buf.size()) {
      size_t n = std::min<uint64_t>(buf.size(), options.base_data - off);
      FillBase(buf.data(), off, n);
      if (pwrite(fd, buf.data(), n, off) != static_cast<ssize_t>(n)) {
        ADD_FAILURE() << base_ << ": write: " << strerror(errno);
        close(fd);
        return false;
      }
    }
    if (ftruncate(fd, options.disk_size) != 0) {
      ADD_FAILURE() << base_ << ": truncate: " << strerror(errno);
      close(fd);
      return false;
    }
    close(fd);
  }
  std::vector<std::string> argv;
  std::string size = std::to_string(options.disk_size);
  switch (kind_) {
    case ServerKind::kStrata:
      if (options.with_base) {
        argv = {StrataBinary(), "create", "-b", base_, "-F", "raw", layer_};
      } else {
        argv = {StrataBinary(), "create", "--size", std::to_string(options.disk_size / kMiB) + "M",
                layer_};
      }
      break;
    case ServerKind::kQemuNbd:
      if (options.with_base) {
        argv = {"qemu-img", "create", "-q", "-f", "qcow2", "-b", base_, "-F", "raw", layer_};
      } else {
        argv = {"qemu-img", "create", "-q", "-f", "qcow2", layer_, size};
      }
      break;
    case ServerKind::kNbdkit:
      if (options.with_base) {
        argv = {"cp", "--sparse=always", base_, layer_};
      } else {
        argv = {"truncate", "-s", size, layer_};
      }
      break;
  }
  if (RunCommand(argv, &out) != 0) {
    ADD_FAILURE() << "creating the chain failed: " << argv[0] << " " << argv[1] << "\n" << out;
    return false;
  }
  return true;
}

std::vector<std::string> NbdTestServer::ServeArgv(const ServeOptions& o) const {
  std::vector<std::string> a;
  std::string port = std::to_string(o.tcp_port);
  switch (kind_) {
    case ServerKind::kStrata:
      a = StrataServeArgv(o);
      if (o.tcp_port != 0) a.insert(a.end(), {"--listen", "127.0.0.1:" + port});
      if (o.read_only) a.push_back("--read-only");
      if (!o.export_name.empty()) a.insert(a.end(), {"--export-name", o.export_name});
      if (!o.cache.empty()) a.push_back("--cache=" + o.cache);
      if (o.workers != 0) a.insert(a.end(), {"--workers", std::to_string(o.workers)});
      break;
    case ServerKind::kQemuNbd:
      // --persistent: do not exit after the first client. --shared: multi-conn clients.
      a = {"qemu-nbd", "--persistent", "--shared=32", "--format=qcow2", "--allocation-depth",
           "--discard=unmap", "--cache=" + (o.cache.empty() ? "writeback" : o.cache)};
      if (o.tcp_port != 0) {
        a.insert(a.end(), {"--bind=127.0.0.1", "--port=" + port});
      } else {
        a.push_back("--socket=" + socket_);
      }
      if (o.read_only) a.push_back("--read-only");
      if (!o.export_name.empty()) a.push_back("--export-name=" + o.export_name);
      if (!o.pid_file.empty()) a.push_back("--pid-file=" + o.pid_file);
      break;
    case ServerKind::kNbdkit:
      a = {"nbdkit", "--foreground"};
      if (o.tcp_port != 0) {
        a.insert(a.end(), {"--ipaddr", "127.0.0.1", "--port", port});
      } else {
        a.insert(a.end(), {"--unix", socket_});
      }
      if (o.read_only) a.push_back("--read-only");
      if (!o.pid_file.empty()) a.insert(a.end(), {"--pidfile", o.pid_file});
      // nbdkit serves any export name unless a filter restricts it.
      if (!o.export_name.empty()) a.push_back("--filter=exportname");
      break;
  }
  a.insert(a.end(), o.extra_args.begin(), o.extra_args.end());
  if (kind_ == ServerKind::kNbdkit) {
    a.insert(a.end(), {"file", "file=" + layer_});
    if (!o.export_name.empty()) a.insert(a.end(), {"default-export=" + o.export_name,
                                                  "exportname-strict=true", "exportname-list=explicit",
                                                  "exportname=" + o.export_name});
  } else {
    a.push_back(BackgroundServeMode() ? FromElsewhere(layer_) : layer_);
  }
  return a;
}

std::vector<std::string> NbdTestServer::StrataServeArgv(const ServeOptions& o) const {
  std::vector<std::string> a = {StrataBinary(), "serve", "--log-level=info"};
  if (BackgroundServeMode()) {
    // As the README starts it: a daemon, paths relative to the working directory. Its log goes
    // to the file the foreground server's stderr goes to, so ServerLog() shows both.
    a.insert(a.end(), {"--socket", FromElsewhere(socket_), "--log-file", FromElsewhere(log_),
                       "--pid-file", FromElsewhere(PidFile())});
  } else {
    a.insert(a.end(), {"--foreground", "--socket", socket_});
    if (!o.pid_file.empty()) a.insert(a.end(), {"--pid-file", o.pid_file});
  }
  return a;
}

std::string NbdTestServer::PidFile() const {
  return serve_.pid_file.empty() ? dir_ + "/server.pid" : serve_.pid_file;
}

std::string NbdTestServer::FromElsewhere(const std::string& path) const {
  if (path.compare(0, dir_.size() + 1, dir_ + "/") != 0) return path;  // not in dir(): as given
  return ".." + path.substr(dir_.size());
}

bool NbdTestServer::Start(const ServeOptions& options) {
  if (pid_ > 0) {
    ADD_FAILURE() << "server already running (pid " << pid_ << ")";
    return false;
  }
  serve_ = options;
  unlink(socket_.c_str());
  int fd = open(log_.c_str(), O_CREAT | O_APPEND | O_WRONLY | O_CLOEXEC, 0644);
  if (fd < 0) {
    ADD_FAILURE() << log_ << ": " << strerror(errno);
    return false;
  }
  std::vector<std::string> argv = ServeArgv(options);
  std::string cmd;
  for (const auto& a : argv) cmd += a + " ";
  bool background = BackgroundServeMode();
  dprintf(fd, "=== %s%s\n", background ? "(in elsewhere/) " : "", cmd.c_str());
  bool started = background ? StartDaemon(argv, fd, cmd) : StartChild(argv, fd);
  close(fd);
  if (!started) return false;
  if (!WaitReady(15000)) {
    ADD_FAILURE() << "server did not accept connections within 15 s: " << cmd << "\n"
                  << ServerLog();
    return false;
  }
  return true;
}

bool NbdTestServer::StartChild(const std::vector<std::string>& argv, int log_fd) {
  pid_ = fork();
  if (pid_ < 0) {
    ADD_FAILURE() << "fork: " << strerror(errno);
    return false;
  }
  if (pid_ == 0) ExecChild(argv, log_fd);
  return true;
}

// `strata serve` returns once its daemon serves, and the daemon's pid is in the pid file. As a
// child subreaper, this process becomes the daemon's parent when `strata serve` exits, so that
// Alive, WaitExit, Stop and Kill9 reap it and see its exit status as a foreground server's.
bool NbdTestServer::StartDaemon(const std::vector<std::string>& argv, int log_fd,
                                const std::string& cmd) {
  if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) {
    ADD_FAILURE() << "prctl(PR_SET_CHILD_SUBREAPER): " << strerror(errno);
    return false;
  }
  std::string elsewhere = dir_ + "/elsewhere";
  mkdir(elsewhere.c_str(), 0755);
  unlink(PidFile().c_str());
  pid_t parent = fork();
  if (parent < 0) {
    ADD_FAILURE() << "fork: " << strerror(errno);
    return false;
  }
  if (parent == 0) ExecChild(argv, log_fd, elsewhere);
  int status = WaitPid(parent, 15000);
  if (status == -1) kill(parent, SIGKILL);
  pid_ = atoi(ReadFile(PidFile()).c_str());
  if (pid_ <= 0) pid_ = -1;
  if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    ADD_FAILURE() << "`" << cmd << "` (background, in " << elsewhere << ") "
                  << (status == -1 ? "did not return within 15 s" : "failed") << "\n"
                  << ServerLog();
    return false;  // a daemon that wrote its pid file is stopped by the destructor
  }
  if (pid_ < 0) ADD_FAILURE() << "no pid in " << PidFile() << "\n" << ServerLog();
  return pid_ > 0;
}

bool NbdTestServer::WaitReady(int timeout_ms) {
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  while (Clock::now() < deadline) {
    if (!Alive()) return false;
    bool have_path = serve_.tcp_port != 0 || access(socket_.c_str(), F_OK) == 0;
    if (have_path && ConnectOnce(socket_, serve_.tcp_port)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

bool NbdTestServer::Alive() {
  if (pid_ <= 0) return false;
  int status;
  pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    pid_ = -1;
    return false;
  }
  return true;
}

int NbdTestServer::WaitExit(int timeout_ms) {
  if (pid_ <= 0) return -1;
  int status = WaitPid(pid_, timeout_ms);
  if (status != -1) pid_ = -1;
  return status;
}

void NbdTestServer::Signal(int sig) {
  if (pid_ > 0) kill(pid_, sig);
}

bool NbdTestServer::Stop() {
  if (pid_ <= 0) {
    ADD_FAILURE() << "Stop(): server not running\n" << ServerLog();
    return false;
  }
  kill(pid_, SIGTERM);
  int status = WaitPid(pid_, 20000);
  if (status == -1) {
    ADD_FAILURE() << "server pid " << pid_ << " ignored SIGTERM for 20 s; killing it\n"
                  << ServerLog();
    kill(pid_, SIGKILL);
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return false;
  }
  pid_ = -1;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    ADD_FAILURE() << "server exit status after SIGTERM: "
                  << (WIFEXITED(status) ? "exit " + std::to_string(WEXITSTATUS(status))
                                        : "signal " + std::to_string(WTERMSIG(status)))
                  << "\n" << ServerLog();
    return false;
  }
  return true;
}

void NbdTestServer::Kill9() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  waitpid(pid_, nullptr, 0);
  pid_ = -1;
}

bool NbdTestServer::SupportsLayers() const { return kind_ != ServerKind::kNbdkit; }

std::string NbdTestServer::LayerContext() const {
  switch (kind_) {
    case ServerKind::kStrata: return "strata:layer";
    case ServerKind::kQemuNbd: return "qemu:allocation-depth";
    case ServerKind::kNbdkit: return "";
  }
  return "";
}

bool NbdTestServer::Snapshot(const std::string& name) {
  std::string out;
  int rc = -1;
  switch (kind_) {
    case ServerKind::kStrata:
      rc = RunCommand({StrataBinary(), "snapshot", layer_, name}, &out);
      break;
    case ServerKind::kQemuNbd: {
      // The same picture as strata's offline snapshot: the current top keeps its content under
      // <stem>@NAME, and LAYER becomes a new empty overlay on it.
      std::string frozen = dir_ + "/disk@" + name + ".qcow2";
      if (rename(layer_.c_str(), frozen.c_str()) != 0) {
        ADD_FAILURE() << "rename: " << strerror(errno);
        return false;
      }
      rc = RunCommand({"qemu-img", "create", "-q", "-f", "qcow2", "-b", frozen, "-F", "qcow2",
                       layer_},
                      &out);
      break;
    }
    case ServerKind::kNbdkit:
      return false;
  }
  if (rc != 0) ADD_FAILURE() << "snapshot " << name << " failed (rc " << rc << "):\n" << out;
  return rc == 0;
}

bool NbdTestServer::Check(std::string* output) {
  std::string out;
  int rc = 0;
  switch (kind_) {
    case ServerKind::kStrata: rc = RunCommand({StrataBinary(), "check", layer_}, &out); break;
    case ServerKind::kQemuNbd: rc = RunCommand({"qemu-img", "check", "-q", layer_}, &out); break;
    case ServerKind::kNbdkit: rc = 0; break;
  }
  if (output != nullptr) *output = out;
  return rc == 0;
}

bool NbdTestServer::Export(const std::string& out_path) {
  std::string out;
  int rc = 0;
  switch (kind_) {
    case ServerKind::kStrata:
      rc = RunCommand({StrataBinary(), "export", layer_, out_path}, &out);
      break;
    case ServerKind::kQemuNbd:
      rc = RunCommand({"qemu-img", "convert", "-f", "qcow2", "-O", "raw", layer_, out_path}, &out);
      break;
    case ServerKind::kNbdkit:
      rc = RunCommand({"cp", "--sparse=always", layer_, out_path}, &out);
      break;
  }
  if (rc != 0) ADD_FAILURE() << "export failed (rc " << rc << "):\n" << out;
  return rc == 0;
}

std::string NbdTestServer::Uri() const {
  if (serve_.tcp_port != 0) {
    return "nbd://127.0.0.1:" + std::to_string(serve_.tcp_port) + "/" + serve_.export_name;
  }
  return "nbd+unix:///" + serve_.export_name + "?socket=" + socket_;
}

std::string NbdTestServer::ServerLog() const {
  std::string log = ReadFile(log_);
  if (log.size() > 8000) log = "...\n" + log.substr(log.size() - 8000);
  return "--- server log (" + log_ + ") ---\n" + log;
}

NbdHandle NbdTestServer::Connect(const ConnectOptions& options) {
  NbdHandle h(nbd_create());
  if (!h) {
    ADD_FAILURE() << "nbd_create: " << nbd_get_error();
    return nullptr;
  }
  std::string name = options.export_name.empty() ? serve_.export_name : options.export_name;
  nbd_set_export_name(h.get(), name.c_str());
  nbd_set_request_structured_replies(h.get(), options.structured_replies);
  if (options.structured_replies) {
    for (const auto& ctx : options.meta_contexts) {
      if (!ctx.empty()) nbd_add_meta_context(h.get(), ctx.c_str());
    }
  }
  if (options.opt_mode && nbd_set_opt_mode(h.get(), true) == -1) {
    ADD_FAILURE() << "nbd_set_opt_mode: " << nbd_get_error();
    return nullptr;
  }
  int r;
  if (serve_.tcp_port != 0) {
    r = nbd_connect_tcp(h.get(), "127.0.0.1", std::to_string(serve_.tcp_port).c_str());
  } else {
    r = nbd_connect_unix(h.get(), socket_.c_str());
  }
  if (r == -1) {
    ADD_FAILURE() << "connect to " << Uri() << ": " << nbd_get_error() << "\n" << ServerLog();
    return nullptr;
  }
  if (!options.strict) nbd_set_strict_mode(h.get(), 0);
  return h;
}

// ---------------------------------------------------------------------------------------------

std::map<std::string, std::vector<Extent>> BlockStatusOnce(nbd_handle* h, uint64_t offset,
                                                           uint64_t length, uint32_t flags,
                                                           int* err) {
  struct Ctx {
    std::map<std::string, std::vector<Extent>> out;
  } ctx;
  nbd_extent_callback cb = {
      .callback = [](void* user, const char* metacontext, uint64_t off, uint32_t* entries,
                     size_t nr, int*) -> int {
        auto* c = static_cast<Ctx*>(user);
        auto& v = c->out[metacontext];
        for (size_t i = 0; i + 1 < nr; i += 2) {
          v.push_back({off, entries[i], entries[i + 1]});
          off += entries[i];
        }
        return 0;
      },
      .user_data = &ctx,
      .free = nullptr,
  };
  int r = nbd_block_status(h, length, offset, cb, flags);
  *err = r == -1 ? nbd_get_errno() : 0;
  if (r == -1 && *err == 0) *err = -1;
  return ctx.out;
}

std::vector<Extent> BlockStatus(nbd_handle* h, const std::string& context, uint64_t offset,
                                uint64_t length) {
  std::vector<Extent> all;
  uint64_t pos = offset;
  const uint64_t end = offset + length;
  // Bounded: every round must make progress, and a sane server needs far fewer rounds.
  for (int round = 0; pos < end && round < 100000; round++) {
    uint64_t ask = std::min<uint64_t>(end - pos, 0x80000000ULL);
    int err = 0;
    auto got = BlockStatusOnce(h, pos, ask, 0, &err);
    if (err != 0) {
      ADD_FAILURE() << "block status " << context << " @" << pos << "+" << ask << ": "
                    << nbd_get_error();
      return all;
    }
    auto it = got.find(context);
    if (it == got.end() || it->second.empty()) {
      ADD_FAILURE() << "no extents for " << context << " @" << pos;
      return all;
    }
    for (const auto& e : it->second) {
      if (e.offset >= end) break;
      Extent clipped = e;
      if (e.offset + e.length > end) clipped.length = end - e.offset;
      if (clipped.length == 0) {
        ADD_FAILURE() << "zero-length extent for " << context << " @" << e.offset;
        return all;
      }
      all.push_back(clipped);
      pos = clipped.offset + clipped.length;
    }
  }
  return all;
}

int64_t UniformStatus(nbd_handle* h, const std::string& context, uint64_t offset,
                      uint64_t length) {
  auto extents = BlockStatus(h, context, offset, length);
  if (extents.empty()) return -2;
  for (const auto& e : extents) {
    if (e.flags != extents[0].flags) return -1;
  }
  return extents[0].flags;
}

namespace {
::testing::AssertionResult ReadsExpected(nbd_handle* h, uint64_t offset,
                                         const std::vector<uint8_t>& want, const char* what) {
  std::vector<uint8_t> buf(want.size(), 0xee);
  if (nbd_pread(h, buf.data(), buf.size(), offset, 0) == -1) {
    return ::testing::AssertionFailure() << "pread @" << offset << "+" << buf.size() << ": "
                                         << nbd_get_error();
  }
  int64_t bad = FirstMismatch(buf.data(), want.data(), buf.size());
  if (bad >= 0) {
    return ::testing::AssertionFailure()
           << "read @" << offset << "+" << buf.size() << " differs from " << what
           << " at offset " << offset + bad << ": got 0x" << std::hex << int{buf[bad]}
           << " want 0x" << int{want[bad]};
  }
  return ::testing::AssertionSuccess();
}
}  // namespace

::testing::AssertionResult ReadsBase(nbd_handle* h, uint64_t offset, size_t len) {
  std::vector<uint8_t> want(len);
  FillBase(want.data(), offset, len);
  return ReadsExpected(h, offset, want, "the base pattern");
}

::testing::AssertionResult ReadsPattern(nbd_handle* h, uint64_t offset, size_t len,
                                        uint32_t seed) {
  return ReadsExpected(h, offset, Pattern(offset, len, seed),
                       ("pattern " + std::to_string(seed)).c_str());
}

::testing::AssertionResult ReadsZero(nbd_handle* h, uint64_t offset, size_t len) {
  return ReadsExpected(h, offset, std::vector<uint8_t>(len, 0), "zeros");
}

bool WritePattern(nbd_handle* h, uint64_t offset, size_t len, uint32_t seed, uint32_t flags) {
  auto data = Pattern(offset, len, seed);
  if (nbd_pwrite(h, data.data(), len, offset, flags) == -1) {
    ADD_FAILURE() << "pwrite @" << offset << "+" << len << ": " << nbd_get_error();
    return false;
  }
  return true;
}

bool DrainAio(nbd_handle* h, int timeout_s) {
  auto deadline = Clock::now() + std::chrono::seconds(timeout_s);
  while (nbd_aio_in_flight(h) > 0) {
    if (Clock::now() > deadline) {
      ADD_FAILURE() << nbd_aio_in_flight(h) << " requests still in flight after " << timeout_s
                    << " s";
      return false;
    }
    if (nbd_poll(h, 1000) == -1) {
      ADD_FAILURE() << "nbd_poll: " << nbd_get_error();
      return false;
    }
  }
  return true;
}

int FreeTcpPort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sin.sin_port = 0;
  socklen_t len = sizeof sin;
  if (bind(fd, reinterpret_cast<sockaddr*>(&sin), sizeof sin) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&sin), &len) != 0) {
    close(fd);
    return 0;
  }
  int port = ntohs(sin.sin_port);
  close(fd);
  return port;
}

}  // namespace strata_test
