#include "server/nbd/handshake.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace strata {
namespace {

using nbd::Option;
using nbd::OptionReply;

struct OptReply {
  uint32_t option;
  OptionReply type;
  std::string data;
};

// Splits server output (after the greeting) into option replies.
std::vector<OptReply> ParseReplies(const std::string& out) {
  std::vector<OptReply> replies;
  size_t pos = 0;
  while (out.size() - pos >= nbd::kOptionReplyHeaderSize) {
    const char* p = out.data() + pos;
    EXPECT_EQ(nbd::Get64(p), nbd::kOptReplyMagic);
    uint32_t len = nbd::Get32(p + 16);
    replies.push_back({nbd::Get32(p + 8), static_cast<OptionReply>(nbd::Get32(p + 12)),
                       out.substr(pos + nbd::kOptionReplyHeaderSize, len)});
    pos += nbd::kOptionReplyHeaderSize + len;
  }
  EXPECT_EQ(pos, out.size());
  return replies;
}

std::string Opt(Option option, const std::string& data) {
  std::string s;
  nbd::Append64(&s, nbd::kIHaveOpt);
  nbd::Append32(&s, static_cast<uint32_t>(option));
  nbd::Append32(&s, static_cast<uint32_t>(data.size()));
  return s + data;
}

std::string InfoData(const std::string& name, std::vector<uint16_t> infos) {
  std::string s;
  nbd::Append32(&s, static_cast<uint32_t>(name.size()));
  s += name;
  nbd::Append16(&s, static_cast<uint16_t>(infos.size()));
  for (uint16_t i : infos) nbd::Append16(&s, i);
  return s;
}

std::string MetaData(const std::string& name, std::vector<std::string> queries) {
  std::string s;
  nbd::Append32(&s, static_cast<uint32_t>(name.size()));
  s += name;
  nbd::Append32(&s, static_cast<uint32_t>(queries.size()));
  for (const auto& q : queries) {
    nbd::Append32(&s, static_cast<uint32_t>(q.size()));
    s += q;
  }
  return s;
}

std::string Flags(uint32_t flags) {
  std::string s;
  nbd::Append32(&s, flags);
  return s;
}

class HandshakeTest : public ::testing::Test {
 protected:
  HandshakeTest() {
    auto a = std::make_shared<Export>();
    a->name = "disk";
    a->description = "the disk";
    a->disk_size = 1 << 20;
    exports_.Add(a);
    auto b = std::make_shared<Export>();
    b->name = "@snap";
    b->disk_size = 2 << 20;
    b->read_only = true;
    exports_.Add(b);
  }

  // Feeds `in` and returns the replies; the whole input must be consumed.
  std::vector<OptReply> Send(const std::string& in) {
    std::string out;
    EXPECT_EQ(hs_.Feed(in, &out), in.size());
    return ParseReplies(out);
  }
  void Start(uint32_t flags = nbd::kClientFlagFixedNewstyle | nbd::kClientFlagNoZeroes) {
    std::string out;
    EXPECT_EQ(hs_.Feed(Flags(flags), &out), 4u);
    EXPECT_TRUE(out.empty());
  }

