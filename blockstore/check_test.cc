#include "blockstore/check.h"

#include <fcntl.h>
#include <unistd.h>

#include "blockstore/chain.h"
#include "blockstore/file.h"
#include "blockstore/layer.h"
#include "blockstore/snapshot_files.h"
#include "blockstore/test_util.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

class CheckTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::WriteFileBytes(base_, std::string(1 << 20, 'x'));
    ASSERT_TRUE(CreateLayer(top_, {.parent = base_, .parent_format = ParentFormat::kRaw}).ok());
    auto chain = Chain::Open(top_);
    ASSERT_TRUE(chain.ok());
    ASSERT_TRUE((*chain)->Write(0, std::string(65536, 'a')).ok());
    ASSERT_TRUE((*chain)->Snapshot("s1").ok());
  }
  CheckReport Check(bool repair = false) {
    auto report = CheckChain(Env::Default(), top_, repair);
    EXPECT_TRUE(report.ok()) << report.status();
    return report.ok() ? *report : CheckReport{};
  }
  testing::TempDir dir_;
  std::string base_ = dir_.File("base.raw");
  std::string top_ = dir_.File("disk.strata");
  std::string snap_ = dir_.File("disk@s1.strata");
};

TEST_F(CheckTest, CleanChainIsClean) {
  CheckReport r = Check();
  EXPECT_TRUE(r.clean());
  EXPECT_EQ(r.notes.size(), 3u);  // two layers and the base
}

TEST_F(CheckTest, DamagedHeaderCopyIsRepairable) {
  testing::XorByte(snap_, kHeaderCopyOffset[0] + 200);
  CheckReport r = Check();
  ASSERT_EQ(r.repairable.size(), 1u);
  EXPECT_NE(r.repairable[0].find("header copy 0"), std::string::npos);
  for (const auto& p : r.problems) ADD_FAILURE() << p;
  EXPECT_EQ(Check(/*repair=*/true).repaired.size(), 1u);
  EXPECT_TRUE(Check().clean());
}

TEST_F(CheckTest, CorruptJournalRecordIsAProblemNamingTheFile) {
  auto h = ReadLayerHeader(Env::Default(), snap_);
  ASSERT_TRUE(h.ok());
  testing::XorByte(snap_, h->journal_offset + 20);
  CheckReport r = Check();
  ASSERT_FALSE(r.problems.empty());
  EXPECT_NE(r.problems[0].find("disk@s1.strata"), std::string::npos);
  EXPECT_NE(r.problems[0].find("checksum"), std::string::npos);
}

TEST_F(CheckTest, MissingBaseIsAProblem) {
  ASSERT_EQ(unlink(base_.c_str()), 0);
  CheckReport r = Check();
  ASSERT_FALSE(r.problems.empty());
  EXPECT_NE(r.problems.back().find("base.raw"), std::string::npos);
}

TEST_F(CheckTest, LeakedClusterIsRepairedByPunching) {
  // A crash between a data write and its flush leaves an unreferenced slot holding data.
  {
    auto layer = Layer::Open(Env::Default(), top_, Layer::Mode::kWritable);
    ASSERT_TRUE(layer.ok());
    auto slot = (*layer)->AllocateSlot();
    ASSERT_TRUE(slot.ok());
    ASSERT_TRUE((*layer)->file()->Write((*layer)->DataOffset(*slot, 0), std::string(4096, 'z')).ok());
    auto other = (*layer)->AllocateSlot();  // a referenced one above it, so it is below the end
    ASSERT_TRUE(other.ok());
    (*layer)->SetEntry(5, {.slot = *other, .present = 1, .zero = 0});
    ASSERT_TRUE((*layer)->file()->Write((*layer)->DataOffset(*other, 0), std::string(4096, 'y')).ok());
    ASSERT_TRUE((*layer)->Flush().ok());
  }
  CheckReport r = Check();
  ASSERT_EQ(r.repairable.size(), 1u) << (r.problems.empty() ? "" : r.problems[0]);
  EXPECT_NE(r.repairable[0].find("unreferenced"), std::string::npos);
  EXPECT_EQ(Check(true).repaired.size(), 1u);
  EXPECT_TRUE(Check().clean());
}

