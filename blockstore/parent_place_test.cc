#include "blockstore/parent_place.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "blockstore/chain.h"
#include "blockstore/check.h"
#include "blockstore/layer.h"
#include "blockstore/test_util.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

using testing::TempDir;

constexpr uint64_t kSize = 1 << 20;

// Issue 13: a layer file whose header (valid CRC) names any file as its raw base. Each test
// builds vm.strata on a good base in its own directory, then points the link elsewhere.
class ParentPlaceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::WriteFileBytes(dir_.File("base.raw"), testing::PatternBytes(kSize, 7));
    ASSERT_TRUE(CreateLayer(top(), {.parent = "base.raw", .parent_format = ParentFormat::kRaw})
                    .ok());
  }
  std::string top() const { return dir_.File("vm.strata"); }
  // Points vm.strata at `parent` (stored as given: relative to its directory, or absolute).
  void Relink(const std::string& parent) {
    ASSERT_TRUE(EditLayerHeader(Env::Default(), top(), [&](LayerHeader* h) {
                  h->parent_path = parent;
                }).ok());
  }
  absl::StatusOr<std::unique_ptr<Chain>> Open(std::vector<std::string> allowed = {}) {
    return Chain::Open(top(), {.writable = false, .lock = false,
                               .allowed_parent_dirs = std::move(allowed)});
  }
  // A copy of the good base in a directory outside vm.strata's tree.
  std::string OutsideBase() {
    const std::string path = outside_.File("golden.raw");
    std::filesystem::copy_file(dir_.File("base.raw"), path);
    return path;
  }

  TempDir dir_, outside_;
};

void ExpectRefused(const absl::StatusOr<std::unique_ptr<Chain>>& chain, absl::string_view why,
                   const std::string& top, const std::string& parent) {
  ASSERT_FALSE(chain.ok()) << why;
  EXPECT_EQ(chain.status().code(), absl::StatusCode::kFailedPrecondition) << chain.status();
  EXPECT_NE(chain.status().message().find(why), absl::string_view::npos) << chain.status();
  EXPECT_NE(chain.status().message().find(top), absl::string_view::npos) << chain.status();
  EXPECT_NE(chain.status().message().find(parent), absl::string_view::npos) << chain.status();
}

TEST_F(ParentPlaceTest, TheBaseBesideTheLayerOpens) {
  auto chain = Open();
  ASSERT_TRUE(chain.ok()) << chain.status();
  std::string got(4096, '\0');
  ASSERT_TRUE((*chain)->Read(0, absl::MakeSpan(got)).ok());
  EXPECT_EQ(got, testing::PatternBytes(kSize, 7).substr(0, 4096));
}

TEST_F(ParentPlaceTest, AFifoIsRefusedWithoutWaitingForAWriter) {
  ASSERT_EQ(mkfifo(dir_.File("fifo").c_str(), 0600), 0);
  Relink("fifo");
  ExpectRefused(Open(), "a FIFO", top(), dir_.File("fifo"));
}

TEST_F(ParentPlaceTest, ADirectoryIsRefused) {
  std::filesystem::create_directory(dir_.File("sub"));
  Relink("sub");
  ExpectRefused(Open(), "a directory", top(), dir_.File("sub"));
}

TEST_F(ParentPlaceTest, DevicesAndKernelFilesAreRefusedEvenWhenTrusted) {
  for (auto [path, why] : {std::pair{"/dev/zero", "a character device"},
                           std::pair{"/proc/self/mem", "a file on /proc"},
                           std::pair{"/sys/kernel/mm/transparent_hugepage/enabled",
                                     "a file on /sys"}}) {
    if (access(path, R_OK) != 0) continue;
    Relink(path);
    ExpectRefused(Open({"/"}), why, top(), path);
  }
}

TEST_F(ParentPlaceTest, ASymbolicLinkIsRefusedEvenToTheRightFile) {
  ASSERT_EQ(symlink("base.raw", dir_.File("link.raw").c_str()), 0);
  Relink("link.raw");
  ExpectRefused(Open(), "symbolic link", top(), dir_.File("link.raw"));
}

