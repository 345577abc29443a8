#include "server/listener.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "blockstore/mutex.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

sockaddr_un UnixAddress(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
  return addr;
}

// A client socket connected to `addr`, or -1.
template <typename Address>
int ConnectTo(int family, const Address& addr) {
  int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0) return fd;
  close(fd);
  return -1;
}

// What the loop handed over, for the test thread to wait on.
struct Handed {
  Mutex mu;
  std::vector<std::pair<int, std::string>> connections ABSL_GUARDED_BY(mu);

  AcceptLoop::Handler Handler() {
    return [this](int fd, std::string peer) {
      MutexLock lock(&mu);
      connections.emplace_back(fd, std::move(peer));
    };
  }
  // The first connection handed over, waiting at most 10 s for it.
  std::pair<int, std::string> First() {
    MutexLock lock(&mu);
    auto any = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return !connections.empty(); };
    if (!mu.AwaitWithTimeout(absl::Condition(&any), absl::Seconds(10))) return {-1, ""};
    return connections.front();
  }
  ~Handed() {
    MutexLock lock(&mu);
    for (auto& [fd, peer] : connections) close(fd);
  }
};

class ListenerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (std::filesystem::temp_directory_path() / "strata-listen-XXXXXX").string();
    ASSERT_NE(mkdtemp(dir_.data()), nullptr);
    path_ = dir_ + "/d.sock";
  }
  void TearDown() override {
    loop_.Stop();
    std::filesystem::remove_all(dir_);
  }
  // Listens on path_ and starts the loop on it.
  void StartOnUnixSocket() {
    absl::StatusOr<Listener> l = ListenUnix(path_, 0600);
    ASSERT_TRUE(l.ok()) << l.status();
    loop_.Add(*l);
    ASSERT_TRUE(loop_.Start().ok());
  }
  std::string dir_;
  std::string path_;
  Handed handed_;
  AcceptLoop loop_{handed_.Handler()};  // after handed_: stops before it goes
};

// The handed-over descriptor is the server's end of the client's connection.
TEST_F(ListenerTest, AcceptsOnAUnixSocketAndHandsTheFdOver) {
  ASSERT_NO_FATAL_FAILURE(StartOnUnixSocket());
  int client = ConnectTo(AF_UNIX, UnixAddress(path_));
  ASSERT_GE(client, 0);
  ASSERT_EQ(write(client, "ping", 4), 4);
  auto [fd, peer] = handed_.First();
  ASSERT_GE(fd, 0) << "no connection handed over";
  EXPECT_EQ(peer, "unix:" + path_);
  char buf[4];
  EXPECT_EQ(read(fd, buf, sizeof(buf)), 4);
  EXPECT_EQ(std::string(buf, 4), "ping");
  close(client);
}

// A TCP connection is named by the client's address, so log lines tell clients apart.
TEST_F(ListenerTest, TcpListenerReportsItsPortAndNamesThePeer) {
  absl::StatusOr<Listener> l = ListenTcp("127.0.0.1", 0);
  ASSERT_TRUE(l.ok()) << l.status();
  ASSERT_GT(l->port, 0);
  EXPECT_EQ(l->description, "tcp:127.0.0.1:" + std::to_string(l->port));
  loop_.Add(*l);
  ASSERT_TRUE(loop_.Start().ok());
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(l->port));
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  int client = ConnectTo(AF_INET, addr);
  ASSERT_GE(client, 0);
  EXPECT_EQ(handed_.First().second.rfind("127.0.0.1:", 0), 0u);
  close(client);
}

// Shutdown must not wait on a poll that nothing else would wake; the socket file goes with it.
TEST_F(ListenerTest, StopsPromptlyWhenAsked) {
  ASSERT_NO_FATAL_FAILURE(StartOnUnixSocket());
  const absl::Time begin = absl::Now();
  loop_.Stop();
  EXPECT_LT(absl::Now() - begin, absl::Seconds(1));
  EXPECT_FALSE(std::filesystem::exists(path_));
  EXPECT_LT(ConnectTo(AF_UNIX, UnixAddress(path_)), 0);
  loop_.Stop();  // idempotent
}

