#include "server/engine/admission.h"

#include <libnbd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <vector>

#include "gtest/gtest.h"
#include "server/engine/fake_storage.h"
#include "server/server.h"

namespace strata {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1000);

void ExpectCounts(const Admission& a, int open, int handshaking) {
  EXPECT_EQ(a.open(), open);
  EXPECT_EQ(a.handshaking(), handshaking);
}

TEST(AdmissionTest, OverMaxConnectionsIsRefused) {
  Admission a({.max_connections = 2, .max_handshakes = 2});
  auto first = a.Admit(0, kT0);
  auto second = a.Admit(1, kT0);
  ASSERT_TRUE(first.admitted && second.admitted);
  EXPECT_NE(first.id, second.id);
  a.Negotiated(first.id);
  auto third = a.Admit(0, kT0);
  EXPECT_FALSE(third.admitted);
  EXPECT_EQ(third.open, 2);
  EXPECT_EQ(third.handshaking, 1);
  EXPECT_FALSE(third.evict);
}

TEST(AdmissionTest, ClosingFreesItsPlace) {
  Admission a({.max_connections = 1, .max_handshakes = 1});
  auto first = a.Admit(0, kT0);
  a.Negotiated(first.id);
  EXPECT_FALSE(a.Admit(0, kT0).admitted);
  a.Closed(first.id);
  EXPECT_EQ(a.open(), 0);
  EXPECT_TRUE(a.Admit(0, kT0).admitted);
}

TEST(AdmissionTest, NegotiatedConnectionsLeaveTheHandshakeCount) {
  Admission a({.max_connections = 10, .max_handshakes = 2});
  for (int i = 0; i < 6; ++i) {
    auto d = a.Admit(0, kT0);
    ASSERT_TRUE(d.admitted);
    EXPECT_FALSE(d.evict) << i;
    a.Negotiated(d.id);
  }
  ExpectCounts(a, 6, 0);
}

TEST(AdmissionTest, FullHandshakesEvictTheOldest) {
  Admission a({.max_connections = 10, .max_handshakes = 2});
  auto oldest = a.Admit(0, kT0);
  auto next = a.Admit(1, kT0 + absl::Seconds(1));
  auto newcomer = a.Admit(1, kT0 + absl::Seconds(2));
  ASSERT_TRUE(newcomer.admitted);
  ASSERT_TRUE(newcomer.evict);
  EXPECT_EQ(newcomer.evict->id, oldest.id);
  EXPECT_EQ(newcomer.evict->worker, 0);
  EXPECT_EQ(newcomer.evict->since, kT0);
  EXPECT_EQ(a.handshaking(), 2);
  EXPECT_EQ(a.open(), 3);  // the evicted one counts until its worker closes it
  a.Closed(oldest.id);
  EXPECT_EQ(a.open(), 2);
  EXPECT_EQ(a.Admit(0, kT0).evict->id, next.id);
}

TEST(AdmissionTest, EvictedConnectionThatNegotiatedMeanwhileIsNotCountedTwice) {
  Admission a({.max_connections = 10, .max_handshakes = 1});
  auto first = a.Admit(0, kT0);
  auto second = a.Admit(0, kT0);
  ASSERT_EQ(second.evict->id, first.id);
  a.Negotiated(first.id);  // its worker saw the handshake end before the eviction
  EXPECT_EQ(a.handshaking(), 1);
  a.Closed(first.id);
  a.Closed(second.id);
  ExpectCounts(a, 0, 0);
}

TEST(AdmissionTest, EvictionsStopAtTheCeiling) {
  Admission a({.max_connections = 2, .max_handshakes = 1});
  auto first = a.Admit(0, kT0);
  a.Negotiated(first.id);
  a.Admit(0, kT0);  // in handshake: open 2, the cap
  // Each newcomer evicts the one before it, none of which has closed yet.
  EXPECT_TRUE(a.Admit(0, kT0).admitted);
  EXPECT_EQ(a.open(), 3);
  EXPECT_FALSE(a.Admit(0, kT0).admitted);
}

// The counts follow real connections through the Server: up while in handshake, the
// handshake count down once negotiated, both down when the client goes.
class AdmissionServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    exports_.Add(NewExport("", &storage_));
    ServerOptions options;
    options.workers = 2;
    options.admission = {.max_connections = 3, .max_handshakes = 2};
    server_ = std::make_unique<Server>(&exports_, options);
    if (!server_->Start().ok()) GTEST_SKIP() << "io_uring unavailable";
  }
  void TearDown() override {
    for (int fd : raw_) close(fd);
    for (nbd_handle* h : clients_) nbd_close(h);
    if (server_) server_->Shutdown();
  }
  // A socket the server serves, nothing sent on it.
  int Raw() {
    int sv[2];
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    server_->AddConnection(sv[0], "socketpair");
    raw_.push_back(sv[1]);
    return sv[1];
  }
  // A libnbd client, connected through the handshake.
  nbd_handle* Client() {
    int sv[2];
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    server_->AddConnection(sv[0], "socketpair");
    nbd_handle* h = nbd_create();
    EXPECT_EQ(nbd_connect_socket(h, sv[1]), 0) << nbd_get_error();
    clients_.push_back(h);
    return h;
  }
  // Waits (bounded) until the counts are as expected.
  void ExpectCounts(int open, int handshaking) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (absl::Now() < deadline && (server_->admission().open() != open ||
                                      server_->admission().handshaking() != handshaking)) {
      absl::SleepFor(absl::Milliseconds(5));
    }
    EXPECT_EQ(server_->admission().open(), open);
    EXPECT_EQ(server_->admission().handshaking(), handshaking);
  }

  FakeStorage storage_{1 << 20};
  ExportTable exports_;
  std::unique_ptr<Server> server_;
  std::vector<int> raw_;
  std::vector<nbd_handle*> clients_;
};

TEST_F(AdmissionServerTest, CountsFollowHandshakeAndClose) {
  Raw();
  ExpectCounts(1, 1);
  nbd_handle* h = Client();
  ExpectCounts(2, 1);
  char buf[512];
  EXPECT_EQ(nbd_pread(h, buf, sizeof(buf), 0, 0), 0) << nbd_get_error();
  close(raw_.back());
  raw_.pop_back();
  ExpectCounts(1, 0);
  nbd_shutdown(h, 0);
  ExpectCounts(0, 0);
}

TEST_F(AdmissionServerTest, SquattersAreEvictedForANewClient) {
  int squatter = Raw();
  Raw();
  ExpectCounts(2, 2);
  nbd_handle* h = Client();  // the third: evicts the oldest squatter
  char buf[512];
  EXPECT_EQ(nbd_pread(h, buf, sizeof(buf), 0, 0), 0) << nbd_get_error();
  ExpectCounts(2, 1);
  // The evicted squatter reads its greeting, then the end of the stream.
  char greeting[1024];
  ssize_t n;
  size_t total = 0;
  while ((n = recv(squatter, greeting, sizeof(greeting), 0)) > 0) total += n;
  EXPECT_EQ(n, 0);
  EXPECT_LE(total, sizeof(greeting));
}

TEST_F(AdmissionServerTest, OverMaxConnectionsTheNewOneIsClosedAtOnce) {
  for (int i = 0; i < 3; ++i) Client();
  ExpectCounts(3, 0);
  int refused = Raw();
  char byte;
  EXPECT_EQ(recv(refused, &byte, 1, 0), 0);  // closed without a greeting
  ExpectCounts(3, 0);
}

}  // namespace
}  // namespace strata
