#include "blockstore/stream.h"

#include <sys/statvfs.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <thread>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "blockstore/chain.h"
#include "blockstore/children.h"
#include "blockstore/clock.h"
#include "blockstore/file.h"
#include "blockstore/layer.h"
#include "blockstore/recovery.h"

namespace strata {
namespace {

// A run that keeps being sent back (the target moved under it, a write always in flight on a
// cluster) gives up after this many tries rather than spin.
constexpr int kMaxAttempts = 100;
constexpr int kMaxBusyRounds = 10000;

std::string Mib(uint64_t bytes) { return absl::StrCat((bytes + (1 << 20) - 1) >> 20, " MiB"); }

std::string SnapshotLabel(const StreamJournalRecord& r) {
  return r.name.empty() ? absl::StrCat("layer ", r.layer) : absl::StrCat("snapshot '", r.name, "'");
}

struct Journal {
  StreamJournalRecord record;
  std::string path;
  std::string layer_path;  // X, beside the journal
};

absl::StatusOr<Journal> ReadJournal(Env* env, const std::string& path) {
  auto text = ReadWholeFile(env, path);
  if (!text.ok()) return text.status();
  Journal j;
  if (absl::Status s = j.record.DecodeFrom(*text); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("stream journal ", path, ": ", s.message()));
  }
  j.path = path;
  j.layer_path = DirName(path) + "/" + j.record.layer;
  if (StreamJournalPath(j.layer_path) != path) {
    return absl::DataLossError(
        absl::StrCat("stream journal ", path, ": does not name the layer beside it"));
  }
  return j;
}

// How the child (in `child_dir`) links to X's parent once X is gone.
ParentRef ParentOfX(const LayerHeader& x, const std::string& x_path, const std::string& child_dir) {
  ParentRef ref;
  ref.format = x.parent_format;
  ref.uuid = x.parent_uuid;
  ref.size = x.parent_size;
  // A path is made to resolve the same from the child's directory; an NBD base's URI is no path.
  if (x.parent_format == ParentFormat::kNbd) {
    ref.path = x.parent_path;
  } else if (x.parent_format != ParentFormat::kNone) {
    ref.path = ParentLink(child_dir, ResolvePath(DirName(x_path), x.parent_path));
  }
  return ref;
}

absl::StatusOr<std::unique_ptr<Layer>> OpenX(Env* env, const Journal& j) {
  auto x = Layer::Open(env, j.layer_path, Layer::Mode::kReadOnly);
  if (!x.ok()) return x.status();
  if ((*x)->header().uuid != j.record.uuid) {
    return absl::FailedPreconditionError(absl::StrCat(
        "stream journal ", j.path, " names layer ", UuidToString(j.record.uuid), " but ",
        j.layer_path, " is layer ", UuidToString((*x)->header().uuid),
        ": refusing to touch it (were files moved or replaced?)"));
  }
  return x;
}

// Where the copies go: the served chain's active layer, or a layer file of its own.
class Target {
 public:
  virtual ~Target() = default;
  virtual absl::StatusOr<CopyUpResult> Copy(uint64_t cluster, const ClusterEntry& entry) = 0;
  virtual absl::Status Replenish() = 0;
  virtual absl::Status Flush() = 0;
  // A flush that syncs only the copies (not the guest's writes) may come every batch.
  virtual bool cheap_flush() const = 0;
};

class ChainTarget final : public Target {
 public:
  ChainTarget(Chain* chain, const Layer& x) : chain_(chain), x_(x) {}
  absl::StatusOr<CopyUpResult> Copy(uint64_t cluster, const ClusterEntry& entry) override {
    return chain_->CopyUp(cluster, entry, x_);
  }
  absl::Status Replenish() override { return chain_->ReplenishSlots(); }
  absl::Status Flush() override { return chain_->Flush(); }
  bool cheap_flush() const override { return false; }

