// Design note. The ranges are cut into pieces of at most kPieceBytes. Through NBD, up to
// kInFlight reads are on the wire at once (libnbd's aio calls on one connection; the server's
// multi-conn is not needed to hide one round trip per piece); each completed piece is written
// to the copy before its buffer takes the next piece, so memory stays kInFlight pieces. The
// chain reader reads synchronously: a local file needs no pipelining to keep up with a disk.
// What a piece is about to become in the copy is decided by its bytes (all zeros: a hole), not
// by block status, so both readers and both kinds of backup share one sink.
#include "cli/backup_copy.h"

#include <libnbd.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "blockstore/chain.h"
#include "blockstore/file.h"
#include "cli/progress.h"
#include "cli/serve_command.h"

namespace strata::cli {
namespace {

constexpr uint64_t kPieceBytes = 1 << 20;
constexpr int kInFlight = 16;
// The server answers BLOCK_STATUS for at most 1 GiB from the offset (PROTOCOL.md).
constexpr uint64_t kBlockStatusBytes = 1ull << 30;

// `ranges` cut into pieces of at most kPieceBytes, in order.
std::vector<Range> Pieces(const std::vector<Range>& ranges) {
  std::vector<Range> pieces;
  for (const auto& [offset, length] : ranges) {
    for (uint64_t off = offset; off < offset + length; off += kPieceBytes) {
      pieces.emplace_back(off, std::min(kPieceBytes, offset + length - off));
    }
  }
  return pieces;
}

// Appends [offset, offset + length) to `ranges`, merged with the last one when they touch.
void AppendRange(std::vector<Range>* ranges, uint64_t offset, uint64_t length) {
  if (!ranges->empty() && ranges->back().first + ranges->back().second == offset) {
    ranges->back().second += length;
  } else {
    ranges->emplace_back(offset, length);
  }
}

class NbdReader : public SnapshotReader {
 public:
  NbdReader(nbd_handle* h, std::string uri, uint64_t size)
      : h_(h), uri_(std::move(uri)), size_(size) {}
  ~NbdReader() override {
    nbd_shutdown(h_, 0);
    nbd_close(h_);
  }
  uint64_t size() const override { return size_; }
  const std::string& source() const override { return uri_; }
  absl::StatusOr<std::vector<Range>> DataRanges() override;
  absl::Status Read(const std::vector<Range>& ranges, const PieceSink& sink) override;

 private:
  absl::Status Error(absl::string_view what, uint64_t offset) const {
    return absl::UnavailableError(absl::StrCat(what, " ", uri_, " @ ", offset, ": ",
                                               nbd_get_error() ? nbd_get_error() : "failed"));
  }

