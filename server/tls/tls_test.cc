#include "server/tls/tls.h"

#include <gnutls/gnutls.h>
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

// Certificates made with certtool (gnutls-bin), once for the whole test program.
class Pki {
 public:
  static const Pki& Get() {
    static const Pki* pki = new Pki;
    return *pki;
  }
  bool ok() const { return ok_; }
  std::string dir;        // ca-cert.pem, server-cert.pem, server-key.pem
  std::string other_ca;   // a CA that signed nothing here
  std::string client;     // client-cert.pem, client-key.pem signed by the CA

 private:
  Pki() {
    char tmpl[] = "/tmp/strata-tls-test-XXXXXX";
    root_ = mkdtemp(tmpl);
    dir = root_ + "/server";
    client = root_ + "/client";
    other_ca = root_ + "/other-ca-cert.pem";
    const std::string script = absl::StrCat(
        "set -e; cd ", root_, "; mkdir server client; ",
        "printf 'cn = test CA\\nca\\ncert_signing_key\\nexpiration_days = 2\\n' > ca.info; ",
        "printf 'cn = localhost\\ndns_name = localhost\\nip_address = 127.0.0.1\\ntls_www_server\\n"
        "expiration_days = 2\\n' > server.info; ",
        "printf 'cn = client\\ntls_www_client\\nexpiration_days = 2\\n' > client.info; ",
        "certtool -p --key-type=ecdsa --outfile ca-key.pem; ",
        "certtool -s --load-privkey ca-key.pem --template ca.info --outfile server/ca-cert.pem; ",
        "cp server/ca-cert.pem client/ca-cert.pem; ",
        "certtool -p --key-type=ecdsa --outfile server/server-key.pem; ",
        "certtool -c --load-privkey server/server-key.pem --load-ca-certificate "
        "server/ca-cert.pem --load-ca-privkey ca-key.pem --template server.info "
        "--outfile server/server-cert.pem; ",
        "certtool -p --key-type=ecdsa --outfile client/client-key.pem; ",
        "certtool -c --load-privkey client/client-key.pem --load-ca-certificate "
        "server/ca-cert.pem --load-ca-privkey ca-key.pem --template client.info "
        "--outfile client/client-cert.pem; ",
        "certtool -p --key-type=ecdsa --outfile other-key.pem; ",
        "certtool -s --load-privkey other-key.pem --template ca.info --outfile other-ca-cert.pem",
        ") >/dev/null 2>&1");
    ok_ = system(("(" + script).c_str()) == 0;
    static std::string removed;
    removed = root_;
    atexit([] {
      if (system(("rm -rf " + removed).c_str()) != 0) {
      }
    });
  }
  std::string root_;
  bool ok_ = false;
};

// The other end: a GnuTLS client over the same kind of memory buffers.
class Client {
 public:
  // x509: trusts `ca`; with `cert_dir`, shows cert_dir/client-cert.pem.
  Client(const std::string& ca, const std::string& cert_dir = "") {
    gnutls_certificate_allocate_credentials(&x509_);
    gnutls_certificate_set_x509_trust_file(x509_, ca.c_str(), GNUTLS_X509_FMT_PEM);
    if (!cert_dir.empty()) {
      gnutls_certificate_set_x509_key_file(x509_, (cert_dir + "/client-cert.pem").c_str(),
                                           (cert_dir + "/client-key.pem").c_str(),
                                           GNUTLS_X509_FMT_PEM);
    }
    Init();
    gnutls_set_default_priority(session_);
    gnutls_credentials_set(session_, GNUTLS_CRD_CERTIFICATE, x509_);
    gnutls_server_name_set(session_, GNUTLS_NAME_DNS, "localhost", 9);
    gnutls_session_set_verify_cert(session_, "localhost", 0);
  }
  // PSK: `user` with the key in hex.
  Client(const std::string& user, const std::string& hex_key, bool /*psk*/) {
    gnutls_psk_allocate_client_credentials(&psk_);
    gnutls_datum_t key = {reinterpret_cast<unsigned char*>(const_cast<char*>(hex_key.data())),
                          static_cast<unsigned>(hex_key.size())};
    gnutls_psk_set_client_credentials(psk_, user.c_str(), &key, GNUTLS_PSK_KEY_HEX);
    Init();
    gnutls_priority_set_direct(session_, "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK", nullptr);
    gnutls_credentials_set(session_, GNUTLS_CRD_PSK, psk_);
  }
  ~Client() {
    gnutls_deinit(session_);
    if (x509_ != nullptr) gnutls_certificate_free_credentials(x509_);
    if (psk_ != nullptr) gnutls_psk_free_client_credentials(psk_);
  }