TEST_F(CheckTest, HeaderCopiesThatDisagreeAreRepairable) {
  // A crash between the two writes of a header update: both copies valid, one older.
  std::string older;
  {
    auto layer = Layer::Open(Env::Default(), top_, Layer::Mode::kReadOnly);
    ASSERT_TRUE(layer.ok()) << layer.status();
    older.resize(kHeaderBlockSize);
    ASSERT_TRUE((*layer)->file()->Read(0, older.size(), older.data()).ok());
  }
  {
    auto layer = Layer::Open(Env::Default(), top_, Layer::Mode::kWritable);  // a header update
    ASSERT_TRUE(layer.ok()) << layer.status();
  }
  int fd = open(top_.c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(pwrite(fd, older.data(), older.size(), 0), static_cast<ssize_t>(older.size()));
  close(fd);
  CheckReport r = Check();
  ASSERT_EQ(r.repairable.size(), 1u);
  EXPECT_NE(r.repairable[0].find("older header"), std::string::npos) << r.repairable[0];
  EXPECT_TRUE(r.problems.empty());
  EXPECT_EQ(Check(true).repaired.size(), 1u);
  EXPECT_TRUE(Check().clean());
}

TEST_F(CheckTest, ClustersTrimmedBeforeASnapshotLeaveNothingPastTheEnd) {
  // Offline and live snapshots: a frozen layer ends at its last slot in use.
  for (bool live : {false, true}) {
    auto chain = Chain::Open(top_);
    ASSERT_TRUE(chain.ok()) << chain.status();
    for (uint64_t c = 0; c < 10; ++c) {
      ASSERT_TRUE((*chain)->Write(c * kDefaultClusterSize, std::string(4096, 'w')).ok());
    }
    ASSERT_TRUE((*chain)->Flush().ok());
    ASSERT_TRUE((*chain)->Trim(5 * kDefaultClusterSize, 5 * kDefaultClusterSize).ok());
    const std::string name = live ? "live" : "offline";
    if (live) {
      ASSERT_TRUE((*chain)->PrepareSnapshot(name).ok());
      ASSERT_TRUE((*chain)->SwitchSnapshot(name).ok());
      ASSERT_TRUE((*chain)->CompleteSnapshot().ok());
    } else {
      ASSERT_TRUE((*chain)->Snapshot(name).ok());
    }
    chain->reset();
    CheckReport r = Check();
    EXPECT_TRUE(r.clean()) << name << ": "
                           << (r.repairable.empty() ? (r.problems.empty() ? "" : r.problems[0])
                                                    : r.repairable[0]);
  }
}

TEST_F(CheckTest, NotALayerIsAClearError) {
  testing::WriteFileBytes(top_, std::string(16384, 'q'));
  CheckReport r = Check();
  ASSERT_FALSE(r.problems.empty());
  EXPECT_NE(r.problems[0].find("not a strata layer"), std::string::npos);
}

// Finding: `check --repair` took no lock, and beside a running server it punched out a slot
// that an unflushed write had just filled: the write read back as zeros after its flush.
TEST_F(CheckTest, RepairRefusesWhileTheDiskIsOpenForWriting) {
  auto served = Chain::Open(top_);
  ASSERT_TRUE(served.ok());
  const std::string data(65536, 'w');
  ASSERT_TRUE((*served)->Write(4 * 65536, data).ok());  // a new slot, not in the index yet
  auto report = CheckChain(Env::Default(), top_, /*repair=*/true);
  ASSERT_FALSE(report.ok());
  EXPECT_NE(report.status().message().find("open for writing"), absl::string_view::npos);
  ASSERT_TRUE((*served)->Flush().ok());
  std::string back(data.size(), '\0');
  ASSERT_TRUE((*served)->Read(4 * 65536, absl::MakeSpan(back)).ok());
  EXPECT_TRUE(back == data);
}

TEST_F(CheckTest, CheckOfAServedDiskSaysItsViewMayBeStale) {
  auto served = Chain::Open(top_);
  ASSERT_TRUE(served.ok());
  CheckReport r = Check();
  bool said = false;
  for (const auto& n : r.notes) said = said || n.find("may be stale") != std::string::npos;
  EXPECT_TRUE(said);
  served->reset();
  for (const auto& n : Check().notes) EXPECT_EQ(n.find("may be stale"), std::string::npos);
}

TEST_F(CheckTest, RepairFinishesAnInterruptedSnapshot) {
  {  // snapshot_files.h steps 1-3, not 4
    auto layer = Layer::Open(Env::Default(), top_, Layer::Mode::kWritable);
    ASSERT_TRUE(layer.ok());
    ASSERT_TRUE(PrepareNextLayer(Env::Default(), **layer, top_, "s2").ok());
    ASSERT_TRUE((*layer)->WriteFrozenHeader("s2", 1).ok());
  }
  CheckReport r = Check();
  ASSERT_EQ(r.repairable.size(), 1u);
  EXPECT_NE(r.repairable[0].find(".disk.strata.new"), std::string::npos);
  for (const auto& p : r.problems) ADD_FAILURE() << p;
  CheckReport repaired = Check(/*repair=*/true);
  ASSERT_EQ(repaired.repaired.size(), 1u);
  EXPECT_NE(repaired.repaired[0].find("completed the interrupted snapshot 's2'"),
            std::string::npos);
  EXPECT_TRUE(Check().clean());
}

}  // namespace
}  // namespace strata
