// Malformed and hostile input on a raw socket: bad magic, truncated options and requests,
// oversized lengths, unknown options/commands/flags, disconnects mid-payload, slow clients.
// Issue 4: "A malformed request from one client ends that connection cleanly and never the
// server." After every case the fixture checks that the server process is alive, a fresh
// connection is served, and data written + flushed before the case is intact.
//
// libnbd refuses to send most of this, so the protocol is spoken by hand here (simple replies
// only; structured replies are covered through libnbd elsewhere).
#include <endian.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "server_fixture.h"

namespace strata_test {
namespace {

// Protocol constants (NetworkBlockDevice/nbd doc/proto.md).
constexpr uint64_t kNbdMagic = 0x4e42444d41474943ULL;     // "NBDMAGIC"
constexpr uint64_t kIHaveOpt = 0x49484156454F5054ULL;     // "IHAVEOPT"
constexpr uint64_t kOptReplyMagic = 0x3e889045565a9ULL;
constexpr uint32_t kRequestMagic = 0x25609513;
constexpr uint32_t kSimpleReplyMagic = 0x67446698;
constexpr uint32_t kFlagFixedNewstyle = 1, kFlagNoZeroes = 2;
constexpr uint32_t kOptExportName = 1, kOptAbort = 2, kOptList = 3, kOptInfo = 6, kOptGo = 7,
                   kOptStructuredReply = 8, kOptSetMetaContext = 10;
constexpr uint32_t kRepAck = 1, kRepInfo = 3, kRepErrUnsup = 0x80000001,
                   kRepErrInvalid = 0x80000003;
constexpr uint16_t kCmdRead = 0, kCmdWrite = 1, kCmdDisc = 2, kCmdFlush = 3,
                   kCmdBlockStatus = 7;
constexpr uint32_t kEinval = 22;

// One client connection spoken by hand. Every receive is bounded (5 s).
class RawConn {
 public:
  explicit RawConn(const std::string& path) {
    fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path.c_str());
    if (connect(fd_, reinterpret_cast<sockaddr*>(&sun), sizeof sun) != 0) {
      ADD_FAILURE() << "connect " << path << ": " << strerror(errno);
      close(fd_);
      fd_ = -1;
      return;
    }
    timeval tv{5, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  }
  ~RawConn() { Close(); }
  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }
  bool ok() const { return fd_ >= 0; }

  bool Send(const void* p, size_t n) {
    const char* c = static_cast<const char*>(p);
    while (n > 0) {
      ssize_t r = send(fd_, c, n, MSG_NOSIGNAL);
      if (r <= 0) return false;
      c += r;
      n -= r;
    }
    return true;
  }
  bool Send(const std::string& s) { return Send(s.data(), s.size()); }
  bool Recv(void* p, size_t n) {
    return n == 0 || recv(fd_, p, n, MSG_WAITALL) == static_cast<ssize_t>(n);
  }
  // True if the server closes the connection within timeout_ms (EOF or reset); data it sends
  // before closing is discarded.
  bool ClosedByPeer(int timeout_ms = 5000) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    char buf[4096];
    while (std::chrono::steady_clock::now() < deadline) {
      ssize_t r = recv(fd_, buf, sizeof buf, 0);
      if (r == 0) return true;
      if (r < 0 && (errno == ECONNRESET || errno == EPIPE)) return true;
      if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return true;
    }
    return false;
  }