  // Runs both handshakes to the end, moving bytes both ways; true if both succeeded. A
  // failure on either side stops it (the other side then sees the alert or nothing).
  bool Connect(TlsSession* server, std::string* server_error) {
    char plain[64];
    for (int round = 0; round < 20; ++round) {
      int rc = done_ ? 0 : gnutls_handshake(session_);
      if (rc == 0) done_ = true;
      if (rc < 0 && gnutls_error_is_fatal(rc)) client_error_ = gnutls_strerror(rc);
      Deliver(server);
      absl::StatusOr<size_t> n = server->Read(plain, sizeof(plain));
      TakeOutput(server);
      if (!n.ok()) {
        *server_error = std::string(n.status().message());
        Deliver(server);
        if (!done_) gnutls_handshake(session_);  // reads the server's alert
        return false;
      }
      if (!client_error_.empty()) {
        Deliver(server);
        absl::StatusOr<size_t> alert = server->Read(plain, sizeof(plain));
        if (!alert.ok()) *server_error = std::string(alert.status().message());
        return false;
      }
      if (done_ && server->handshake_done()) return true;
    }
    return false;
  }
  void Send(const std::string& text, TlsSession* server) {
    ASSERT_EQ(gnutls_record_send(session_, text.data(), text.size()),
              static_cast<ssize_t>(text.size()));
    Deliver(server);
  }
  std::string Receive(TlsSession* server) {
    TakeOutput(server);
    std::string got;
    char buf[4096];
    ssize_t n;
    while ((n = gnutls_record_recv(session_, buf, sizeof(buf))) > 0) got.append(buf, n);
    return got;
  }
  // What the client's next record read returns once the server's output is in: 0 is a
  // close_notify, GNUTLS_E_AGAIN nothing (yet).
  ssize_t ReadEnd(TlsSession* server) {
    TakeOutput(server);
    char buf[4096];
    return gnutls_record_recv(session_, buf, sizeof(buf));
  }
  // The client's own close_notify, to the server.
  void Bye(TlsSession* server) {
    ASSERT_EQ(gnutls_bye(session_, GNUTLS_SHUT_WR), 0);
    Deliver(server);
  }
  const std::string& client_error() const { return client_error_; }

 private:
  void Init() {
    gnutls_init(&session_, GNUTLS_CLIENT | GNUTLS_NONBLOCK);
    gnutls_transport_set_ptr(session_, this);
    gnutls_transport_set_push_function(session_, [](void* self, const void* p, size_t n) {
      static_cast<Client*>(self)->out_.append(static_cast<const char*>(p), n);
      return static_cast<ssize_t>(n);
    });
    gnutls_transport_set_pull_function(session_, [](void* self, void* p, size_t n) {
      auto* c = static_cast<Client*>(self);
      n = std::min(n, c->in_.size());
      if (n == 0) {
        gnutls_transport_set_errno(c->session_, EAGAIN);
        return ssize_t{-1};
      }
      memcpy(p, c->in_.data(), n);
      c->in_.erase(0, n);
      return static_cast<ssize_t>(n);
    });
  }
  // Client -> server, as the ring's recv would.
  void Deliver(TlsSession* server) {
    while (!out_.empty()) {
      size_t n = std::min(out_.size(), server->recv_space_size());
      ASSERT_GT(n, 0u);
      memcpy(server->recv_space(), out_.data(), n);
      server->Received(n);
      out_.erase(0, n);
    }
  }
  // Server -> client, as the ring's send would.
  void TakeOutput(TlsSession* server) {
    for (absl::string_view v = server->NextOutput(); !v.empty(); v = server->NextOutput()) {
      in_.append(v.data(), v.size());
      server->Sent(v.size());
    }
  }

