// Revert, offline and of a served chain (RevertServed), failed at each of its steps (issue 12:
// a failed live revert left the server with no disk). Before the commit point the disk must
// stay as it was and a served chain must serve on, unchanged; after it the reverted chain is
// served. Either way a fresh open of the top reads what the outcome says.
#include "blockstore/revert.h"

#include <ostream>
#include <string>

#include "absl/strings/match.h"
#include "blockstore/chain.h"
#include "blockstore/check.h"
#include "blockstore/fail_env.h"
#include "blockstore/file.h"
#include "blockstore/layer.h"
#include "blockstore/test_util.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

constexpr uint64_t kDisk = 4 << 20;
constexpr uint64_t kBlock = 65536;

class RevertTest : public ::testing::Test {
 protected:
  // base.raw <- disk@s1.strata ('a' at 0) <- disk.strata ('b' at 64 KiB).
  void SetUp() override {
    testing::WriteFileBytes(base_, testing::PatternBytes(kDisk, 5));
    ASSERT_TRUE(CreateLayer(top_, {.parent = base_, .parent_format = ParentFormat::kRaw}).ok());
    WriteAndSnapshot(0, 'a', "s1");
    s1_ = ReadAll();
    WriteAndSnapshot(kBlock, 'b', "");
    now_ = ReadAll();
    top_uuid_ = TopUuid();
  }
  // Writes `fill` at `offset` (64 KiB), then snapshots as `name` unless it is empty.
  void WriteAndSnapshot(uint64_t offset, char fill, const std::string& name) {
    auto chain = Chain::Open(top_);
    ASSERT_TRUE(chain.ok()) << chain.status();
    ASSERT_TRUE((*chain)->Write(offset, std::string(kBlock, fill)).ok());
    if (!name.empty()) {
      ASSERT_TRUE((*chain)->Snapshot(name).ok());
    }
  }
  std::string ReadAll() { return testing::ReadDisk(top_, kDisk); }
  static std::string Read(const Chain& chain) {
    std::string out(kDisk, '\0');
    EXPECT_TRUE(chain.Read(0, absl::MakeSpan(out)).ok());
    return out;
  }
  Uuid TopUuid() {
    auto h = ReadLayerHeader(Env::Default(), top_);
    EXPECT_TRUE(h.ok()) << h.status();
    return h.ok() ? h->uuid : Uuid{};
  }
  // `want` with 'c' written at 128 KiB: what a write through the served chain adds.
  static std::string WithWrite(std::string want) {
    want.replace(2 * kBlock, kBlock, std::string(kBlock, 'c'));
    return want;
  }
  void ExpectClean() {
    auto report = CheckChain(Env::Default(), top_, false);
    ASSERT_TRUE(report.ok()) << report.status();
    for (const auto& p : report->problems) ADD_FAILURE() << p;
    for (const auto& p : report->repairable) ADD_FAILURE() << p;
  }
  // From now on env_ fails the n-th call of `op` on a path ending with `suffix`.
  void Arm(const std::string& op, const std::string& suffix, int n) {
    fail_ = testing::FailNth(op, suffix, n);
  }

  testing::TempDir dir_;
  std::string base_ = dir_.File("base.raw");
  std::string top_ = dir_.File("disk.strata");
  std::string pending_ = RevertPendingPath(top_);
  std::string s1_, now_;
  Uuid top_uuid_{};
  testing::FailEnv::Predicate fail_ = [](absl::string_view, const std::string&) { return false; };
  testing::FailEnv env_{
      [this](absl::string_view op, const std::string& path) { return fail_(op, path); }};
};

TEST_F(RevertTest, RevertDiscardsChanges) {
  WriteAndSnapshot(0, 'b', "s2");
  const std::string s2 = ReadAll();
  WriteAndSnapshot(0, 'c', "");
  ASSERT_TRUE(Revert(Env::Default(), top_).ok());
  EXPECT_EQ(ReadAll(), s2);
  ASSERT_TRUE(Revert(Env::Default(), top_, "s1").ok());
  EXPECT_EQ(ReadAll(), s1_);
  EXPECT_EQ(Revert(Env::Default(), top_, "nope").code(), absl::StatusCode::kNotFound);
  ExpectClean();
}

// The reverted chain is served under the top's own path, holds its lock, and reverts again.
TEST_F(RevertTest, ServedRevertServesTheNewTopUnderTheTopsPath) {
  auto chain = Chain::Open(top_);
  ASSERT_TRUE(chain.ok()) << chain.status();
  ASSERT_TRUE(RevertServed(&*chain).ok());
  EXPECT_EQ(Read(**chain), s1_);
  EXPECT_EQ((*chain)->Layers().back().path, top_);
  EXPECT_EQ((*chain)->DescribeLayer((*chain)->top_position()), "layer 2 (" + top_ + ")");
  EXPECT_TRUE((*chain)->options().top_file.empty());
  EXPECT_FALSE(Chain::Open(top_).ok()) << "the new top is not locked";
  EXPECT_NE(TopUuid(), top_uuid_);
  ASSERT_TRUE((*chain)->Write(2 * kBlock, std::string(kBlock, 'c')).ok());
  ASSERT_TRUE(RevertServed(&*chain, "s1").ok());  // a second revert, of the reverted chain
  EXPECT_EQ(Read(**chain), s1_);
  ASSERT_TRUE((*chain)->Write(2 * kBlock, std::string(kBlock, 'c')).ok());
  chain->reset();
  EXPECT_FALSE(Env::Default()->Exists(pending_));
  EXPECT_EQ(ReadAll(), WithWrite(s1_));
  ExpectClean();
}