  // Greeting: NBDMAGIC, IHAVEOPT, 16-bit handshake flags.
  bool Greeting(uint16_t* flags) {
    uint64_t m[2];
    uint16_t f;
    if (!Recv(m, 16) || !Recv(&f, 2)) return false;
    *flags = be16toh(f);
    return be64toh(m[0]) == kNbdMagic && be64toh(m[1]) == kIHaveOpt;
  }
  bool SendU32(uint32_t v) {
    v = htobe32(v);
    return Send(&v, 4);
  }
  bool StartHandshake(uint32_t client_flags = kFlagFixedNewstyle | kFlagNoZeroes) {
    uint16_t flags;
    if (!Greeting(&flags)) return false;
    if (!(flags & kFlagFixedNewstyle)) ADD_FAILURE() << "server is not fixed newstyle";
    return SendU32(client_flags);
  }
  static std::string OptionHeader(uint32_t opt, uint32_t len, uint64_t magic = kIHaveOpt) {
    std::string s(16, '\0');
    uint64_t m = htobe64(magic);
    uint32_t o = htobe32(opt), l = htobe32(len);
    memcpy(&s[0], &m, 8);
    memcpy(&s[8], &o, 4);
    memcpy(&s[12], &l, 4);
    return s;
  }
  bool SendOption(uint32_t opt, const std::string& data) {
    return Send(OptionHeader(opt, data.size()) + data);
  }
  bool RecvOptionReply(uint32_t* opt, uint32_t* type, std::string* data) {
    uint64_t magic;
    uint32_t hdr[3];
    if (!Recv(&magic, 8) || !Recv(hdr, 12)) return false;
    if (be64toh(magic) != kOptReplyMagic) {
      ADD_FAILURE() << "bad option reply magic";
      return false;
    }
    *opt = be32toh(hdr[0]);
    *type = be32toh(hdr[1]);
    uint32_t len = be32toh(hdr[2]);
    if (len > 1 << 20) {
      ADD_FAILURE() << "option reply length " << len;
      return false;
    }
    data->resize(len);
    return Recv(data->data(), len);
  }
  // Replies to one option up to its final one (ACK or error); returns the final type.
  bool FinalOptionReply(uint32_t want_opt, uint32_t* type) {
    for (int i = 0; i < 1000; i++) {
      uint32_t opt;
      std::string data;
      if (!RecvOptionReply(&opt, type, &data)) return false;
      EXPECT_EQ(opt, want_opt) << "option reply for the wrong option";
      if (*type == kRepAck || (*type & 0x80000000u)) return true;
    }
    return false;
  }
  static std::string GoData(const std::string& name) {
    std::string d(4, '\0');
    uint32_t l = htobe32(name.size());
    memcpy(&d[0], &l, 4);
    d += name;
    d += std::string(2, '\0');  // no info requests
    return d;
  }
  // Full handshake with NBD_OPT_GO (simple replies). Returns false on any problem.
  bool EnterTransmission(uint64_t* size = nullptr) {
    if (!StartHandshake()) return false;
    if (!SendOption(kOptGo, GoData(""))) return false;
    for (int i = 0; i < 100; i++) {
      uint32_t opt, type;
      std::string data;
      if (!RecvOptionReply(&opt, &type, &data)) return false;
      if (type == kRepInfo && data.size() >= 12) {
        uint16_t info;
        memcpy(&info, data.data(), 2);
        if (be16toh(info) == 0 && size != nullptr) {
          uint64_t s;
          memcpy(&s, data.data() + 2, 8);
          *size = be64toh(s);
        }
      } else if (type == kRepAck) {
        return true;
      } else if (type & 0x80000000u) {
        ADD_FAILURE() << "GO refused: 0x" << std::hex << type;
        return false;
      }
    }
    return false;
  }
  static std::string Request(uint16_t flags, uint16_t type, uint64_t handle, uint64_t off,
                             uint32_t len, uint32_t magic = kRequestMagic) {
    std::string s(28, '\0');
    uint32_t m = htobe32(magic), l = htobe32(len);
    uint16_t f = htobe16(flags), t = htobe16(type);
    uint64_t h = htobe64(handle), o = htobe64(off);
    memcpy(&s[0], &m, 4);
    memcpy(&s[4], &f, 2);
    memcpy(&s[6], &t, 2);
    memcpy(&s[8], &h, 8);
    memcpy(&s[16], &o, 8);
    memcpy(&s[24], &l, 4);
    return s;
  }
  bool RecvSimpleReply(uint32_t* error, uint64_t* handle) {
    uint32_t m, e;
    uint64_t h;
    if (!Recv(&m, 4) || !Recv(&e, 4) || !Recv(&h, 8)) return false;
    if (be32toh(m) != kSimpleReplyMagic) {
      ADD_FAILURE() << "expected a simple reply, magic 0x" << std::hex << be32toh(m);
      return false;
    }
    *error = be32toh(e);
    *handle = be64toh(h);
    return true;
  }
  // A READ that must succeed: reply with error 0, the handle echoed, and `len` bytes.
  bool ReadOk(uint64_t off, uint32_t len, std::vector<uint8_t>* out, uint64_t handle = 0x1234) {
    if (!Send(Request(0, kCmdRead, handle, off, len))) return false;
    uint32_t err;
    uint64_t h;
    if (!RecvSimpleReply(&err, &h)) return false;
    EXPECT_EQ(h, handle);
    if (err != 0) {
      ADD_FAILURE() << "read error " << err;
      return false;
    }
    out->resize(len);
    return Recv(out->data(), len);
  }