 private:
  Chain* chain_;
  const Layer& x_;
};

// A layer no one else writes: a frozen child (also online: the chain only reads it, through
// its own descriptor and the entries it had), or any child offline.
class LayerTarget final : public Target {
 public:
  LayerTarget(Env* env, Layer* child, const Layer& x) : env_(env), child_(child), x_(x) {}
  absl::StatusOr<CopyUpResult> Copy(uint64_t cluster, const ClusterEntry& entry) override {
    ClusterEntry c = child_->Get(cluster);
    const uint32_t absent =
        FullSubBlockMask(child_->header().SubBlocksPerCluster()) & ~(c.present | c.zero);
    const uint32_t data = entry.present & absent;
    const ClusterEntry before = c;
    c.zero |= entry.zero & absent;
    CopyUpResult result;
    if (data != 0) {
      if (c.slot == 0) {
        auto slot = child_->AllocateSlot();
        if (!slot.ok()) return slot.status();
        c.slot = *slot;
      }
      if (auto s = CopyClusterData(env_, x_, entry.slot, child_, c.slot, data); !s.ok()) return s;
      c.present |= data;
      result.bytes = uint64_t{static_cast<uint32_t>(__builtin_popcount(data))} *
                     child_->sub_block_size();
    }
    if (!(c == before)) child_->SetEntry(cluster, c);
    return result;
  }
  absl::Status Replenish() override { return absl::OkStatus(); }
  absl::Status Flush() override { return child_->Flush(); }
  bool cheap_flush() const override { return true; }

