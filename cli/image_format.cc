#include "cli/image_format.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "blockstore/file.h"
#include "blockstore/format.h"

namespace strata::cli {
namespace {

bool HasAt(absl::string_view bytes, size_t offset, absl::string_view magic) {
  return bytes.size() >= offset + magic.size() && bytes.substr(offset, magic.size()) == magic;
}

// VDI: a text banner "<<< ... >>>" and, at offset 64, the signature 0xbeda107f
// (little-endian); the banner's text varies between VirtualBox versions, the signature not.
bool IsVdi(absl::string_view head) {
  return HasAt(head, 0, "<<< ") && HasAt(head, 64, absl::string_view("\x7f\x10\xda\xbe", 4));
}

// Reads up to `n` bytes at `offset` of `fd`; short at the end of the file.
absl::StatusOr<std::string> ReadAt(int fd, uint64_t offset, uint64_t n, const std::string& path) {
  std::string buf(n, '\0');
  ssize_t got = pread(fd, buf.data(), n, static_cast<off_t>(offset));
  if (got < 0) return ErrnoStatus(errno, "read", path, static_cast<int64_t>(offset));
  buf.resize(static_cast<size_t>(got));
  return buf;
}

}  // namespace

ImageFormat SniffImageFormat(absl::string_view head, absl::string_view tail) {
  if (HasAt(head, 0, absl::string_view(kLayerMagic, sizeof(kLayerMagic)))) {
    return ImageFormat::kStrata;
  }
  if (HasAt(head, 0, "QFI\xfb")) return ImageFormat::kQcow2;
  if (HasAt(head, 0, "vhdxfile")) return ImageFormat::kVhdx;
  // A sparse extent (monolithicSparse, streamOptimized) or a descriptor file of its own.
  if (HasAt(head, 0, "KDMV") || HasAt(head, 0, "# Disk DescriptorFile")) {
    return ImageFormat::kVmdk;
  }
  if (IsVdi(head)) return ImageFormat::kVdi;
  // A dynamic VHD copies its footer to the start; a fixed one has it only at the end.
  if (HasAt(head, 0, "conectix") || HasAt(tail, 0, "conectix")) return ImageFormat::kVhd;
  return ImageFormat::kUnknown;
}

absl::StatusOr<ImageFormat> SniffImageFile(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, "open", path);
  struct stat st;
  absl::StatusOr<std::string> head, tail;
  if (fstat(fd, &st) != 0) {
    head = ErrnoStatus(errno, "stat", path);
  } else {
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    head = ReadAt(fd, 0, kSniffHeadBytes, path);
    tail = ReadAt(fd, size > kSniffTailBytes ? size - kSniffTailBytes : 0, kSniffTailBytes, path);
  }
  close(fd);
  if (!head.ok()) return head.status();
  if (!tail.ok()) return tail.status();
  return SniffImageFormat(*head, *tail);
}

absl::Status RefuseForeignImage(const std::string& path) {
  auto format = SniffImageFile(path);
  if (!format.ok() || *format == ImageFormat::kStrata || *format == ImageFormat::kUnknown) {
    return absl::OkStatus();
  }
  return absl::FailedPreconditionError(absl::StrCat(
      path, " is a ", DisplayName(*format), " image, not a strata layer: import it with `strata "
      "convert ", path, " DISK.strata`"));
}

absl::string_view QemuName(ImageFormat format) {
  switch (format) {
    case ImageFormat::kStrata: return "strata";
    case ImageFormat::kQcow2: return "qcow2";
    case ImageFormat::kVhdx: return "vhdx";
    case ImageFormat::kVmdk: return "vmdk";
    case ImageFormat::kVdi: return "vdi";
    case ImageFormat::kVhd: return "vpc";
    case ImageFormat::kUnknown: break;
  }
  return "";
}

absl::string_view DisplayName(ImageFormat format) {
  switch (format) {
    case ImageFormat::kVhdx: return "VHDX";
    case ImageFormat::kVmdk: return "VMDK";
    case ImageFormat::kVdi: return "VDI";
    case ImageFormat::kVhd: return "VHD (vpc)";
    default: return QemuName(format);
  }
}

}  // namespace strata::cli