 private:
  int fd_ = -1;
};

class MalformedTest : public ServerTest {
 protected:
  static constexpr uint64_t kSentinel = 0;
  static constexpr size_t kSentinelLen = 1 * kMiB;

  // Writes the sentinel through h_, then closes it: the raw clients are the only ones.
  void SetUp() override {
    ServerTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    ASSERT_TRUE(WritePattern(h_.get(), kSentinel, kSentinelLen, 77));
    ASSERT_EQ(nbd_flush(h_.get(), 0), 0);
    h_.reset();
  }

  void TearDown() override {
    if (IsSkipped() || server_.pid() <= 0) return;
    ExpectHealthy();
  }

  // The server survived the case: alive, a fresh libnbd connection is served, acknowledged
  // data intact.
  void ExpectHealthy() {
    ASSERT_TRUE(server_.Alive()) << "server died\n" << server_.ServerLog();
    NbdHandle h = server_.Connect();
    ASSERT_TRUE(h) << "server no longer accepts connections";
    EXPECT_TRUE(ReadsPattern(h.get(), kSentinel, kSentinelLen, 77));
    EXPECT_TRUE(ReadsBase(h.get(), 2 * kMiB, 64 * kKiB));
  }

  // NBD_OPT_EXPORT_NAME for the default export, and the reply's first fields, which come
  // whether or not the 124 zero bytes follow: the size (checked) and the flags.
  void ExportName(RawConn* c, uint16_t* flags) {
    ASSERT_TRUE(c->SendOption(kOptExportName, ""));
    uint64_t size;
    ASSERT_TRUE(c->Recv(&size, 8));
    ASSERT_TRUE(c->Recv(flags, 2));
    EXPECT_EQ(be64toh(size), server_.disk_size());
  }
};

// Sanity of the hand-written client: a full handshake and a read of the sentinel.
TEST_F(MalformedTest, HandWrittenClientReadsSentinel) {
  RawConn c(server_.socket_path());
  ASSERT_TRUE(c.ok());
  uint64_t size = 0;
  ASSERT_TRUE(c.EnterTransmission(&size));
  EXPECT_EQ(size, server_.disk_size());
  std::vector<uint8_t> buf;
  ASSERT_TRUE(c.ReadOk(kSentinel, 4096, &buf, 0xdeadbeefcafef00dULL));
  EXPECT_EQ(FirstMismatch(buf.data(), Pattern(kSentinel, 4096, 77).data(), 4096), -1);
  ASSERT_TRUE(c.Send(RawConn::Request(0, kCmdDisc, 1, 0, 0)));
  EXPECT_TRUE(c.ClosedByPeer()) << "NBD_CMD_DISC did not close the connection";
}

// Unknown client flags: the server MUST close the connection.
TEST_F(MalformedTest, UnknownClientFlagsCloseConnection) {
  RawConn c(server_.socket_path());
  ASSERT_TRUE(c.StartHandshake(kFlagFixedNewstyle | 0x4000));
  EXPECT_TRUE(c.ClosedByPeer());
}

// Bad option magic: the stream cannot be resynchronised; the server closes it.
TEST_F(MalformedTest, BadOptionMagicClosesConnection) {
  RawConn c(server_.socket_path());
  ASSERT_TRUE(c.StartHandshake());
  ASSERT_TRUE(c.Send(RawConn::OptionHeader(kOptGo, 0, 0x0123456789abcdefULL)));
  EXPECT_TRUE(c.ClosedByPeer());
}

// An option header cut short, then the client goes away.
TEST_F(MalformedTest, TruncatedOptionHeaderThenDisconnect) {
  RawConn c(server_.socket_path());
  ASSERT_TRUE(c.StartHandshake());
  ASSERT_TRUE(c.Send(RawConn::OptionHeader(kOptGo, 6).substr(0, 10)));
  c.Close();
}

// Option data shorter than its length field says, then disconnect.
TEST_F(MalformedTest, TruncatedOptionDataThenDisconnect) {
  RawConn c(server_.socket_path());
  ASSERT_TRUE(c.StartHandshake());
  ASSERT_TRUE(c.Send(RawConn::OptionHeader(kOptGo, 1000) + std::string(100, 'x')));
  c.Close();
}