 private:
  Env* env_;
  Layer* child_;
  const Layer& x_;
};

// Waits `duration` or until *stop is set.
void SleepUnlessStopped(std::chrono::nanoseconds duration, const std::atomic<bool>* stop) {
  const auto until = std::chrono::steady_clock::now() + duration;
  while (std::chrono::steady_clock::now() < until) {
    if (stop != nullptr && stop->load()) return;
    std::this_thread::sleep_for(std::min<std::chrono::nanoseconds>(
        until - std::chrono::steady_clock::now(), std::chrono::milliseconds(20)));
  }
}

// X is read in slot order: while one window of its clusters is copied, the kernel reads the
// next one (the copies then wait for the disk less often). Returns where the window ends.
size_t ReadAhead(const Layer& x, const std::vector<std::pair<uint64_t, ClusterEntry>>& work,
                 size_t from) {
  constexpr size_t kWindowClusters = 64;
  const size_t end = std::min(work.size(), from + kWindowClusters);
  const uint64_t first = x.DataOffset(work[from].second.slot, 0);
  const uint64_t last = x.DataOffset(work[end - 1].second.slot, 0) + x.header().cluster_size;
  // Slots far apart (a sparse layer): the clusters between are not X's data; no hint.
  if (last - first <= kWindowClusters * 4 * uint64_t{x.header().cluster_size}) {
    AdviseWillNeed(*x.file(), first, last - first);
  }
  return end;
}

// One pass over X's index in slot order (X's file is read front to back), then the clusters a
// write was in flight on, until every cluster is done.
absl::Status CopyPass(const Layer& x, Target* target, uint64_t rate_limit,
                      const StreamOptions& options, uint64_t* copied) {
  std::vector<std::pair<uint64_t, ClusterEntry>> work;
  x.index().ForEach([&](uint64_t cluster, const ClusterEntry& e) { work.emplace_back(cluster, e); });
  std::stable_sort(work.begin(), work.end(),
                   [](const auto& a, const auto& b) { return a.second.slot < b.second.slot; });
  const uint32_t sbs = x.sub_block_size();
  auto data_bytes = [sbs](const ClusterEntry& e) {
    return uint64_t{static_cast<uint32_t>(__builtin_popcount(e.present))} * sbs;
  };
  StreamProgress progress;
  for (const auto& w : work) progress.total += data_bytes(w.second);
  if (options.progress) options.progress(progress);
  const auto started = std::chrono::steady_clock::now();
  auto last_flush = started;
  uint64_t since_flush = 0;
  auto copy_one = [&](uint64_t cluster, const ClusterEntry& e) -> absl::Status {
    for (;;) {
      if (options.stop != nullptr && options.stop->load()) {
        return absl::CancelledError("stopped");
      }
      auto r = target->Copy(cluster, e);
      if (NeedsSlots(r.status())) {
        if (auto s = target->Replenish(); !s.ok()) return s;
        continue;
      }
      if (!r.ok()) return r.status();
      if (r->replenish) (void)target->Replenish();
      progress.copied += r->bytes;
      since_flush += r->bytes;
      break;
    }
    progress.done += data_bytes(e);
    const bool due = std::chrono::steady_clock::now() - last_flush >= options.flush_interval;
    if (since_flush > 0 && (due || (since_flush >= options.batch_bytes && target->cheap_flush()))) {
      if (auto s = target->Flush(); !s.ok()) return s;
      since_flush = 0;
      last_flush = std::chrono::steady_clock::now();
    }
    if (options.progress) options.progress(progress);
    if (rate_limit > 0) {
      const auto due = started + std::chrono::nanoseconds(static_cast<int64_t>(
                                     static_cast<double>(progress.copied) * 1e9 /
                                     static_cast<double>(rate_limit)));
      SleepUnlessStopped(due - std::chrono::steady_clock::now(), options.stop);
    }
    return absl::OkStatus();
  };
  for (int round = 0; !work.empty(); ++round) {
    if (round == kMaxBusyRounds) {
      return absl::UnavailableError(absl::StrCat(
          "cluster ", work.front().first, " of ", x.path(),
          " always had a write in flight when the stream tried to copy it"));
    }
    if (round > 0) SleepUnlessStopped(std::chrono::milliseconds(1), options.stop);
    std::vector<std::pair<uint64_t, ClusterEntry>> busy;
    size_t read_ahead_to = 0;
    for (size_t i = 0; i < work.size(); ++i) {
      if (i == read_ahead_to) read_ahead_to = ReadAhead(x, work, i);
      const auto& [cluster, e] = work[i];
      absl::Status s = copy_one(cluster, e);
      if (IsWriteConflict(s)) {
        busy.emplace_back(cluster, e);
      } else if (!s.ok()) {
        return s;
      }
    }
    work.swap(busy);
  }
  *copied += progress.copied;
  return absl::OkStatus();
}

// X leaves the tree; its child now stands on X's parent W.
RegistryHandOver StreamHandOver(const std::string& x_path, const LayerHeader& x) {
  RegistryHandOver h{.gone = x.uuid, .gone_dir = AbsoluteDir(x_path)};
  if (x.parent_format == ParentFormat::kStrata) {
    h.heir_path = ResolvePath(DirName(x_path), x.parent_path);
    h.gone_parent_dir = AbsoluteDir(h.heir_path);
    h.heir = x.parent_uuid;
  }
  return h;
}

// After the commit point: X's file and the journal go (X only if it is still the layer the
// journal names), each removal made durable.
absl::Status RemoveX(Env* env, const Journal& j) {
  if (env->Exists(j.layer_path)) {
    auto h = ReadLayerHeader(env, j.layer_path);
    if (h.ok() && h->uuid == j.record.uuid) {
      if (auto s = HandOverRegistrations(env, StreamHandOver(j.layer_path, *h)); !s.ok()) {
        return s;
      }
      if (auto s = env->Remove(j.layer_path); !s.ok()) return s;
    }
  }
  if (auto s = env->SyncDir(DirName(j.layer_path)); !s.ok()) return s;
  if (auto s = env->Remove(j.path); !s.ok()) return s;
  return env->SyncDir(DirName(j.path));
}

// The copy and commit into a layer opened for it (frozen child online, any child offline).
absl::Status StreamIntoLayer(Env* env, const Journal& j, const Layer& x,
                             const std::string& child_path, bool active,
                             const StreamOptions& options, uint64_t* copied) {
  auto child = Layer::Open(env, child_path,
                           active ? Layer::Mode::kWritable : Layer::Mode::kMergeTarget);
  if (!child.ok()) return child.status();
  LayerTarget target(env, child->get(), x);
  if (auto s = CopyPass(x, &target, j.record.rate_limit, options, copied); !s.ok()) {
    // Stopped or failed: the copies made so far are kept (so that the space they hold is
    // referenced), and a frozen layer gives back the space its open reserved ahead.
    if (!active && (*child)->Flush().ok()) (*child)->ReleaseUnusedSpace();
    return s;
  }
  // The commit point: the child's header stops naming X.
  if (auto s = (*child)->Relink(ParentOfX(x.header(), j.layer_path, DirName(child_path)));
      !s.ok()) {
    return s;
  }
  if (!active) (*child)->ReleaseUnusedSpace();
  return absl::OkStatus();
}

// The layer of the chain topped by `top_path` with UUID `uuid`.
absl::StatusOr<ChainLayer> FindInChain(Env* env, const std::string& top_path, const Uuid& uuid) {
  for (ChainLayer& layer : ReadChainHeaders(env, top_path)) {
    if (layer.header.uuid == uuid) return std::move(layer);
  }
  return absl::NotFoundError(absl::StrCat("layer ", UuidToString(uuid), " is not in the chain of ",
                                          top_path));
}

absl::StatusOr<StreamPlan> PlanFor(Env* env, const Chain& chain, const LayerInfo& x,
                                   const LayerInfo& child, uint64_t rate_limit) {
  const std::string label = x.header.snapshot_name.empty()
                                ? absl::StrCat("layer ", x.path)
                                : absl::StrCat("snapshot '", x.header.snapshot_name, "'");
  if (x.freezing) {
    return absl::UnavailableError(absl::StrCat(label, " is not durable yet: try again"));
  }
  if (!FindStreamJournals(env, chain.top_path()).empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot delete ", label, ": another deletion is in progress (see `strata list`)"));
  }
  std::vector<std::string> known = ChainDirs(env, chain.top_path());
  AddUnique(&known, AbsoluteDir(x.path));
  if (auto s = RefuseOtherChildren(env, SearchDirs(env, known), x.path, x.header.uuid, child.header.uuid,
                                   absl::StrCat("cannot delete ", label));
      !s.ok()) {
    return s;
  }
  StreamPlan plan;
  plan.layer_path = x.path;
  plan.child_path = child.path;
  plan.record = {BaseName(x.path), x.header.uuid, child.header.uuid, x.header.snapshot_name,
                 rate_limit};
  plan.needed_bytes = x.allocated_bytes;
  struct statvfs vfs;
  if (statvfs(DirName(child.path).c_str(), &vfs) == 0) {
    plan.free_bytes = uint64_t{vfs.f_bavail} * vfs.f_frsize;
    if (plan.needed_bytes > plan.free_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "cannot delete ", label, ": copying what it holds into the layer above may need up to ",
          Mib(plan.needed_bytes), " in ", DirName(child.path), " and ", Mib(plan.free_bytes),
          " are free"));
    }
  }
  return plan;
}

}  // namespace