  ExportTable exports_;
  Handshake hs_{&exports_};
};

// FORCEDTLS (--tls=require): only STARTTLS and ABORT before TLS (spec, "TLS support").
class RequiredTlsTest : public HandshakeTest {
 protected:
  Handshake tls_hs_{&exports_, TlsMode::kRequire};
  std::vector<OptReply> SendTls(const std::string& in) {
    std::string out;
    EXPECT_EQ(tls_hs_.Feed(in, &out), in.size());
    return ParseReplies(out);
  }
};

TEST_F(HandshakeTest, GreetingIsNbdMagicIHaveOptAndFlags) {
  std::string out;
  Handshake::WriteGreeting(&out);
  ASSERT_EQ(out.size(), nbd::kGreetingSize);
  EXPECT_EQ(out.substr(0, 8), "NBDMAGIC");
  EXPECT_EQ(out.substr(8, 8), "IHAVEOPT");
  EXPECT_EQ(nbd::Get16(out.data() + 16), nbd::kFlagFixedNewstyle | nbd::kFlagNoZeroes);
}

TEST_F(HandshakeTest, PlainNewstyleClientIsServed) {
  Start(0);  // no NBD_FLAG_C_FIXED_NEWSTYLE: it can only send EXPORT_NAME
  std::string out;
  std::string in = Opt(Option::kExportName, "disk");
  ASSERT_EQ(hs_.Feed(in, &out), in.size());
  EXPECT_EQ(out.size(), 8u + 2 + 124);
  EXPECT_EQ(hs_.state(), HandshakeState::kTransmission);
}

TEST_F(HandshakeTest, UnknownClientFlagsCloseTheSession) {
  std::string out;
  hs_.Feed(Flags(nbd::kClientFlagFixedNewstyle | 0x10), &out);
  EXPECT_EQ(hs_.state(), HandshakeState::kClosed);
}

TEST_F(HandshakeTest, GoSendsExportAndBlockSizeThenEntersTransmission) {
  Start();
  auto r = Send(Opt(Option::kGo, InfoData("disk", {3, 2})));
  ASSERT_EQ(r.size(), 4u);  // EXPORT, BLOCK_SIZE, DESCRIPTION, ACK
  EXPECT_EQ(r[0].type, OptionReply::kInfo);
  ASSERT_EQ(r[0].data.size(), 12u);
  EXPECT_EQ(nbd::Get16(r[0].data.data()), 0);
  EXPECT_EQ(nbd::Get64(r[0].data.data() + 2), 1u << 20);
  uint16_t flags = nbd::Get16(r[0].data.data() + 10);
  EXPECT_TRUE(flags & nbd::kFlagHasFlags);
  EXPECT_TRUE(flags & nbd::kFlagSendFlush);
  EXPECT_TRUE(flags & nbd::kFlagSendFua);
  EXPECT_TRUE(flags & nbd::kFlagCanMultiConn);
  EXPECT_FALSE(flags & nbd::kFlagReadOnly);
  EXPECT_FALSE(flags & nbd::kFlagSendDf);  // no structured replies negotiated
  ASSERT_EQ(r[1].data.size(), 14u);
  EXPECT_EQ(nbd::Get16(r[1].data.data()), 3);
  EXPECT_EQ(nbd::Get32(r[1].data.data() + 2), 1u);
  EXPECT_EQ(nbd::Get32(r[1].data.data() + 6), 4096u);
  EXPECT_EQ(nbd::Get32(r[1].data.data() + 10), 32u << 20);
  EXPECT_EQ(r[2].data.substr(2), "the disk");
  EXPECT_EQ(r[3].type, OptionReply::kAck);
  EXPECT_EQ(hs_.state(), HandshakeState::kTransmission);
  EXPECT_EQ(hs_.negotiated().export_->name, "disk");
}

TEST_F(HandshakeTest, EmptyNameSelectsTheDefaultExport) {
  Start();
  Send(Opt(Option::kGo, InfoData("", {})));
  ASSERT_EQ(hs_.state(), HandshakeState::kTransmission);
  EXPECT_EQ(hs_.negotiated().export_->name, "disk");
}

TEST_F(HandshakeTest, ByteAtATimeInputGivesTheSameResult) {
  Start();
  std::string in = Opt(Option::kStructuredReply, "") + Opt(Option::kGo, InfoData("disk", {}));
  std::string out, pending;
  for (char c : in) {
    pending.push_back(c);
    pending.erase(0, hs_.Feed(pending, &out));
  }
  EXPECT_TRUE(pending.empty());
  EXPECT_EQ(hs_.state(), HandshakeState::kTransmission);
  EXPECT_TRUE(hs_.negotiated().structured_replies);
  EXPECT_TRUE(hs_.negotiated().transmission_flags & nbd::kFlagSendDf);
  EXPECT_EQ(ParseReplies(out).size(), 4u);  // ACK, EXPORT, BLOCK_SIZE, ACK
}

TEST_F(HandshakeTest, UnknownOptionGetsErrUnsupAndSessionContinues) {
  Start();
  auto r = Send(Opt(static_cast<Option>(77), "xyz") + Opt(Option::kStartTls, "") +
                Opt(Option::kExtendedHeaders, ""));
  ASSERT_EQ(r.size(), 3u);
  for (const auto& reply : r) EXPECT_EQ(reply.type, OptionReply::kErrUnsup);
  EXPECT_EQ(r[0].option, 77u);
  EXPECT_EQ(hs_.state(), HandshakeState::kOptions);
}

TEST_F(HandshakeTest, ListNamesEveryExport) {
  Start();
  auto r = Send(Opt(Option::kList, ""));
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0].type, OptionReply::kServer);
  EXPECT_EQ(nbd::Get32(r[0].data.data()), 4u);
  EXPECT_EQ(r[0].data.substr(4, 4), "disk");
  EXPECT_EQ(r[1].data.substr(4), "@snap");
  EXPECT_EQ(r[2].type, OptionReply::kAck);
  EXPECT_EQ(Send(Opt(Option::kList, "x"))[0].type, OptionReply::kErrInvalid);
}