// An option claiming ~4 GiB of data: the server must neither allocate it nor wait forever; it
// either errors the option (and skips the data) or drops the connection. We send 64 KiB of the
// claimed data and go away either way.
TEST_F(MalformedTest, OversizedOptionLengthIsRejected) {
  RawConn c(server_.socket_path());
  ASSERT_TRUE(c.StartHandshake());
  ASSERT_TRUE(c.Send(RawConn::OptionHeader(kOptGo, 0xfffffff0u)));
  c.Send(std::string(64 * 1024, 'x'));  // may fail if the server already closed
  c.Close();
}

// A string inside an option whose own length runs past the option's length (INFO with a name
// length of 1000 in 10 bytes): NBD_REP_ERR_INVALID, and the session continues.
TEST_F(MalformedTest, InconsistentOptionDataGetsErrInvalid) {
  RawConn c(server_.socket_path());
  ASSERT_TRUE(c.StartHandshake());
  std::string data(10, '\0');
  uint32_t bogus = htobe32(1000);
  memcpy(&data[0], &bogus, 4);
  ASSERT_TRUE(c.SendOption(kOptInfo, data));
  uint32_t type;
  ASSERT_TRUE(c.FinalOptionReply(kOptInfo, &type));
  EXPECT_EQ(type, kRepErrInvalid);
  // SET_META_CONTEXT shorter than its fixed fields (and before structured replies).
  ASSERT_TRUE(c.SendOption(kOptSetMetaContext, std::string(2, '\0')));
  ASSERT_TRUE(c.FinalOptionReply(kOptSetMetaContext, &type));
  EXPECT_TRUE(type & 0x80000000u) << "malformed SET_META_CONTEXT accepted";
  // NBD_OPT_LIST must have no data.
  ASSERT_TRUE(c.SendOption(kOptList, "junk"));
  ASSERT_TRUE(c.FinalOptionReply(kOptList, &type));
  EXPECT_EQ(type, kRepErrInvalid);
  ASSERT_TRUE(c.SendOption(kOptGo, RawConn::GoData("")));
  ASSERT_TRUE(c.FinalOptionReply(kOptGo, &type));
  EXPECT_EQ(type, kRepAck);
}

// Unknown options get NBD_REP_ERR_UNSUP and the session continues to a working GO.
TEST_F(MalformedTest, UnknownOptionGetsErrUnsupAndSessionContinues) {
  RawConn c(server_.socket_path());
  ASSERT_TRUE(c.StartHandshake());
  for (uint32_t opt : {0x4242u, 0x7fffffffu, 12345u}) {
    ASSERT_TRUE(c.SendOption(opt, "some option data"));
    uint32_t type;
    ASSERT_TRUE(c.FinalOptionReply(opt, &type)) << "no reply to unknown option " << opt;
    EXPECT_EQ(type, kRepErrUnsup) << "option " << opt;
  }
  // STRUCTURED_REPLY with data is invalid, not unknown.
  ASSERT_TRUE(c.SendOption(kOptStructuredReply, "x"));
  uint32_t type;
  ASSERT_TRUE(c.FinalOptionReply(kOptStructuredReply, &type));
  EXPECT_EQ(type, kRepErrInvalid);
  ASSERT_TRUE(c.SendOption(kOptGo, RawConn::GoData("")));
  ASSERT_TRUE(c.FinalOptionReply(kOptGo, &type));
  ASSERT_EQ(type, kRepAck);
  std::vector<uint8_t> buf;
  ASSERT_TRUE(c.ReadOk(kSentinel, 8192, &buf));
  EXPECT_EQ(FirstMismatch(buf.data(), Pattern(kSentinel, 8192, 77).data(), 8192), -1);
}

// NBD_OPT_ABORT gets an ACK (or the connection just closes) and ends the session.
TEST_F(MalformedTest, OptAbortIsAcknowledged) {
  RawConn c(server_.socket_path());
  ASSERT_TRUE(c.StartHandshake());
  ASSERT_TRUE(c.SendOption(kOptAbort, ""));
  EXPECT_TRUE(c.ClosedByPeer());
}

