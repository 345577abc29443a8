// The pure half of a transmission request: validate, reduce a Status to an NBD error, and
// encode replies. No sockets or ring here, so all of it is unit-tested directly
// (request_test.cc); connection.cc does the I/O around these functions.
#ifndef STRATA_SERVER_NBD_REQUEST_H_
#define STRATA_SERVER_NBD_REQUEST_H_

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "server/nbd/handshake.h"
#include "server/nbd/protocol.h"

namespace strata {

// "NBD_CMD_WRITE handle 0x2a [0x1000, +0x200) FUA": how requests are named in logs and errors.
std::string DescribeRequest(const nbd::RequestHeader& h);

// Checks a request against the negotiated session: command known, flags allowed for it,
// export writable, length within kMaxPayload, range inside the export, block status
// negotiated. Returns OK or a Status naming the request whose code ErrorFor() maps to the
// spec's errno (kInvalidArgument, kOutOfRange, kPermissionDenied).
absl::Status ValidateRequest(const nbd::RequestHeader& h, const Negotiated& session);

// The only place a Status becomes an NBD error (log the Status before calling this).
// kOutOfRange is ENOSPC for writes and EINVAL otherwise (spec, "Error values");
// kResourceExhausted (host volume full) is ENOSPC; kPermissionDenied / kFailedPrecondition
// (read-only) EPERM; kUnimplemented ENOTSUP (a FAST_ZERO we cannot make fast); kCancelled
// ESHUTDOWN; everything else (EIO from the disk, kDataLoss, kInternal, ...) EIO.
nbd::Error ErrorFor(const absl::Status& status, nbd::Command command);

// One run of a READ reply: `length` bytes that are data in the buffer, or a hole
// (reads as zeros; sent as NBD_REPLY_TYPE_OFFSET_HOLE, buffer contents unused).
struct ReadRun {
  uint64_t length = 0;
  bool hole = false;
};

// A piece of a reply as it goes on the wire: bytes of `header` or of the data buffer.
struct ReplyPiece {
  bool from_header = true;
  size_t offset = 0;  // into header, or into the request's data (0 = the request offset)
  size_t length = 0;
};

// Encodes a successful READ reply. Simple replies: the 16-byte header then all the data
// (holes must have been zero-filled by the caller). Structured: one OFFSET_DATA chunk per data
// run and one OFFSET_HOLE chunk per hole run, the last flagged DONE; a zero-length read gets one
// NONE chunk. REQUIRES: runs cover exactly `length` bytes; for DF, a single run.
void EncodeReadReply(uint64_t handle, uint64_t offset, uint64_t length, bool structured,
                     const std::vector<ReadRun>& runs, std::string* header,
                     std::vector<ReplyPiece>* pieces);

// Encodes an error reply: a simple reply carrying the error, or (structured) one
// NBD_REPLY_TYPE_ERROR chunk, or NBD_REPLY_TYPE_ERROR_OFFSET when `error_offset` is given,
// with `message` (cut to 1 KiB) for the human at the client.
void EncodeErrorReply(uint64_t handle, bool structured, nbd::Error error,
                      absl::string_view message, std::optional<uint64_t> error_offset,
                      std::string* header);

// Encodes a reply without payload: a simple reply, or (structured) a NONE chunk with DONE.
// Structured replies could use simple replies here too; a chunk keeps the stream uniform.
void EncodeDoneReply(uint64_t handle, bool structured, std::string* header);

// Block status descriptor as it goes on the wire.
struct Descriptor {
  uint32_t length = 0;
  uint32_t flags = 0;
};

// Turns extents (anything with `offset` and `length`, in order) into descriptors clipped to
// [offset, offset + length), with `flags_of` computing each extent's flags; neighbours with
// equal flags merge. At most `max` descriptors.
template <typename Range, typename FlagsOf>
std::vector<Descriptor> ToDescriptors(const std::vector<Range>& extents, uint64_t offset,
                                      uint64_t length, size_t max, FlagsOf flags_of) {
  std::vector<Descriptor> out;
  const uint64_t end = offset + length;
  for (const Range& e : extents) {
    uint64_t s = std::max(e.offset, offset);
    uint64_t t = std::min(e.offset + e.length, end);
    if (s >= t) continue;
    uint32_t flags = flags_of(e);
    uint64_t len = t - s;
    if (!out.empty() && out.back().flags == flags &&
        uint64_t{out.back().length} + len <= UINT32_MAX) {
      out.back().length += static_cast<uint32_t>(len);
      continue;
    }
    if (out.size() == max) break;
    // A descriptor length is 32 bits; the request length is too, so one split at most.
    while (len > 0 && out.size() < max) {
      uint32_t piece = static_cast<uint32_t>(std::min<uint64_t>(len, 0x80000000u));
      out.push_back({piece, flags});
      len -= piece;
    }
  }
  return out;
}

// Appends one NBD_REPLY_TYPE_BLOCK_STATUS chunk.
void EncodeBlockStatusChunk(uint64_t handle, bool done, uint32_t context_id,
                            const std::vector<Descriptor>& descriptors, std::string* header);

}  // namespace strata

#endif  // STRATA_SERVER_NBD_REQUEST_H_