TEST_F(ParentPlaceTest, AParentOutsideTheTreeNeedsItsDirectoryTrusted) {
  const std::string golden = OutsideBase();
  Relink(golden);
  auto refused = Open();
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kPermissionDenied) << refused.status();
  const std::string real_dir = std::filesystem::canonical(outside_.path()).string();
  EXPECT_NE(refused.status().message().find("--allow-parent-dir " + real_dir),
            absl::string_view::npos)
      << refused.status();
  EXPECT_NE(refused.status().message().find(top()), absl::string_view::npos);
  auto allowed = Open({outside_.path()});
  ASSERT_TRUE(allowed.ok()) << allowed.status();
  std::string got(4096, '\0');
  ASSERT_TRUE((*allowed)->Read(kSize - 4096, absl::MakeSpan(got)).ok());
  EXPECT_EQ(got, testing::PatternBytes(kSize, 7).substr(kSize - 4096));
}

TEST_F(ParentPlaceTest, DotDotOutOfTheTreeIsRefused) {
  // `../../...` from the layer's directory to the outside copy.
  const std::string golden = OutsideBase();
  Relink(std::filesystem::relative(golden, dir_.path()).string());
  auto chain = Open();
  ASSERT_FALSE(chain.ok());
  EXPECT_EQ(chain.status().code(), absl::StatusCode::kPermissionDenied) << chain.status();
}

TEST_F(ParentPlaceTest, ASubdirectoryIsInsideButASymlinkedDirectoryOutIsNot) {
  std::filesystem::create_directory(dir_.File("images"));
  std::filesystem::copy_file(dir_.File("base.raw"), dir_.File("images/base.raw"));
  Relink("images/base.raw");
  EXPECT_TRUE(Open().ok());
  OutsideBase();
  ASSERT_EQ(symlink(outside_.path().c_str(), dir_.File("shortcut").c_str()), 0);
  Relink("shortcut/golden.raw");  // the last component is no link: its directory resolves out
  auto chain = Open();
  ASSERT_FALSE(chain.ok());
  EXPECT_EQ(chain.status().code(), absl::StatusCode::kPermissionDenied) << chain.status();
}

// A disk linked in from where it lives (/var/lib/strata/vm.strata -> /data/vm.strata) keeps
// its base beside its real file (a relative link resolves beside the named path, as ever, so
// the link is absolute here).
TEST_F(ParentPlaceTest, ATopThatIsALinkTrustsWhereItReallyIs) {
  Relink(dir_.File("base.raw"));
  const std::string link = outside_.File("vm.strata");
  ASSERT_EQ(symlink(top().c_str(), link.c_str()), 0);
  auto chain = Chain::Open(link, {.writable = false, .lock = false});
  EXPECT_TRUE(chain.ok()) << chain.status();
}

TEST_F(ParentPlaceTest, CheckReportsAnUntrustedParentAsAProblem) {
  Relink("/etc/passwd");
  auto report = CheckChain(Env::Default(), top(), /*repair=*/false);
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_FALSE(report->problems.empty());
  EXPECT_NE(report->problems[0].find("/etc/passwd"), std::string::npos) << report->problems[0];
  EXPECT_NE(report->problems[0].find("--allow-parent-dir"), std::string::npos);
  EXPECT_TRUE(report->repairable.empty());
}

TEST_F(ParentPlaceTest, CheckChainParentsWalksTheWholeChain) {
  ASSERT_TRUE(Open().ok());
  const std::string golden = OutsideBase();
  Relink(golden);
  EXPECT_EQ(CheckChainParents(Env::Default(), {top(), {}}).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(CheckChainParents(Env::Default(), {top(), {outside_.path()}}).ok());
  Relink("missing.raw");  // the command reports a missing parent in its own terms
  EXPECT_TRUE(CheckChainParents(Env::Default(), {top(), {}}).ok());
}

TEST_F(ParentPlaceTest, CreateOnAFifoRefuses) {
  ASSERT_EQ(mkfifo(dir_.File("fifo").c_str(), 0600), 0);
  auto created = CreateLayer(dir_.File("new.strata"),
                             {.parent = "fifo", .parent_format = ParentFormat::kRaw});
  ASSERT_FALSE(created.ok());
  EXPECT_NE(created.status().message().find("a FIFO"), absl::string_view::npos)
      << created.status();
  EXPECT_FALSE(std::filesystem::exists(dir_.File("new.strata")));
}

TEST_F(ParentPlaceTest, CreateTakesAnExplicitParentOutsideTheTree) {
  const std::string golden = OutsideBase();
  ASSERT_TRUE(CreateLayer(dir_.File("branch.strata"),
                          {.parent = golden, .parent_format = ParentFormat::kRaw})
                  .ok());
}

}  // namespace
}  // namespace strata