  gnutls_session_t session_ = nullptr;
  gnutls_certificate_credentials_t x509_ = nullptr;
  gnutls_psk_client_credentials_t psk_ = nullptr;
  std::string out_;
  std::string in_;
  bool done_ = false;
  std::string client_error_;
};

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!Pki::Get().ok()) GTEST_SKIP() << "certtool (gnutls-bin) failed or is missing";
  }
  std::unique_ptr<TlsSession> Server(const TlsCredentials* credentials) {
    absl::StatusOr<std::unique_ptr<TlsSession>> s = TlsSession::NewServer(credentials);
    EXPECT_TRUE(s.ok()) << s.status();
    return *std::move(s);
  }
  std::unique_ptr<TlsCredentials> X509(bool verify_peer = false) {
    auto c = TlsCredentials::LoadX509(Pki::Get().dir, verify_peer);
    EXPECT_TRUE(c.ok()) << c.status();
    return *std::move(c);
  }
  std::unique_ptr<TlsCredentials> Psk(const std::string& text) {
    std::string path = Pki::Get().dir + "/keys.psk";
    std::ofstream(path) << text;
    auto c = TlsCredentials::LoadPsk(path);
    EXPECT_TRUE(c.ok()) << c.status();
    return *std::move(c);
  }

  // Plaintext both ways over an established session.
  void ExpectDataFlows(Client* client, TlsSession* server) {
    client->Send("NBD option bytes", server);
    char buf[64];
    absl::StatusOr<size_t> n = server->Read(buf, sizeof(buf));
    ASSERT_TRUE(n.ok()) << n.status();
    EXPECT_EQ(std::string(buf, *n), "NBD option bytes");
    std::string a = "reply header ", b(40000, 'x');  // b spans several records
    iovec iov[2] = {{a.data(), a.size()}, {b.data(), b.size()}};
    ASSERT_TRUE(server->Write(iov, 2).ok());
    EXPECT_EQ(client->Receive(server), a + b);
  }

  // An established X.509 session in credentials_, server_ and client_.
  void ConnectX509() {
    credentials_ = X509();
    server_ = Server(credentials_.get());
    client_ = std::make_unique<Client>(Pki::Get().dir + "/ca-cert.pem");
    std::string error;
    ASSERT_TRUE(client_->Connect(server_.get(), &error)) << error << client_->client_error();
  }

  const std::string key_ = "00112233445566778899aabbccddeeff";
  std::unique_ptr<TlsCredentials> credentials_;
  std::unique_ptr<TlsSession> server_;
  std::unique_ptr<Client> client_;
};

TEST_F(TlsTest, X509HandshakeThenDataBothWays) {
  auto credentials = X509();
  auto server = Server(credentials.get());
  Client client(Pki::Get().dir + "/ca-cert.pem");
  std::string error;
  ASSERT_TRUE(client.Connect(server.get(), &error)) << error << client.client_error();
  EXPECT_NE(server->Description().find("TLS1."), std::string::npos) << server->Description();
  ExpectDataFlows(&client, server.get());
}

// The server's close (NBD_CMD_DISC, shutdown): Close queues a close_notify in the output,
// which the client reads as a clean end of the session (0), not a truncation.
TEST_F(TlsTest, CloseSendsACloseNotifyTheClientReadsAsACleanEnd) {
  ASSERT_NO_FATAL_FAILURE(ConnectX509());
  EXPECT_EQ(client_->ReadEnd(server_.get()), GNUTLS_E_AGAIN);  // nothing before Close
  ASSERT_TRUE(server_->Close().ok());
  EXPECT_TRUE(server_->HasOutput());
  EXPECT_EQ(client_->ReadEnd(server_.get()), 0);
}

