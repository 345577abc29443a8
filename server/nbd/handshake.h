// Handshake: the fixed-newstyle option negotiation as a pure state machine. Bytes in, bytes out,
// no sockets: the connection feeds whatever it received and sends whatever comes out, so every
// option can be unit-tested byte by byte.
//
// States, in lifecycle order (a check can read `state() < kTransmission`):
//   kClientFlags  -> waiting for the client's 32-bit flags after our greeting
//   kOptions      -> option haggling; each option is one `case` that checks its length,
//                    replies, and continues
//   kStartTls     -> NBD_OPT_STARTTLS acknowledged: the ack is the last plaintext byte. The
//                    caller switches the connection to TLS and calls TlsStarted() (back to
//                    kOptions, now over TLS); Feed consumes nothing meanwhile
//   kTransmission -> NBD_OPT_GO acknowledged or NBD_OPT_EXPORT_NAME answered; negotiated() is final
//   kClosed       -> NBD_OPT_ABORT, or a violation that ends the session (close_reason() says which)
#ifndef STRATA_SERVER_NBD_HANDSHAKE_H_
#define STRATA_SERVER_NBD_HANDSHAKE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/strings/string_view.h"
#include "server/nbd/export.h"
#include "server/nbd/protocol.h"

namespace strata {

enum class HandshakeState { kClientFlags, kOptions, kStartTls, kTransmission, kClosed };
absl::string_view Name(HandshakeState state);

// The server's TLS policy, in the spec's terms ("TLS support"): kOff is NOTLS (STARTTLS gets
// NBD_REP_ERR_UNSUP); kOn offers STARTTLS and serves plain clients too (SELECTIVETLS with no
// TLS-only export); kRequire is FORCEDTLS: before STARTTLS every option but NBD_OPT_ABORT gets
// NBD_REP_ERR_TLS_REQD, and NBD_OPT_EXPORT_NAME, which cannot fail politely, ends the session.
enum class TlsMode { kOff, kOn, kRequire };
absl::string_view Name(TlsMode mode);

// Metadata context ids we hand out in NBD_REP_META_CONTEXT (any unique values will do).
inline constexpr uint32_t kContextIdBaseAllocation = 1;
inline constexpr uint32_t kContextIdStrataLayer = 2;

struct Negotiated {
  std::shared_ptr<const Export> export_;
  bool structured_replies = false;
  bool no_zeroes = false;
  bool base_allocation = false;  // context kContextIdBaseAllocation selected
  bool strata_layer = false;     // context kContextIdStrataLayer selected
  uint16_t transmission_flags = 0;
};

class Handshake {
 public:
  // A real client sends well under 30 options (libnbd's nbdinfo --list --content about 10 per
  // export); the bound keeps a client from holding a worker in negotiation forever.
  static constexpr int kMaxOptions = 128;
  // Option payloads larger than this are skipped and refused with NBD_REP_ERR_TOO_BIG; larger
  // than kMaxSkip, the session ends (a denial of service, as the spec allows).
  static constexpr uint32_t kMaxOptionLength = 64 << 10;
  static constexpr uint64_t kMaxSkip = 16 << 20;

  explicit Handshake(const ExportTable* exports, TlsMode tls = TlsMode::kOff)
      : exports_(exports), tls_mode_(tls) {}

  // The server's opening: NBDMAGIC, IHAVEOPT, handshake flags.
  static void WriteGreeting(std::string* out);

  // Consumes complete messages from the front of `in` and appends replies to *out. Returns
  // the number of bytes consumed; the caller keeps the rest and feeds it again with more.
  // Stops consuming once the state is kTransmission or kClosed.
  size_t Feed(absl::string_view in, std::string* out);

  HandshakeState state() const { return state_; }
  // REQUIRES: state() == kStartTls and the TLS handshake succeeded.
  void TlsStarted();
  bool tls_active() const { return tls_active_; }
  const Negotiated& negotiated() const { return negotiated_; }
  const std::string& close_reason() const { return close_reason_; }
  // Optional: called with one line per option and reply, for debug logs.
  void set_trace(std::function<void(const std::string&)> trace) { trace_ = std::move(trace); }

 private:
  void HandleOption(uint32_t option, absl::string_view data, std::string* out);
  // FORCEDTLS before STARTTLS: refuses the option (true) or lets it through.
  bool RefuseWithoutTls(uint32_t option, std::string* out);
  void HandleStartTls(absl::string_view data, std::string* out);
  void HandleExportName(absl::string_view data, std::string* out);
  void HandleInfoOrGo(nbd::Option option, absl::string_view data, std::string* out);
  void HandleMetaContext(nbd::Option option, absl::string_view data, std::string* out);
  void Reply(std::string* out, uint32_t option, nbd::OptionReply type, absl::string_view data);
  void ReplyError(std::string* out, uint32_t option, nbd::OptionReply type,
                  absl::string_view message);
  void Close(std::string reason);

  const ExportTable* exports_;
  const TlsMode tls_mode_;
  bool tls_active_ = false;
  HandshakeState state_ = HandshakeState::kClientFlags;
  Negotiated negotiated_;
  // Contexts chosen by the last NBD_OPT_SET_META_CONTEXT and the export it named: they apply
  // only if the client then goes to the same export.
  bool meta_base_ = false;
  bool meta_strata_ = false;
  std::string meta_export_;
  int options_ = 0;
  uint64_t skip_ = 0;          // bytes of an oversized option still to discard
  uint32_t skip_option_ = 0;   // its option number, for the reply once skipped
  std::string close_reason_;
  std::function<void(const std::string&)> trace_;
};

}  // namespace strata

#endif  // STRATA_SERVER_NBD_HANDSHAKE_H_
