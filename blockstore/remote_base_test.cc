// A chain on a remote base (parent format nbd) through an in-memory RemoteBase: what the chain
// decides — segments, block status, identity checks, copy-on-read, trust of the URI — without
// a network (server/remote/nbd_base_test.cc tests the libnbd client against nbdkit).
#include "blockstore/remote_base.h"

#include <cstring>
#include <string>

#include "blockstore/chain.h"
#include "blockstore/layer.h"
#include "blockstore/parent_place.h"
#include "blockstore/test_util.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

using testing::TempDir;

constexpr uint64_t kSize = 4 << 20;

class MemoryBase final : public RemoteBase {
 public:
  MemoryBase(std::string bytes, Uuid layer) : bytes_(std::move(bytes)), layer_(layer) {}
  const std::string& uri() const override { return uri_; }
  uint64_t size() const override { return bytes_.size(); }
  Uuid layer_uuid() const override { return layer_; }
  void ReadAsync(uint64_t offset, absl::Span<char> out,
                 std::function<void(absl::Status)> done) override {
    ++reads_;
    if (down_) return done(absl::UnavailableError("the base is down"));
    std::memcpy(out.data(), bytes_.data() + offset, out.size());
    done(absl::OkStatus());
  }
  std::vector<std::pair<uint64_t, uint64_t>> DataRanges(uint64_t offset,
                                                        uint64_t length) const override {
    // Data in the first half only.
    const uint64_t end = std::min(offset + length, size() / 2);
    if (offset >= end) return {};
    return {{offset, end}};
  }
  RemoteBaseState State() const override { return {.connected = !down_}; }

  std::string uri_;
  std::string bytes_;
  Uuid layer_;
  bool down_ = false;
  int reads_ = 0;
};

class RemoteBaseTest : public ::testing::Test {
 protected:
  void SetUp() override {
    base_bytes_ = testing::PatternBytes(kSize, 3);
    opener_ = [this](const std::string& uri, const std::string&)
        -> absl::StatusOr<std::unique_ptr<RemoteBase>> {
      EXPECT_EQ(uri, uri_);
      auto base = std::make_unique<MemoryBase>(base_bytes_, layer_uuid_);
      base->uri_ = uri;
      base->down_ = down_;
      last_ = base.get();
      return std::unique_ptr<RemoteBase>(std::move(base));
    };
    uri_ = "nbd+unix:///golden?socket=" + dir_.File("golden.sock");
    ASSERT_TRUE(CreateLayer(top(), {.parent = uri_,
                                    .parent_format = ParentFormat::kNbd,
                                    .open_remote_base = opener_})
                    .ok());
  }
  std::string top() const { return dir_.File("vm.strata"); }
  absl::StatusOr<std::unique_ptr<Chain>> Open(bool writable = true) {
    return Chain::Open(top(), {.writable = writable, .open_remote_base = opener_});
  }

  TempDir dir_;
  std::string uri_;  // the socket inside the layer's tree: trusted
  std::string base_bytes_;
  Uuid layer_uuid_{};
  bool down_ = false;
  MemoryBase* last_ = nullptr;
  RemoteBaseOpener opener_;
};

TEST_F(RemoteBaseTest, HeaderRecordsTheUriAndSizeAndReadsComeFromTheBase) {
  auto header = ReadLayerHeader(Env::Default(), top());
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_EQ(header->parent_format, ParentFormat::kNbd);
  EXPECT_EQ(header->parent_path, uri_);  // as given, never resolved as a path
  EXPECT_EQ(header->parent_size, kSize);
  EXPECT_EQ(header->virtual_size, kSize);
  auto chain = Open();
  ASSERT_TRUE(chain.ok()) << chain.status();
  std::vector<Segment> segments;
  ReadPin pin;
  ASSERT_TRUE((*chain)->MapRead(4096, 8192, &segments, &pin).ok());
  ASSERT_EQ(segments.size(), 1u);
  EXPECT_EQ(segments[0].kind, Segment::Kind::kRemote);
  EXPECT_EQ(segments[0].file_offset, 4096u);
  EXPECT_EQ(segments[0].layer, 0);
  std::string got(100000, '\0');
  ASSERT_TRUE((*chain)->Read(12345, absl::MakeSpan(got)).ok());
  EXPECT_EQ(got, base_bytes_.substr(12345, got.size()));
  EXPECT_EQ((*chain)->DescribeLayer(0), absl::StrCat("NBD base (", uri_, ")"));
}

TEST_F(RemoteBaseTest, UnalignedWritesFillTheirEdgesFromTheBase) {
  auto chain = Open();
  ASSERT_TRUE(chain.ok()) << chain.status();
  ASSERT_TRUE((*chain)->Write(1000, std::string(5000, 'x')).ok());
  std::string expect = base_bytes_.substr(0, 16384);
  expect.replace(1000, 5000, std::string(5000, 'x'));
  std::string got(16384, '\0');
  ASSERT_TRUE((*chain)->Read(0, absl::MakeSpan(got)).ok());
  EXPECT_EQ(got, expect);
}

TEST_F(RemoteBaseTest, BlockStatusTakesTheBasesHoles) {
  auto chain = Open();
  ASSERT_TRUE(chain.ok()) << chain.status();
  std::vector<Extent> extents;
  ASSERT_TRUE((*chain)->Extents(0, kSize, &extents).ok());
  ASSERT_EQ(extents.size(), 2u);
  EXPECT_TRUE(extents[0].data);
  EXPECT_EQ(extents[0].length, kSize / 2);
  EXPECT_EQ(extents[0].layer, 0);
  EXPECT_TRUE(extents[1].zero);
  EXPECT_FALSE(extents[1].data);
}

