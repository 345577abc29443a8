// A real NBD server in a child process, on a demo chain in a temp dir, for integration tests.
//
// NbdTestServer builds a chain (a raw base file holding a known pattern + one active layer made
// with `strata create -b`), starts `strata serve --foreground --socket ... LAYER` with fork/exec,
// waits (bounded) until the socket accepts, and hands out libnbd handles. It only ever signals
// the one PID it forked: SIGTERM, then SIGKILL after a timeout, and always reaps.
//
// The server is one parameter: $STRATA_TEST_SERVER = strata (default) | qemu-nbd | nbdkit. The
// peers serve the same picture (qemu-nbd: a qcow2 overlay on the raw base, with
// qemu:allocation-depth standing in for strata:layer; nbdkit: a copy of the base as a raw file,
// no layers), so every test can be checked against a known-good server before blaming strata.
// Tests that need something a peer lacks (layers, snapshots) skip with that reason.
//
// STRATA_TEST_SERVE_MODE=background starts strata as the README does instead: no --foreground
// (it daemonizes), relative paths from another working directory (dir()/elsewhere), the log in
// a --log-file, the daemon's pid from its --pid-file. The tests run unchanged: see StartDaemon.
//
// REQUIRES: gtest. Helpers report problems with ADD_FAILURE() and return false/null, so a test
// writes ASSERT_TRUE(server.Start()). Suites get a started server and a connected handle from
// the ServerTest fixture (server_fixture.h) instead of writing that SetUp again.
#ifndef STRATA_TESTS_NBD_TEST_SERVER_H_
#define STRATA_TESTS_NBD_TEST_SERVER_H_

#include <gtest/gtest.h>
#include <libnbd.h>
#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace strata_test {

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * 1024;

enum class ServerKind { kStrata, kQemuNbd, kNbdkit };

// The server under test, from $STRATA_TEST_SERVER (default strata).
ServerKind SelectedServer();
const char* ServerName(ServerKind kind);
// $STRATA_BIN, else the path compiled in by tests/CMakeLists.txt.
std::string StrataBinary();
// True when $STRATA_TEST_SERVE_MODE=background and the server is strata.
bool BackgroundServeMode();
// Empty if the selected server (and its offline tools) can run here; otherwise why not, for
// GTEST_SKIP().
std::string MissingPrerequisite();

// Skips the current test when the server cannot run here.
#define STRATA_SKIP_IF_NO_SERVER()                                        \
  do {                                                                    \
    std::string why_ = ::strata_test::MissingPrerequisite();              \
    if (!why_.empty()) GTEST_SKIP() << why_;                              \
  } while (0)

// Skips the current test on qemu-nbd and nbdkit: it checks one of strata's own promises.
#define STRATA_SKIP_IF_PEER(why)                                                 \
  do {                                                                           \
    if (::strata_test::SelectedServer() != ::strata_test::ServerKind::kStrata) { \
      GTEST_SKIP() << (why);                                                     \
    }                                                                            \
  } while (0)

// The demo base pattern: the byte at virtual offset `off` of the raw base. Never zero, and it
// depends on the 512-byte sector number, so data read from the wrong place shows.
uint8_t BaseByte(uint64_t off);
void FillBase(uint8_t* buf, uint64_t off, size_t len);
// A pattern for data the tests write: depends on offset and seed; a stale or misplaced block
// differs from the expected one.
void FillPattern(uint8_t* buf, uint64_t off, size_t len, uint32_t seed);
std::vector<uint8_t> Pattern(uint64_t off, size_t len, uint32_t seed);
// Offset of the first byte where buf differs from the pattern/base/zero, or -1 if none.
int64_t FirstMismatch(const uint8_t* buf, const uint8_t* want, size_t len);
bool AllZero(const uint8_t* buf, size_t len);

struct NbdCloser {
  void operator()(nbd_handle* h) const {
    if (h != nullptr) nbd_close(h);
  }
};
using NbdHandle = std::unique_ptr<nbd_handle, NbdCloser>;

struct ChainOptions {
  uint64_t disk_size = 64 * kMiB;
  // Leading bytes of the base that hold BaseByte(); the rest of the base is a sparse hole.
  uint64_t base_data = 32 * kMiB;
  // false: an empty disk with no base (`strata create --size`): every range is unallocated.
  bool with_base = true;
};

struct ServeOptions {
  bool read_only = false;
  std::string export_name;  // empty: the server's default export
  int tcp_port = 0;         // nonzero: listen on 127.0.0.1:port (and connect there)
  std::string pid_file;     // nonempty: --pid-file
  std::string cache;        // nonempty: --cache=none|writeback (strata, qemu-nbd)
  int workers = 0;          // nonzero: --workers N (strata only)
  std::vector<std::string> extra_args;
};

struct ConnectOptions {
  bool structured_replies = true;
  // Meta contexts to request. The fixture's LayerContext() name may be used here.
  std::vector<std::string> meta_contexts = {"base:allocation"};
  std::string export_name;
  // false: libnbd's strict mode off, so requests it would refuse by itself (past the end,
  // writes to a read-only export) reach the server.
  bool strict = true;
  // true: the handle stops in option negotiation (nbd_set_opt_mode); the test sends
  // NBD_OPT_* itself. Pass meta_contexts = {} too: nbd_opt_list_meta_context queries them.
  bool opt_mode = false;
};

