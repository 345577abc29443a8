#include "blockstore/check.h"

#include <unistd.h>

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "blockstore/chain.h"
#include "blockstore/file.h"
#include "blockstore/layer.h"
#include "blockstore/parent_place.h"
#include "blockstore/recovery.h"
#include "blockstore/children.h"
#include "blockstore/tree.h"

namespace strata {
namespace {

constexpr int kMaxDepth = 65535;

// A repair's outcome: `what` among the repaired, or among the problems with why it failed.
void Repaired(CheckReport* report, const absl::Status& s, const std::string& what) {
  (s.ok() ? report->repaired : report->problems)
      .push_back(s.ok() ? what : absl::StrCat(what, "; repair failed: ", s.message()));
}

// Checks both header copies of `file`; rewrites a damaged one from the valid one on repair.
void CheckHeaderCopies(File* file, bool repair, CheckReport* report) {
  auto read = ReadHeaderCopies(file);
  if (!read.ok()) return;  // Layer::Open reports it
  const HeaderCopies& c = *read;
  if (!c.status[0].ok() && !c.status[1].ok()) return;  // Layer::Open reports it
  std::string what;
  int bad;
  if (c.status[0].ok() && c.status[1].ok()) {
    if (c.blocks.compare(0, kHeaderBlockSize, c.blocks, kHeaderBlockSize, kHeaderBlockSize) == 0) {
      return;
    }
    // A header update was interrupted between its two writes. The newer copy rules, but until
    // the older one is rewritten, damage to the newer would fall back to an older state.
    bad = 1 - c.newest();
    what = absl::StrCat(file->path(), ": header copy ", bad, " @ ", kHeaderCopyOffset[bad],
                        " holds an older header (sequence ", c.header[bad].sequence,
                        ", the other ", c.header[1 - bad].sequence,
                        "): an interrupted header update");
  } else {
    bad = c.status[0].ok() ? 1 : 0;
    what = absl::StrCat(file->path(), ": header copy ", bad, " @ ", kHeaderCopyOffset[bad], ": ",
                        c.status[bad].message(), " (the other copy is valid)");
  }
  if (!repair) {
    report->repairable.push_back(what);
    return;
  }
  std::string good;
  c.header[1 - bad].EncodeTo(&good);
  absl::Status s = file->Write(kHeaderCopyOffset[bad], good);
  if (s.ok()) s = file->Sync();
  Repaired(report, s, what);
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
  Repaired(report, s, what);
}

// Before the layers are read: a repair locks the top (in *locks) and recovers interrupted
// operations; a check notes a disk open for writing. Then every interrupted operation left is
// reported (on a served disk, as the server's business). Returns whether there was one.
absl::StatusOr<bool> CheckOperations(Env* env, const std::string& top_path, bool repair,
                                     LockSet* locks, CheckReport* out) {
  CheckReport& report = *out;
  if (repair) {
    if (auto s = locks->Exclusive(env, top_path); !s.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cannot repair ", top_path, " while it is open for writing: ", s.message(),
          " (`strata check` without --repair reads it as it is on disk)"));
    }
    auto recovered = RecoverChain(env, top_path, locks);
    if (!recovered.ok()) report.problems.push_back(std::string(recovered.status().message()));
    for (absl::string_view line : absl::StrSplit(recovered.value_or(""), '\n', absl::SkipEmpty())) {
      report.repaired.push_back(std::string(line));
    }
  }
  const bool served = !repair && LockedExclusivelyByOther(env, top_path);
  if (served) {
    // A server (or a merge) has the disk open for writing: what the files say may lag behind
    // what it holds in memory.
    report.notes.push_back(absl::StrCat(
        top_path, " is open for writing (a running `strata serve`?): this check reads the "
                  "files as they are on disk, so its view may be stale (a leak may be space "
                  "the server has just allocated); stop the server for a definitive answer"));
  }
  const auto interrupted = FindInterruptedOperations(env, top_path);
  for (const InterruptedOperation& op : interrupted) {
    if (op.recoverable && served) {
      // Not interrupted: the server that holds the disk is running it (a deletion, a snapshot
      // being taken) or will finish it.
      report.notes.push_back(absl::StrCat(op.what, "; in the hands of the server that has the "
                                               "disk open (`strata list --control` shows a "
                                               "deletion's progress)"));
    } else if (op.recoverable) {
      report.repairable.push_back(absl::StrCat(
          op.what, "; `strata check --repair`, or any strata command that changes the disk, "
                   "finishes or rolls it back"));
    } else {
      report.problems.push_back(op.what);
    }
  }
  return !interrupted.empty();
}

// Registered children that are gone, anywhere in the snapshot tree: a merge into their parent
// refuses until they are forgotten (a moved child would break), so --repair prunes them (what
// was deleted cannot be read through the parent anyway; a moved one is re-registered by
// `strata rebase -u`).
void CheckChildRegistries(Env* env, const std::vector<TreeNode>& nodes, bool repair,
                          CheckReport* report) {
  for (const TreeNode& node : nodes) {
    for (const RegisteredChild& child : node.gone) {
      std::string what = absl::StrCat(
          node.path, ": registered child ", child.path, " (", UuidToString(child.child_uuid),
          ") is gone: deleted, or moved without `strata rebase -u`; merges into ", node.path,
          " refuse until it is forgotten");
      if (!repair) {
        report->repairable.push_back(std::move(what));
        continue;
      }
      auto pruned = PruneChildRegistry(env, AbsoluteDir(node.path), [&](const RegisteredChild& c) {
        return c.child_uuid == child.child_uuid && c.path == child.path;
      });
      Repaired(report, pruned.status(), what);
    }
    CheckChildRegistries(env, node.children, repair, report);
  }
}

}  // namespace

