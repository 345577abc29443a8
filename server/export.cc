#include "server/export.h"

#include <algorithm>

#include "server/nbd_protocol.h"

namespace strata {

uint32_t Export::preferred_block_size() const {
  uint32_t sub = storage->sub_block_size();
  // Must be a power of two >= 512 (spec, "Block size constraints").
  uint32_t p = 512;
  while (p < sub && p < (1u << 20)) p <<= 1;
  return std::max<uint32_t>(p, 4096);
}

uint16_t TransmissionFlags(const Export& e, bool structured_replies) {
  uint16_t flags = nbd::kFlagHasFlags | nbd::kFlagSendFlush | nbd::kFlagSendCache |
                   nbd::kFlagCanMultiConn;
  if (e.read_only) {
    flags |= nbd::kFlagReadOnly;
  } else {
    // FUA is honoured by a chain-wide Flush after the command; zeroing and trimming are
    // metadata operations of the chain, so FAST_ZERO can be promised (PROTOCOL.md).
    flags |= nbd::kFlagSendFua | nbd::kFlagSendTrim | nbd::kFlagSendWriteZeroes |
             nbd::kFlagSendFastZero;
  }
  if (structured_replies) flags |= nbd::kFlagSendDf;
  return flags;
}

void ExportTable::Add(std::shared_ptr<const Export> e) {
  absl::MutexLock lock(&mu_);
  exports_.push_back(std::move(e));
}

bool ExportTable::Remove(absl::string_view name) {
  absl::MutexLock lock(&mu_);
  return std::erase_if(exports_, [name](const auto& e) { return e->name == name; }) > 0;
}

std::shared_ptr<const Export> ExportTable::Find(absl::string_view name) const {
  absl::MutexLock lock(&mu_);
  for (const auto& e : exports_) {
    if (e->name == name) return e;
  }
  if (name.empty() && !exports_.empty()) return exports_.front();
  return nullptr;
}

std::vector<std::shared_ptr<const Export>> ExportTable::List() const {
  absl::MutexLock lock(&mu_);
  return exports_;
}

}  // namespace strata
