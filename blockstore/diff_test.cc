#include "blockstore/diff.h"

#include "blockstore/chain.h"
#include "blockstore/file.h"
#include "blockstore/test_util.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

using Ranges = std::vector<std::pair<uint64_t, uint64_t>>;

TEST(DiffTest, ChangedRangesBetweenSnapshots) {
  testing::TempDir dir;
  std::string top = dir.File("d.strata");
  CreateOptions options;
  options.size = 16 << 20;
  ASSERT_TRUE(CreateLayer(top, options).ok());
  {
    auto chain = Chain::Open(top);
    ASSERT_TRUE(chain.ok());
    Chain& c = **chain;
    ASSERT_TRUE(c.Write(0, std::string(8192, 'a')).ok());
    ASSERT_TRUE(c.Snapshot("a").ok());
    ASSERT_TRUE(c.Write(1 << 20, std::string(4096, 'b')).ok());
    ASSERT_TRUE(c.Write(4096, std::string(100, 'b')).ok());  // widened to sub-block 1
    ASSERT_TRUE(c.Snapshot("b").ok());
    ASSERT_TRUE(c.WriteZeroes(2 << 20, 65536).ok());
  }
  auto ab = ChangedRanges(Env::Default(), top, "a", "b");
  ASSERT_TRUE(ab.ok()) << ab.status();
  EXPECT_EQ(*ab, (Ranges{{4096, 4096}, {1 << 20, 4096}}));
  auto a_now = ChangedRanges(Env::Default(), top, "a", "");
  ASSERT_TRUE(a_now.ok());
  EXPECT_EQ(*a_now, (Ranges{{4096, 4096}, {1 << 20, 4096}, {2 << 20, 65536}}));
  EXPECT_EQ(ChangedRanges(Env::Default(), top, "b", "a").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ChangedRanges(Env::Default(), top, "nope", "").status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace strata
