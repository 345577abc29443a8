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
#include <string>

#include "gtest/gtest.h"

namespace strata::testing {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "strata-test-XXXXXX").string();
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

inline void XorByte(const std::string& path, uint64_t offset, uint8_t mask = 0x40) {
  int fd = open(path.c_str(), O_RDWR);
  ASSERT_GE(fd, 0) << path;
  char c = 0;
  ASSERT_EQ(pread(fd, &c, 1, static_cast<off_t>(offset)), 1);
  c = static_cast<char>(c ^ mask);
  ASSERT_EQ(pwrite(fd, &c, 1, static_cast<off_t>(offset)), 1);
  close(fd);
}

}  // namespace strata::testing

#endif  // STRATA_BLOCKSTORE_TEST_UTIL_H_
