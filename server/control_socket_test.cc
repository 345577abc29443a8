#include "server/control_socket.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <filesystem>

#include "gtest/gtest.h"

namespace strata {
namespace {

using nlohmann::json;

absl::Status Echo(const json& request, json* reply) {
  if (request["request"] == "fail") return absl::FailedPreconditionError("asked to fail");
  (*reply)["echo"] = request["request"];
  return absl::OkStatus();
}

json Parse(const std::string& line) { return json::parse(line); }

TEST(ControlLineTest, RequestsAndErrors) {
  EXPECT_EQ(Parse(HandleControlLine(R"({"request":"list"})", Echo)),
            (json{{"ok", true}, {"echo", "list"}}));
  json failed = Parse(HandleControlLine(R"({"request":"fail"})", Echo));
  EXPECT_EQ(failed["ok"], false);
  EXPECT_EQ(failed["error"], "asked to fail");
  for (const char* bad : {"not json", "[1,2]", "{}", R"({"request": 5})", ""}) {
    json r = Parse(HandleControlLine(bad, Echo));
    EXPECT_EQ(r["ok"], false) << bad;
    EXPECT_TRUE(r["error"].is_string()) << bad;
  }
}

class ControlSocketTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("strata-ctl-" + std::to_string(getpid()));
    std::filesystem::create_directories(dir_);
    path_ = (dir_ / "c.ctl").string();
    auto s = ControlSocket::Start(path_, 0600, Echo);
    ASSERT_TRUE(s.ok()) << s.status();
    socket_ = std::move(*s);
  }
  void TearDown() override {
    socket_.reset();
    std::filesystem::remove_all(dir_);
  }
  int Connect() {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path_.c_str());
    EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    timeval tv{10, 0};  // bounded: a broken server fails the test instead of hanging it
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return fd;
  }
  std::string ReadLine(int fd) {
    std::string line;
    char c;
    while (recv(fd, &c, 1, 0) == 1 && c != '\n') line.push_back(c);
    return line;
  }
  std::filesystem::path dir_;
  std::string path_;
  std::unique_ptr<ControlSocket> socket_;
};

TEST_F(ControlSocketTest, SocketIsPrivate) {
  struct stat st;
  ASSERT_EQ(stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST_F(ControlSocketTest, PipelinedRequestsGetRepliesInOrder) {
  int fd = Connect();
  std::string two = "{\"request\":\"a\"}\n{\"request\":\"b\"}\n";
  ASSERT_EQ(send(fd, two.data(), two.size(), 0), static_cast<ssize_t>(two.size()));
  EXPECT_EQ(Parse(ReadLine(fd))["echo"], "a");
  EXPECT_EQ(Parse(ReadLine(fd))["echo"], "b");
  close(fd);
}

TEST_F(ControlSocketTest, OversizedLineIsRefusedAndOthersStillServed) {
  int fd = Connect();
  std::string huge(ControlSocket::kMaxLine + 10, 'x');
  send(fd, huge.data(), huge.size(), MSG_NOSIGNAL);
  json r = Parse(ReadLine(fd));
  EXPECT_EQ(r["ok"], false);
  EXPECT_NE(r["error"].get<std::string>().find("longer"), std::string::npos);
  close(fd);
  int other = Connect();
  std::string req = "{\"request\":\"x\"}\n";
  send(other, req.data(), req.size(), 0);
  EXPECT_EQ(Parse(ReadLine(other))["echo"], "x");
  close(other);
}

TEST_F(ControlSocketTest, AbruptDisconnectMidLineIsHarmless) {
  int fd = Connect();
  send(fd, "{\"requ", 6, 0);
  close(fd);
  int other = Connect();
  send(other, "{\"request\":\"y\"}\n", 16, 0);
  EXPECT_EQ(Parse(ReadLine(other))["echo"], "y");
  close(other);
}

}  // namespace
}  // namespace strata
