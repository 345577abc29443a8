// Exports: what a client can name in NBD_OPT_GO / NBD_OPT_EXPORT_NAME / NBD_OPT_LIST.
// The chain being served (the first, default export) plus one read-only export "@NAME" per
// snapshot (server/live_control.h); the table is shared and locked so snapshot exports can be
// added and removed while connections are being negotiated.
#ifndef STRATA_SERVER_EXPORT_H_
#define STRATA_SERVER_EXPORT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "server/storage.h"

namespace strata {

// Largest READ/WRITE/CACHE payload we accept: 32 MiB is what the spec tells clients to stay
// under for interoperability, and what NBD_INFO_BLOCK_SIZE advertises as the maximum.
inline constexpr uint32_t kMaxPayload = 32u << 20;

struct Export {
  std::string name;
  std::string description;
  Storage* storage = nullptr;  // not owned; outlives every connection using the export
  bool read_only = false;

  uint64_t size() const { return storage->size(); }
  // Preferred block size for NBD_INFO_BLOCK_SIZE: the sub-block, below which writes are
  // read-modify-write.
  uint32_t preferred_block_size() const;
};

// The transmission flags we advertise for `e`: only what is honoured. SEND_DF only when
// structured replies were negotiated (the spec requires that).
uint16_t TransmissionFlags(const Export& e, bool structured_replies);

class ExportTable {
 public:
  void Add(std::shared_ptr<const Export> e);
  // Removes the export named exactly `name` (connections already using it keep it). False if
  // there was none.
  bool Remove(absl::string_view name);
  // Exact name; "" names the first (default) export, as NBD_OPT_EXPORT_NAME's "default
  // export" wording allows. nullptr when unknown.
  std::shared_ptr<const Export> Find(absl::string_view name) const;
  std::vector<std::shared_ptr<const Export>> List() const;

 private:
  mutable absl::Mutex mu_;
  std::vector<std::shared_ptr<const Export>> exports_ ABSL_GUARDED_BY(mu_);
};

}  // namespace strata

#endif  // STRATA_SERVER_EXPORT_H_
