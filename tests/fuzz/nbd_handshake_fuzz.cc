// Fuzzes the NBD option negotiation (server/nbd/handshake.h) as a connection drives it: the
// input after its first byte is what a client sends after our greeting. Invariants: the
// handshake never consumes more than it was given, it reaches the same state with the same
// replies however the bytes are split into reads (the first byte picks the split), and a
// session that reaches transmission has an export whose flags match what was negotiated.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "absl/strings/string_view.h"
#include "server/nbd/export.h"
#include "server/nbd/handshake.h"

namespace strata {
namespace {

const ExportTable& Exports() {
  static const ExportTable* table = [] {
    auto* t = new ExportTable;
    auto disk = std::make_shared<Export>();
    disk->name = "disk";
    disk->description = "the disk";
    disk->disk_size = 1 << 30;
    t->Add(disk);
    auto snap = std::make_shared<Export>();
    snap->name = "@snap";
    snap->disk_size = 1 << 20;
    snap->read_only = true;
    t->Add(snap);
    // A snapshot export that cannot be opened: the error path of on-demand exports.
    t->AddOnDemand({.name = "@gone", .read_only = true},
                   [] { return absl::NotFoundError("@gone.strata: no such file"); });
    return t;
  }();
  return *table;
}

struct Outcome {
  std::string out;
  HandshakeState state;
  std::string close_reason;
};

// Feeds `in` `piece` bytes at a time, as reads of that size would deliver it.
Outcome Run(absl::string_view in, size_t piece) {
  Handshake hs(&Exports());
  Outcome o;
  std::string pending;
  for (size_t pos = 0; pos < in.size() && hs.state() < HandshakeState::kTransmission;) {
    const size_t n = std::min(piece, in.size() - pos);
    pending.append(in.data() + pos, n);
    pos += n;
    const size_t used = hs.Feed(pending, &o.out);
    if (used > pending.size()) abort();
    pending.erase(0, used);
  }
  o.state = hs.state();
  o.close_reason = hs.close_reason();
  if (o.state == HandshakeState::kTransmission) {
    const Negotiated& n = hs.negotiated();
    if (n.export_ == nullptr) abort();
    if (n.transmission_flags != TransmissionFlags(*n.export_, n.structured_replies)) abort();
  }
  return o;
}

}  // namespace
}  // namespace strata

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t piece = 1 + data[0] % 64;
  const absl::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);
  const strata::Outcome whole = strata::Run(in, in.size() + 1);
  const strata::Outcome split = strata::Run(in, piece);
  if (whole.out != split.out || whole.state != split.state ||
      whole.close_reason != split.close_reason) {
    // The outcome depends on how the client's bytes were split into reads.
    fprintf(stderr, "whole: state %s, \"%s\", %zu reply bytes\n", strata::Name(whole.state).data(),
            whole.close_reason.c_str(), whole.out.size());
    fprintf(stderr, "in %zu-byte reads: state %s, \"%s\", %zu reply bytes\n", piece,
            strata::Name(split.state).data(), split.close_reason.c_str(), split.out.size());
    abort();
  }
  return 0;
}
