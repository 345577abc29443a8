#include "cli/resize_command.h"

#include <cstdio>
#include <string>

#include "absl/strings/match.h"
#include "blockstore/file.h"
#include "blockstore/resize.h"
#include "cli/args.h"
#include "cli/command.h"
#include "cli/progress.h"

namespace strata::cli {
namespace {

const CommandSpec kResize{.name = "resize",
                          .usage = R"(usage: strata resize LAYER SIZE
       strata resize LAYER +SIZE

Grows the disk whose active layer is LAYER to SIZE bytes (or by SIZE with +), as `qemu-img
resize` grows an overlay: its snapshots and raw base keep their sizes, and the new space past
them reads as zeros until written. SIZE is written as `strata create` takes a size: 4096,
64M, 20G, 1.5T (binary units), rounded up to a multiple of 512. Only growing: a smaller SIZE
is refused (shrinking is not supported), the same SIZE changes nothing. Offline: a served disk
is refused (stop the server first: NBD cannot tell connected clients that the size changed).
Crash-safe: one header update, so a crash leaves the old size or the new one.

  -h, --help   this text
)",
                          .positional = 2,
                          .follows_parents = true};

// "20G" or "+10G".
absl::StatusOr<NewSize> ParseNewSize(const std::string& text) {
  NewSize size;
  size.relative = absl::StartsWith(text, "+");
  auto bytes = ParseSize(size.relative ? text.substr(1) : text);
  if (!bytes.ok()) return bytes.status();
  size.bytes = *bytes;
  return size;
}

}  // namespace

int ResizeCommand(int argc, char** argv) {
  Args args;
  if (auto exit = ParseCommand(argc, argv, kResize, &args)) return *exit;
  auto size = ParseNewSize(args.positional[1]);
  if (!size.ok()) return UsageError(kResize, size.status().message());
  const std::string& layer = args.positional[0];
  if (auto s = CheckParents(args, layer); !s.ok()) return Fail(kResize.name, s);
  ProgressBar bar("resume commit");
  auto result = ResizeDisk(Env::Default(), layer, *size,
                           [&](uint64_t d, uint64_t t) { bar.Update(d, t); },
                           AllowedParentDirs(args));
  bar.Finish();
  if (!result.ok()) return Fail(kResize.name, result.status());
  if (result->new_size == result->old_size) {
    std::printf("%s is already %s (%llu bytes): nothing to do\n", layer.c_str(),
                HumanBytes(result->new_size).c_str(),
                static_cast<unsigned long long>(result->new_size));
  } else {
    std::printf("resized %s from %s to %s (%llu bytes)\n", layer.c_str(),
                HumanBytes(result->old_size).c_str(), HumanBytes(result->new_size).c_str(),
                static_cast<unsigned long long>(result->new_size));
  }
  return 0;
}

}  // namespace strata::cli