absl::StatusOr<CheckReport> CheckChain(Env* env, const std::string& top_path, bool repair,
                                       const std::vector<std::string>& allowed_parent_dirs) {
  const ParentScope scope{top_path, allowed_parent_dirs};
  CheckReport report;
  if (!env->Exists(top_path)) return absl::NotFoundError(absl::StrCat(top_path, ": no such file"));
  // A repair holds the top's lock (and each repaired layer's) to the end: punching space a
  // running server has just reused for an unflushed write would destroy it.
  LockSet locks;
  // Before recovery follows the links (it may finish a merge beside a parent), and no repair
  // of a chain whose links are refused.
  const absl::Status links = CheckChainParents(env, scope);
  if (!links.ok()) {
    report.problems.push_back(std::string(links.message()));
    if (repair) report.notes.push_back(absl::StrCat(top_path, ": not repaired"));
    repair = false;
  }
  const absl::StatusOr<bool> interrupted = CheckOperations(env, top_path, repair, &locks, &report);
  if (!interrupted.ok()) return interrupted.status();
  std::string path = top_path;
  std::string child;  // the layer naming `path` as its parent
  for (int depth = 0; depth < kMaxDepth; ++depth) {
    bool fix = repair;
    if (fix) {
      if (auto s = locks.Exclusive(env, path); !s.ok()) {
        // A frozen layer other disks stand on may be read by their servers (a golden image
        // shared between hosts): theirs to keep as it is, not a problem of this disk.
        (depth == 0 ? report.problems : report.notes)
            .push_back(absl::StrCat(path, ": not repaired: ", s.message()));
        fix = false;
      }
    }
    auto open = [&](bool writable) {
      return depth == 0 ? env->Open(path, {.writable = writable})
                        : OpenParentFile(env, child, path, ParentFormat::kStrata, scope,
                                         {.writable = writable});
    };
    auto file = open(fix);
    if (fix && !file.ok() && IsWriteRefused(file.status())) {
      // A read-only mount or another owner's file (a shared golden image): checked, not fixed.
      report.notes.push_back(absl::StrCat(path, ": not repaired: ", file.status().message()));
      fix = false;
      file = open(false);
    }
    if (!file.ok()) {
      if (links.ok()) report.problems.push_back(std::string(file.status().message()));
      break;
    }
    CheckHeaderCopies(file->get(), fix, &report);
    auto header = ReadLayerHeader(file->get());
    if (!header.ok()) {
      report.problems.push_back(std::string(header.status().message()));
      break;
    }
    if (header->state == LayerState::kMerging) {
      // Only the merge may open it (it is a mix of two layers until the merge ends); the
      // interrupted merge is reported above.
      report.notes.push_back(absl::StrCat(path, ": merging, not checked"));
    } else if (auto layer = Layer::Open(env, path, Layer::Mode::kReadOnly); !layer.ok()) {
      report.problems.push_back(std::string(layer.status().message()));
    } else {
      report.notes.push_back(absl::StrCat(
          path, ": ", Name(header->state), header->snapshot_name.empty() ? "" : " '",
          header->snapshot_name, header->snapshot_name.empty() ? "" : "'", ", ",
          (*layer)->index().size(), " clusters indexed, ",
          (*layer)->journal_tail() / kJournalRecordSize, " journal records replayed"));
      CheckLeaks(**layer, file->get(), fix, &report);
    }
    if (header->parent_format != ParentFormat::kStrata) {
      if (header->parent_format == ParentFormat::kRaw) {
        std::string base = ResolvePath(DirName(path), header->parent_path);
        if (auto opened = OpenParentFile(env, path, base, ParentFormat::kRaw, scope);
            !opened.ok()) {
          if (links.ok()) report.problems.push_back(std::string(opened.status().message()));
        } else {
          report.notes.push_back(absl::StrCat(base, ": raw base"));
        }
      } else if (header->parent_format == ParentFormat::kNbd) {
        report.notes.push_back(
            absl::StrCat(header->parent_path, ": NBD base (a remote export: not read by check)"));
      }
      break;
    }
    child = path;
    path = ResolvePath(DirName(path), header->parent_path);
  }
  if (auto tree = ReadSnapshotTree(env, top_path); tree.ok()) {
    CheckChildRegistries(env, tree->roots, repair, &report);
  }
  // The links as a server would follow them: UUIDs, sizes, geometry, states (an unfinished
  // operation, reported above, would only fail this).
  if (report.problems.empty() && !*interrupted) {
    auto chain = Chain::Open(top_path, {.writable = false, .lock = false, .env = env,
                                        .allowed_parent_dirs = allowed_parent_dirs});
    if (!chain.ok()) report.problems.push_back(std::string(chain.status().message()));
  }
  return report;
}

}  // namespace strata
