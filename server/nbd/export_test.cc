#include "server/nbd/export.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

using Clock = std::chrono::steady_clock;

// Exports whose destruction is counted, so a test sees when the table (or the last
// connection) lets one go: for an on-demand export that is "closed".
class ExportTableTest : public ::testing::Test {
 protected:
  std::shared_ptr<const Export> Make(std::string name, bool read_only = false) {
    auto* e = new Export{.name = std::move(name), .disk_size = 1 << 20, .read_only = read_only};
    return std::shared_ptr<const Export>(e, [this](const Export* x) {
      ++closes_;
      delete x;
    });
  }
  // Opens `name` (counted in opens_), first running `before` if it is set.
  ExportTable::Opener OpenerOf(std::string name, std::function<void()> before = nullptr) {
    return [this, name, before]() -> absl::StatusOr<std::shared_ptr<const Export>> {
      ++opens_;
      if (before) before();
      return Make(name, /*read_only=*/true);
    };
  }
  void AddSnapshot(const std::string& name, std::function<void()> before = nullptr) {
    table_.AddOnDemand({name, "snapshot " + name, true}, OpenerOf(name, std::move(before)));
  }
  bool IsOpen(const std::string& name) const {
    auto open = table_.OpenExports();
    return std::any_of(open.begin(), open.end(), [&](const auto& e) { return e->name == name; });
  }

  // Declared before table_: the deleters count into them until the table is gone.
  std::atomic<int> opens_{0};
  std::atomic<int> closes_{0};
  ExportTable table_;
};

TEST_F(ExportTableTest, AddedExportIsFoundByItsExactNameOnly) {
  auto disk = Make("disk");
  table_.Add(disk);
  EXPECT_EQ(table_.Find("disk"), disk);
  EXPECT_EQ(table_.Find("dis"), nullptr);
  EXPECT_EQ(table_.Find("DISK"), nullptr);
  EXPECT_EQ(table_.Find("disk "), nullptr);
}

// NBD_OPT_EXPORT_NAME's "default export": the empty name is the first export added.
TEST_F(ExportTableTest, EmptyNameIsTheFirstExport) {
  auto disk = Make("disk");
  table_.Add(disk);
  table_.Add(Make("other"));
  AddSnapshot("@s1");
  EXPECT_EQ(table_.Find(""), disk);
  std::string canonical;
  ASSERT_TRUE(table_.Has("", &canonical));
  EXPECT_EQ(canonical, "disk");
}

TEST_F(ExportTableTest, EmptyTableHasNoDefaultExport) {
  std::string canonical = "unchanged";
  EXPECT_FALSE(table_.Has("", &canonical));
  EXPECT_EQ(canonical, "unchanged");
  EXPECT_EQ(table_.Find(""), nullptr);
  EXPECT_TRUE(table_.Describe().empty());
  EXPECT_TRUE(table_.OpenExports().empty());
}

// Has answers NBD_OPT_LIST-style questions without the cost of opening a chain.
TEST_F(ExportTableTest, HasGivesTheCanonicalNameWithoutOpening) {
  table_.Add(Make("disk"));
  AddSnapshot("@s1");
  std::string canonical;
  ASSERT_TRUE(table_.Has("@s1", &canonical));
  EXPECT_EQ(canonical, "@s1");
  EXPECT_TRUE(table_.Has("disk"));  // *canonical is optional
  canonical = "unchanged";
  EXPECT_FALSE(table_.Has("@s2", &canonical));
  EXPECT_EQ(canonical, "unchanged");
  EXPECT_EQ(opens_, 0);
  EXPECT_FALSE(IsOpen("@s1"));
}

// A hundred snapshots cost nothing until read: opened by the first Find, shared by every
// later one, closed when the last user drops it, and opened afresh after that.
TEST_F(ExportTableTest, OnDemandExportOpensOnFirstFindAndClosesWithItsLastUser) {
  AddSnapshot("@s1");
  EXPECT_EQ(opens_, 0);
  auto first = table_.Find("@s1");
  ASSERT_NE(first, nullptr);
  EXPECT_EQ(first->name, "@s1");
  EXPECT_TRUE(first->read_only);
  EXPECT_EQ(opens_, 1);
  auto second = table_.Find("@s1");
  EXPECT_EQ(second, first);
  EXPECT_EQ(opens_, 1);
  EXPECT_TRUE(IsOpen("@s1"));

  first.reset();
  EXPECT_EQ(closes_, 0) << "closed while a user still holds it";
  EXPECT_TRUE(IsOpen("@s1"));
  second.reset();
  EXPECT_EQ(closes_, 1);
  EXPECT_FALSE(IsOpen("@s1"));

  auto again = table_.Find("@s1");
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(opens_, 2);
}