  nbd_handle* const h_;
  const std::string uri_;
  const uint64_t size_;
};

// What one block status call gathers: base:allocation runs that do not read as zeros.
struct ExtentsSeen {
  uint64_t end;  // where the last extent reported ended
  std::vector<Range>* data;
};

int OnExtents(void* user_data, const char* context, uint64_t offset, uint32_t* entries,
              size_t n, int* /*error*/) {
  if (std::strcmp(context, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0) return 0;
  auto* seen = static_cast<ExtentsSeen*>(user_data);
  uint64_t pos = offset;
  for (size_t i = 0; i + 1 < n; i += 2) {
    if (!(entries[i + 1] & LIBNBD_STATE_ZERO)) AppendRange(seen->data, pos, entries[i]);
    pos += entries[i];
  }
  seen->end = pos;
  return 0;
}

absl::StatusOr<std::vector<Range>> NbdReader::DataRanges() {
  std::vector<Range> data;
  for (uint64_t off = 0; off < size_;) {
    ExtentsSeen seen{off, &data};
    if (nbd_block_status(h_, std::min(size_ - off, kBlockStatusBytes), off,
                         {.callback = OnExtents, .user_data = &seen, .free = nullptr},
                         0) < 0) {
      return Error("block status of", off);
    }
    if (seen.end <= off) return Error("block status made no progress on", off);
    off = seen.end;
  }
  // The last extent may reach past the end: the server's extents are whole sub-blocks.
  while (!data.empty() && data.back().first >= size_) data.pop_back();
  if (!data.empty()) {
    data.back().second = std::min(data.back().second, size_ - data.back().first);
  }
  return data;
}

// One read on the wire: its piece and buffer. The completion callback only marks it done;
// Read() writes it out after nbd_poll returns, outside libnbd's callback.
struct PendingRead {
  std::unique_ptr<char[]> buf{new char[kPieceBytes]};
  Range piece;
  bool busy = false;
  bool done = false;
  int error = 0;
};

int OnReadDone(void* user_data, int* error) {
  auto* r = static_cast<PendingRead*>(user_data);
  r->error = *error;
  r->done = true;
  return 1;  // retires the command: no nbd_aio_command_completed needed
}

absl::Status NbdReader::Read(const std::vector<Range>& ranges, const PieceSink& sink) {
  const std::vector<Range> pieces = Pieces(ranges);
  std::vector<PendingRead> reads(kInFlight);
  size_t next = 0;
  int in_flight = 0;
  absl::Status status;
  // After an error no new read starts, but those on the wire are waited for: their buffers
  // must outlive them.
  while (in_flight > 0 || (status.ok() && next < pieces.size())) {
    for (PendingRead& r : reads) {
      if (r.busy || !status.ok() || next == pieces.size()) continue;
      r.piece = pieces[next++];
      r.busy = true;
      r.done = false;
      if (nbd_aio_pread(h_, r.buf.get(), r.piece.second, r.piece.first,
                        {.callback = OnReadDone, .user_data = &r, .free = nullptr}, 0) < 0) {
        r.busy = false;
        status = Error("read", r.piece.first);
        continue;
      }
      ++in_flight;
    }
    if (nbd_aio_in_flight(h_) > 0 && nbd_poll(h_, -1) < 0) {
      return Error("waiting for reads from", next < pieces.size() ? pieces[next].first : 0);
    }
    for (PendingRead& r : reads) {
      if (!r.busy || !r.done) continue;
      r.busy = false;
      --in_flight;
      if (!status.ok()) continue;
      if (r.error != 0) {
        status = StatusFromErrno(r.error, absl::StrCat("read ", uri_, " @ ", r.piece.first,
                                                       " length ", r.piece.second));
        continue;
      }
      status = sink(r.piece.first, absl::MakeConstSpan(r.buf.get(), r.piece.second));
    }
  }
  return status;
}

class ChainReader : public SnapshotReader {
 public:
  ChainReader(std::unique_ptr<Chain> chain, std::string path)
      : chain_(std::move(chain)), path_(std::move(path)) {}
  uint64_t size() const override { return chain_->size(); }
  const std::string& source() const override { return path_; }

  absl::StatusOr<std::vector<Range>> DataRanges() override {
    std::vector<Extent> extents;
    if (auto s = chain_->Extents(0, chain_->size(), &extents); !s.ok()) return s;
    std::vector<Range> data;
    for (const Extent& e : extents) {
      if (e.data) AppendRange(&data, e.offset, e.length);
    }
    return data;
  }

  absl::Status Read(const std::vector<Range>& ranges, const PieceSink& sink) override {
    std::vector<char> buf(kPieceBytes);
    for (const auto& [offset, length] : Pieces(ranges)) {
      auto piece = absl::MakeSpan(buf.data(), length);
      if (auto s = chain_->Read(offset, piece); !s.ok()) return s;
      if (auto s = sink(offset, piece); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

 private:
  std::unique_ptr<Chain> chain_;
  const std::string path_;
};

bool AllZero(absl::Span<const char> data) {
  return std::all_of(data.begin(), data.end(), [](char c) { return c == 0; });
}

}  // namespace

// Asks libnbd for TLS (required: a server that offers none is refused). 0 or -1 as libnbd.
int SetTls(nbd_handle* h, const NbdTls& tls) {
  if (!tls.on()) return 0;
  if (nbd_set_tls(h, LIBNBD_TLS_REQUIRE) < 0) return -1;
  if (!tls.certs.empty() && nbd_set_tls_certificates(h, tls.certs.c_str()) < 0) return -1;
  if (!tls.psk_file.empty() && nbd_set_tls_psk_file(h, tls.psk_file.c_str()) < 0) return -1;
  if (!tls.username.empty() && nbd_set_tls_username(h, tls.username.c_str()) < 0) return -1;
  return 0;
}

absl::StatusOr<std::unique_ptr<SnapshotReader>> OpenNbdReader(const std::string& socket,
                                                              const std::string& export_name,
                                                              const NbdTls& tls) {
  const std::string uri = UnixUri(socket, export_name, tls.on());
  struct stat st;
  if (stat(socket.c_str(), &st) != 0 || !S_ISSOCK(st.st_mode)) {
    return absl::UnavailableError(absl::StrCat("no server socket ", socket));
  }
  nbd_handle* h = nbd_create();
  if (h == nullptr) return absl::InternalError(absl::StrCat("libnbd: ", nbd_get_error()));
  if (nbd_set_export_name(h, export_name.c_str()) < 0 || SetTls(h, tls) < 0 ||
      nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) < 0 ||
      nbd_connect_unix(h, socket.c_str()) < 0) {
    const bool nobody = nbd_get_errno() == ECONNREFUSED;  // a socket file left by a dead server
    const std::string why = absl::StrCat("cannot read ", uri, ": ", nbd_get_error());
    nbd_close(h);
    return nobody ? absl::UnavailableError(why) : absl::FailedPreconditionError(why);
  }
  const int64_t size = nbd_get_size(h);
  if (size < 0 || nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) != 1) {
    const std::string why =
        absl::StrCat(uri, ": no size or no base:allocation block status: ", nbd_get_error());
    nbd_close(h);
    return absl::FailedPreconditionError(why);
  }
  return std::make_unique<NbdReader>(h, uri, static_cast<uint64_t>(size));
}

absl::StatusOr<std::unique_ptr<SnapshotReader>> OpenChainReader(
    const std::string& snapshot_path, const std::vector<std::string>& allowed_parent_dirs) {
  auto chain = Chain::Open(snapshot_path,
                           {.writable = false, .allowed_parent_dirs = allowed_parent_dirs});
  if (!chain.ok()) return chain.status();
  return std::make_unique<ChainReader>(*std::move(chain), snapshot_path);
}

absl::StatusOr<CopyStats> CopyRanges(SnapshotReader& reader, const std::vector<Range>& ranges,
                                     File* out, const CopyOptions& options) {
  CopyStats stats{.ranges = ranges.size()};
  uint64_t total = 0;
  for (const auto& range : ranges) total += range.second;
  ProgressBar bar("backup");
  const auto started = std::chrono::steady_clock::now();
  absl::Status s = reader.Read(ranges, [&](uint64_t offset, absl::Span<const char> data) {
    absl::Status written;
    if (AllZero(data)) {
      stats.zero_bytes += data.size();
      if (!options.out_is_empty) written = out->PunchHole(offset, data.size());
    } else {
      written = out->Write(offset, absl::string_view(data.data(), data.size()));
    }
    stats.bytes += data.size();
    bar.Update(stats.bytes, total);
    if (options.rate_limit > 0) {
      std::this_thread::sleep_until(started + std::chrono::duration<double>(
                                                  static_cast<double>(stats.bytes) /
                                                  static_cast<double>(options.rate_limit)));
    }
    return written;
  });
  bar.Finish();
  if (!s.ok()) return s;
  if (auto synced = out->Sync(); !synced.ok()) return synced;
  return stats;
}

}  // namespace strata::cli
