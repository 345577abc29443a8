#include "server/nbd/request.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace strata {

using nbd::Command;
using nbd::Error;

std::string DescribeRequest(const nbd::RequestHeader& h) {
  std::string s = absl::StrFormat("%s handle %#x [%#x, +%#x)",
                                  nbd::Name(static_cast<Command>(h.type)), h.handle, h.offset,
                                  h.length);
  if (h.flags != 0) absl::StrAppend(&s, " ", nbd::CommandFlagsToString(h.flags));
  return s;
}

absl::Status ValidateRequest(const nbd::RequestHeader& h, const Negotiated& session) {
  const Export& e = *session.export_;
  const Command cmd = static_cast<Command>(h.type);
  // FUA is valid on every command (spec, "Command flags"); the rest are per command.
  uint16_t allowed = nbd::kCmdFlagFua;
  bool ranged = true;      // offset/length address the export
  bool writes = false;     // changes the export
  bool payload_sized = false;  // length bounded by the maximum block size
  switch (cmd) {
    case Command::kRead:
      if (session.structured_replies) allowed |= nbd::kCmdFlagDf;
      payload_sized = true;
      break;
    case Command::kWrite:
      writes = true;
      payload_sized = true;
      break;
    case Command::kCache:
      payload_sized = true;
      break;
    case Command::kTrim:
      writes = true;
      break;
    case Command::kWriteZeroes:
      allowed |= nbd::kCmdFlagNoHole | nbd::kCmdFlagFastZero;
      writes = true;
      break;
    case Command::kBlockStatus:
      allowed |= nbd::kCmdFlagReqOne;
      break;
    case Command::kFlush:
    case Command::kDisc:
      ranged = false;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(DescribeRequest(h), ": unknown command"));
  }
  if (h.flags & ~allowed) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: flags %s not valid for this command", DescribeRequest(h),
        nbd::CommandFlagsToString(h.flags & ~allowed)));
  }
  if (cmd == Command::kFlush && (h.offset != 0 || h.length != 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat(DescribeRequest(h), ": offset and length of a flush must be zero"));
  }
  if (cmd == Command::kBlockStatus) {
    if (!session.base_allocation && !session.strata_layer) {
      return absl::InvalidArgumentError(
          absl::StrCat(DescribeRequest(h), ": no metadata context was negotiated"));
    }
    if (h.length == 0) {
      return absl::InvalidArgumentError(absl::StrCat(DescribeRequest(h), ": zero length"));
    }
  }
  if (writes && e.read_only) {
    return absl::PermissionDeniedError(
        absl::StrCat(DescribeRequest(h), ": export \"", e.name, "\" is read-only"));
  }
  if (payload_sized && h.length > kMaxPayload) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: length exceeds the maximum block size %u", DescribeRequest(h), kMaxPayload));
  }
  if (ranged) {
    const uint64_t size = e.size();
    if (h.offset > size || h.length > size - h.offset) {
      return absl::OutOfRangeError(absl::StrFormat("%s: beyond the end of the export (%#x)",
                                                   DescribeRequest(h), size));
    }
  }
  return absl::OkStatus();
}

Error ErrorFor(const absl::Status& status, Command command) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return Error::kOk;
    case absl::StatusCode::kInvalidArgument:
      return Error::kInval;
    case absl::StatusCode::kOutOfRange:
      // Also where absl puts EFBIG, which the spec wants as ENOSPC for writes.
      return (command == Command::kWrite || command == Command::kWriteZeroes) ? Error::kNoSpc
                                                                              : Error::kInval;
    case absl::StatusCode::kResourceExhausted:  // ENOSPC, EDQUOT
      return Error::kNoSpc;
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kFailedPrecondition:  // Chain: writing a read-only chain
      return Error::kPerm;
    case absl::StatusCode::kUnimplemented:
      return Error::kNotSup;
    case absl::StatusCode::kCancelled:
      return Error::kShutdown;
    default:
      return Error::kIo;
  }
}

