// What kind of disk image a file is, from its magic numbers: a strata layer, or one of the
// formats qemu-img reads (qcow2, VHDX, VMDK, VDI, VHD), so that `strata info` on a foreign
// image says how to import it instead of "bad magic". Never a guess about raw: a file with
// no known magic is kUnknown (raw, or damaged).
#ifndef STRATA_CLI_IMAGE_FORMAT_H_
#define STRATA_CLI_IMAGE_FORMAT_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace strata::cli {

enum class ImageFormat { kUnknown, kStrata, kQcow2, kVhdx, kVmdk, kVdi, kVhd };

// How many bytes of a file's start and end SniffImageFormat looks at.
inline constexpr uint64_t kSniffHeadBytes = 4096;
inline constexpr uint64_t kSniffTailBytes = 512;

// `head`: the file's first bytes (up to kSniffHeadBytes); `tail`: its last kSniffTailBytes (a
// fixed VHD has its only footer there), or fewer for a small file.
ImageFormat SniffImageFormat(absl::string_view head, absl::string_view tail);
// The same for the file at `path`; an error names the file when it cannot be read.
absl::StatusOr<ImageFormat> SniffImageFile(const std::string& path);
// OK unless `path` is an image of a format qemu-img reads (neither strata nor raw): then why
// it is not a strata layer and how to import it. A file that cannot be read is OK here: the
// caller's own open says why.
absl::Status RefuseForeignImage(const std::string& path);
// The name qemu-img's -f/-O takes ("qcow2", "vhdx", "vmdk", "vdi", "vpc"); "strata", "".
absl::string_view QemuName(ImageFormat format);
// The name a person knows it by ("qcow2", "VHDX", "VMDK", "VDI", "VHD (vpc)").
absl::string_view DisplayName(ImageFormat format);

}  // namespace strata::cli

#endif  // STRATA_CLI_IMAGE_FORMAT_H_
