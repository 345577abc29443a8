// Helpers shared by blockstore's tests: a temporary directory, raw bases with known content,
// and byte-level file surgery for corruption tests.
#ifndef STRATA_BLOCKSTORE_TEST_UTIL_H_
#define STRATA_BLOCKSTORE_TEST_UTIL_H_

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"
#include "blockstore/chain.h"
#include "blockstore/crc32c.h"
#include "gtest/gtest.h"

namespace strata::testing {

class TempDir {
 public:
  TempDir() : TempDir(std::filesystem::temp_directory_path().string()) {}
  // A new directory inside `parent`.
  explicit TempDir(const std::string& parent) {
    std::string tmpl = parent + "/strata-test-XXXXXX";
    path_ = mkdtemp(tmpl.data());
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Deterministic bytes: byte i of a pattern seeded with `seed`.
inline std::string PatternBytes(uint64_t size, uint64_t seed) {
  std::string out(size, '\0');
  std::mt19937_64 rng(seed);
  for (auto& c : out) c = static_cast<char>(rng());
  return out;
}

inline void WriteFileBytes(const std::string& path, const std::string& data) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(fd, 0) << path;
  ASSERT_EQ(pwrite(fd, data.data(), data.size(), 0), static_cast<ssize_t>(data.size()));
  close(fd);
}

// The first `size` bytes of the disk topped by `top`, through a read-only chain; "" (and a
// test failure) when it does not open. `allowed`: directories trusted to hold its parents.
inline std::string ReadDisk(const std::string& top, uint64_t size,
                            std::vector<std::string> allowed = {}) {
  auto chain = Chain::Open(top, {.writable = false, .allowed_parent_dirs = std::move(allowed)});
  EXPECT_TRUE(chain.ok()) << chain.status();
  if (!chain.ok()) return "";
  std::string out(size, '\0');
  EXPECT_TRUE((*chain)->Read(0, absl::MakeSpan(out)).ok());
  return out;
}

inline void XorByte(const std::string& path, uint64_t offset, uint8_t mask = 0x40) {
  int fd = open(path.c_str(), O_RDWR);
  ASSERT_GE(fd, 0) << path;
  char c = 0;
  ASSERT_EQ(pread(fd, &c, 1, static_cast<off_t>(offset)), 1);
  c = static_cast<char>(c ^ mask);
  ASSERT_EQ(pwrite(fd, &c, 1, static_cast<off_t>(offset)), 1);
  close(fd);
}

// Per 512-byte sector of a disk, every content it may hold after a crash: its content at the
// last completed flush, plus each one written since (a disk may tear an unflushed write at any
// sector boundary; FORMAT.md §2).
class PossibleContents {
 public:
  static constexpr uint64_t kSector = 512;
  explicit PossibleContents(std::string initial) : durable_(std::move(initial)) { Collapse(); }

  void Write(uint64_t offset, absl::string_view data) {
    writes_.emplace_back(offset, std::string(data));
    Note(writes_.back());
  }
  // Every write so far is durable (a flush completed).
  void Flushed() { FlushedUpTo(mark()); }
  // The writes before `mark` (a mark() taken earlier) are durable, the later ones not yet: a
  // live snapshot's content is durable once it completes, the writes after its switch are not.
  size_t mark() const { return writes_.size(); }
  void FlushedUpTo(size_t mark) {
    for (size_t i = 0; i < mark; ++i) {
      durable_.replace(writes_[i].first, writes_[i].second.size(), writes_[i].second);
    }
    writes_.erase(writes_.begin(), writes_.begin() + static_cast<long>(mark));
    Collapse();
  }
  // The content with every write applied.
  const std::string& now() const { return now_; }
  // The offset of the first sector of `disk` holding what it cannot hold, or -1.
  int64_t FirstImpossibleSector(absl::string_view disk) const {
    for (uint64_t s = 0; s < possible_.size(); ++s) {
      if (!possible_[s].count(crc32c::Value(disk.data() + s * kSector, kSector))) {
        return static_cast<int64_t>(s * kSector);
      }
    }
    return -1;
  }

 private:
  void Collapse() {
    now_ = durable_;
    possible_.assign(now_.size() / kSector, {});
    for (uint64_t s = 0; s < possible_.size(); ++s) possible_[s].insert(SectorCrc(s));
    for (const auto& w : writes_) Note(w);
  }
  void Note(const std::pair<uint64_t, std::string>& w) {
    if (w.second.empty()) return;
    now_.replace(w.first, w.second.size(), w.second);
    for (uint64_t s = w.first / kSector; s <= (w.first + w.second.size() - 1) / kSector; ++s) {
      possible_[s].insert(SectorCrc(s));
    }
  }
  uint32_t SectorCrc(uint64_t s) const { return crc32c::Value(now_.data() + s * kSector, kSector); }

  std::string durable_, now_;
  std::vector<std::pair<uint64_t, std::string>> writes_;  // since the last flush, in order
  std::vector<std::set<uint32_t>> possible_;              // per sector: CRCs it may hold
};

}  // namespace strata::testing

#endif  // STRATA_BLOCKSTORE_TEST_UTIL_H_