void EncodeReadReply(uint64_t handle, uint64_t offset, uint64_t length, bool structured,
                     const std::vector<ReadRun>& runs, std::string* header,
                     std::vector<ReplyPiece>* pieces) {
  if (!structured) {
    size_t at = header->size();
    header->resize(at + nbd::kSimpleReplySize);
    nbd::EncodeSimpleReply(header->data() + at, Error::kOk, handle);
    pieces->push_back({true, at, nbd::kSimpleReplySize});
    if (length > 0) pieces->push_back({false, 0, length});
    return;
  }
  if (length == 0) {
    size_t at = header->size();
    header->resize(at + nbd::kStructuredReplyHeaderSize);
    nbd::EncodeStructuredHeader(header->data() + at, nbd::kReplyFlagDone, nbd::ReplyType::kNone,
                                handle, 0);
    pieces->push_back({true, at, nbd::kStructuredReplyHeaderSize});
    return;
  }
  uint64_t pos = 0;
  for (size_t i = 0; i < runs.size(); ++i) {
    const ReadRun& run = runs[i];
    const uint16_t flags = i + 1 == runs.size() ? nbd::kReplyFlagDone : 0;
    size_t at = header->size();
    if (run.hole) {
      header->resize(at + nbd::kStructuredReplyHeaderSize + 12);
      char* p = header->data() + at;
      nbd::EncodeStructuredHeader(p, flags, nbd::ReplyType::kOffsetHole, handle, 12);
      nbd::Put64(p + nbd::kStructuredReplyHeaderSize, offset + pos);
      nbd::Put32(p + nbd::kStructuredReplyHeaderSize + 8, static_cast<uint32_t>(run.length));
      pieces->push_back({true, at, nbd::kStructuredReplyHeaderSize + 12});
    } else {
      header->resize(at + nbd::kStructuredReplyHeaderSize + 8);
      char* p = header->data() + at;
      nbd::EncodeStructuredHeader(p, flags, nbd::ReplyType::kOffsetData, handle,
                                  static_cast<uint32_t>(8 + run.length));
      nbd::Put64(p + nbd::kStructuredReplyHeaderSize, offset + pos);
      pieces->push_back({true, at, nbd::kStructuredReplyHeaderSize + 8});
      pieces->push_back({false, pos, run.length});
    }
    pos += run.length;
  }
}

void EncodeErrorReply(uint64_t handle, bool structured, Error error, absl::string_view message,
                      std::optional<uint64_t> error_offset, std::string* header) {
  size_t at = header->size();
  if (!structured) {
    header->resize(at + nbd::kSimpleReplySize);
    nbd::EncodeSimpleReply(header->data() + at, error, handle);
    return;
  }
  message = message.substr(0, 1024);
  const size_t payload = 4 + 2 + message.size() + (error_offset ? 8 : 0);
  header->resize(at + nbd::kStructuredReplyHeaderSize + payload);
  char* p = header->data() + at;
  nbd::EncodeStructuredHeader(
      p, nbd::kReplyFlagDone,
      error_offset ? nbd::ReplyType::kErrorOffset : nbd::ReplyType::kError, handle,
      static_cast<uint32_t>(payload));
  p += nbd::kStructuredReplyHeaderSize;
  nbd::Put32(p, static_cast<uint32_t>(error));
  nbd::Put16(p + 4, static_cast<uint16_t>(message.size()));
  std::memcpy(p + 6, message.data(), message.size());
  if (error_offset) nbd::Put64(p + 6 + message.size(), *error_offset);
}

void EncodeDoneReply(uint64_t handle, bool structured, std::string* header) {
  size_t at = header->size();
  if (!structured) {
    header->resize(at + nbd::kSimpleReplySize);
    nbd::EncodeSimpleReply(header->data() + at, Error::kOk, handle);
    return;
  }
  header->resize(at + nbd::kStructuredReplyHeaderSize);
  nbd::EncodeStructuredHeader(header->data() + at, nbd::kReplyFlagDone, nbd::ReplyType::kNone,
                              handle, 0);
}

void EncodeBlockStatusChunk(uint64_t handle, bool done, uint32_t context_id,
                            const std::vector<Descriptor>& descriptors, std::string* header) {
  const size_t payload = 4 + 8 * descriptors.size();
  size_t at = header->size();
  header->resize(at + nbd::kStructuredReplyHeaderSize + payload);
  char* p = header->data() + at;
  nbd::EncodeStructuredHeader(p, done ? nbd::kReplyFlagDone : 0, nbd::ReplyType::kBlockStatus,
                              handle, static_cast<uint32_t>(payload));
  p += nbd::kStructuredReplyHeaderSize;
  nbd::Put32(p, context_id);
  p += 4;
  for (const Descriptor& d : descriptors) {
    nbd::Put32(p, d.length);
    nbd::Put32(p + 4, d.flags);
    p += 8;
  }
}

}  // namespace strata
