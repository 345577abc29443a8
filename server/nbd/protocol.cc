#include "server/nbd/protocol.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace strata::nbd {

namespace {

// Unknown values are printed with their number: a log line naming "NBD_OPT_42" is still useful.
// A small ring of buffers so that a few unknown names can appear in one log line.
template <typename T>
absl::string_view Unknown(const char* prefix, T value) {
  thread_local std::string bufs[4];
  thread_local int next = 0;
  std::string& buf = bufs[next++ & 3];
  buf = absl::StrCat(prefix, static_cast<uint64_t>(value));
  return buf;
}

std::string FlagsToString(uint32_t flags, const std::vector<std::pair<uint32_t, const char*>>& names) {
  std::vector<std::string> parts;
  for (const auto& [bit, name] : names) {
    if (flags & bit) {
      parts.push_back(name);
      flags &= ~bit;
    }
  }
  if (flags != 0) parts.push_back(absl::StrCat("0x", absl::Hex(flags)));
  if (parts.empty()) return "0";
  return absl::StrJoin(parts, "|");
}

}  // namespace

std::string TransmissionFlagsToString(uint16_t flags) {
  return FlagsToString(flags, {{kFlagHasFlags, "HAS_FLAGS"},
                               {kFlagReadOnly, "READ_ONLY"},
                               {kFlagSendFlush, "SEND_FLUSH"},
                               {kFlagSendFua, "SEND_FUA"},
                               {kFlagRotational, "ROTATIONAL"},
                               {kFlagSendTrim, "SEND_TRIM"},
                               {kFlagSendWriteZeroes, "SEND_WRITE_ZEROES"},
                               {kFlagSendDf, "SEND_DF"},
                               {kFlagCanMultiConn, "CAN_MULTI_CONN"},
                               {kFlagSendResize, "SEND_RESIZE"},
                               {kFlagSendCache, "SEND_CACHE"},
                               {kFlagSendFastZero, "SEND_FAST_ZERO"}});
}

std::string CommandFlagsToString(uint16_t flags) {
  return FlagsToString(flags, {{kCmdFlagFua, "FUA"},
                               {kCmdFlagNoHole, "NO_HOLE"},
                               {kCmdFlagDf, "DF"},
                               {kCmdFlagReqOne, "REQ_ONE"},
                               {kCmdFlagFastZero, "FAST_ZERO"}});
}

absl::string_view Name(Option option) {
  switch (option) {
    case Option::kExportName: return "NBD_OPT_EXPORT_NAME";
    case Option::kAbort: return "NBD_OPT_ABORT";
    case Option::kList: return "NBD_OPT_LIST";
    case Option::kPeekExport: return "NBD_OPT_PEEK_EXPORT";
    case Option::kStartTls: return "NBD_OPT_STARTTLS";
    case Option::kInfo: return "NBD_OPT_INFO";
    case Option::kGo: return "NBD_OPT_GO";
    case Option::kStructuredReply: return "NBD_OPT_STRUCTURED_REPLY";
    case Option::kListMetaContext: return "NBD_OPT_LIST_META_CONTEXT";
    case Option::kSetMetaContext: return "NBD_OPT_SET_META_CONTEXT";
    case Option::kExtendedHeaders: return "NBD_OPT_EXTENDED_HEADERS";
  }
  return Unknown("NBD_OPT_", static_cast<uint32_t>(option));
}

absl::string_view Name(OptionReply reply) {
  switch (reply) {
    case OptionReply::kAck: return "NBD_REP_ACK";
    case OptionReply::kServer: return "NBD_REP_SERVER";
    case OptionReply::kInfo: return "NBD_REP_INFO";
    case OptionReply::kMetaContext: return "NBD_REP_META_CONTEXT";
    case OptionReply::kErrUnsup: return "NBD_REP_ERR_UNSUP";
    case OptionReply::kErrPolicy: return "NBD_REP_ERR_POLICY";
    case OptionReply::kErrInvalid: return "NBD_REP_ERR_INVALID";
    case OptionReply::kErrPlatform: return "NBD_REP_ERR_PLATFORM";
    case OptionReply::kErrTlsReqd: return "NBD_REP_ERR_TLS_REQD";
    case OptionReply::kErrUnknown: return "NBD_REP_ERR_UNKNOWN";
    case OptionReply::kErrShutdown: return "NBD_REP_ERR_SHUTDOWN";
    case OptionReply::kErrBlockSizeReqd: return "NBD_REP_ERR_BLOCK_SIZE_REQD";
    case OptionReply::kErrTooBig: return "NBD_REP_ERR_TOO_BIG";
  }
  return Unknown("NBD_REP_", static_cast<uint32_t>(reply));
}