absl::StatusOr<StreamPlan> PlanStream(Env* env, const Chain& chain, const std::string& name,
                                      uint64_t rate_limit) {
  const std::vector<LayerInfo> layers = chain.Layers();
  for (size_t i = 0; i + 1 < layers.size(); ++i) {
    if (!layers[i].is_raw_base && layers[i].header.snapshot_name == name) {
      return PlanFor(env, chain, layers[i], layers[i + 1], rate_limit);
    }
  }
  return absl::NotFoundError(absl::StrCat("no snapshot '", name, "' in the chain of ",
                                          chain.top_path()));
}

absl::StatusOr<StreamPlan> PlanStreamBelow(Env* env, const Chain& chain,
                                           const std::string& layer_path, uint64_t rate_limit) {
  const std::vector<LayerInfo> layers = chain.Layers();
  const std::string wanted = AbsoluteDir(layer_path) + "/" + BaseName(layer_path);
  for (size_t i = 1; i < layers.size(); ++i) {
    if (AbsoluteDir(layers[i].path) + "/" + BaseName(layers[i].path) != wanted) continue;
    if (layers[i - 1].is_raw_base || i == 0) break;
    return PlanFor(env, chain, layers[i - 1], layers[i], rate_limit);
  }
  return absl::NotFoundError(absl::StrCat(
      layer_path, " is not a layer of the chain of ", chain.top_path(),
      " standing on a strata layer (a raw base cannot be merged into)"));
}

absl::Status BeginStream(Env* env, const StreamPlan& plan) {
  std::string text;
  plan.record.EncodeTo(&text);
  absl::Status s = ReplaceFile(env, StreamJournalPath(plan.layer_path), text);
  if (!IsWriteRefused(s)) return s;
  // The journal goes beside X, and X's file goes at the end: neither can happen in a
  // directory the user may not write, nothing has changed yet.
  return absl::FailedPreconditionError(absl::StrCat(
      "cannot delete ", SnapshotLabel(plan.record), ": ", AbsoluteDir(plan.layer_path),
      " cannot be written (", s.message(), "): a frozen layer on a read-only mount or in "
      "another user's directory (a golden image shared between hosts) is never changed or "
      "removed; other disks may stand on it"));
}

