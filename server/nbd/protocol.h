// NBD wire protocol: constants, message layouts and big-endian coding, shared by the handshake,
// the request parser and the reply encoder. Values follow doc/proto.md of NetworkBlockDevice/nbd
// (the "Values" section); names keep the spec's spelling minus the NBD_ prefix, so a grep for the
// spec name finds them. Every enum has one Name() used in all log lines.
//
// Not implemented (see PROTOCOL.md): oldstyle and non-fixed newstyle, STARTTLS, extended headers
// (64-bit lengths; libnbd 1.14 here does not speak them), RESIZE.
#ifndef STRATA_SERVER_NBD_PROTOCOL_H_
#define STRATA_SERVER_NBD_PROTOCOL_H_

#include <cstdint>
#include <cstring>
#include <string>

#include "absl/strings/string_view.h"

namespace strata::nbd {

// --- Magics ---
inline constexpr uint64_t kNbdMagic = 0x4e42444d41474943ull;       // "NBDMAGIC"
inline constexpr uint64_t kIHaveOpt = 0x49484156454F5054ull;       // "IHAVEOPT"
inline constexpr uint64_t kOptReplyMagic = 0x3e889045565a9ull;
inline constexpr uint32_t kRequestMagic = 0x25609513;
inline constexpr uint32_t kSimpleReplyMagic = 0x67446698;
inline constexpr uint32_t kStructuredReplyMagic = 0x668e33ef;

// --- Handshake flags (server, 16 bits) and client flags (32 bits) ---
inline constexpr uint16_t kFlagFixedNewstyle = 1 << 0;
inline constexpr uint16_t kFlagNoZeroes = 1 << 1;
inline constexpr uint32_t kClientFlagFixedNewstyle = 1 << 0;
inline constexpr uint32_t kClientFlagNoZeroes = 1 << 1;

// --- Transmission flags (16 bits) ---
inline constexpr uint16_t kFlagHasFlags = 1 << 0;
inline constexpr uint16_t kFlagReadOnly = 1 << 1;
inline constexpr uint16_t kFlagSendFlush = 1 << 2;
inline constexpr uint16_t kFlagSendFua = 1 << 3;
inline constexpr uint16_t kFlagRotational = 1 << 4;
inline constexpr uint16_t kFlagSendTrim = 1 << 5;
inline constexpr uint16_t kFlagSendWriteZeroes = 1 << 6;
inline constexpr uint16_t kFlagSendDf = 1 << 7;
inline constexpr uint16_t kFlagCanMultiConn = 1 << 8;
inline constexpr uint16_t kFlagSendResize = 1 << 9;
inline constexpr uint16_t kFlagSendCache = 1 << 10;
inline constexpr uint16_t kFlagSendFastZero = 1 << 11;
// "HAS_FLAGS|SEND_FLUSH|..." for logs.
std::string TransmissionFlagsToString(uint16_t flags);

// --- Options ---
enum class Option : uint32_t {
  kExportName = 1,
  kAbort = 2,
  kList = 3,
  kPeekExport = 4,
  kStartTls = 5,
  kInfo = 6,
  kGo = 7,
  kStructuredReply = 8,
  kListMetaContext = 9,
  kSetMetaContext = 10,
  kExtendedHeaders = 11,
};
absl::string_view Name(Option option);  // "NBD_OPT_GO", or "NBD_OPT_<n>" when unknown

enum class OptionReply : uint32_t {
  kAck = 1,
  kServer = 2,
  kInfo = 3,
  kMetaContext = 4,
  kErrUnsup = 0x80000001,
  kErrPolicy = 0x80000002,
  kErrInvalid = 0x80000003,
  kErrPlatform = 0x80000004,
  kErrTlsReqd = 0x80000005,
  kErrUnknown = 0x80000006,
  kErrShutdown = 0x80000007,
  kErrBlockSizeReqd = 0x80000008,
  kErrTooBig = 0x80000009,
};
absl::string_view Name(OptionReply reply);

enum class Info : uint16_t {
  kExport = 0,
  kName = 1,
  kDescription = 2,
  kBlockSize = 3,
};
absl::string_view Name(Info info);

// --- Transmission ---
enum class Command : uint16_t {
  kRead = 0,
  kWrite = 1,
  kDisc = 2,
  kFlush = 3,
  kTrim = 4,
  kCache = 5,
  kWriteZeroes = 6,
  kBlockStatus = 7,
  kResize = 8,
};
absl::string_view Name(Command command);  // "NBD_CMD_READ", or "NBD_CMD_<n>"

inline constexpr uint16_t kCmdFlagFua = 1 << 0;
inline constexpr uint16_t kCmdFlagNoHole = 1 << 1;
inline constexpr uint16_t kCmdFlagDf = 1 << 2;
inline constexpr uint16_t kCmdFlagReqOne = 1 << 3;
inline constexpr uint16_t kCmdFlagFastZero = 1 << 4;
std::string CommandFlagsToString(uint16_t flags);

inline constexpr uint16_t kReplyFlagDone = 1 << 0;

enum class ReplyType : uint16_t {
  kNone = 0,
  kOffsetData = 1,
  kOffsetHole = 2,
  kBlockStatus = 5,
  kError = 0x8001,
  kErrorOffset = 0x8002,
};
absl::string_view Name(ReplyType type);

// Error values allowed on the wire (the spec restricts them to this set).
enum class Error : uint32_t {
  kOk = 0,
  kPerm = 1,
  kIo = 5,
  kNoMem = 12,
  kInval = 22,
  kNoSpc = 28,
  kOverflow = 75,
  kNotSup = 95,
  kShutdown = 108,
};
absl::string_view Name(Error error);  // "EIO"

// base:allocation flags.
inline constexpr uint32_t kStateHole = 1 << 0;
inline constexpr uint32_t kStateZero = 1 << 1;

inline constexpr absl::string_view kContextBaseAllocation = "base:allocation";
// strata's own context: per extent, the depth from the top of the layer that answers it
// (1 = active layer, 2 = its parent, ..., 0 = no layer: reads as zeros). See PROTOCOL.md.
inline constexpr absl::string_view kContextStrataLayer = "strata:layer";

// --- Fixed sizes of messages ---
inline constexpr size_t kGreetingSize = 8 + 8 + 2;          // NBDMAGIC IHAVEOPT flags
inline constexpr size_t kOptionHeaderSize = 8 + 4 + 4;      // IHAVEOPT option length
inline constexpr size_t kOptionReplyHeaderSize = 8 + 4 + 4 + 4;
inline constexpr size_t kRequestHeaderSize = 4 + 2 + 2 + 8 + 8 + 4;   // 28
inline constexpr size_t kSimpleReplySize = 4 + 4 + 8;                 // 16
inline constexpr size_t kStructuredReplyHeaderSize = 4 + 2 + 2 + 8 + 4;  // 20

// --- Big-endian coding: the only byte-order code in server/ ---
inline void Put16(char* p, uint16_t v) {
  v = __builtin_bswap16(v);
  std::memcpy(p, &v, 2);
}
inline void Put32(char* p, uint32_t v) {
  v = __builtin_bswap32(v);
  std::memcpy(p, &v, 4);
}
inline void Put64(char* p, uint64_t v) {
  v = __builtin_bswap64(v);
  std::memcpy(p, &v, 8);
}
inline uint16_t Get16(const char* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return __builtin_bswap16(v);
}
inline uint32_t Get32(const char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return __builtin_bswap32(v);
}
inline uint64_t Get64(const char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return __builtin_bswap64(v);
}
void Append16(std::string* out, uint16_t v);
void Append32(std::string* out, uint32_t v);
void Append64(std::string* out, uint64_t v);

// A transmission-phase request header as it arrives (28 bytes).
struct RequestHeader {
  uint32_t magic = 0;
  uint16_t flags = 0;
  uint16_t type = 0;  // a Command, possibly unknown
  uint64_t handle = 0;
  uint64_t offset = 0;
  uint32_t length = 0;
  // REQUIRES: p points at kRequestHeaderSize bytes.
  static RequestHeader DecodeFrom(const char* p);
  void EncodeTo(char* p) const;  // for tests and clients
};

// Encoders of the fixed-size reply headers. REQUIRES: p has room for the header.
void EncodeSimpleReply(char* p, Error error, uint64_t handle);
void EncodeStructuredHeader(char* p, uint16_t flags, ReplyType type, uint64_t handle,
                            uint32_t payload_length);

}  // namespace strata::nbd

#endif  // STRATA_SERVER_NBD_PROTOCOL_H_