TEST_F(HandshakeTest, StructuredReplyTwiceIsInvalid) {
  Start();
  EXPECT_EQ(Send(Opt(Option::kStructuredReply, ""))[0].type, OptionReply::kAck);
  EXPECT_EQ(Send(Opt(Option::kStructuredReply, ""))[0].type, OptionReply::kErrInvalid);
}

TEST_F(HandshakeTest, MetaContextNeedsStructuredReplies) {
  Start();
  auto r = Send(Opt(Option::kSetMetaContext, MetaData("disk", {"base:allocation"})));
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, OptionReply::kErrInvalid);
}

TEST_F(HandshakeTest, SetMetaContextSelectsBothContexts) {
  Start();
  Send(Opt(Option::kStructuredReply, ""));
  auto r = Send(Opt(Option::kSetMetaContext,
                    MetaData("disk", {"base:allocation", "strata:layer", "qemu:dirty-bitmap:x",
                                      "base:"})));
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0].type, OptionReply::kMetaContext);
  EXPECT_EQ(nbd::Get32(r[0].data.data()), kContextIdBaseAllocation);
  EXPECT_EQ(r[0].data.substr(4), "base:allocation");
  EXPECT_EQ(nbd::Get32(r[1].data.data()), kContextIdStrataLayer);
  EXPECT_EQ(r[1].data.substr(4), "strata:layer");
  EXPECT_EQ(r[2].type, OptionReply::kAck);
  Send(Opt(Option::kGo, InfoData("disk", {})));
  EXPECT_TRUE(hs_.negotiated().base_allocation);
  EXPECT_TRUE(hs_.negotiated().strata_layer);
}

TEST_F(HandshakeTest, ListMetaContextWithoutQueriesListsAllWithIdZero) {
  Start();
  Send(Opt(Option::kStructuredReply, ""));
  auto r = Send(Opt(Option::kListMetaContext, MetaData("disk", {})));
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(nbd::Get32(r[0].data.data()), 0u);
  EXPECT_EQ(r[0].data.substr(4), "base:allocation");
  EXPECT_EQ(r[1].data.substr(4), "strata:layer");
  auto w = Send(Opt(Option::kListMetaContext, MetaData("disk", {"strata:"})));
  ASSERT_EQ(w.size(), 2u);
  EXPECT_EQ(w[0].data.substr(4), "strata:layer");
}

TEST_F(HandshakeTest, ContextsForAnotherExportAreDroppedAtGo) {
  Start();
  Send(Opt(Option::kStructuredReply, ""));
  Send(Opt(Option::kSetMetaContext, MetaData("disk", {"base:allocation"})));
  Send(Opt(Option::kGo, InfoData("@snap", {})));
  ASSERT_EQ(hs_.state(), HandshakeState::kTransmission);
  EXPECT_FALSE(hs_.negotiated().base_allocation);
  EXPECT_TRUE(hs_.negotiated().transmission_flags & nbd::kFlagReadOnly);
  EXPECT_FALSE(hs_.negotiated().transmission_flags & nbd::kFlagSendTrim);
}