absl::StatusOr<StreamResult> RunStream(Env* env, Chain* chain, const std::string& journal_path,
                                       const StreamOptions& options) {
  auto j = ReadJournal(env, journal_path);
  if (!j.ok()) return j.status();
  StreamResult result{j->layer_path, 0};
  for (int attempt = 0; attempt < kMaxAttempts; ++attempt) {
    const std::vector<LayerInfo> layers = chain->Layers();
    auto child = std::find_if(layers.begin(), layers.end(), [&](const LayerInfo& l) {
      return !l.is_raw_base && l.header.uuid == j->record.child_uuid;
    });
    if (child == layers.end()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "deleting ", SnapshotLabel(j->record), ": the layer above it is no longer in the chain"));
    }
    if (child->header.parent_uuid == j->record.uuid) {
      auto x = OpenX(env, *j);
      if (!x.ok()) return x.status();
      const ParentRef link = ParentOfX((*x)->header(), j->layer_path, DirName(child->path));
      absl::Status s;
      if (child->position == layers.back().position) {
        ChainTarget target(chain, **x);
        s = CopyPass(**x, &target, j->record.rate_limit, options, &result.copied);
        if (s.ok()) s = chain->CommitStream(j->record.uuid, link);
      } else if (child->freezing) {
        s = chain->Flush();  // completes the snapshot, or says why it cannot
        if (s.ok()) continue;
      } else {
        s = StreamIntoLayer(env, *j, **x, child->path, /*active=*/false, options, &result.copied);
        if (s.ok()) s = chain->DropFrozenLayer(j->record.uuid);
      }
      if (absl::IsAborted(s)) continue;  // a snapshot froze the child: go on into it
      if (!s.ok()) return s;
    } else if (auto s = chain->DropFrozenLayer(j->record.uuid); !s.ok() && !absl::IsNotFound(s)) {
      return s;  // committed by an earlier run whose drop failed
    }
    if (auto s = RemoveX(env, *j); !s.ok()) return s;
    return result;
  }
  return absl::UnavailableError(absl::StrCat("deleting ", SnapshotLabel(j->record),
                                             ": the chain kept changing under the stream"));
}

absl::Status AbandonStream(Env* env, const std::string& journal_path) {
  if (auto s = env->Remove(journal_path); !s.ok()) return s;
  return env->SyncDir(DirName(journal_path));
}

std::vector<std::string> FindStreamJournals(Env* env, const std::string& top_path) {
  const std::vector<ChainLayer> layers = ReadChainHeaders(env, top_path);
  absl::flat_hash_set<Uuid> in_chain;
  for (const ChainLayer& layer : layers) in_chain.insert(layer.header.uuid);
  std::vector<std::string> found;
  for (const std::string& dir : ChainDirs(top_path, layers)) {
    auto names = env->ListDir(dir);
    if (!names.ok()) continue;
    for (const std::string& name : *names) {
      if (!absl::EndsWith(name, ".stream")) continue;
      auto j = ReadJournal(env, dir + "/" + name);
      // Another disk's journal in a shared directory is not ours to act on.
      if (j.ok() && in_chain.contains(j->record.child_uuid)) found.push_back(j->path);
    }
  }
  return found;
}

absl::StatusOr<std::string> RecoverStream(Env* env, const std::string& top_path,
                                          const std::string& journal_path, bool finish,
                                          const std::function<void(uint64_t, uint64_t)>& progress) {
  auto j = ReadJournal(env, journal_path);
  if (!j.ok()) return j.status();
  auto child = FindInChain(env, top_path, j->record.child_uuid);
  if (!child.ok()) return child.status();
  const std::string label = SnapshotLabel(j->record);
  if (child->header.parent_uuid == j->record.uuid) {
    if (!finish) return std::string();
    auto x = OpenX(env, *j);
    if (!x.ok()) return x.status();
    StreamOptions options;
    if (progress) {
      options.progress = [&](const StreamProgress& p) { progress(p.done, p.total); };
    }
    uint64_t copied = 0;
    if (auto s = StreamIntoLayer(env, *j, **x, child->path,
                                 child->header.state == LayerState::kActive, options, &copied);
        !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("finishing the interrupted deletion of ", label,
                                                 ": ", s.message()));
    }
  }
  if (auto s = RemoveX(env, *j); !s.ok()) return s;
  return absl::StrCat("completed the interrupted deletion of ", label, " (", j->layer_path, ")");
}

}  // namespace strata
