#include "cli/image_format.h"

#include <string>

#include "blockstore/format.h"
#include "gtest/gtest.h"

namespace strata::cli {
namespace {

std::string Padded(absl::string_view start, size_t size = 4096) {
  std::string s(start);
  s.resize(size, '\0');
  return s;
}

TEST(SniffImageFormat, KnowsEachFormatByItsMagic) {
  EXPECT_EQ(SniffImageFormat(Padded("QFI\xfb"), ""), ImageFormat::kQcow2);
  EXPECT_EQ(SniffImageFormat(Padded("vhdxfile"), ""), ImageFormat::kVhdx);
  EXPECT_EQ(SniffImageFormat(Padded("KDMV"), ""), ImageFormat::kVmdk);
  EXPECT_EQ(SniffImageFormat("# Disk DescriptorFile\nversion=1\n", ""), ImageFormat::kVmdk);
  EXPECT_EQ(SniffImageFormat(Padded("conectix"), ""), ImageFormat::kVhd);
  EXPECT_EQ(SniffImageFormat(Padded(absl::string_view(kLayerMagic, sizeof(kLayerMagic))), ""),
            ImageFormat::kStrata);
}

TEST(SniffImageFormat, VdiNeedsItsSignatureNotOnlyTheBanner) {
  std::string vdi = Padded("<<< Oracle VM VirtualBox Disk Image >>>\n");
  EXPECT_EQ(SniffImageFormat(vdi, ""), ImageFormat::kUnknown);
  vdi.replace(64, 4, "\x7f\x10\xda\xbe");
  EXPECT_EQ(SniffImageFormat(vdi, ""), ImageFormat::kVdi);
}

TEST(SniffImageFormat, FixedVhdHasItsFooterOnlyAtTheEnd) {
  EXPECT_EQ(SniffImageFormat(Padded(""), Padded("conectix", 512)), ImageFormat::kVhd);
}

TEST(SniffImageFormat, RawShortAndEmptyAreUnknown) {
  EXPECT_EQ(SniffImageFormat(Padded("hello"), Padded("", 512)), ImageFormat::kUnknown);
  EXPECT_EQ(SniffImageFormat("QF", ""), ImageFormat::kUnknown);
  EXPECT_EQ(SniffImageFormat("", ""), ImageFormat::kUnknown);
}

TEST(SniffImageFormat, NamesForQemuImgAndForPeople) {
  EXPECT_EQ(QemuName(ImageFormat::kVhd), "vpc");
  EXPECT_EQ(DisplayName(ImageFormat::kVhd), "VHD (vpc)");
  EXPECT_EQ(DisplayName(ImageFormat::kQcow2), "qcow2");
  EXPECT_EQ(QemuName(ImageFormat::kUnknown), "");
}

}  // namespace
}  // namespace strata::cli
