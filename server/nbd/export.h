// Exports: what a client can name in NBD_OPT_GO / NBD_OPT_EXPORT_NAME / NBD_OPT_LIST.
// The chain being served (the first, default export) plus one read-only export "@NAME" per
// snapshot (server/live_control.h); the table is shared and locked so snapshot exports can be
// added and removed while connections are being negotiated.
#ifndef STRATA_SERVER_NBD_EXPORT_H_
#define STRATA_SERVER_NBD_EXPORT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "blockstore/mutex.h"

namespace strata {

class Storage;  // server/engine/storage.h: serves the bytes; the protocol only carries it along

// Largest READ/WRITE/CACHE payload we accept: 32 MiB is what the spec tells clients to stay
// under for interoperability, and what NBD_INFO_BLOCK_SIZE advertises as the maximum.
inline constexpr uint32_t kMaxPayload = 32u << 20;

// What the protocol knows of an export. NewExport (server/engine/storage.h) fills it from the
// Storage that serves it; the handshake reads only the plain fields.
struct Export {
  std::string name;
  std::string description;
  uint64_t disk_size = 0;
  uint32_t sub_block_size = 4096;  // below it writes are read-modify-write
  bool read_only = false;  // the NBD flag: no writes through this export
  Storage* storage = nullptr;  // outlives every connection using the export
  std::shared_ptr<Storage> owned_storage;  // holds `storage` when the export owns it

  uint64_t size() const { return disk_size; }
  // Preferred block size for NBD_INFO_BLOCK_SIZE: the sub-block, rounded to a power of two.
  uint32_t preferred_block_size() const;
};


// The transmission flags we advertise for `e`: only what is honoured. SEND_DF only when
// structured replies were negotiated (the spec requires that).
uint16_t TransmissionFlags(const Export& e, bool structured_replies);

// What NBD_OPT_LIST and the control socket's `info` show of an export, open or not.
struct ExportInfo {
  std::string name;
  std::string description;
  bool read_only = false;
};

class ExportTable {
 public:
  void Add(std::shared_ptr<const Export> e);
  // An export opened when a client first names it and closed when the last connection using
  // it ends, so a hundred snapshots cost no memory or descriptors until they are read. `open`
  // runs on the negotiating thread, without the table's lock.
  using Opener = std::function<absl::StatusOr<std::shared_ptr<const Export>>()>;
  void AddOnDemand(ExportInfo info, Opener open);
  // Removes the export named exactly `name` (connections already using it keep it). False if
  // there was none.
  bool Remove(absl::string_view name);
  // Whether Find(name) names an export, without opening it; *canonical receives its exact
  // name ("" resolves to the default export's).
  bool Has(absl::string_view name, std::string* canonical = nullptr) const;
  // Exact name; "" names the first (default) export, as NBD_OPT_EXPORT_NAME's "default
  // export" wording allows. Opens an on-demand export. nullptr when unknown, or when it could
  // not be opened (then *error, if given, says why).
  std::shared_ptr<const Export> Find(absl::string_view name, std::string* error = nullptr) const;
  std::vector<ExportInfo> Describe() const;
  // The exports open now: the fixed ones and on-demand ones in use.
  std::vector<std::shared_ptr<const Export>> OpenExports() const;

 private:
  struct Entry {
    ExportInfo info;
    std::shared_ptr<const Export> fixed;  // or:
    Opener open;
    std::weak_ptr<const Export> live;     // the open instance while connections use it
  };
  const Entry* FindEntry(absl::string_view name) const ABSL_SHARED_LOCKS_REQUIRED(mu_);

  mutable Mutex mu_;
  mutable std::vector<Entry> entries_ ABSL_GUARDED_BY(mu_);
};

}  // namespace strata

#endif  // STRATA_SERVER_NBD_EXPORT_H_