// The old NBD_OPT_EXPORT_NAME path with NO_ZEROES: 8 bytes size + 2 bytes flags, nothing more.
TEST_F(MalformedTest, ExportNameOptionRepliesSizeAndFlags) {
  RawConn c(server_.socket_path());
  ASSERT_TRUE(c.StartHandshake());
  uint16_t flags;
  ASSERT_NO_FATAL_FAILURE(ExportName(&c, &flags));
  EXPECT_TRUE(be16toh(flags) & 1) << "NBD_FLAG_HAS_FLAGS missing";
  std::vector<uint8_t> buf;
  ASSERT_TRUE(c.ReadOk(kSentinel, 512, &buf));
  EXPECT_EQ(FirstMismatch(buf.data(), Pattern(kSentinel, 512, 77).data(), 512), -1);
}

// NBD_OPT_EXPORT_NAME from a client that did not offer NO_ZEROES: size, flags, then exactly 124
// zero bytes, then transmission (a missing or extra byte shifts every later reply).
TEST_F(MalformedTest, ExportNameWithoutNoZeroesSendsReservedZeroes) {
  RawConn c(server_.socket_path());
  ASSERT_TRUE(c.StartHandshake(kFlagFixedNewstyle));
  uint16_t flags;
  ASSERT_NO_FATAL_FAILURE(ExportName(&c, &flags));
  std::vector<uint8_t> zeroes(124, 0xff);
  ASSERT_TRUE(c.Recv(zeroes.data(), zeroes.size()));
  EXPECT_TRUE(AllZero(zeroes.data(), zeroes.size()));
  std::vector<uint8_t> buf;
  ASSERT_TRUE(c.ReadOk(kSentinel, 512, &buf, 0x5555));
  EXPECT_EQ(FirstMismatch(buf.data(), Pattern(kSentinel, 512, 77).data(), 512), -1);
}

// Bad request magic in transmission: the server closes that connection.
TEST_F(MalformedTest, BadRequestMagicClosesConnection) {
  RawConn c(server_.socket_path());
  ASSERT_TRUE(c.EnterTransmission());
  ASSERT_TRUE(c.Send(RawConn::Request(0, kCmdRead, 1, 0, 4096, 0x12345678)));
  EXPECT_TRUE(c.ClosedByPeer());
}

// A request header cut short, then disconnect.
TEST_F(MalformedTest, TruncatedRequestThenDisconnect) {
  RawConn c(server_.socket_path());
  ASSERT_TRUE(c.EnterTransmission());
  ASSERT_TRUE(c.Send(RawConn::Request(0, kCmdRead, 1, 0, 4096).substr(0, 20)));
  c.Close();
}

// A WRITE whose payload stops half way: nothing of it was acknowledged, the sentinel must stay.
// The partial range itself may hold anything, but must still be readable.
TEST_F(MalformedTest, DisconnectMidWritePayload) {
  {
    RawConn c(server_.socket_path());
    ASSERT_TRUE(c.EnterTransmission());
    ASSERT_TRUE(c.Send(RawConn::Request(0, kCmdWrite, 1, 4 * kMiB, 1 * kMiB)));
    auto data = Pattern(4 * kMiB, 100 * kKiB, 5);
    ASSERT_TRUE(c.Send(data.data(), data.size()));
  }
  NbdHandle h = server_.Connect();
  ASSERT_TRUE(h);
  std::vector<uint8_t> buf(1 * kMiB);
  EXPECT_EQ(nbd_pread(h.get(), buf.data(), buf.size(), 4 * kMiB, 0), 0) << nbd_get_error();
}

// Requests longer than the 32 MiB maximum payload: a READ of 64 MiB gets an error reply (the
// session may go on) or a disconnect; a WRITE claiming 4 GiB - 1 must not make the server
// allocate it or die.
TEST_F(MalformedTest, OversizedReadIsRefused) {
  int64_t max_payload;
  {
    NbdHandle h = server_.Connect();
    ASSERT_TRUE(h);
    max_payload = nbd_get_block_size(h.get(), LIBNBD_SIZE_MAXIMUM);
  }
  RawConn c(server_.socket_path());
  ASSERT_TRUE(c.EnterTransmission());
  ASSERT_TRUE(c.Send(RawConn::Request(0, kCmdRead, 9, 0, 64 * kMiB)));
  uint32_t err;
  uint64_t handle;
  if (!c.RecvSimpleReply(&err, &handle)) return;  // the server chose to disconnect
  EXPECT_EQ(handle, 9u);
  std::vector<uint8_t> buf;
  if (err == 0) {
    // Only a server that advertised a maximum payload of at least 64 MiB may serve this.
    EXPECT_TRUE(max_payload == 0 || max_payload >= static_cast<int64_t>(64 * kMiB))
        << "64 MiB read accepted beyond the advertised maximum payload " << max_payload;
    buf.resize(64 * kMiB);
    ASSERT_TRUE(c.Recv(buf.data(), buf.size()));
  }
  EXPECT_TRUE(c.ReadOk(kSentinel, 4096, &buf)) << "session did not continue after the error";
}