TEST_F(RemoteBaseTest, AFailingBaseFailsTheReadNotTheChain) {
  auto chain = Open();
  ASSERT_TRUE(chain.ok()) << chain.status();
  ASSERT_TRUE((*chain)->Write(0, std::string(65536, 'y')).ok());
  last_->down_ = true;
  std::string got(4096, '\0');
  EXPECT_TRUE(absl::IsUnavailable((*chain)->Read(1 << 20, absl::MakeSpan(got))));
  ASSERT_TRUE((*chain)->Read(0, absl::MakeSpan(got)).ok());  // the layer's own data
  EXPECT_EQ(got, std::string(4096, 'y'));
}

TEST_F(RemoteBaseTest, ABaseOfAnotherSizeOrLayerIsRefused) {
  base_bytes_.resize(kSize / 2);
  auto chain = Open();
  ASSERT_FALSE(chain.ok());
  EXPECT_NE(chain.status().message().find("the base changed"), absl::string_view::npos)
      << chain.status();
  // A layer created on a strata layer's export records its UUID and wants it back.
  base_bytes_ = testing::PatternBytes(kSize, 3);
  layer_uuid_ = NewUuid();
  const std::string other = dir_.File("other.strata");
  ASSERT_TRUE(CreateLayer(other, {.parent = uri_, .parent_format = ParentFormat::kNbd,
                                  .open_remote_base = opener_})
                  .ok());
  const Uuid recorded = layer_uuid_;
  layer_uuid_ = NewUuid();
  auto reopened = Chain::Open(other, {.writable = false, .open_remote_base = opener_});
  ASSERT_FALSE(reopened.ok());
  EXPECT_NE(reopened.status().message().find(UuidToString(recorded)), absl::string_view::npos)
      << reopened.status();
}

TEST_F(RemoteBaseTest, WithoutAnOpenerTheChainSaysWhy) {
  auto chain = Chain::Open(top(), {.writable = false});
  ASSERT_FALSE(chain.ok());
  EXPECT_NE(chain.status().message().find("cannot connect"), absl::string_view::npos)
      << chain.status();
}

TEST_F(RemoteBaseTest, CopyOnReadKeepsWhatTheBaseAnsweredButNeverOverAWrite) {
  auto chain = Open();
  ASSERT_TRUE(chain.ok()) << chain.status();
  ASSERT_TRUE((*chain)->Write(8192, std::string(4096, 'w')).ok());
  // The guest read [0, 64K): what it got from the base goes into the top layer.
  auto copied = (*chain)->CopyUpFromBase(0, base_bytes_.substr(0, 65536));
  ASSERT_TRUE(copied.ok()) << copied.status();
  EXPECT_EQ(copied->bytes, 65536u - 4096u);  // the written sub-block stays the guest's
  last_->down_ = true;
  std::string got(65536, '\0');
  ASSERT_TRUE((*chain)->Read(0, absl::MakeSpan(got)).ok());
  std::string expect = base_bytes_.substr(0, 65536);
  expect.replace(8192, 4096, std::string(4096, 'w'));
  EXPECT_EQ(got, expect);
  // Nothing more to copy there; and only whole sub-blocks of one cluster are taken.
  copied = (*chain)->CopyUpFromBase(0, base_bytes_.substr(0, 65536));
  ASSERT_TRUE(copied.ok());
  EXPECT_EQ(copied->bytes, 0u);
  EXPECT_FALSE((*chain)->CopyUpFromBase(100, std::string(4096, 'z')).ok());
  EXPECT_FALSE((*chain)->CopyUpFromBase(0, std::string(2 * 65536, 'z')).ok());
}

TEST(RemoteParentTest, UnixSocketsFollowTheFileRuleAndTcpNeedsItsUriTrusted) {
  TempDir dir, outside;
  const ParentScope scope{dir.File("vm.strata"), {}};
  const std::string child = dir.File("vm.strata");
  EXPECT_TRUE(CheckRemoteParent(child, "nbd+unix:///?socket=" + dir.File("b.sock"), scope).ok());
  auto s = CheckRemoteParent(child, "nbd+unix:///?socket=" + outside.File("b.sock"), scope);
  EXPECT_TRUE(absl::IsPermissionDenied(s)) << s;
  EXPECT_NE(s.message().find("--allow-parent-dir"), absl::string_view::npos) << s;
  // libnbd decodes %XX: so does the check.
  s = CheckRemoteParent(child, "nbd+unix:///?socket=%2Fetc%2Fx.sock", scope);
  EXPECT_TRUE(absl::IsPermissionDenied(s)) << s;
  s = CheckRemoteParent(child, "nbds+unix:///?socket=" + dir.File("b.sock") +
                                   "&tls-psk-file=/etc/shadow", scope);
  EXPECT_TRUE(absl::IsPermissionDenied(s)) << s;
  s = CheckRemoteParent(child, "nbd://golden.example:10809/img", scope);
  EXPECT_TRUE(absl::IsPermissionDenied(s)) << s;
  EXPECT_TRUE(CheckRemoteParent(child, "nbd://golden.example:10809/img",
                                {scope.top_path, {"nbd://golden.example:10809/"}})
                  .ok());
  EXPECT_FALSE(CheckRemoteParent(child, "nbd+vsock://2", scope).ok());
  EXPECT_FALSE(CheckRemoteParent(child, "/etc/passwd", scope).ok());
  EXPECT_FALSE(CheckRemoteParent(child, "nbd+unix:///?socket=" + dir.File("b.sock") + "&x=1",
                                 scope)
                   .ok());
}

}  // namespace
}  // namespace strata