absl::string_view Name(Info info) {
  switch (info) {
    case Info::kExport: return "NBD_INFO_EXPORT";
    case Info::kName: return "NBD_INFO_NAME";
    case Info::kDescription: return "NBD_INFO_DESCRIPTION";
    case Info::kBlockSize: return "NBD_INFO_BLOCK_SIZE";
  }
  return Unknown("NBD_INFO_", static_cast<uint16_t>(info));
}

absl::string_view Name(Command command) {
  switch (command) {
    case Command::kRead: return "NBD_CMD_READ";
    case Command::kWrite: return "NBD_CMD_WRITE";
    case Command::kDisc: return "NBD_CMD_DISC";
    case Command::kFlush: return "NBD_CMD_FLUSH";
    case Command::kTrim: return "NBD_CMD_TRIM";
    case Command::kCache: return "NBD_CMD_CACHE";
    case Command::kWriteZeroes: return "NBD_CMD_WRITE_ZEROES";
    case Command::kBlockStatus: return "NBD_CMD_BLOCK_STATUS";
    case Command::kResize: return "NBD_CMD_RESIZE";
  }
  return Unknown("NBD_CMD_", static_cast<uint16_t>(command));
}

absl::string_view Name(ReplyType type) {
  switch (type) {
    case ReplyType::kNone: return "NBD_REPLY_TYPE_NONE";
    case ReplyType::kOffsetData: return "NBD_REPLY_TYPE_OFFSET_DATA";
    case ReplyType::kOffsetHole: return "NBD_REPLY_TYPE_OFFSET_HOLE";
    case ReplyType::kBlockStatus: return "NBD_REPLY_TYPE_BLOCK_STATUS";
    case ReplyType::kError: return "NBD_REPLY_TYPE_ERROR";
    case ReplyType::kErrorOffset: return "NBD_REPLY_TYPE_ERROR_OFFSET";
  }
  return Unknown("NBD_REPLY_TYPE_", static_cast<uint16_t>(type));
}

absl::string_view Name(Error error) {
  switch (error) {
    case Error::kOk: return "OK";
    case Error::kPerm: return "EPERM";
    case Error::kIo: return "EIO";
    case Error::kNoMem: return "ENOMEM";
    case Error::kInval: return "EINVAL";
    case Error::kNoSpc: return "ENOSPC";
    case Error::kOverflow: return "EOVERFLOW";
    case Error::kNotSup: return "ENOTSUP";
    case Error::kShutdown: return "ESHUTDOWN";
  }
  return Unknown("NBD_E", static_cast<uint32_t>(error));
}

void Append16(std::string* out, uint16_t v) {
  char b[2];
  Put16(b, v);
  out->append(b, 2);
}
void Append32(std::string* out, uint32_t v) {
  char b[4];
  Put32(b, v);
  out->append(b, 4);
}
void Append64(std::string* out, uint64_t v) {
  char b[8];
  Put64(b, v);
  out->append(b, 8);
}

RequestHeader RequestHeader::DecodeFrom(const char* p) {
  RequestHeader h;
  h.magic = Get32(p);
  h.flags = Get16(p + 4);
  h.type = Get16(p + 6);
  h.handle = Get64(p + 8);
  h.offset = Get64(p + 16);
  h.length = Get32(p + 24);
  return h;
}

void RequestHeader::EncodeTo(char* p) const {
  Put32(p, magic);
  Put16(p + 4, flags);
  Put16(p + 6, type);
  Put64(p + 8, handle);
  Put64(p + 16, offset);
  Put32(p + 24, length);
}

void EncodeSimpleReply(char* p, Error error, uint64_t handle) {
  Put32(p, kSimpleReplyMagic);
  Put32(p + 4, static_cast<uint32_t>(error));
  Put64(p + 8, handle);
}

void EncodeStructuredHeader(char* p, uint16_t flags, ReplyType type, uint64_t handle,
                            uint32_t payload_length) {
  Put32(p, kStructuredReplyMagic);
  Put16(p + 4, flags);
  Put16(p + 6, static_cast<uint16_t>(type));
  Put64(p + 8, handle);
  Put32(p + 16, payload_length);
}

}  // namespace strata::nbd
