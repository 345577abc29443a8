#include "cli/progress.h"

#include <cstdio>
#include <string>

#include "gtest/gtest.h"

namespace strata::cli {
namespace {

// What the bar drew on `f`, from its start.
std::string Contents(FILE* f) {
  std::fflush(f);
  std::string out(static_cast<size_t>(std::ftell(f)), '\0');
  std::rewind(f);
  out.resize(std::fread(out.data(), 1, out.size(), f));
  return out;
}

TEST(ProgressBarTest, FinishEndsTheLastFrameSoTheNextOutputStartsOnItsOwnLine) {
  FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  ProgressBar bar("export", f, /*enabled=*/true);
  bar.Update(100, 100);
  bar.Finish();
  bar.Finish();  // once only
  std::fputs("exported\n", f);
  const std::string out = Contents(f);
  EXPECT_NE(out.find("export 100% ["), std::string::npos) << out;
  EXPECT_NE(out.find("100 B \nexported\n"), std::string::npos) << out;
  EXPECT_EQ(out.find("\n\n"), std::string::npos) << out;
  std::fclose(f);
}

TEST(ProgressBarTest, NothingWhenDisabledOrNeverDrawn) {
  FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  {
    ProgressBar off("export", f, /*enabled=*/false);
    off.Update(50, 100);
    ProgressBar idle("merge", f, /*enabled=*/true);
  }  // neither drew, so neither ends a line
  EXPECT_EQ(Contents(f), "");
  std::fclose(f);
}

}  // namespace
}  // namespace strata::cli