TEST_F(HandshakeTest, MalformedMetaContextQueryIsInvalid) {
  Start();
  Send(Opt(Option::kStructuredReply, ""));
  std::string data = MetaData("disk", {"base:allocation"});
  data.resize(data.size() - 1);  // query runs past the option
  EXPECT_EQ(Send(Opt(Option::kSetMetaContext, data))[0].type, OptionReply::kErrInvalid);
  EXPECT_EQ(Send(Opt(Option::kSetMetaContext, MetaData("disk", {"nocolon"})))[0].type,
            OptionReply::kErrInvalid);
  EXPECT_EQ(Send(Opt(Option::kSetMetaContext, MetaData("nope", {"base:allocation"})))[0].type,
            OptionReply::kErrUnknown);
}

TEST_F(HandshakeTest, GoToUnknownExportFailsAndNegotiationContinues) {
  Start();
  auto r = Send(Opt(Option::kGo, InfoData("missing", {})));
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, OptionReply::kErrUnknown);
  EXPECT_EQ(hs_.state(), HandshakeState::kOptions);
  Send(Opt(Option::kGo, InfoData("disk", {})));
  EXPECT_EQ(hs_.state(), HandshakeState::kTransmission);
}

TEST_F(HandshakeTest, GoWithBadRequestCountIsInvalid) {
  Start();
  std::string data = InfoData("disk", {1});
  data.push_back('\0');
  EXPECT_EQ(Send(Opt(Option::kGo, data))[0].type, OptionReply::kErrInvalid);
  EXPECT_EQ(Send(Opt(Option::kInfo, "ab"))[0].type, OptionReply::kErrInvalid);
}

TEST_F(HandshakeTest, ExportNameRepliesSizeFlagsAndZeroes) {
  Start(nbd::kClientFlagFixedNewstyle);  // no NO_ZEROES: 124 zero bytes follow
  std::string out;
  std::string in = Opt(Option::kExportName, "disk");
  ASSERT_EQ(hs_.Feed(in, &out), in.size());
  ASSERT_EQ(out.size(), 8u + 2 + 124);
  EXPECT_EQ(nbd::Get64(out.data()), 1u << 20);
  EXPECT_EQ(out.substr(10), std::string(124, '\0'));
  EXPECT_EQ(hs_.state(), HandshakeState::kTransmission);
}

TEST_F(HandshakeTest, ExportNameOfUnknownExportClosesTheSession) {
  Start();
  std::string out;
  hs_.Feed(Opt(Option::kExportName, "missing"), &out);
  EXPECT_TRUE(out.empty());
  EXPECT_EQ(hs_.state(), HandshakeState::kClosed);
}

TEST_F(HandshakeTest, AbortIsAcknowledgedAndCloses) {
  Start();
  auto r = Send(Opt(Option::kAbort, ""));
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, OptionReply::kAck);
  EXPECT_EQ(hs_.state(), HandshakeState::kClosed);
}

TEST_F(HandshakeTest, OptionCountIsBounded) {
  Start();
  std::string in;
  for (int i = 0; i <= Handshake::kMaxOptions; ++i) in += Opt(Option::kList, "");
  std::string out;
  hs_.Feed(in, &out);
  EXPECT_EQ(hs_.state(), HandshakeState::kClosed);
}

// A slow but honest client: one option whose bytes arrive in 300 pieces is one option, not
// 300 (each piece used to count again while the option waited for the rest of its data).
TEST_F(HandshakeTest, OptionArrivingInManyPiecesCountsOnce) {
  Start();
  std::string in = Opt(Option::kGo, InfoData(std::string(280, 'n'), {})) + Opt(Option::kList, "");
  ASSERT_GT(in.size(), 2u * Handshake::kMaxOptions);
  std::string out, pending;
  for (char c : in) {
    pending.push_back(c);
    pending.erase(0, hs_.Feed(pending, &out));
  }
  EXPECT_EQ(hs_.state(), HandshakeState::kOptions) << hs_.close_reason();
  auto r = ParseReplies(out);
  ASSERT_EQ(r.size(), 4u);  // GO: ERR_UNKNOWN (no such export); LIST: SERVER x2, ACK
  EXPECT_EQ(r[0].type, OptionReply::kErrUnknown);
  EXPECT_EQ(r[3].type, OptionReply::kAck);
}