TEST_F(MalformedTest, OversizedWriteDoesNotKillServer) {
  for (uint32_t len : {static_cast<uint32_t>(64 * kMiB), 0xffffffffu}) {
    RawConn c(server_.socket_path());
    ASSERT_TRUE(c.EnterTransmission());
    ASSERT_TRUE(c.Send(RawConn::Request(0, kCmdWrite, 3, 0, len)));
    c.Send(std::string(1 * kMiB, 'y'));  // some of the claimed payload, then leave
    c.Close();
    ASSERT_TRUE(server_.Alive()) << "server died on a WRITE of length " << len << "\n"
                                 << server_.ServerLog();
  }
}

// A client that sends reads and never reads the replies cannot hold a shutdown: after
// --shutdown-timeout its socket is closed, the server exits cleanly, and a write it
// acknowledged (not flushed) survives, because the clean close flushes.
TEST_F(MalformedTest, ClientThatStopsReadingCannotHoldShutdown) {
  ASSERT_TRUE(server_.Stop());
  ASSERT_TRUE(server_.Start({.extra_args = {"--shutdown-timeout", "1"}}));
  RawConn c(server_.socket_path());
  ASSERT_TRUE(c.EnterTransmission());
  const std::string data(4096, 'q');
  ASSERT_TRUE(c.Send(RawConn::Request(0, kCmdWrite, 1, 3 * kMiB, 4096) + data));
  uint32_t err = 1;
  uint64_t handle = 0;
  ASSERT_TRUE(c.RecvSimpleReply(&err, &handle));
  ASSERT_EQ(err, 0u);
  // 8 x 16 MiB of replies: far beyond what the socket buffers hold.
  for (uint64_t i = 0; i < 8; ++i) {
    ASSERT_TRUE(c.Send(RawConn::Request(0, kCmdRead, 100 + i, 0, 16 * kMiB)));
  }
  usleep(300000);  // the server is stuck sending now
  const auto begin = std::chrono::steady_clock::now();
  EXPECT_TRUE(server_.Stop());
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  EXPECT_LT(seconds, 8.0) << server_.ServerLog();
  EXPECT_NE(server_.ServerLog().find("closing their sockets"), std::string::npos)
      << server_.ServerLog();
  c.Close();
  ASSERT_TRUE(server_.Start());
  NbdHandle h = server_.Connect();
  ASSERT_TRUE(h);
  std::string back(4096, '\0');
  ASSERT_EQ(nbd_pread(h.get(), back.data(), back.size(), 3 * kMiB, 0), 0) << nbd_get_error();
  EXPECT_EQ(back, data);
}

// An unknown command gets EINVAL and the session continues; so does an unknown command flag, and
// BLOCK_STATUS without a negotiated meta context.
TEST_F(MalformedTest, UnknownCommandAndFlagGetEinvalAndSessionContinues) {
  RawConn c(server_.socket_path());
  ASSERT_TRUE(c.EnterTransmission());
  struct Case {
    uint16_t flags, type;
    const char* what;
  } cases[] = {
      {0, 0x42, "unknown command 0x42"},
      {0, 0xffff, "unknown command 0xffff"},
      {0x8000, kCmdRead, "READ with unknown flag bit 15"},
      {0, kCmdBlockStatus, "BLOCK_STATUS without meta context"},
  };
  uint64_t handle = 100;
  for (const auto& k : cases) {
    SCOPED_TRACE(k.what);
    ASSERT_TRUE(c.Send(RawConn::Request(k.flags, k.type, handle, 0, 4096)));
    uint32_t err;
    uint64_t h;
    ASSERT_TRUE(c.RecvSimpleReply(&err, &h)) << "no reply (server closed the session)";
    EXPECT_EQ(h, handle);
    EXPECT_EQ(err, kEinval);
    handle++;
    std::vector<uint8_t> buf;
    ASSERT_TRUE(c.ReadOk(kSentinel, 4096, &buf, handle++));
    EXPECT_EQ(FirstMismatch(buf.data(), Pattern(kSentinel, 4096, 77).data(), 4096), -1);
  }
}