// A killed server leaves its socket file behind: the next one must be able to start.
TEST_F(ListenerTest, StaleSocketFileIsReplaced) {
  int stale = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr = UnixAddress(path_);
  ASSERT_EQ(bind(stale, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  close(stale);  // the file stays, nobody listens
  absl::StatusOr<Listener> l = ListenUnix(path_, 0600);
  ASSERT_TRUE(l.ok()) << l.status();
  int client = ConnectTo(AF_UNIX, addr);
  EXPECT_GE(client, 0);
  close(client);
  CloseListener(&*l);
}

// Two servers on one socket path: the second must not steal the first one's clients.
TEST_F(ListenerTest, LiveSocketIsRefused) {
  absl::StatusOr<Listener> first = ListenUnix(path_, 0600);
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<Listener> second = ListenUnix(path_, 0600);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_NE(second.status().message().find("another server is listening"), std::string::npos)
      << second.status();
  EXPECT_TRUE(std::filesystem::exists(path_));
  CloseListener(&*first);
  EXPECT_FALSE(std::filesystem::exists(path_));
}

// A typo'd --socket naming the user's file must not delete it.
TEST_F(ListenerTest, OtherFileIsRefusedAndKept) {
  std::ofstream(path_) << "data";
  absl::StatusOr<Listener> l = ListenUnix(path_, 0600);
  EXPECT_EQ(l.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_NE(l.status().message().find("is not a socket"), std::string::npos) << l.status();
  EXPECT_TRUE(std::filesystem::is_regular_file(path_));
}

TEST_F(ListenerTest, SocketGetsExactlyTheRequestedMode) {
  absl::StatusOr<Listener> l = ListenUnix(path_, 0660);
  ASSERT_TRUE(l.ok()) << l.status();
  struct stat st;
  ASSERT_EQ(stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  CloseListener(&*l);
}

// Socket activation, with the descriptors at kPassedFd instead of 3 (the test runner may hold
// low descriptors): LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES as systemd sets them.
class PassedListenersTest : public ListenerTest {
 protected:
  static constexpr int kPassedFd = 200;
  void TearDown() override {
    close(kPassedFd);
    ListenerTest::TearDown();
  }
  // Puts `fd` at kPassedFd (without close-on-exec, as a service manager passes it).
  void Pass(int fd, const std::string& listen_pid) {
    ASSERT_EQ(dup2(fd, kPassedFd), kPassedFd);
    close(fd);
    setenv("LISTEN_PID", listen_pid.c_str(), 1);
    setenv("LISTEN_FDS", "1", 1);
    setenv("LISTEN_FDNAMES", "nbd", 1);
  }
  static bool EnvironmentUnset() {
    return getenv("LISTEN_PID") == nullptr && getenv("LISTEN_FDS") == nullptr &&
           getenv("LISTEN_FDNAMES") == nullptr;
  }
  // A unix stream socket bound at path_; listening when `listen` says so.
  int BoundSocket(bool listen) {
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr = UnixAddress(path_);
    EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    if (listen) {
      EXPECT_EQ(::listen(fd, 8), 0);
    }
    return fd;
  }
  // PassedListeners' error, or "" when it succeeded.
  static std::string PassedError() {
    absl::StatusOr<std::vector<Listener>> passed = PassedListeners(kPassedFd);
    return passed.ok() ? "" : std::string(passed.status().message());
  }
};

// The passed socket is served, named by its path, close-on-exec, and its file (the service
// manager's) is still there once the server has stopped.
TEST_F(PassedListenersTest, ServesThePassedSocketAndLeavesItsFile) {
  ASSERT_NO_FATAL_FAILURE(Pass(BoundSocket(true), absl::StrCat(getpid())));
  absl::StatusOr<std::vector<Listener>> passed = PassedListeners(kPassedFd);
  ASSERT_TRUE(passed.ok()) << passed.status();
  EXPECT_TRUE(EnvironmentUnset());
  ASSERT_EQ(passed->size(), 1u);
  EXPECT_EQ((*passed)[0].fd, kPassedFd);
  EXPECT_EQ((*passed)[0].description, "unix:" + path_);
  EXPECT_FALSE((*passed)[0].tcp());
  EXPECT_TRUE(fcntl(kPassedFd, F_GETFD) & FD_CLOEXEC);
  loop_.Add((*passed)[0]);
  ASSERT_TRUE(loop_.Start().ok());
  int client = ConnectTo(AF_UNIX, UnixAddress(path_));
  ASSERT_GE(client, 0);
  EXPECT_EQ(handed_.First().second, "unix:" + path_);
  close(client);
  loop_.Stop();
  EXPECT_TRUE(std::filesystem::exists(path_));
}

TEST_F(PassedListenersTest, APassedTcpSocketIsDescribedByItsAddress) {
  absl::StatusOr<Listener> tcp = ListenTcp("127.0.0.1", 0);
  ASSERT_TRUE(tcp.ok()) << tcp.status();
  int port = tcp->port;
  ASSERT_NO_FATAL_FAILURE(Pass(tcp->fd, absl::StrCat(getpid())));
  absl::StatusOr<std::vector<Listener>> passed = PassedListeners(kPassedFd);
  ASSERT_TRUE(passed.ok()) << passed.status();
  ASSERT_EQ(passed->size(), 1u);
  EXPECT_TRUE((*passed)[0].tcp());
  EXPECT_EQ((*passed)[0].host, "127.0.0.1");
  EXPECT_EQ((*passed)[0].port, port);
  EXPECT_EQ((*passed)[0].description, absl::StrCat("tcp:127.0.0.1:", port));
}

// LISTEN_PID names whoever the variables were for; another process's are left alone (but
// unset, so our children do not take them either).
TEST_F(PassedListenersTest, AnotherProcessesSocketsAreIgnored) {
  ASSERT_NO_FATAL_FAILURE(Pass(BoundSocket(true), absl::StrCat(getppid())));
  absl::StatusOr<std::vector<Listener>> passed = PassedListeners(kPassedFd);
  ASSERT_TRUE(passed.ok()) << passed.status();
  EXPECT_TRUE(passed->empty());
  EXPECT_TRUE(EnvironmentUnset());
  EXPECT_FALSE(fcntl(kPassedFd, F_GETFD) & FD_CLOEXEC) << "not ours: untouched";
}

TEST_F(PassedListenersTest, NoVariablesNoSockets) {
  unsetenv("LISTEN_PID");
  unsetenv("LISTEN_FDS");
  absl::StatusOr<std::vector<Listener>> passed = PassedListeners(kPassedFd);
  ASSERT_TRUE(passed.ok()) << passed.status();
  EXPECT_TRUE(passed->empty());
}

// What a wrong .socket unit passes is refused with the descriptor and the fix.
TEST_F(PassedListenersTest, AnythingButAListeningStreamSocketIsRefused) {
  const std::string fd = absl::StrCat("fd ", kPassedFd, " ");
  ASSERT_NO_FATAL_FAILURE(Pass(BoundSocket(false), absl::StrCat(getpid())));
  EXPECT_NE(PassedError().find(fd + "is a stream socket that does not listen"),
            std::string::npos) << PassedError();
  EXPECT_TRUE(EnvironmentUnset());
  ASSERT_NO_FATAL_FAILURE(Pass(socket(AF_UNIX, SOCK_DGRAM, 0), absl::StrCat(getpid())));
  EXPECT_NE(PassedError().find(fd + "is not a stream socket"), std::string::npos)
      << PassedError();
  ASSERT_NO_FATAL_FAILURE(Pass(open("/dev/null", O_RDONLY), absl::StrCat(getpid())));
  EXPECT_NE(PassedError().find(fd + "is not a socket"), std::string::npos) << PassedError();
  close(kPassedFd);
  setenv("LISTEN_PID", absl::StrCat(getpid()).c_str(), 1);
  setenv("LISTEN_FDS", "1", 1);
  EXPECT_NE(PassedError().find(fd + "is not open"), std::string::npos) << PassedError();
  setenv("LISTEN_PID", absl::StrCat(getpid()).c_str(), 1);
  setenv("LISTEN_FDS", "one", 1);
  EXPECT_NE(PassedError().find("LISTEN_FDS=\"one\""), std::string::npos) << PassedError();
}

}  // namespace
}  // namespace strata