TEST_F(HandshakeTest, BadOptionMagicCloses) {
  Start();
  std::string in = Opt(Option::kList, "");
  in[0] = 'X';
  std::string out;
  hs_.Feed(in, &out);
  EXPECT_EQ(hs_.state(), HandshakeState::kClosed);
}

TEST_F(HandshakeTest, OversizedOptionIsSkippedAndRefused) {
  Start();
  std::string in = Opt(static_cast<Option>(50), std::string(Handshake::kMaxOptionLength + 10, 'x'));
  auto r = Send(in + Opt(Option::kList, ""));
  ASSERT_EQ(r.size(), 4u);
  EXPECT_EQ(r[0].type, OptionReply::kErrTooBig);
  EXPECT_EQ(r[3].type, OptionReply::kAck);
  EXPECT_EQ(hs_.state(), HandshakeState::kOptions);
}

TEST_F(RequiredTlsTest, OptionsBeforeStartTlsGetErrTlsReqd) {
  auto r = SendTls(Flags(nbd::kClientFlagFixedNewstyle) + Opt(Option::kGo, InfoData("disk", {})) +
                   Opt(Option::kList, "") + Opt(Option::kStructuredReply, ""));
  ASSERT_EQ(r.size(), 3u);
  for (const auto& reply : r) EXPECT_EQ(reply.type, OptionReply::kErrTlsReqd);
  EXPECT_EQ(tls_hs_.state(), HandshakeState::kOptions);
}

TEST_F(RequiredTlsTest, ExportNameBeforeStartTlsEndsTheSession) {
  std::string out;
  std::string in = Flags(nbd::kClientFlagFixedNewstyle) + Opt(Option::kExportName, "disk");
  tls_hs_.Feed(in, &out);
  EXPECT_TRUE(out.empty());
  EXPECT_EQ(tls_hs_.state(), HandshakeState::kClosed);
  EXPECT_NE(tls_hs_.close_reason().find("requires TLS"), std::string::npos);
}

TEST_F(RequiredTlsTest, StartTlsIsAckedAndStopsConsumingUntilTlsStarted) {
  std::string out;
  // The bytes after STARTTLS are the client's TLS handshake: Feed must leave them.
  std::string in = Flags(nbd::kClientFlagFixedNewstyle) + Opt(Option::kStartTls, "");
  ASSERT_EQ(tls_hs_.Feed(in + "\x16\x03\x01", &out), in.size());
  auto r = ParseReplies(out);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, OptionReply::kAck);
  EXPECT_EQ(tls_hs_.state(), HandshakeState::kStartTls);
  tls_hs_.TlsStarted();
  EXPECT_TRUE(tls_hs_.tls_active());
  r = SendTls(Opt(Option::kStartTls, "") + Opt(Option::kGo, InfoData("disk", {})));
  ASSERT_EQ(r.size(), 4u);  // ERR_INVALID for the second STARTTLS; INFO, INFO, ACK for GO
  EXPECT_EQ(r[0].type, OptionReply::kErrInvalid);
  EXPECT_EQ(r[3].type, OptionReply::kAck);
  EXPECT_EQ(tls_hs_.state(), HandshakeState::kTransmission);
}

TEST_F(RequiredTlsTest, AbortIsHonouredWithoutTls) {
  auto r = SendTls(Flags(nbd::kClientFlagFixedNewstyle) + Opt(Option::kAbort, ""));
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, OptionReply::kAck);
  EXPECT_EQ(tls_hs_.state(), HandshakeState::kClosed);
}

TEST_F(HandshakeTest, TlsOnServesPlainClientsAndAcksStartTls) {
  Handshake on(&exports_, TlsMode::kOn);
  std::string out;
  std::string in = Flags(nbd::kClientFlagFixedNewstyle) + Opt(Option::kStartTls, "");
  ASSERT_EQ(on.Feed(in, &out), in.size());
  EXPECT_EQ(on.state(), HandshakeState::kStartTls);
  Handshake plain(&exports_, TlsMode::kOn);
  out.clear();
  in = Flags(nbd::kClientFlagFixedNewstyle) + Opt(Option::kExportName, "disk");
  ASSERT_EQ(plain.Feed(in, &out), in.size());
  EXPECT_EQ(plain.state(), HandshakeState::kTransmission);
}

}  // namespace
}  // namespace strata