// Connections already using an export keep it; new clients can no longer name it.
TEST_F(ExportTableTest, RemoveKeepsConnectedUsersExportAlive) {
  table_.Add(Make("disk"));
  AddSnapshot("@s1");
  auto disk = table_.Find("disk");
  auto snap = table_.Find("@s1");
  ASSERT_NE(disk, nullptr);
  ASSERT_NE(snap, nullptr);

  EXPECT_TRUE(table_.Remove("@s1"));
  EXPECT_TRUE(table_.Remove("disk"));
  EXPECT_EQ(closes_, 0) << "an export in use was destroyed by Remove";
  EXPECT_EQ(disk->name, "disk");
  EXPECT_EQ(snap->name, "@s1");
  EXPECT_FALSE(table_.Has("@s1"));
  EXPECT_EQ(table_.Find("@s1"), nullptr);
  EXPECT_EQ(table_.Find("disk"), nullptr);
  EXPECT_FALSE(table_.Remove("@s1")) << "removed twice";
  EXPECT_EQ(opens_, 1);

  disk.reset();
  snap.reset();
  EXPECT_EQ(closes_, 2);
}

TEST_F(ExportTableTest, RemoveNeedsTheExactName) {
  table_.Add(Make("disk"));
  EXPECT_FALSE(table_.Remove(""));  // "" is only a way to name the default export in Find
  EXPECT_FALSE(table_.Remove("dis"));
  EXPECT_TRUE(table_.Has("disk"));
}

// Describe is what NBD_OPT_LIST and `info` show: every export, open or not, in order.
TEST_F(ExportTableTest, DescribeListsEveryExportInOrderWithoutOpening) {
  auto disk = std::make_shared<Export>(Export{.name = "disk", .description = "the disk"});
  table_.Add(disk);
  AddSnapshot("@s1");
  std::vector<ExportInfo> info = table_.Describe();
  ASSERT_EQ(info.size(), 2u);
  EXPECT_EQ(info[0].name, "disk");
  EXPECT_EQ(info[0].description, "the disk");
  EXPECT_FALSE(info[0].read_only);
  EXPECT_EQ(info[1].name, "@s1");
  EXPECT_EQ(info[1].description, "snapshot @s1");
  EXPECT_TRUE(info[1].read_only);
  EXPECT_EQ(opens_, 0);
}

TEST_F(ExportTableTest, OpenExportsAreTheFixedOnesAndOnDemandOnesInUse) {
  table_.Add(Make("disk"));
  AddSnapshot("@s1");
  AddSnapshot("@s2");
  auto s2 = table_.Find("@s2");
  ASSERT_NE(s2, nullptr);
  std::vector<std::string> names;
  for (const auto& e : table_.OpenExports()) names.push_back(e->name);
  EXPECT_EQ(names, (std::vector<std::string>{"disk", "@s2"}));
}

// A snapshot whose layer cannot be read: the client is refused with the reason, the entry
// stays (it is still listed and may open later), and nothing is left open.
TEST_F(ExportTableTest, OpenerThatFailsReportsTheError) {
  table_.AddOnDemand({"@bad", "", true}, [this]() -> absl::StatusOr<std::shared_ptr<const Export>> {
    ++opens_;
    return absl::DataLossError("layer /img/disk@bad.strata: header checksum mismatch");
  });
  std::string error;
  EXPECT_EQ(table_.Find("@bad", &error), nullptr);
  EXPECT_EQ(error, "layer /img/disk@bad.strata: header checksum mismatch");
  EXPECT_EQ(table_.Find("@bad"), nullptr);  // *error is optional
  EXPECT_EQ(opens_, 2) << "a failed open is not cached";
  EXPECT_TRUE(table_.Has("@bad"));
  EXPECT_TRUE(table_.OpenExports().empty());
}

// A snapshot deleted while a client was opening it is not handed out, and the instance the
// opener made is closed rather than kept.
TEST_F(ExportTableTest, ExportRemovedWhileOpeningIsNotHandedOut) {
  AddSnapshot("@s1", [this] { table_.Remove("@s1"); });
  std::string error;
  EXPECT_EQ(table_.Find("@s1", &error), nullptr);
  EXPECT_NE(error.find("removed"), std::string::npos) << error;
  EXPECT_EQ(opens_, 1);
  EXPECT_EQ(closes_, 1);
  EXPECT_TRUE(table_.OpenExports().empty());
}

// Two clients naming the same snapshot at once (opening runs outside the table's lock): the
// opener may run twice, but both get one shared instance and the spare one is closed. The
// opener waits (bounded) for the second caller, so both really are inside it together when
// the table allows that.
TEST_F(ExportTableTest, ConcurrentFindsOfAnOnDemandExportShareOneInstance) {
  std::atomic<int> inside{0};
  AddSnapshot("@s1", [&inside] {
    ++inside;
    const auto deadline = Clock::now() + std::chrono::seconds(2);
    while (inside < 2 && Clock::now() < deadline) std::this_thread::yield();
  });
  std::shared_ptr<const Export> a, b;
  std::thread ta([&] { a = table_.Find("@s1"); });
  std::thread tb([&] { b = table_.Find("@s1"); });
  ta.join();
  tb.join();
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a.get(), b.get()) << "two instances of one export are in use";
  EXPECT_GE(opens_, 1);
  EXPECT_LE(opens_, 2);
  EXPECT_EQ(closes_, opens_ - 1) << "the spare instance was not closed";
  EXPECT_EQ(table_.OpenExports().size(), 1u);
  a.reset();
  b.reset();
  EXPECT_EQ(closes_, opens_.load());
}

}  // namespace
}  // namespace strata
