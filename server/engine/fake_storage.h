// Test helper: a Storage that holds nothing, for tests of the protocol layers that only need
// an export's size and flags.
#ifndef STRATA_SERVER_ENGINE_FAKE_STORAGE_H_
#define STRATA_SERVER_ENGINE_FAKE_STORAGE_H_

#include <string>
#include <utility>
#include <vector>

#include "server/engine/storage.h"

namespace strata {

class FakeStorage : public Storage {
 public:
  explicit FakeStorage(uint64_t size, bool writable = true) : size_(size), writable_(writable) {}
  uint64_t size() const override { return size_; }
  uint32_t sub_block_size() const override { return 4096; }
  bool writable() const override { return writable_; }
  bool direct_io() const override { return false; }
  int top_position() const override { return 2; }
  std::string Describe() const override { return "fake disk"; }
  std::string DescribeLayer(int position) const override {
    return "layer " + std::to_string(position) + " (fake)";
  }
  absl::Status MapRead(uint64_t, uint64_t length, std::vector<Segment>* out,
                       ReadPin*) const override {
    Segment s;
    s.length = length;
    out->push_back(s);
    return absl::OkStatus();
  }
  absl::StatusOr<WritePlan> PrepareWrite(uint64_t, uint64_t) override {
    return absl::UnimplementedError("fake");
  }
  void FinishWrite(const WritePlan&, bool) override {}
  absl::Status Zero(uint64_t, uint64_t, bool, std::vector<std::pair<uint64_t, uint64_t>>*) override {
    return absl::OkStatus();
  }
  absl::Status Trim(uint64_t, uint64_t) override { return absl::OkStatus(); }
  absl::Status Flush() override { return absl::OkStatus(); }
  absl::Status Extents(uint64_t offset, uint64_t length, std::vector<Extent>* out) const override {
    out->push_back({offset, length, -1, true, false});
    return absl::OkStatus();
  }

 private:
  uint64_t size_;
  bool writable_;
};

}  // namespace strata

#endif  // STRATA_SERVER_ENGINE_FAKE_STORAGE_H_
