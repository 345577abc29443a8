// How a TLS session with `strata serve --tls-certs` ends, for tests/tls_interop.sh: the NBD
// handshake by hand over TCP (NBD_OPT_STARTTLS, then NBD_OPT_GO inside TLS) with GnuTLS, whose
// gnutls_record_recv tells a close_notify (0) from a TCP close without one
// (GNUTLS_E_PREMATURE_TERMINATION). Python's ssl module cannot: with Debian 12's OpenSSL 3 it
// returns b"" for both.
//
//   tls_close_client disc PORT CA_FILE     NBD_CMD_DISC, then reads how the session ends
//   tls_close_client hold PORT CA_FILE     prints "ready", then reads how it ends (the test
//                                          stops the server meanwhile)
//   tls_close_client notify PORT CA_FILE   sends the client's own close_notify
//                                          (gnutls_bye(SHUT_WR)), then reads how it ends
//   tls_close_client half PORT CA_FILE     sends half a TLS record, then closes (FIN)
//   tls_close_client reset PORT CA_FILE    sends half a TLS record, then resets (RST)
//
// disc, hold and notify print "close_notify" or "eof without close_notify" (exit 0 either
// way: the test decides); half and reset print "sent". Anything else exits 1 with the reason.
#include <arpa/inet.h>
#include <gnutls/gnutls.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

constexpr uint64_t kIHaveOpt = 0x49484156454F5054ull;
constexpr uint32_t kOptStartTls = 5, kOptGo = 7, kRepAck = 1;
constexpr uint32_t kRequestMagic = 0x25609513;
constexpr uint16_t kCmdDisc = 2;

[[noreturn]] void Die(const std::string& why) {
  std::fprintf(stderr, "tls_close_client: %s\n", why.c_str());
  std::exit(1);
}

void PutBe(std::string* out, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) out->push_back(static_cast<char>(v >> (8 * i)));
}
uint64_t GetBe(const unsigned char* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v = v << 8 | p[i];
  return v;
}

// The transport before and after STARTTLS: plain socket calls, or GnuTLS records.
struct Stream {
  int fd = -1;
  gnutls_session_t tls = nullptr;

  void Send(const std::string& data) {
    size_t done = 0;
    while (done < data.size()) {
      ssize_t n = tls ? gnutls_record_send(tls, data.data() + done, data.size() - done)
                      : send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL);
      if (n == GNUTLS_E_INTERRUPTED) continue;
      if (n <= 0) Die("send failed");
      done += static_cast<size_t>(n);
    }
  }
  std::vector<unsigned char> Recv(size_t len) {
    std::vector<unsigned char> buf(len);
    size_t done = 0;
    while (done < len) {
      ssize_t n = tls ? gnutls_record_recv(tls, buf.data() + done, len - done)
                      : recv(fd, buf.data() + done, len - done, 0);
      if (n == GNUTLS_E_INTERRUPTED) continue;
      if (n <= 0) Die("connection ended (or 20 s passed) during the NBD handshake");
      done += static_cast<size_t>(n);
    }
    return buf;
  }
  // The type of the option's final reply (NBD_REP_INFO replies are read past).
  uint32_t Option(uint32_t opt, const std::string& data = "") {
    std::string msg;
    PutBe(&msg, kIHaveOpt, 8);
    PutBe(&msg, opt, 4);
    PutBe(&msg, data.size(), 4);
    Send(msg + data);
    for (;;) {
      std::vector<unsigned char> h = Recv(20);
      const uint32_t type = static_cast<uint32_t>(GetBe(&h[12], 4));
      const uint32_t len = static_cast<uint32_t>(GetBe(&h[16], 4));
      if (len > 0) Recv(len);
      if (type == kRepAck || (type & 0x80000000u)) return type;
    }
  }
};

int Connect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    Die("cannot connect to 127.0.0.1:" + std::to_string(port));
  }
  timeval tv{20, 0};  // bounded: a server that never answers fails the test
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

