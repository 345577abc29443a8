// Fuzzes the transmission phase's request parsing (server/nbd/request.h) on a request stream
// framed as the connection frames it: 28-byte headers, a WRITE's payload after its header, the
// stream ending at a bad magic, NBD_CMD_DISC or an oversized WRITE. The first input byte picks
// the negotiated session. Invariants: a header re-encodes to the bytes it came from; a request
// ValidateRequest accepts addresses the export and fits a payload; one it refuses maps to an
// NBD error, and every reply encodes with pieces that cover exactly the request's bytes.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "server/nbd/export.h"
#include "server/nbd/protocol.h"
#include "server/nbd/request.h"

namespace strata {
namespace {

using nbd::Command;

Negotiated SessionFrom(uint8_t bits) {
  static const std::shared_ptr<const Export> exports[2] = {
      [] {
        auto e = std::make_shared<Export>();
        e->name = "disk";
        e->disk_size = uint64_t{1} << 30;
        return e;
      }(),
      [] {
        auto e = std::make_shared<Export>();
        e->name = "@snap";
        e->disk_size = (uint64_t{1} << 20) + 512;  // not a multiple of the block size
        e->read_only = true;
        return e;
      }()};
  Negotiated s;
  s.export_ = exports[bits & 1];
  s.structured_replies = bits & 2;
  s.base_allocation = bits & 4;
  s.strata_layer = bits & 8;
  s.transmission_flags = TransmissionFlags(*s.export_, s.structured_replies);
  return s;
}

// Splits a read of the request into data and hole runs, as the storage would answer it.
std::vector<ReadRun> RunsOf(uint64_t length, uint64_t handle, bool df) {
  std::vector<ReadRun> runs;
  if (df || length == 0) return {{length, false}};
  uint64_t left = length;
  for (bool hole = handle & 1; left > 0; hole = !hole) {
    // At most about 16 runs: a 32 MiB read in 512-byte runs would only make the target slow.
    const uint64_t n = std::min<uint64_t>(
        left, std::max<uint64_t>(length / 16, 512 + (handle >> 8) % 65536));
    runs.push_back({n, hole});
    left -= n;
  }
  return runs;
}

void CheckRequest(const nbd::RequestHeader& h, const Negotiated& session) {
  const absl::Status status = ValidateRequest(h, session);
  const Command cmd = static_cast<Command>(h.type);
  std::string header;
  if (!status.ok()) {
    const nbd::Error error = ErrorFor(status, cmd);
    if (error == nbd::Error::kOk) abort();
    EncodeErrorReply(h.handle, session.structured_replies, error, status.message(), h.offset,
                     &header);
    return;
  }
  if (cmd != Command::kFlush) {
    if (h.offset > session.export_->size() || h.length > session.export_->size() - h.offset) {
      abort();  // accepted a range outside the export
    }
  }
  if ((cmd == Command::kRead || cmd == Command::kWrite) && h.length > kMaxPayload) abort();
  if (cmd == Command::kWrite && session.export_->read_only) abort();
  if (cmd != Command::kRead) {
    EncodeDoneReply(h.handle, session.structured_replies, &header);
    return;
  }
  std::vector<ReplyPiece> pieces;
  EncodeReadReply(h.handle, h.offset, h.length, session.structured_replies,
                  RunsOf(h.length, h.handle, h.flags & nbd::kCmdFlagDf), &header, &pieces);
  uint64_t data = 0, data_end = 0;
  for (const ReplyPiece& p : pieces) {
    if (p.from_header) {
      if (p.offset + p.length > header.size()) abort();
    } else {
      // In order, not overlapping, inside the request.
      if (p.offset < data_end || p.offset + p.length > h.length) abort();
      data_end = p.offset + p.length;
      data += p.length;
    }
  }
  // Holes are sent as chunks, not bytes: the data pieces are the data runs.
  uint64_t expected = 0;
  for (const ReadRun& r : RunsOf(h.length, h.handle, h.flags & nbd::kCmdFlagDf)) {
    if (!session.structured_replies || !r.hole) expected += r.length;
  }
  if (data != expected) abort();
}

}  // namespace
}  // namespace strata

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace strata;
  if (size == 0) return 0;
  const Negotiated session = SessionFrom(data[0]);
  const char* in = reinterpret_cast<const char*>(data) + 1;
  size_t left = size - 1;
  while (left >= nbd::kRequestHeaderSize) {
    const nbd::RequestHeader h = nbd::RequestHeader::DecodeFrom(in);
    char again[nbd::kRequestHeaderSize];
    h.EncodeTo(again);
    if (std::memcmp(again, in, sizeof(again)) != 0) abort();
    in += nbd::kRequestHeaderSize;
    left -= nbd::kRequestHeaderSize;
    if (h.magic != nbd::kRequestMagic) break;
    const nbd::Command cmd = static_cast<nbd::Command>(h.type);
    if (cmd == nbd::Command::kDisc) break;
    if (cmd == nbd::Command::kWrite && h.length > kMaxPayload) break;
    if (DescribeRequest(h).empty()) abort();
    CheckRequest(h, session);
    if (cmd == nbd::Command::kWrite) {
      const size_t payload = std::min<size_t>(h.length, left);
      in += payload;
      left -= payload;
    }
  }
  return 0;
}