TEST_F(RevertTest, ServedRevertToAMissingSnapshotChangesNothing) {
  auto chain = Chain::Open(top_);
  ASSERT_TRUE(chain.ok()) << chain.status();
  Chain* served = chain->get();
  absl::Status s = RevertServed(&*chain, "nope");
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(s.message().find("the disk is unchanged"), absl::string_view::npos) << s;
  EXPECT_EQ(chain->get(), served);
  EXPECT_EQ(Read(**chain), now_);
}

// One step of a revert made to fail: the n-th call of `op` on a path ending with `suffix`
// ("" matches any), counted from the moment the revert starts.
struct Step {
  const char* name;
  const char* op;
  const char* suffix;
  int n;
  bool after_commit_point = false;
  bool served_only = false;  // an offline revert opens no chain
};

void PrintTo(const Step& step, std::ostream* os) { *os << step.name; }

const Step kSteps[] = {
    {"CreatingTheNewLayer", "open", "/.disk.strata.revert", 1},
    {"WritingItsHeader", "write", "/.disk.strata.revert", 1},
    {"SyncingIt", "sync", "/.disk.strata.revert", 1},
    {"SyncingTheDirectoryItIsIn", "syncdir", "", 1},
    // The parent the new layer links to cannot be read: the reverted chain cannot open.
    {"OpeningTheRevertedChain", "open", "/disk@s1.strata", 1, false, true},
    {"TheRenameOverTheTop", "rename", "/disk.strata", 1},
    {"SyncingTheDirectoryAfterTheRename", "syncdir", "", 2, true},
};

class RevertStepTest : public RevertTest, public ::testing::WithParamInterface<Step> {
 protected:
  // The disk on its files once the revert failed at GetParam(): `want` at the top's path, no
  // leftover, and a fresh open reads it (after recovery, which must find nothing to do).
  void ExpectOnDisk(const std::string& want) {
    EXPECT_FALSE(Env::Default()->Exists(pending_)) << "the new layer was left behind";
    if (GetParam().after_commit_point) {
      EXPECT_NE(TopUuid(), top_uuid_) << "the old top is still at " << top_;
    } else {
      EXPECT_EQ(TopUuid(), top_uuid_) << "the old top is no longer at " << top_;
    }
    EXPECT_EQ(ReadAll(), want);
    ExpectClean();
  }
};

TEST_P(RevertStepTest, ServedChainServesTheOldOrTheRevertedDisk) {
  auto chain = Chain::Open(top_, {.env = &env_});
  ASSERT_TRUE(chain.ok()) << chain.status();
  Chain* served = chain->get();
  Arm(GetParam().op, GetParam().suffix, GetParam().n);
  absl::Status s = RevertServed(&*chain);
  ASSERT_FALSE(s.ok()) << "the injected failure did not happen";
  EXPECT_NE(s.message().find("injected failure"), absl::string_view::npos) << s;
  const Step& step = GetParam();
  EXPECT_NE(s.message().find(step.after_commit_point ? "reverted, but" : "the disk is unchanged"),
            absl::string_view::npos)
      << s;
  EXPECT_EQ(chain->get() != served, step.after_commit_point) << "the wrong chain is served";
  const std::string want = step.after_commit_point ? s1_ : now_;
  EXPECT_EQ(Read(**chain), want);
  ASSERT_TRUE((*chain)->Write(2 * kBlock, std::string(kBlock, 'c')).ok());
  ASSERT_TRUE((*chain)->Flush().ok());
  EXPECT_EQ(Read(**chain), WithWrite(want));
  chain->reset();
  ExpectOnDisk(WithWrite(want));
}

TEST_P(RevertStepTest, OfflineRevertChangesAllOrNothing) {
  if (GetParam().served_only) GTEST_SKIP() << "an offline revert opens no chain";
  Arm(GetParam().op, GetParam().suffix, GetParam().n);
  absl::Status s = Revert(&env_, top_);
  ASSERT_FALSE(s.ok()) << "the injected failure did not happen";
  EXPECT_NE(s.message().find("injected failure"), absl::string_view::npos) << s;
  ExpectOnDisk(GetParam().after_commit_point ? s1_ : now_);
}

INSTANTIATE_TEST_SUITE_P(EachStep, RevertStepTest, ::testing::ValuesIn(kSteps),
                         [](const ::testing::TestParamInfo<Step>& info) {
                           return std::string(info.param.name);
                         });

}  // namespace
}  // namespace strata
