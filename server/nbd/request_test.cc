#include "server/nbd/request.h"

#include <cerrno>

#include "gtest/gtest.h"

namespace strata {
namespace {

using nbd::Command;
using nbd::Error;

class RequestTest : public ::testing::Test {
 protected:
  RequestTest() {
    export_ = std::make_shared<Export>();
    export_->disk_size = 1 << 20;
    session_.export_ = export_;
    session_.structured_replies = true;
    session_.base_allocation = true;
  }
  nbd::RequestHeader Req(Command cmd, uint64_t offset, uint32_t length, uint16_t flags = 0) {
    nbd::RequestHeader h;
    h.magic = nbd::kRequestMagic;
    h.type = static_cast<uint16_t>(cmd);
    h.offset = offset;
    h.length = length;
    h.flags = flags;
    h.handle = 0x42;
    return h;
  }
  Error Check(const nbd::RequestHeader& h) {
    return ErrorFor(ValidateRequest(h, session_), static_cast<Command>(h.type));
  }

  std::shared_ptr<Export> export_;
  Negotiated session_;
};

TEST_F(RequestTest, ValidRequestsPass) {
  EXPECT_EQ(Check(Req(Command::kRead, 0, 4096)), Error::kOk);
  EXPECT_EQ(Check(Req(Command::kWrite, (1 << 20) - 1, 1, nbd::kCmdFlagFua)), Error::kOk);
  EXPECT_EQ(Check(Req(Command::kRead, 0, 4096, nbd::kCmdFlagDf)), Error::kOk);
  EXPECT_EQ(Check(Req(Command::kWriteZeroes, 0, 1 << 20,
                      nbd::kCmdFlagNoHole | nbd::kCmdFlagFastZero)),
            Error::kOk);
  EXPECT_EQ(Check(Req(Command::kBlockStatus, 0, 1 << 20, nbd::kCmdFlagReqOne)), Error::kOk);
  EXPECT_EQ(Check(Req(Command::kFlush, 0, 0)), Error::kOk);
  EXPECT_EQ(Check(Req(Command::kRead, 1 << 20, 0)), Error::kOk);  // empty read at the end
}

TEST_F(RequestTest, OutOfRangeIsEinvalForReadsAndEnospcForWrites) {
  EXPECT_EQ(Check(Req(Command::kRead, 1 << 20, 1)), Error::kInval);
  EXPECT_EQ(Check(Req(Command::kTrim, (1 << 20) - 1, 2)), Error::kInval);
  EXPECT_EQ(Check(Req(Command::kBlockStatus, 1 << 20, 1)), Error::kInval);
  EXPECT_EQ(Check(Req(Command::kWrite, 1 << 20, 1)), Error::kNoSpc);
  EXPECT_EQ(Check(Req(Command::kWriteZeroes, 0, (1 << 20) + 1)), Error::kNoSpc);
  // offset + length overflowing 64 bits is out of range too.
  EXPECT_EQ(Check(Req(Command::kRead, UINT64_MAX - 10, 4096)), Error::kInval);
}

TEST_F(RequestTest, FlagsNotValidForTheCommandAreEinval) {
  EXPECT_EQ(Check(Req(Command::kWrite, 0, 1, nbd::kCmdFlagDf)), Error::kInval);
  EXPECT_EQ(Check(Req(Command::kRead, 0, 1, nbd::kCmdFlagNoHole)), Error::kInval);
  EXPECT_EQ(Check(Req(Command::kRead, 0, 1, 0x40)), Error::kInval);
  session_.structured_replies = false;
  EXPECT_EQ(Check(Req(Command::kRead, 0, 1, nbd::kCmdFlagDf)), Error::kInval);
}

TEST_F(RequestTest, UnknownCommandAndBadFlushAreEinval) {
  EXPECT_EQ(Check(Req(static_cast<Command>(99), 0, 0)), Error::kInval);
  EXPECT_EQ(Check(Req(Command::kResize, 0, 0)), Error::kInval);
  EXPECT_EQ(Check(Req(Command::kFlush, 1, 0)), Error::kInval);
}

TEST_F(RequestTest, OversizedPayloadIsEinval) {
  EXPECT_EQ(Check(Req(Command::kRead, 0, kMaxPayload + 1)), Error::kInval);
  // Metadata-only commands take any length inside the export.
  export_->disk_size = 1ull << 40;
  EXPECT_EQ(Check(Req(Command::kTrim, 0, 0xffffffff)), Error::kOk);
}

TEST_F(RequestTest, BlockStatusNeedsAContextAndALength) {
  EXPECT_EQ(Check(Req(Command::kBlockStatus, 0, 0)), Error::kInval);
  session_.base_allocation = false;
  EXPECT_EQ(Check(Req(Command::kBlockStatus, 0, 512)), Error::kInval);
  session_.strata_layer = true;
  EXPECT_EQ(Check(Req(Command::kBlockStatus, 0, 512)), Error::kOk);
}

TEST_F(RequestTest, WritesToReadOnlyExportAreEperm) {
  export_->read_only = true;
  EXPECT_EQ(Check(Req(Command::kWrite, 0, 1)), Error::kPerm);
  EXPECT_EQ(Check(Req(Command::kTrim, 0, 1)), Error::kPerm);
  EXPECT_EQ(Check(Req(Command::kWriteZeroes, 0, 1)), Error::kPerm);
  EXPECT_EQ(Check(Req(Command::kRead, 0, 1)), Error::kOk);
  EXPECT_EQ(Check(Req(Command::kFlush, 0, 0)), Error::kOk);
}

TEST_F(RequestTest, ErrorMessageNamesTheRequest) {
  absl::Status st = ValidateRequest(Req(Command::kWrite, 1 << 20, 512), session_);
  EXPECT_NE(st.message().find("NBD_CMD_WRITE handle 0x42 [0x100000, +0x200)"),
            std::string::npos)
      << st;
}

TEST(ErrorForTest, StatusCodesMapToSpecErrors) {
  EXPECT_EQ(ErrorFor(absl::ErrnoToStatus(ENOSPC, "x"), Command::kWrite), Error::kNoSpc);
  EXPECT_EQ(ErrorFor(absl::ErrnoToStatus(EDQUOT, "x"), Command::kWrite), Error::kNoSpc);
  EXPECT_EQ(ErrorFor(absl::ErrnoToStatus(EFBIG, "x"), Command::kWrite), Error::kNoSpc);
  EXPECT_EQ(ErrorFor(absl::ErrnoToStatus(EIO, "x"), Command::kRead), Error::kIo);
  EXPECT_EQ(ErrorFor(absl::DataLossError("crc"), Command::kRead), Error::kIo);
  EXPECT_EQ(ErrorFor(absl::InternalError("bug"), Command::kRead), Error::kIo);
  EXPECT_EQ(ErrorFor(absl::ResourceExhaustedError("full"), Command::kWriteZeroes),
            Error::kNoSpc);
  EXPECT_EQ(ErrorFor(absl::FailedPreconditionError("ro"), Command::kWrite), Error::kPerm);
  EXPECT_EQ(ErrorFor(absl::UnimplementedError("slow"), Command::kWriteZeroes), Error::kNotSup);
  EXPECT_EQ(ErrorFor(absl::CancelledError("bye"), Command::kRead), Error::kShutdown);
  EXPECT_EQ(ErrorFor(absl::OkStatus(), Command::kRead), Error::kOk);
}

// Reassembles a reply from its pieces.
std::string Wire(const std::string& header, const std::vector<ReplyPiece>& pieces,
                 const std::string& data) {
  std::string out;
  for (const auto& p : pieces) {
    out += p.from_header ? header.substr(p.offset, p.length) : data.substr(p.offset, p.length);
  }
  return out;
}

TEST(ReadReplyTest, SimpleReplyIsHeaderThenData) {
  std::string header, data = "abcdefgh";
  std::vector<ReplyPiece> pieces;
  EncodeReadReply(7, 100, 8, false, {{8, false}}, &header, &pieces);
  std::string wire = Wire(header, pieces, data);
  ASSERT_EQ(wire.size(), 16u + 8);
  EXPECT_EQ(nbd::Get32(wire.data()), nbd::kSimpleReplyMagic);
  EXPECT_EQ(nbd::Get32(wire.data() + 4), 0u);
  EXPECT_EQ(nbd::Get64(wire.data() + 8), 7u);
  EXPECT_EQ(wire.substr(16), data);
}

TEST(ReadReplyTest, StructuredReplyHasDataAndHoleChunksLastOneDone) {
  std::string header, data(12288, 'd');
  std::vector<ReplyPiece> pieces;
  EncodeReadReply(9, 4096, 12288, true, {{4096, false}, {4096, true}, {4096, false}}, &header,
                  &pieces);
  std::string wire = Wire(header, pieces, data);
  // chunk 1: OFFSET_DATA at 4096
  const char* p = wire.data();
  EXPECT_EQ(nbd::Get32(p), nbd::kStructuredReplyMagic);
  EXPECT_EQ(nbd::Get16(p + 4), 0);
  EXPECT_EQ(nbd::Get16(p + 6), 1);
  EXPECT_EQ(nbd::Get32(p + 16), 8u + 4096);
  EXPECT_EQ(nbd::Get64(p + 20), 4096u);
  p += 28 + 4096;
  // chunk 2: OFFSET_HOLE at 8192, 4096 bytes
  EXPECT_EQ(nbd::Get16(p + 6), 2);
  EXPECT_EQ(nbd::Get32(p + 16), 12u);
  EXPECT_EQ(nbd::Get64(p + 20), 8192u);
  EXPECT_EQ(nbd::Get32(p + 28), 4096u);
  p += 32;
  // chunk 3: OFFSET_DATA at 12288 with DONE
  EXPECT_EQ(nbd::Get16(p + 4), nbd::kReplyFlagDone);
  EXPECT_EQ(nbd::Get64(p + 20), 12288u);
  EXPECT_EQ(static_cast<size_t>(p + 28 + 4096 - wire.data()), wire.size());
}

TEST(ReadReplyTest, EmptyStructuredReadIsOneNoneChunk) {
  std::string header;
  std::vector<ReplyPiece> pieces;
  EncodeReadReply(1, 0, 0, true, {}, &header, &pieces);
  ASSERT_EQ(header.size(), 20u);
  EXPECT_EQ(nbd::Get16(header.data() + 4), nbd::kReplyFlagDone);
  EXPECT_EQ(nbd::Get16(header.data() + 6), 0);
}

TEST(ErrorReplyTest, StructuredErrorCarriesMessageAndOffset) {
  std::string header;
  EncodeErrorReply(3, true, Error::kIo, "bad sector", 0x1000, &header);
  ASSERT_EQ(header.size(), 20u + 4 + 2 + 10 + 8);
  EXPECT_EQ(nbd::Get16(header.data() + 6), 0x8002);
  EXPECT_EQ(nbd::Get32(header.data() + 20), 5u);
  EXPECT_EQ(nbd::Get16(header.data() + 24), 10u);
  EXPECT_EQ(header.substr(26, 10), "bad sector");
  EXPECT_EQ(nbd::Get64(header.data() + 36), 0x1000u);
  header.clear();
  EncodeErrorReply(3, false, Error::kNoSpc, "full", std::nullopt, &header);
  ASSERT_EQ(header.size(), 16u);
  EXPECT_EQ(nbd::Get32(header.data() + 4), 28u);
}

TEST(DescriptorTest, BlockStatusChunkLayout) {
  std::string header;
  EncodeBlockStatusChunk(5, true, kContextIdStrataLayer, {{4096, 1}, {512, 0}}, &header);
  ASSERT_EQ(header.size(), 20u + 4 + 16);
  EXPECT_EQ(nbd::Get16(header.data() + 4), nbd::kReplyFlagDone);
  EXPECT_EQ(nbd::Get16(header.data() + 6), 5);
  EXPECT_EQ(nbd::Get32(header.data() + 16), 20u);
  EXPECT_EQ(nbd::Get32(header.data() + 20), kContextIdStrataLayer);
  EXPECT_EQ(nbd::Get32(header.data() + 24), 4096u);
  EXPECT_EQ(nbd::Get32(header.data() + 28), 1u);
}

}  // namespace
}  // namespace strata
