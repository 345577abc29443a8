// `strata serve` as a program: where it listens by default, that it refuses to serve a layer
// another process holds (two writers on one chain would corrupt it), that offline commands that
// change the chain refuse while it is served, that a bad LAYER fails fast, and captive mode over
// TCP. These are strata's own promises (issues 3 and 4); peers skip.
#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "nbd_test_server.h"

namespace strata_test {
namespace {

class ServeOptionsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    STRATA_SKIP_IF_NO_SERVER();
    if (SelectedServer() != ServerKind::kStrata) GTEST_SKIP() << "strata CLI behaviour";
    ASSERT_TRUE(server_.CreateChain());
  }
  NbdTestServer server_;
};

// Default socket: <dir>/<stem>.sock, and the printed URI names it.
TEST_F(ServeOptionsTest, DefaultSocketIsStemDotSockBesideTheLayer) {
  std::string out;
  int rc = RunCommand({StrataBinary(), "serve", "--run", "nbdinfo --size \"$uri\"; echo uri=$uri",
                       server_.layer_path()},
                      &out, 30000);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("uri=nbd+unix:///?socket=" + server_.dir() + "/disk.sock"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find(std::to_string(server_.disk_size())), std::string::npos) << out;
}

// A second server on the same layer is refused while the first runs (flock), and it says why;
// the first keeps serving.
TEST_F(ServeOptionsTest, SecondServerOnSameLayerIsRefused) {
  ASSERT_TRUE(server_.Start());
  std::string out;
  int rc = RunCommand({StrataBinary(), "serve", "--foreground", "--socket",
                       server_.dir() + "/second.sock", server_.layer_path()},
                      &out, 15000);
  EXPECT_NE(rc, 0) << "second server on the same layer started:\n" << out;
  EXPECT_NE(rc, -1) << "second server did not exit by itself:\n" << out;
  EXPECT_NE(out.find("in use"), std::string::npos) << out;
  NbdHandle h = server_.Connect();
  ASSERT_TRUE(h);
  EXPECT_TRUE(ReadsBase(h.get(), 0, 4096));
}

// Offline snapshot of a served layer is refused (the live form goes through the server).
TEST_F(ServeOptionsTest, OfflineSnapshotOfServedLayerIsRefused) {
  ASSERT_TRUE(server_.Start());
  NbdHandle h = server_.Connect();
  ASSERT_TRUE(h);
  ASSERT_TRUE(WritePattern(h.get(), 0, 64 * kKiB, 1));
  std::string out;
  EXPECT_NE(RunCommand({StrataBinary(), "snapshot", server_.layer_path(), "s1"}, &out), 0) << out;
  struct stat st;
  EXPECT_NE(stat((server_.dir() + "/disk@s1.strata").c_str(), &st), 0)
      << "a snapshot file appeared while the layer was served";
  EXPECT_TRUE(ReadsPattern(h.get(), 0, 64 * kKiB, 1));
}

// A missing layer: non-zero exit at once, naming the file; no socket left behind.
TEST_F(ServeOptionsTest, MissingLayerFailsFastNamingTheFile) {
  std::string missing = server_.dir() + "/nope.strata";
  std::string out;
  int rc = RunCommand({StrataBinary(), "serve", "--foreground", "--socket",
                       server_.dir() + "/nope.sock", missing},
                      &out, 15000);
  EXPECT_GT(rc, 0) << out;
  EXPECT_NE(out.find("nope.strata"), std::string::npos) << out;
  EXPECT_NE(access((server_.dir() + "/nope.sock").c_str(), F_OK), 0);
}

// Captive mode over TCP: $port and $uri are set, the command's status is returned.
TEST_F(ServeOptionsTest, CaptiveModeOverTcpSetsPortAndReturnsStatus) {
  int port = FreeTcpPort();
  ASSERT_NE(port, 0);
  std::string out;
  int rc = RunCommand({StrataBinary(), "serve", "--listen", "127.0.0.1:" + std::to_string(port),
                       "--run", "test \"$port\" = " + std::to_string(port) +
                                    " && nbdinfo --size \"$uri\" && exit 7",
                       server_.layer_path()},
                      &out, 30000);
  EXPECT_EQ(rc, 7) << out;
  EXPECT_NE(out.find(std::to_string(server_.disk_size())), std::string::npos) << out;
}

}  // namespace
}  // namespace strata_test
