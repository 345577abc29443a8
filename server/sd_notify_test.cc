#include "server/sd_notify.h"

#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

// A datagram socket standing in for the service manager's, bound to the file `name` or to
// `name` in the abstract namespace (address '\0' NAME, without a terminating NUL), receiving
// with a 5 s bound.
class ManagerSocket {
 public:
  ManagerSocket(const std::string& name, bool abstract) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path + (abstract ? 1 : 0), name.data(), name.size());
    // The file's terminating NUL, or the abstract name's leading one.
    auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size() + 1);
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    bound_ = fd_ >= 0 && bind(fd_, reinterpret_cast<const sockaddr*>(&addr), len) == 0;
    timeval five{.tv_sec = 5, .tv_usec = 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &five, sizeof(five));
  }
  ~ManagerSocket() {
    if (fd_ >= 0) close(fd_);
  }
  bool bound() const { return bound_; }
  // The next datagram, or "(nothing)" after 5 s.
  std::string Receive() {
    char buf[4096];
    ssize_t n = recv(fd_, buf, sizeof(buf), 0);
    return n < 0 ? "(nothing)" : std::string(buf, n);
  }

 private:
  int fd_ = -1;
  bool bound_ = false;
};

class SdNotifyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (std::filesystem::temp_directory_path() / "strata-notify-XXXXXX").string();
    ASSERT_NE(mkdtemp(dir_.data()), nullptr);
  }
  void TearDown() override {
    unsetenv("NOTIFY_SOCKET");
    std::filesystem::remove_all(dir_);
  }
  std::string dir_;
};

TEST_F(SdNotifyTest, SendsOneDatagramToAPath) {
  std::string path = dir_ + "/notify";
  ManagerSocket manager(path, false);
  ASSERT_TRUE(manager.bound());
  ASSERT_TRUE(NotifySocket(path, "READY=1\nMAINPID=42").ok());
  EXPECT_EQ(manager.Receive(), "READY=1\nMAINPID=42");
}

// "@NAME" is NAME in the abstract namespace, whose address is exactly '\0' NAME: the manager
// bound that length, and a trailing NUL would make it another name nobody listens on.
TEST_F(SdNotifyTest, AtSignMeansTheAbstractNamespace) {
  std::string name = absl::StrCat("strata-notify-test-", getpid());
  ManagerSocket manager(name, true);
  ASSERT_TRUE(manager.bound());
  absl::Status st = NotifySocket("@" + name, "STOPPING=1");
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(manager.Receive(), "STOPPING=1");
}

TEST_F(SdNotifyTest, NotifyServiceManagerSendsWhereTheEnvironmentSays) {
  std::string path = dir_ + "/notify";
  ManagerSocket manager(path, false);
  ASSERT_TRUE(manager.bound());
  setenv("NOTIFY_SOCKET", path.c_str(), 1);
  ASSERT_TRUE(NotifyServiceManager("STATUS=serving").ok());
  EXPECT_EQ(manager.Receive(), "STATUS=serving");
  EXPECT_STREQ(getenv("NOTIFY_SOCKET"), path.c_str()) << "STOPPING=1 needs it again";
}

// Not under a service manager: nothing to tell, and nothing is wrong.
TEST_F(SdNotifyTest, NoNotifySocketIsNotAnError) {
  unsetenv("NOTIFY_SOCKET");
  EXPECT_TRUE(NotifyServiceManager("READY=1").ok());
  setenv("NOTIFY_SOCKET", "", 1);
  EXPECT_TRUE(NotifyServiceManager("READY=1").ok());
}

TEST_F(SdNotifyTest, ErrorsNameTheSocket) {
  absl::Status relative = NotifySocket("run/notify", "READY=1");
  EXPECT_EQ(relative.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(relative.message().find("NOTIFY_SOCKET=\"run/notify\""), std::string::npos)
      << relative;
  std::string missing = dir_ + "/nobody";
  absl::Status refused = NotifySocket(missing, "READY=1");
  EXPECT_FALSE(refused.ok());
  EXPECT_NE(refused.message().find(missing), std::string::npos) << refused;
  EXPECT_FALSE(NotifySocket("/" + std::string(200, 'x'), "READY=1").ok());
}

}  // namespace
}  // namespace strata