// A TLS session in transmission on the default export.
Stream Negotiate(int port, const char* ca_file) {
  Stream s;
  s.fd = Connect(port);
  std::vector<unsigned char> greeting = s.Recv(18);
  if (std::memcmp(greeting.data(), "NBDMAGICIHAVEOPT", 16) != 0) Die("bad greeting");
  std::string flags;
  PutBe(&flags, 3, 4);  // fixed newstyle, no zeroes
  s.Send(flags);
  if (s.Option(kOptStartTls) != kRepAck) Die("NBD_OPT_STARTTLS refused");
  gnutls_certificate_credentials_t creds;
  gnutls_certificate_allocate_credentials(&creds);
  if (gnutls_certificate_set_x509_trust_file(creds, ca_file, GNUTLS_X509_FMT_PEM) <= 0) {
    Die(std::string("cannot load ") + ca_file);
  }
  gnutls_init(&s.tls, GNUTLS_CLIENT);
  gnutls_set_default_priority(s.tls);
  gnutls_credentials_set(s.tls, GNUTLS_CRD_CERTIFICATE, creds);
  gnutls_session_set_verify_cert(s.tls, nullptr, 0);  // the CA is the check; no host name
  gnutls_transport_set_int(s.tls, s.fd);
  int rc;
  do {
    rc = gnutls_handshake(s.tls);
  } while (rc == GNUTLS_E_INTERRUPTED);
  if (rc < 0) Die(std::string("TLS handshake: ") + gnutls_strerror(rc));
  std::string go;
  PutBe(&go, 0, 4);  // export ""
  PutBe(&go, 0, 2);  // no info requests
  if (s.Option(kOptGo, go) != kRepAck) Die("NBD_OPT_GO refused");
  return s;
}

// Reads records until the session ends, and says how.
const char* HowItEnds(gnutls_session_t tls) {
  char buf[65536];
  for (;;) {
    ssize_t n = gnutls_record_recv(tls, buf, sizeof(buf));
    if (n > 0 || n == GNUTLS_E_INTERRUPTED) continue;
    if (n == 0) return "close_notify";
    if (n == GNUTLS_E_AGAIN) Die("the session did not end within 20 s");
    if (n == GNUTLS_E_PREMATURE_TERMINATION || n == GNUTLS_E_PUSH_ERROR ||
        n == GNUTLS_E_PULL_ERROR) {
      return "eof without close_notify";
    }
    Die(std::string("TLS record: ") + gnutls_strerror(static_cast<int>(n)));
  }
}

void HalfRecord(int fd, bool reset) {
  // An application-data record header announcing 16 KiB, and only 100 bytes of it.
  std::string half("\x17\x03\x03\x40\x00", 5);
  half.append(100, '\0');
  if (send(fd, half.data(), half.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(half.size())) {
    Die("send failed");
  }
  if (reset) {
    linger l{1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
  }
  close(fd);
  std::puts("sent");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) Die("usage: tls_close_client disc|hold|notify|half|reset PORT CA_FILE");
  const std::string mode = argv[1];
  Stream s = Negotiate(std::atoi(argv[2]), argv[3]);
  if (mode == "disc") {
    std::string disc;
    PutBe(&disc, kRequestMagic, 4);
    PutBe(&disc, 0, 2);
    PutBe(&disc, kCmdDisc, 2);
    PutBe(&disc, 1, 8);  // handle
    PutBe(&disc, 0, 8);  // offset
    PutBe(&disc, 0, 4);  // length
    s.Send(disc);
    std::puts(HowItEnds(s.tls));
  } else if (mode == "hold") {
    std::puts("ready");
    std::fflush(stdout);
    std::puts(HowItEnds(s.tls));
  } else if (mode == "notify") {
    if (gnutls_bye(s.tls, GNUTLS_SHUT_WR) < 0) Die("gnutls_bye failed");
    std::puts(HowItEnds(s.tls));
  } else if (mode == "half" || mode == "reset") {
    HalfRecord(s.fd, mode == "reset");
  } else {
    Die("unknown mode " + mode);
  }
  return 0;
}
