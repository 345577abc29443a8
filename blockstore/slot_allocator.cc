#include "blockstore/slot_allocator.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace strata {
namespace {

// A new extent is an eighth of the file, at least 16 MiB and at most 1 GiB: big enough that a
// sequentially written layer stays in few host extents, small enough that a nearly full
// volume still gets the last of its space one cluster at a time (AllocateExtent falls back).
constexpr uint64_t kMinExtentBytes = 16ull << 20;
constexpr uint64_t kMaxExtentBytes = 1ull << 30;

// Slot numbers are 32 bits (format.h).
constexpr uint64_t kMaxSlots = uint64_t{1} << 32;

}  // namespace

void SlotAllocator::Reset(File* file, uint32_t cluster_size, uint64_t high_water,
                          uint64_t end_slot, std::vector<uint32_t> free_slots) {
  file_ = file;
  cluster_size_ = cluster_size;
  high_water_ = high_water;
  end_slot_ = end_slot;
  free_ = std::move(free_slots);
  ready_free_.clear();
  pending_free_.clear();
  quarantined_.clear();
}

std::optional<uint32_t> SlotAllocator::Take() {
  if (!ready_free_.empty()) {
    uint32_t slot = ready_free_.back();
    ready_free_.pop_back();
    return slot;
  }
  if (high_water_ < end_slot_) return static_cast<uint32_t>(high_water_++);
  return std::nullopt;
}

uint64_t SlotAllocator::target() const {
  uint64_t want = std::clamp<uint64_t>(end_slot_ * cluster_size_ / 8, kMinExtentBytes,
                                       kMaxExtentBytes);
  return std::max<uint64_t>(1, want / cluster_size_);
}

uint64_t SlotAllocator::LowWater() const { return std::max<uint64_t>(1, target() / 4); }

bool SlotAllocator::low() const { return ready() < LowWater(); }

void SlotAllocator::ReturnPending(const std::vector<uint32_t>& slots) {
  pending_free_.insert(pending_free_.end(), slots.begin(), slots.end());
}

void SlotAllocator::ReleaseQuarantined(uint64_t oldest_pinned_tag) {
  auto reusable = [&](const std::pair<uint64_t, uint32_t>& q) {
    return q.first < oldest_pinned_tag;
  };
  for (const auto& q : quarantined_) {
    if (reusable(q)) free_.push_back(q.second);
  }
  std::erase_if(quarantined_, reusable);
}

uint64_t SlotAllocator::QuarantinedEnd() const {
  uint64_t end = 0;
  for (const auto& [tag, slot] : quarantined_) end = std::max<uint64_t>(end, uint64_t{slot} + 1);
  return end;
}

absl::StatusOr<uint64_t> SlotAllocator::AllocateExtent(uint64_t at, uint64_t slots) const {
  if (at + slots > kMaxSlots) {
    return absl::ResourceExhaustedError(
        absl::StrCat("layer ", file_->path(), ": layer file full (2^32 slots)"));
  }
  absl::Status s = file_->Allocate(at * cluster_size_, slots * cluster_size_);
  if (absl::IsResourceExhausted(s) && slots > 1) {
    slots = 1;  // the volume is nearly full: take what is left, one cluster at a time
    s = file_->Allocate(at * cluster_size_, cluster_size_);
  }
  if (!s.ok()) return s;
  return slots;
}

void SlotAllocator::PunchReadyFree() {
  for (uint32_t slot : ready_free_) {
    (void)file_->PunchHole(slot * cluster_size_, cluster_size_);
    free_.push_back(slot);
  }
  ready_free_.clear();
}

absl::Status SlotAllocator::Grow() {
  auto grown = AllocateExtent(end_slot_, target());
  if (!grown.ok()) return grown.status();
  end_slot_ += *grown;
  return absl::OkStatus();
}

absl::StatusOr<uint32_t> SlotAllocator::Allocate() {
  if (ready_free_.empty() && !free_.empty()) {
    uint32_t slot = free_.back();
    // A freed slot had its space punched out; reserve it again so the data write cannot
    // fail for lack of space after we promised it.
    if (auto s = file_->Allocate(slot * cluster_size_, cluster_size_); !s.ok()) return s;
    free_.pop_back();
    return slot;
  }
  if (ready() == 0) {
    if (auto s = Grow(); !s.ok()) return s;
  }
  return *Take();
}

absl::StatusOr<uint32_t> SlotAllocator::TakeRun(uint32_t n) {
  while (high_water_ + n > end_slot_) {
    if (auto s = Grow(); !s.ok()) return s;
  }
  uint32_t first = static_cast<uint32_t>(high_water_);
  high_water_ += n;
  return first;
}

absl::Status SlotAllocator::Replenish() {
  Refill refill = PlanRefill();
  Fill(&refill);
  return Publish(refill);
}

SlotAllocator::Refill SlotAllocator::PlanRefill() {
  Refill refill;
  const uint64_t want = target();
  // Free slots first, even with the tail at its target: Take prefers them, and reusing them
  // keeps the file from growing.
  while (ready_free_.size() + refill.slots.size() < want && !free_.empty()) {
    refill.slots.push_back(free_.back());
    free_.pop_back();
  }
  std::sort(refill.slots.begin(), refill.slots.end());  // lowest first, as Take reuses them
  // An extent only below the low-water mark: growing whenever a slot of the last extent was
  // taken would grow the file by an extent per write.
  if (ready() + refill.slots.size() < LowWater()) {
    refill.grow_at = end_slot_;
    refill.grow_slots = target();
  }
  return refill;
}

void SlotAllocator::Fill(Refill* refill) const {
  // Runs of consecutive slots in one fallocate each.
  const std::vector<uint32_t>& slots = refill->slots;
  while (refill->filled < slots.size()) {
    size_t end = refill->filled + 1;
    while (end < slots.size() && slots[end] == slots[end - 1] + 1) ++end;
    const uint64_t at = uint64_t{slots[refill->filled]} * cluster_size_;
    refill->status = file_->Allocate(at, (end - refill->filled) * cluster_size_);
    if (!refill->status.ok()) return;
    refill->filled = end;
  }
  if (refill->grow_slots == 0) return;
  auto grown = AllocateExtent(refill->grow_at, refill->grow_slots);
  if (grown.ok()) {
    refill->grown = *grown;
  } else {
    refill->status = grown.status();
  }
}

absl::Status SlotAllocator::Publish(const Refill& refill) {
  // Highest first, as Take pops the back.
  for (size_t i = refill.filled; i-- > 0;) ready_free_.push_back(refill.slots[i]);
  for (size_t i = refill.slots.size(); i-- > refill.filled;) free_.push_back(refill.slots[i]);
  // A checkpoint (TakeRun) may have grown the file meanwhile, from the same end: the two
  // allocated ranges both start at grow_at, so the allocated space is contiguous up to the
  // larger end.
  if (refill.grown > 0) end_slot_ = std::max(end_slot_, refill.grow_at + refill.grown);
  // Writers take ready slots while a refill fills (without the owner's lock): none left now is
  // no failure when every fallocate succeeded. The caller's retry plans again, and a refill
  // planned below the low-water mark grows the file. Reporting it as a full volume failed a
  // 1 MiB sequential write at QD32 with ENOSPC on a volume with 73 GB free.
  if (ready() > 0 || refill.status.ok()) return absl::OkStatus();
  return refill.status;
}

}  // namespace strata