// The client's close_notify ends the session on the server as a close (kUnavailable, which
// the connection does not log as an error), and the server's own close_notify still goes out.
TEST_F(TlsTest, ClientCloseNotifyIsACloseAndIsAnswered) {
  ASSERT_NO_FATAL_FAILURE(ConnectX509());
  client_->Bye(server_.get());
  char buf[64];
  absl::StatusOr<size_t> n = server_->Read(buf, sizeof(buf));
  EXPECT_TRUE(absl::IsUnavailable(n.status())) << n.status();
  ASSERT_TRUE(server_->Close().ok());
  EXPECT_EQ(client_->ReadEnd(server_.get()), 0);
}

TEST_F(TlsTest, ClientTrustingAnotherCaRefusesTheServer) {
  auto credentials = X509();
  auto server = Server(credentials.get());
  Client client(Pki::Get().other_ca);
  std::string error;
  EXPECT_FALSE(client.Connect(server.get(), &error));
  EXPECT_NE(client.client_error(), "");
  EXPECT_FALSE(server->handshake_done() && error.empty());
}

TEST_F(TlsTest, VerifyPeerRefusesAClientWithoutCertificate) {
  auto credentials = X509(/*verify_peer=*/true);
  auto server = Server(credentials.get());
  Client client(Pki::Get().dir + "/ca-cert.pem");
  std::string error;
  EXPECT_FALSE(client.Connect(server.get(), &error));
  EXPECT_NE(error.find("TLS handshake"), std::string::npos) << error;
}

TEST_F(TlsTest, VerifyPeerAcceptsACertificateTheCaSigned) {
  auto credentials = X509(/*verify_peer=*/true);
  auto server = Server(credentials.get());
  Client client(Pki::Get().dir + "/ca-cert.pem", Pki::Get().client);
  std::string error;
  ASSERT_TRUE(client.Connect(server.get(), &error)) << error << client.client_error();
  ExpectDataFlows(&client, server.get());
}

TEST_F(TlsTest, PskHandshakeThenDataBothWays) {
  auto credentials = Psk("alice:" + key_ + "\nbob:ab12\n");
  auto server = Server(credentials.get());
  Client client("alice", key_, true);
  std::string error;
  ASSERT_TRUE(client.Connect(server.get(), &error)) << error << client.client_error();
  EXPECT_NE(server->Description().find("PSK user alice"), std::string::npos)
      << server->Description();
  ExpectDataFlows(&client, server.get());
}

TEST_F(TlsTest, WrongPskKeyIsRefused) {
  auto credentials = Psk("alice:" + key_ + "\n");
  auto server = Server(credentials.get());
  Client client("alice", "ffeeddccbbaa99887766554433221100", true);
  std::string error;
  EXPECT_FALSE(client.Connect(server.get(), &error));
  EXPECT_FALSE(server->handshake_done());
  EXPECT_NE(error + client.client_error(), "");
}

TEST_F(TlsTest, UnknownPskUserIsRefused) {
  auto credentials = Psk("alice:" + key_ + "\n");
  auto server = Server(credentials.get());
  Client client("mallory", key_, true);
  std::string error;
  EXPECT_FALSE(client.Connect(server.get(), &error));
  EXPECT_FALSE(server->handshake_done());
  EXPECT_NE(error.find("PSK user \"mallory\""), std::string::npos) << error;
}

TEST_F(TlsTest, LoadErrorsNameTheFile) {
  auto missing = TlsCredentials::LoadX509("/nonexistent/pki", false);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("/nonexistent/pki/server-cert.pem"),
            std::string::npos)
      << missing.status();
  std::string path = Pki::Get().dir + "/bad.psk";
  std::ofstream(path) << "alice:" << key_ << "\nbob:nothex\n";
  auto bad = TlsCredentials::LoadPsk(path);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find(path + " line 2"), std::string::npos) << bad.status();
  std::string noca = Pki::Get().client;  // has no server-cert.pem
  EXPECT_FALSE(TlsCredentials::LoadX509(noca, true).ok());
}

}  // namespace
}  // namespace strata