struct Extent {
  uint64_t offset;
  uint64_t length;
  uint32_t flags;
};

class NbdTestServer {
 public:
  NbdTestServer();   // creates the temp dir
  ~NbdTestServer();  // stops the child (if any) and removes the temp dir
  NbdTestServer(const NbdTestServer&) = delete;
  NbdTestServer& operator=(const NbdTestServer&) = delete;

  // Builds the chain in dir(): base.raw + the active layer.
  bool CreateChain(const ChainOptions& options = {});
  // Starts the server and waits until it accepts a connection (at most 15 s).
  bool Start(const ServeOptions& options = {});
  // SIGTERM, wait up to 20 s, then SIGKILL. True iff the server exited with status 0 in time.
  bool Stop();
  // kill -9 the server (a crash) and reap it.
  void Kill9();
  // Sends `sig` to the server (only our own child).
  void Signal(int sig);
  // True while the child runs (reaps it if it exited).
  bool Alive();
  // Waits (bounded) for the child to exit by itself; returns its wait status or -1.
  int WaitExit(int timeout_ms);

  // Offline `strata snapshot LAYER NAME` (server must be stopped). False if unsupported
  // (SupportsLayers()).
  bool Snapshot(const std::string& name);
  // Offline `strata check LAYER`: true iff exit 0. `output` gets its output.
  bool Check(std::string* output = nullptr);
  // Offline `strata export LAYER OUT`.
  bool Export(const std::string& out_path);

  // Whether the selected server has layers and a layer-depth meta context.
  bool SupportsLayers() const;
  // "strata:layer" for strata, "qemu:allocation-depth" for qemu-nbd, "" for nbdkit.
  std::string LayerContext() const;

  NbdHandle Connect(const ConnectOptions& options = {});

  pid_t pid() const { return pid_; }
  const std::string& dir() const { return dir_; }
  const std::string& socket_path() const { return socket_; }
  const std::string& layer_path() const { return layer_; }
  uint64_t disk_size() const { return chain_.disk_size; }
  const ChainOptions& chain() const { return chain_; }
  std::string Uri() const;
  // Everything the server printed so far (all runs).
  std::string ServerLog() const;

 private:
  std::vector<std::string> ServeArgv(const ServeOptions& options) const;
  std::vector<std::string> StrataServeArgv(const ServeOptions& options) const;
  // --pid-file's path: the test's, else dir()/server.pid.
  std::string PidFile() const;
  // `path` as the background server sees it from dir()/elsewhere: "../NAME" for dir()/NAME.
  std::string FromElsewhere(const std::string& path) const;
  // Forks and execs `strata serve`, the server itself (foreground) or its daemon's parent.
  bool StartChild(const std::vector<std::string>& argv, int log_fd);
  bool StartDaemon(const std::vector<std::string>& argv, int log_fd, const std::string& cmd);
  bool WaitReady(int timeout_ms);

  ServerKind kind_;
  std::string dir_;
  std::string socket_;
  std::string base_;
  std::string layer_;
  std::string log_;
  ChainOptions chain_;
  ServeOptions serve_;
  pid_t pid_ = -1;
};

// Runs argv (argv[0] searched in PATH), output to `output`, killed after timeout_ms.
// Returns the exit status, or -1 if it could not run / was killed.
int RunCommand(const std::vector<std::string>& argv, std::string* output,
               int timeout_ms = 60000);

// All extents the server reports for [offset, offset+length) in `context`, issuing as many
// BLOCK_STATUS requests as needed (servers may answer less than asked). Fails the test on error.
std::vector<Extent> BlockStatus(nbd_handle* h, const std::string& context, uint64_t offset,
                                uint64_t length);
// The one status of [offset, offset+length) in `context`, or -1 if the range holds several.
int64_t UniformStatus(nbd_handle* h, const std::string& context, uint64_t offset,
                      uint64_t length);
// Extents of one BLOCK_STATUS request (with `flags`, e.g. REQ_ONE), per context.
std::map<std::string, std::vector<Extent>> BlockStatusOnce(nbd_handle* h, uint64_t offset,
                                                           uint64_t length, uint32_t flags,
                                                           int* err);

// Reads [offset, offset+len) and compares it with the base pattern / a written pattern.
::testing::AssertionResult ReadsBase(nbd_handle* h, uint64_t offset, size_t len);
::testing::AssertionResult ReadsPattern(nbd_handle* h, uint64_t offset, size_t len,
                                        uint32_t seed);
::testing::AssertionResult ReadsZero(nbd_handle* h, uint64_t offset, size_t len);
bool WritePattern(nbd_handle* h, uint64_t offset, size_t len, uint32_t seed, uint32_t flags = 0);

// Runs the libnbd aio loop until nothing is in flight (true) or timeout_s pass / the
// connection fails (false, with a test failure).
bool DrainAio(nbd_handle* h, int timeout_s);

// A free TCP port on 127.0.0.1 (bound then released: a small race, fine for tests).
int FreeTcpPort();

}  // namespace strata_test

#endif  // STRATA_TESTS_NBD_TEST_SERVER_H_
