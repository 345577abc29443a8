#include "server/nbd/protocol.h"

#include "gtest/gtest.h"

namespace strata::nbd {
namespace {

TEST(NbdProtocolTest, RequestHeaderRoundTripsBigEndian) {
  RequestHeader h;
  h.magic = kRequestMagic;
  h.flags = kCmdFlagFua;
  h.type = static_cast<uint16_t>(Command::kWrite);
  h.handle = 0x0102030405060708ull;
  h.offset = 0x1122334455667788ull;
  h.length = 0xaabbccdd;
  char buf[kRequestHeaderSize];
  h.EncodeTo(buf);
  EXPECT_EQ(static_cast<unsigned char>(buf[0]), 0x25);  // magic, network byte order
  EXPECT_EQ(static_cast<unsigned char>(buf[8]), 0x01);  // handle's most significant byte
  RequestHeader d = RequestHeader::DecodeFrom(buf);
  EXPECT_EQ(d.magic, h.magic);
  EXPECT_EQ(d.flags, h.flags);
  EXPECT_EQ(d.type, h.type);
  EXPECT_EQ(d.handle, h.handle);
  EXPECT_EQ(d.offset, h.offset);
  EXPECT_EQ(d.length, h.length);
}

TEST(NbdProtocolTest, NamesKnownAndUnknownValues) {
  EXPECT_EQ(Name(Command::kBlockStatus), "NBD_CMD_BLOCK_STATUS");
  EXPECT_EQ(Name(static_cast<Command>(42)), "NBD_CMD_42");
  EXPECT_EQ(Name(Option::kGo), "NBD_OPT_GO");
  EXPECT_EQ(Name(static_cast<Option>(99)), "NBD_OPT_99");
  EXPECT_EQ(Name(OptionReply::kErrUnsup), "NBD_REP_ERR_UNSUP");
  EXPECT_EQ(Name(Error::kNoSpc), "ENOSPC");
  EXPECT_EQ(Name(ReplyType::kOffsetHole), "NBD_REPLY_TYPE_OFFSET_HOLE");
  EXPECT_EQ(Name(Info::kBlockSize), "NBD_INFO_BLOCK_SIZE");
}

TEST(NbdProtocolTest, FlagStringsNameEveryBit) {
  EXPECT_EQ(TransmissionFlagsToString(kFlagHasFlags | kFlagReadOnly | kFlagCanMultiConn),
            "HAS_FLAGS|READ_ONLY|CAN_MULTI_CONN");
  EXPECT_EQ(CommandFlagsToString(kCmdFlagFua | kCmdFlagFastZero | 0x100), "FUA|FAST_ZERO|0x100");
  EXPECT_EQ(CommandFlagsToString(0), "0");
}

TEST(NbdProtocolTest, ReplyHeadersHaveSpecLayout) {
  char simple[kSimpleReplySize];
  EncodeSimpleReply(simple, Error::kIo, 7);
  EXPECT_EQ(Get32(simple), kSimpleReplyMagic);
  EXPECT_EQ(Get32(simple + 4), 5u);
  EXPECT_EQ(Get64(simple + 8), 7u);
  char chunk[kStructuredReplyHeaderSize];
  EncodeStructuredHeader(chunk, kReplyFlagDone, ReplyType::kError, 9, 6);
  EXPECT_EQ(Get32(chunk), kStructuredReplyMagic);
  EXPECT_EQ(Get16(chunk + 4), kReplyFlagDone);
  EXPECT_EQ(Get16(chunk + 6), 0x8001);
  EXPECT_EQ(Get64(chunk + 8), 9u);
  EXPECT_EQ(Get32(chunk + 16), 6u);
}

}  // namespace
}  // namespace strata::nbd
