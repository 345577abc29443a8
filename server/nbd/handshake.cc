#include "server/nbd/handshake.h"

#include <algorithm>
#include <cassert>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_format.h"

namespace strata {

using nbd::Option;
using nbd::OptionReply;

namespace {

// NBD strings "MUST be no longer than 4096 bytes" (spec, Conventions).
constexpr size_t kMaxString = 4096;

// Reads a 32-bit length-prefixed string at *pos; false when it does not fit in `data`.
bool ReadString(absl::string_view data, size_t* pos, absl::string_view* out) {
  if (data.size() - *pos < 4) return false;
  uint32_t len = nbd::Get32(data.data() + *pos);
  *pos += 4;
  if (len > data.size() - *pos) return false;
  *out = data.substr(*pos, len);
  *pos += len;
  return true;
}

// Why a client's export name was refused: unknown, or it failed to open (`error`).
std::string UnknownExport(absl::string_view name, const std::string& error) {
  if (!error.empty()) return error;
  return absl::StrFormat("no export named \"%s\"", absl::CHexEscape(name));
}

}  // namespace

absl::string_view Name(HandshakeState state) {
  switch (state) {
    case HandshakeState::kClientFlags: return "client-flags";
    case HandshakeState::kOptions: return "options";
    case HandshakeState::kStartTls: return "starttls";
    case HandshakeState::kTransmission: return "transmission";
    case HandshakeState::kClosed: return "closed";
  }
  return "?";
}

absl::string_view Name(TlsMode mode) {
  switch (mode) {
    case TlsMode::kOff: return "off";
    case TlsMode::kOn: return "on";
    case TlsMode::kRequire: return "require";
  }
  return "?";
}

void Handshake::TlsStarted() {
  assert(state_ == HandshakeState::kStartTls);
  tls_active_ = true;
  state_ = HandshakeState::kOptions;
}

void Handshake::WriteGreeting(std::string* out) {
  nbd::Append64(out, nbd::kNbdMagic);
  nbd::Append64(out, nbd::kIHaveOpt);
  nbd::Append16(out, nbd::kFlagFixedNewstyle | nbd::kFlagNoZeroes);
}

void Handshake::Close(std::string reason) {
  state_ = HandshakeState::kClosed;
  close_reason_ = std::move(reason);
}

size_t Handshake::Feed(absl::string_view in, std::string* out) {
  size_t used = 0;
  while (state_ < HandshakeState::kStartTls) {
    absl::string_view rest = in.substr(used);
    if (state_ == HandshakeState::kClientFlags) {
      if (rest.size() < 4) break;
      uint32_t flags = nbd::Get32(rest.data());
      used += 4;
      const uint32_t known = nbd::kClientFlagFixedNewstyle | nbd::kClientFlagNoZeroes;
      if (flags & ~known) {
        Close(absl::StrFormat("client flags %#x include unknown bits", flags));
        break;
      }
      // A client without NBD_FLAG_C_FIXED_NEWSTYLE (plain newstyle) can only send
      // NBD_OPT_EXPORT_NAME, which fixed newstyle answers identically; the spec lets servers
      // honour fixed newstyle for such clients, as qemu-nbd and nbdkit do, so we serve them.
      negotiated_.no_zeroes = flags & nbd::kClientFlagNoZeroes;
      state_ = HandshakeState::kOptions;
      continue;
    }
    // kOptions
    if (skip_ > 0) {
      size_t n = std::min<uint64_t>(skip_, rest.size());
      used += n;
      skip_ -= n;
      if (skip_ > 0) break;
      ReplyError(out, skip_option_, OptionReply::kErrTooBig,
                 absl::StrFormat("option data longer than %u bytes", kMaxOptionLength));
      continue;
    }
    if (rest.size() < nbd::kOptionHeaderSize) break;
    uint64_t magic = nbd::Get64(rest.data());
    uint32_t option = nbd::Get32(rest.data() + 8);
    uint32_t length = nbd::Get32(rest.data() + 12);
    if (magic != nbd::kIHaveOpt) {
      Close(absl::StrFormat("bad option magic %#x", magic));
      break;
    }
    const bool oversized = length > kMaxOptionLength;
    // Counted once whole (or once its skipping starts), not each time a piece of it arrives.
    if (!oversized && rest.size() < nbd::kOptionHeaderSize + length) break;
    if (++options_ > kMaxOptions) {
      Close(absl::StrFormat("more than %d options", kMaxOptions));
      break;
    }
    if (oversized) {
      if (length > kMaxSkip || static_cast<Option>(option) == Option::kExportName) {
        Close(absl::StrFormat("%s with %u bytes of data", nbd::Name(static_cast<Option>(option)),
                              length));
        break;
      }
      used += nbd::kOptionHeaderSize;
      skip_ = length;
      skip_option_ = option;
      continue;
    }
    used += nbd::kOptionHeaderSize + length;
    HandleOption(option, rest.substr(nbd::kOptionHeaderSize, length), out);
  }
  return used;
}

void Handshake::Reply(std::string* out, uint32_t option, OptionReply type,
                      absl::string_view data) {
  nbd::Append64(out, nbd::kOptReplyMagic);
  nbd::Append32(out, option);
  nbd::Append32(out, static_cast<uint32_t>(type));
  nbd::Append32(out, static_cast<uint32_t>(data.size()));
  out->append(data.data(), data.size());
  if (trace_) {
    trace_(absl::StrFormat("%s -> %s (%u bytes)", nbd::Name(static_cast<Option>(option)),
                           nbd::Name(type), data.size()));
  }
}

void Handshake::ReplyError(std::string* out, uint32_t option, OptionReply type,
                           absl::string_view message) {
  Reply(out, option, type, message);
}

bool Handshake::RefuseWithoutTls(uint32_t option, std::string* out) {
  if (tls_mode_ != TlsMode::kRequire || tls_active_) return false;
  switch (static_cast<Option>(option)) {
    case Option::kStartTls:
    case Option::kAbort:
      return false;
    case Option::kExportName:
      Close("NBD_OPT_EXPORT_NAME before NBD_OPT_STARTTLS: this server requires TLS");
      return true;
    default:
      ReplyError(out, option, OptionReply::kErrTlsReqd,
                 "this server requires TLS: send NBD_OPT_STARTTLS first");
      return true;
  }
}

void Handshake::HandleStartTls(absl::string_view data, std::string* out) {
  const uint32_t opt = static_cast<uint32_t>(Option::kStartTls);
  if (tls_mode_ == TlsMode::kOff) {
    ReplyError(out, opt, OptionReply::kErrUnsup, "this server is not configured for TLS");
    return;
  }
  if (!data.empty()) {
    ReplyError(out, opt, OptionReply::kErrInvalid, "NBD_OPT_STARTTLS takes no data");
    return;
  }
  if (tls_active_) {
    ReplyError(out, opt, OptionReply::kErrInvalid, "TLS is already negotiated");
    return;
  }
  Reply(out, opt, OptionReply::kAck, "");
  state_ = HandshakeState::kStartTls;
}

void Handshake::HandleOption(uint32_t option, absl::string_view data, std::string* out) {
  if (RefuseWithoutTls(option, out)) return;
  switch (static_cast<Option>(option)) {
    case Option::kExportName:
      HandleExportName(data, out);
      return;

    case Option::kAbort:
      // The spec asks servers to ignore any data here rather than reject it.
      Reply(out, option, OptionReply::kAck, "");
      Close("client sent NBD_OPT_ABORT");
      return;

    case Option::kList: {
      if (!data.empty()) {
        ReplyError(out, option, OptionReply::kErrInvalid, "NBD_OPT_LIST takes no data");
        return;
      }
      for (const ExportInfo& e : exports_->Describe()) {
        std::string payload;
        nbd::Append32(&payload, static_cast<uint32_t>(e.name.size()));
        payload += e.name;
        payload += e.description;
        Reply(out, option, OptionReply::kServer, payload);
      }
      Reply(out, option, OptionReply::kAck, "");
      return;
    }

    case Option::kInfo:
    case Option::kGo:
      HandleInfoOrGo(static_cast<Option>(option), data, out);
      return;

    case Option::kStructuredReply:
      if (!data.empty()) {
        ReplyError(out, option, OptionReply::kErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data");
        return;
      }
      if (negotiated_.structured_replies) {
        ReplyError(out, option, OptionReply::kErrInvalid, "structured replies already negotiated");
        return;
      }
      negotiated_.structured_replies = true;
      Reply(out, option, OptionReply::kAck, "");
      return;

    case Option::kListMetaContext:
    case Option::kSetMetaContext:
      HandleMetaContext(static_cast<Option>(option), data, out);
      return;

    case Option::kStartTls:
      HandleStartTls(data, out);
      return;

    case Option::kExtendedHeaders:  // not implemented: libnbd 1.14 cannot use them (PROTOCOL.md)
    case Option::kPeekExport:
    default:
      ReplyError(out, option, OptionReply::kErrUnsup,
                 absl::StrFormat("%s is not supported by this server",
                                 nbd::Name(static_cast<Option>(option))));
      return;
  }
}

void Handshake::HandleExportName(absl::string_view data, std::string* out) {
  // This option cannot fail politely: an unknown export ends the session (spec).
  if (data.size() > kMaxString) {
    Close("NBD_OPT_EXPORT_NAME: export name longer than 4096 bytes");
    return;
  }
  std::string error;
  std::shared_ptr<const Export> e = exports_->Find(data, &error);
  if (e == nullptr) {
    Close(absl::StrFormat("NBD_OPT_EXPORT_NAME: %s", UnknownExport(data, error)));
    return;
  }
  negotiated_.export_ = e;
  negotiated_.transmission_flags = TransmissionFlags(*e, negotiated_.structured_replies);
  if (meta_export_ != e->name) meta_base_ = meta_strata_ = false;
  negotiated_.base_allocation = meta_base_;
  negotiated_.strata_layer = meta_strata_;
  nbd::Append64(out, e->size());
  nbd::Append16(out, negotiated_.transmission_flags);
  if (!negotiated_.no_zeroes) out->append(124, '\0');
  if (trace_) trace_(absl::StrFormat("NBD_OPT_EXPORT_NAME \"%s\" -> transmission", e->name));
  state_ = HandshakeState::kTransmission;
}

void Handshake::HandleInfoOrGo(Option option, absl::string_view data, std::string* out) {
  const uint32_t opt = static_cast<uint32_t>(option);
  // Data: u32 name length, name, u16 number of info requests, u16 each.
  size_t pos = 0;
  absl::string_view name;
  if (!ReadString(data, &pos, &name) || data.size() - pos < 2) {
    ReplyError(out, opt, OptionReply::kErrInvalid, "truncated export name or request count");
    return;
  }
  uint16_t count = nbd::Get16(data.data() + pos);
  pos += 2;
  if (data.size() - pos != size_t{count} * 2) {
    ReplyError(out, opt, OptionReply::kErrInvalid,
               absl::StrFormat("%u information requests need %u bytes, option has %u", count,
                               count * 2, data.size() - pos));
    return;
  }
  if (name.size() > kMaxString) {
    ReplyError(out, opt, OptionReply::kErrInvalid, "export name longer than 4096 bytes");
    return;
  }
  bool want_name = false;
  bool want_description = false;
  for (uint16_t i = 0; i < count; ++i) {
    switch (static_cast<nbd::Info>(nbd::Get16(data.data() + pos + 2 * i))) {
      case nbd::Info::kName: want_name = true; break;
      case nbd::Info::kDescription: want_description = true; break;
      default: break;  // NBD_INFO_EXPORT and NBD_INFO_BLOCK_SIZE are always sent; others ignored
    }
  }
  std::string error;
  std::shared_ptr<const Export> e = exports_->Find(name, &error);
  if (e == nullptr) {
    ReplyError(out, opt, OptionReply::kErrUnknown, UnknownExport(name, error));
    return;
  }
  const uint16_t flags = TransmissionFlags(*e, negotiated_.structured_replies);
  std::string info;
  nbd::Append16(&info, static_cast<uint16_t>(nbd::Info::kExport));
  nbd::Append64(&info, e->size());
  nbd::Append16(&info, flags);
  Reply(out, opt, OptionReply::kInfo, info);

  // Minimum 1: any alignment is served (unaligned writes become read-modify-write of a
  // sub-block). Sent even when not requested; clients ignore what they did not ask for.
  info.clear();
  nbd::Append16(&info, static_cast<uint16_t>(nbd::Info::kBlockSize));
  nbd::Append32(&info, 1);
  nbd::Append32(&info, e->preferred_block_size());
  nbd::Append32(&info, kMaxPayload);
  Reply(out, opt, OptionReply::kInfo, info);

  if (want_name) {
    info.clear();
    nbd::Append16(&info, static_cast<uint16_t>(nbd::Info::kName));
    info += e->name;
    Reply(out, opt, OptionReply::kInfo, info);
  }
  if (want_description && !e->description.empty()) {
    info.clear();
    nbd::Append16(&info, static_cast<uint16_t>(nbd::Info::kDescription));
    info += e->description.substr(0, kMaxString);
    Reply(out, opt, OptionReply::kInfo, info);
  }
  Reply(out, opt, OptionReply::kAck, "");
  if (option == Option::kGo) {
    negotiated_.export_ = e;
    negotiated_.transmission_flags = flags;
    if (meta_export_ != e->name) meta_base_ = meta_strata_ = false;
    negotiated_.base_allocation = meta_base_;
    negotiated_.strata_layer = meta_strata_;
    state_ = HandshakeState::kTransmission;
  }
}

void Handshake::HandleMetaContext(Option option, absl::string_view data, std::string* out) {
  const uint32_t opt = static_cast<uint32_t>(option);
  const bool set = option == Option::kSetMetaContext;
  // SET replaces the previous selection even when it fails (spec).
  if (set) {
    meta_base_ = meta_strata_ = false;
    meta_export_.clear();
  }
  if (!negotiated_.structured_replies) {
    ReplyError(out, opt, OptionReply::kErrInvalid,
               "metadata contexts need NBD_OPT_STRUCTURED_REPLY first");
    return;
  }
  // Data: u32 name length, name, u32 number of queries, then u32 length + query each.
  size_t pos = 0;
  absl::string_view name;
  if (!ReadString(data, &pos, &name) || data.size() - pos < 4) {
    ReplyError(out, opt, OptionReply::kErrInvalid, "truncated export name or query count");
    return;
  }
  uint32_t count = nbd::Get32(data.data() + pos);
  pos += 4;
  std::vector<absl::string_view> queries;
  for (uint32_t i = 0; i < count; ++i) {
    absl::string_view q;
    if (!ReadString(data, &pos, &q)) {
      ReplyError(out, opt, OptionReply::kErrInvalid,
                 absl::StrFormat("query %u of %u runs past the option data", i + 1, count));
      return;
    }
    if (q.size() > kMaxString || q.find(':') == absl::string_view::npos) {
      ReplyError(out, opt, OptionReply::kErrInvalid,
                 absl::StrFormat("query \"%s\" is not namespace:leaf", absl::CHexEscape(q)));
      return;
    }
    queries.push_back(q);
  }
  if (pos != data.size()) {
    ReplyError(out, opt, OptionReply::kErrInvalid, "trailing bytes after the queries");
    return;
  }
  // Contexts depend only on the export's name: an on-demand export is not opened for them.
  std::string export_name;
  if (!exports_->Has(name, &export_name)) {
    ReplyError(out, opt, OptionReply::kErrUnknown, UnknownExport(name, ""));
    return;
  }
  bool base = false;
  bool strata = false;
  if (!set && queries.empty()) base = strata = true;  // LIST with no query lists everything
  for (absl::string_view q : queries) {
    if (q == nbd::kContextBaseAllocation) base = true;
    if (q == nbd::kContextStrataLayer) strata = true;
    // Empty leaf-names are wildcards for LIST only; SET must ignore them (spec).
    if (!set && q == "base:") base = true;
    if (!set && q == "strata:") strata = true;
    // Anything else (unknown namespaces or leaves) is ignored, as the spec requires.
  }
  auto context = [&](uint32_t id, absl::string_view ctx_name) {
    std::string payload;
    nbd::Append32(&payload, set ? id : 0);  // LIST ids are reserved: send 0
    payload.append(ctx_name.data(), ctx_name.size());
    Reply(out, opt, OptionReply::kMetaContext, payload);
  };
  if (base) context(kContextIdBaseAllocation, nbd::kContextBaseAllocation);
  if (strata) context(kContextIdStrataLayer, nbd::kContextStrataLayer);
  Reply(out, opt, OptionReply::kAck, "");
  if (set) {
    meta_base_ = base;
    meta_strata_ = strata;
    meta_export_ = export_name;
  }
}

}  // namespace strata
