#include "server/nbd/export.h"

#include <algorithm>

#include "server/nbd/protocol.h"

namespace strata {

uint32_t Export::preferred_block_size() const {
  uint32_t sub = sub_block_size;
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
  MutexLock lock(&mu_);
  ExportInfo info{e->name, e->description, e->read_only};
  entries_.push_back(Entry{std::move(info), std::move(e), nullptr, {}});
}

void ExportTable::AddOnDemand(ExportInfo info, Opener open) {
  MutexLock lock(&mu_);
  entries_.push_back(Entry{std::move(info), nullptr, std::move(open), {}});
}

bool ExportTable::Remove(absl::string_view name) {
  MutexLock lock(&mu_);
  return std::erase_if(entries_, [name](const Entry& e) { return e.info.name == name; }) > 0;
}

const ExportTable::Entry* ExportTable::FindEntry(absl::string_view name) const {
  for (const Entry& e : entries_) {
    if (e.info.name == name) return &e;
  }
  if (name.empty() && !entries_.empty()) return &entries_.front();
  return nullptr;
}

bool ExportTable::Has(absl::string_view name, std::string* canonical) const {
  ReaderMutexLock lock(&mu_);
  const Entry* entry = FindEntry(name);
  if (entry != nullptr && canonical != nullptr) *canonical = entry->info.name;
  return entry != nullptr;
}

std::shared_ptr<const Export> ExportTable::Find(absl::string_view name, std::string* error) const {
  Opener open;
  {
    ReaderMutexLock lock(&mu_);
    const Entry* entry = FindEntry(name);
    if (entry == nullptr) return nullptr;
    if (entry->fixed) return entry->fixed;
    if (auto live = entry->live.lock()) return live;
    open = entry->open;
  }
  // Opening reads every layer of a chain: not under the lock other negotiations need.
  absl::StatusOr<std::shared_ptr<const Export>> opened = open();
  if (!opened.ok()) {
    if (error != nullptr) *error = std::string(opened.status().message());
    return nullptr;
  }
  MutexLock lock(&mu_);
  for (Entry& e : entries_) {
    if (e.info.name != (*opened)->name) continue;
    // Another connection may have opened it meanwhile: everyone shares one instance.
    if (auto live = e.live.lock()) return live;
    e.live = *opened;
    return *opened;
  }
  if (error != nullptr) *error = "the export was removed while it was being opened";
  return nullptr;
}

std::vector<ExportInfo> ExportTable::Describe() const {
  ReaderMutexLock lock(&mu_);
  std::vector<ExportInfo> out;
  for (const Entry& e : entries_) out.push_back(e.info);
  return out;
}

std::vector<std::shared_ptr<const Export>> ExportTable::OpenExports() const {
  ReaderMutexLock lock(&mu_);
  std::vector<std::shared_ptr<const Export>> out;
  for (const Entry& e : entries_) {
    if (e.fixed) {
      out.push_back(e.fixed);
    } else if (auto live = e.live.lock()) {
      out.push_back(std::move(live));
    }
  }
  return out;
}

}  // namespace strata