// Zero-length requests have no defined meaning; the server must not crash or hang on them (any
// reply, or a disconnect, is fine).
TEST_F(MalformedTest, ZeroLengthRequestsAreSurvived) {
  RawConn c(server_.socket_path());
  ASSERT_TRUE(c.EnterTransmission());
  uint64_t handle = 200;
  for (uint16_t type : {kCmdRead, kCmdWrite, kCmdFlush}) {
    if (!c.Send(RawConn::Request(0, type, handle++, 4096, 0))) return;
    uint32_t err;
    uint64_t h;
    if (!c.RecvSimpleReply(&err, &h)) return;
    EXPECT_EQ(h, handle - 1);
  }
}

// A client that sends a write payload in tiny pieces with pauses (a slow network): the server
// must reassemble it (short receives), not take the first piece for the whole payload.
TEST_F(MalformedTest, SlowTrickledWritePayloadIsReassembled) {
  RawConn c(server_.socket_path());
  ASSERT_TRUE(c.EnterTransmission());
  const uint64_t off = 6 * kMiB;
  const size_t len = 256 * kKiB;
  auto data = Pattern(off, len, 8);
  std::string req = RawConn::Request(0, kCmdWrite, 300, off, len);
  // The header itself arrives in two pieces.
  ASSERT_TRUE(c.Send(req.substr(0, 11)));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_TRUE(c.Send(req.substr(11)));
  for (size_t pos = 0; pos < len; pos += 1000) {
    ASSERT_TRUE(c.Send(data.data() + pos, std::min<size_t>(1000, len - pos)));
    if (pos % 50000 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  uint32_t err;
  uint64_t h;
  ASSERT_TRUE(c.RecvSimpleReply(&err, &h));
  EXPECT_EQ(h, 300u);
  EXPECT_EQ(err, 0u);
  std::vector<uint8_t> buf;
  ASSERT_TRUE(c.ReadOk(off, len, &buf));
  EXPECT_EQ(FirstMismatch(buf.data(), data.data(), len), -1);
}

// 64 READs pipelined in one send(): all answered, each handle once, each with its own data.
TEST_F(MalformedTest, PipelinedRequestsInOneSendAreAllAnswered) {
  RawConn c(server_.socket_path());
  ASSERT_TRUE(c.EnterTransmission());
  std::string batch;
  for (int i = 0; i < 64; i++) batch += RawConn::Request(0, kCmdRead, 1000 + i, i * 8192, 4096);
  ASSERT_TRUE(c.Send(batch));
  std::vector<int> seen(64, 0);
  for (int i = 0; i < 64; i++) {
    uint32_t err;
    uint64_t h;
    ASSERT_TRUE(c.RecvSimpleReply(&err, &h)) << "reply " << i;
    ASSERT_EQ(err, 0u);
    ASSERT_GE(h, 1000u);
    ASSERT_LT(h, 1064u);
    int idx = static_cast<int>(h - 1000);
    seen[idx]++;
    std::vector<uint8_t> buf(4096);
    ASSERT_TRUE(c.Recv(buf.data(), 4096));
    EXPECT_EQ(FirstMismatch(buf.data(), Pattern(idx * 8192, 4096, 77).data(), 4096), -1)
        << "reply for handle " << h << " carries another request's data";
  }
  for (int i = 0; i < 64; i++) EXPECT_EQ(seen[i], 1) << "handle " << 1000 + i;
}

// Many clients that connect and vanish at every stage of the handshake.
TEST_F(MalformedTest, ManyAbandonedHandshakes) {
  for (int i = 0; i < 60; i++) {
    RawConn c(server_.socket_path());
    ASSERT_TRUE(c.ok());
    switch (i % 4) {
      case 0: break;  // connect, say nothing
      case 1: { uint16_t f; c.Greeting(&f); } break;
      case 2: c.StartHandshake(); break;
      case 3: c.EnterTransmission(); break;
    }
  }
}

}  // namespace
}  // namespace strata_test
