#include "blockstore/check.h"

#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "blockstore/chain.h"
#include "blockstore/file.h"
#include "blockstore/layer.h"

namespace strata {
namespace {

constexpr int kMaxDepth = 65535;

// Checks both header copies of `file`; rewrites a damaged one from the valid one on repair.
void CheckHeaderCopies(File* file, bool repair, CheckReport* report) {
  std::string blocks(2 * kHeaderBlockSize, '\0');
  if (!file->Read(0, blocks.size(), blocks.data()).ok()) return;  // Layer::Open reports it
  LayerHeader copies[2];
  absl::Status status[2];
  for (int i = 0; i < 2; ++i) {
    status[i] = copies[i].DecodeFrom(
        absl::string_view(blocks).substr(kHeaderCopyOffset[i], kHeaderBlockSize));
  }
  if (status[0].ok() == status[1].ok()) return;  // both fine, or both bad (Open reports)
  int bad = status[0].ok() ? 1 : 0;
  std::string what = absl::StrCat(file->path(), ": header copy ", bad, " @ ",
                                  kHeaderCopyOffset[bad], ": ", status[bad].message(),
                                  " (the other copy is valid)");
  if (!repair) {
    report->repairable.push_back(what);
    return;
  }
  std::string good;
  copies[1 - bad].EncodeTo(&good);
  absl::Status s = file->Write(kHeaderCopyOffset[bad], good);
  if (s.ok()) s = file->Sync();
  (s.ok() ? report->repaired : report->problems)
      .push_back(s.ok() ? what : absl::StrCat(what, "; rewriting it failed: ", s.message()));
}

// Unreferenced slots that still hold host space, and, for a frozen layer, space past its end.
void CheckLeaks(Layer& layer, File* writable, bool repair, CheckReport* report) {
  const uint64_t cs = layer.cluster_size();
  std::vector<uint32_t> leaked;
  for (uint32_t slot : layer.UnreferencedSlots()) {
    off_t data = lseek(layer.file()->fd(), static_cast<off_t>(uint64_t{slot} * cs), SEEK_DATA);
    if (data >= 0 && uint64_t(data) < (uint64_t{slot} + 1) * cs) leaked.push_back(slot);
  }
  uint64_t tail = 0;
  auto size = layer.file()->Size();
  if (layer.header().state == LayerState::kFrozen && size.ok() &&
      *size > layer.high_water() * cs) {
    tail = *size - layer.high_water() * cs;
  }
  if (leaked.empty() && tail == 0) return;
  std::string what = absl::StrCat(layer.path(), ": ", leaked.size(),
                                  " unreferenced clusters hold space (",
                                  leaked.size() * cs, " bytes)",
                                  tail ? absl::StrCat(", ", tail, " bytes past the end") : "");
  if (!repair) {
    report->repairable.push_back(what);
    return;
  }
  absl::Status s;
  for (uint32_t slot : leaked) {
    if (s.ok()) s = writable->PunchHole(uint64_t{slot} * cs, cs);
  }
  if (s.ok() && tail) s = writable->Truncate(layer.high_water() * cs);
  if (s.ok()) s = writable->Sync();
  (s.ok() ? report->repaired : report->problems)
      .push_back(s.ok() ? what : absl::StrCat(what, "; repair failed: ", s.message()));
}

}  // namespace

absl::StatusOr<CheckReport> CheckChain(Env* env, const std::string& top_path, bool repair) {
  CheckReport report;
  if (!env->Exists(top_path)) return absl::NotFoundError(absl::StrCat(top_path, ": no such file"));
  std::string pending = absl::StrCat(DirName(top_path), "/.", BaseName(top_path), ".new");
  if (env->Exists(pending)) {
    report.problems.push_back(absl::StrCat(
        pending, ": an interrupted snapshot; opening the disk (e.g. `strata info`) finishes or "
                 "rolls it back"));
  }
  std::string path = top_path;
  for (int depth = 0; depth < kMaxDepth; ++depth) {
    if (env->Exists(MergeJournalPath(path))) {
      report.problems.push_back(absl::StrCat(
          MergeJournalPath(path), ": an interrupted commit; run `strata commit --resume ",
          top_path, "`"));
    }
    auto file = env->Open(path, {.writable = repair});
    if (!file.ok()) {
      report.problems.push_back(std::string(file.status().message()));
      break;
    }
    CheckHeaderCopies(file->get(), repair, &report);
    auto header = ReadLayerHeader(file->get());
    if (!header.ok()) {
      report.problems.push_back(std::string(header.status().message()));
      break;
    }
    auto layer = Layer::Open(env, path, Layer::Mode::kReadOnly);
    if (!layer.ok()) {
      report.problems.push_back(std::string(layer.status().message()));
    } else {
      report.notes.push_back(absl::StrCat(
          path, ": ", Name(header->state), header->snapshot_name.empty() ? "" : " '",
          header->snapshot_name, header->snapshot_name.empty() ? "" : "'", ", ",
          (*layer)->index().size(), " clusters indexed, ",
          (*layer)->journal_tail() / kJournalRecordSize, " journal records replayed"));
      CheckLeaks(**layer, file->get(), repair, &report);
    }
    if (header->parent_format != ParentFormat::kStrata) {
      if (header->parent_format == ParentFormat::kRaw) {
        std::string base = ResolvePath(DirName(path), header->parent_path);
        report.notes.push_back(absl::StrCat(base, ": raw base"));
      }
      break;
    }
    path = ResolvePath(DirName(path), header->parent_path);
  }
  // The links as a server would follow them: UUIDs, sizes, geometry, states.
  if (report.problems.empty()) {
    auto chain = Chain::Open(top_path, {.writable = false, .lock = false, .env = env});
    if (!chain.ok()) report.problems.push_back(std::string(chain.status().message()));
  }
  return report;
}

}  // namespace strata
