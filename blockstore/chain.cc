#include "blockstore/chain.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <thread>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "blockstore/children.h"
#include "blockstore/clock.h"
#include "blockstore/file.h"
#include "blockstore/flat_view.h"
#include "blockstore/layer.h"
#include "blockstore/parent_place.h"
#include "blockstore/recovery.h"
#include "blockstore/snapshot_files.h"

namespace strata {

// The raw base image: bytes at virtual offset X live at file offset X.
class RawBase {
 public:
  std::unique_ptr<File> file;
  std::unique_ptr<File> direct;  // O_DIRECT twin
  uint64_t size = 0;
  int fd() const { return direct ? direct->fd() : file->fd(); }
};

// Writes between PrepareWrite and FinishWrite, in sub-block units. A widened write owns its
// edge sub-blocks exclusively: it rewrites bytes around its payload with what it read before,
// so any other write to those sub-blocks in between would be undone.
struct Chain::Inflight {
  struct Range {
    uint64_t start_sb, end_sb;  // [start_sb, end_sb)
    int64_t head_excl, tail_excl;  // exclusive sub-blocks, -1 = none
  };
  std::vector<Range> ranges;
  int widened = 0;

  static bool Holds(const Range& r, int64_t sb) {
    return sb >= 0 && uint64_t(sb) >= r.start_sb && uint64_t(sb) < r.end_sb;
  }
  bool Conflicts(const Range& w) const {
    if (widened == 0 && w.head_excl < 0 && w.tail_excl < 0) return false;
    for (const Range& x : ranges) {
      if (Holds(x, w.head_excl) || Holds(x, w.tail_excl) || Holds(w, x.head_excl) ||
          Holds(w, x.tail_excl)) {
        return true;
      }
    }
    return false;
  }
  void Add(const Range& r) {
    ranges.push_back(r);
    widened += (r.head_excl >= 0 || r.tail_excl >= 0);
  }
  // False when no write in flight has this range (see FinishWrite).
  [[nodiscard]] bool Remove(uint64_t start_sb, uint64_t end_sb) {
    for (size_t i = 0; i < ranges.size(); ++i) {
      if (ranges[i].start_sb == start_sb && ranges[i].end_sb == end_sb) {
        widened -= (ranges[i].head_excl >= 0 || ranges[i].tail_excl >= 0);
        ranges[i] = ranges.back();
        ranges.pop_back();
        return true;
      }
    }
    return false;
  }
};

namespace {

constexpr int kMaxDepth = 65535;  // positions are 16 bits in the flat view

void Append(std::vector<Segment>* out, const Segment& seg) {
  if (!out->empty()) {
    Segment& last = out->back();
    if (last.kind == seg.kind &&
        (seg.kind == Segment::Kind::kZero ||
         (last.fd == seg.fd && last.file_offset + last.length == seg.file_offset))) {
      last.length += seg.length;
      return;
    }
  }
  out->push_back(seg);
}

// PrepareWrite's two kUnavailable failures carry which one they are under this payload.
constexpr absl::string_view kRetryPayload = "strata.blockstore/retry";
constexpr absl::string_view kWriteConflict = "write-conflict";
constexpr absl::string_view kNeedsSlots = "needs-slots";

absl::Status RetryableError(absl::string_view why, absl::string_view message) {
  absl::Status status = absl::UnavailableError(message);
  status.SetPayload(kRetryPayload, absl::Cord(why));
  return status;
}

bool IsRetryable(const absl::Status& status, absl::string_view why) {
  if (!absl::IsUnavailable(status)) return false;
  auto payload = status.GetPayload(kRetryPayload);
  return payload.has_value() && *payload == why;
}

uint32_t SubBlockMask(uint64_t first_sb, uint64_t end_sb) {
  uint64_t n = end_sb - first_sb;
  uint32_t ones = n >= 32 ? 0xffffffffu : (1u << n) - 1;
  return ones << first_sb;
}

}  // namespace

bool IsWriteConflict(const absl::Status& status) { return IsRetryable(status, kWriteConflict); }
bool NeedsSlots(const absl::Status& status) { return IsRetryable(status, kNeedsSlots); }

namespace {

// A base (raw file or NBD export) of `size` bytes can carry a new layer: `what` names it.
absl::Status CheckNewBaseSize(absl::string_view what, uint64_t size) {
  if (size != 0 && size % 512 == 0) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(what, " is ", size, " bytes: it must be a positive multiple of 512"));
}

// An NBD export as the base: the header records its URI as given, its size and, when it says
// it serves a strata layer, that layer's UUID (checked on every open).
absl::StatusOr<LayerHeader> CreateOnRemoteBase(const std::string& layer_path,
                                               const CreateOptions& options,
                                               LayerCreateParams params, Env* env) {
  const RemoteBaseOpener& open = OpenerOrDefault(options.open_remote_base);
  if (!open) return absl::FailedPreconditionError("this program cannot connect to an NBD base");
  auto remote = open(options.parent, layer_path);
  if (!remote.ok()) return remote.status();
  const uint64_t size = (*remote)->size();
  if (auto s = CheckNewBaseSize(absl::StrCat("NBD base ", options.parent), size); !s.ok()) {
    return s;
  }
  params.parent_path = options.parent;
  params.virtual_size = params.parent_size = size;
  params.parent_uuid = (*remote)->layer_uuid();
  auto layer = Layer::Create(env, layer_path, params);
  if (!layer.ok()) return layer.status();
  return (*layer)->header();
}

}  // namespace

absl::StatusOr<LayerHeader> CreateLayer(const std::string& layer_path,
                                        const CreateOptions& options) {
  Env* env = options.env ? options.env : Env::Default();
  // As qemu-img: a relative parent path is relative to the new layer's directory.
  const std::string parent = options.parent_format == ParentFormat::kNbd
                                 ? options.parent
                                 : ResolvePath(DirName(layer_path), options.parent);
  // Before a child is registered under this path (Layer::Create would refuse it only later).
  if (env->Exists(layer_path)) return absl::AlreadyExistsError(absl::StrCat(layer_path, " exists"));
  LayerCreateParams params;
  params.uuid = NewUuid();  // picked here: the parent's registry names the child before it exists
  params.journal_size = options.journal_size;
  params.cluster_size = options.cluster_size;
  params.sub_block_size = options.sub_block_size;
  params.parent_format = options.parent.empty() ? ParentFormat::kNone : options.parent_format;
  if (params.parent_format == ParentFormat::kNone) {
    if (!options.parent.empty()) {
      return absl::InvalidArgumentError(
          "a parent needs its format (raw or strata): strata never guesses it");
    }
    params.virtual_size = (options.size + 511) / 512 * 512;
  } else if (params.parent_format == ParentFormat::kNbd) {
    return CreateOnRemoteBase(layer_path, options, params, env);
  } else {
    params.parent_path = ParentLink(DirName(layer_path), parent);
  }
  // The user named the parent, so it may lie anywhere (the cli says when later opens will
  // need --allow-parent-dir); but it is opened as every parent is: a regular file, not
  // through a symbolic link, since later opens would refuse it otherwise.
  std::unique_ptr<File> file;
  if (params.parent_format != ParentFormat::kNone) {
    auto opened = env->Open(parent, {.no_follow = true});
    if (!opened.ok()) {
      return absl::Status(opened.status().code(),
                          absl::StrCat("parent ", parent, ": ", opened.status().message()));
    }
    file = *std::move(opened);
  }
  if (params.parent_format == ParentFormat::kRaw) {
    auto size = file->Size();
    if (!size.ok()) return size.status();
    if (auto s = CheckNewBaseSize(absl::StrCat("raw base ", parent), *size); !s.ok()) return s;
    params.virtual_size = params.parent_size = *size;
    // Best effort: a golden image often lies in a directory its users may not write, and a
    // commit into that base cannot run there either (its journal goes beside the base).
    (void)RegisterChild(env, parent, Uuid{}, layer_path, params.uuid);
  } else if (params.parent_format == ParentFormat::kStrata) {
    auto header = ReadLayerHeader(file.get());
    if (!header.ok()) return header.status();
    if (header->state != LayerState::kFrozen) {
      return absl::FailedPreconditionError(absl::StrCat(
          parent, " is an active layer: only a frozen snapshot can be a parent (take one with "
                  "`strata snapshot`)"));
    }
    params.virtual_size = params.parent_size = header->virtual_size;
    params.cluster_size = header->cluster_size;
    params.sub_block_size = header->sub_block_size;
    params.parent_uuid = header->uuid;
    // A golden image shared between hosts (read-only mount, another owner) gets no entry.
    if (auto s = RegisterChildUnlessReadOnly(env, parent, params.parent_uuid, layer_path,
                                             params.uuid);
        !s.ok()) {
      return s;
    }
  }
  auto layer = Layer::Create(env, layer_path, params);
  if (!layer.ok()) return layer.status();
  return (*layer)->header();
}

// The next active layer, created and opened before the pause, not yet in the chain.
struct Chain::PreparedSnapshot {
  std::string name;
  std::unique_ptr<Layer> next;
};

// The layer a switch froze in memory, until CompleteSnapshot makes that durable.
struct Chain::FreezingLayer {
  std::string name;
  int64_t frozen_ns = 0;
  Layer* layer = nullptr;  // owned by frozen_
};

Chain::Chain() : inflight_(std::make_unique<Inflight>()) {}
Chain::~Chain() {
  // A clean close keeps every finished write, as if the user had flushed.
  if (options_.writable && active_) {
    if (absl::Status s = Flush(); !s.ok()) {
      std::fprintf(stderr, "strata: closing %s: %s\n", top_path_.c_str(),
                   std::string(s.message()).c_str());
    }
    CancelSnapshot();
  }
}

namespace {

// An unfinished merge of `path` leaves its journal beside it, and one into a raw base beside
// the base: the chain must not be read through a file that is half of two until it ends.
absl::Status RefuseUnfinishedMerge(Env* env, const std::string& path, const std::string& top) {
  if (!env->Exists(MergeJournalPath(path))) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "an interrupted commit was found (", MergeJournalPath(path),
      "): run `strata commit --resume ", top, "` to finish it"));
}

// Whether the raw file at `path`, of `size` bytes, can be the base the layer at `child_path`
// (header `ch`) was created on: the size it recorded. `why` ends the message.
absl::Status CheckRawBase(const std::string& child_path, const LayerHeader& ch,
                          const std::string& path, uint64_t size, absl::string_view why) {
  if (size != ch.parent_size) {
    return absl::FailedPreconditionError(absl::StrCat("layer ", child_path, ": raw base ", path,
                                                      " is ", size, " bytes but was ",
                                                      ch.parent_size,
                                                      " when the layer was created: ", why));
  }
  if (auto s = CheckParentSize(ch, size); !s.ok()) {
    return absl::FailedPreconditionError(absl::StrCat("layer ", child_path, ": raw base ", path,
                                                      ": ", s.message()));
  }
  return absl::OkStatus();
}

// Whether the strata layer at `path` (header `ph`) can be the parent the layer at `child_path`
// (header `ch`) names: the same UUID and geometry, frozen, and of the size the child recorded
// (FORMAT.md, "Sizes along a chain"). `why` ends the UUID message.
absl::Status CheckParentHeader(const std::string& child_path, const LayerHeader& ch,
                               const std::string& path, const LayerHeader& ph,
                               absl::string_view why) {
  if (ph.uuid != ch.parent_uuid) {
    return absl::FailedPreconditionError(absl::StrCat(
        "layer ", child_path, " expects parent UUID ", UuidToString(ch.parent_uuid), " but ",
        path, " has ", UuidToString(ph.uuid), ": ", why));
  }
  if (ph.cluster_size != ch.cluster_size || ph.sub_block_size != ch.sub_block_size) {
    return absl::FailedPreconditionError(absl::StrCat(
        "layer ", child_path, " and its parent ", path, " differ in cluster geometry"));
  }
  if (auto s = CheckParentSize(ch, ph.virtual_size); !s.ok()) {
    return absl::FailedPreconditionError(absl::StrCat("layer ", child_path, ": parent ", path,
                                                      ": ", s.message()));
  }
  if (ph.state != LayerState::kFrozen) {
    return absl::FailedPreconditionError(absl::StrCat(
        "layer ", child_path, ": parent ", path,
        " is active (writable): a parent must be a frozen snapshot"));
  }
  return absl::OkStatus();
}

// The raw base at `path` that `child` names, checked against the size it recorded.
absl::StatusOr<std::unique_ptr<RawBase>> OpenRawBase(Env* env, const Layer& child,
                                                     const std::string& path,
                                                     const ParentScope& scope,
                                                     const ChainOptions& options) {
  auto base = std::make_unique<RawBase>();
  auto file = OpenParentFile(env, child.path(), path, ParentFormat::kRaw, scope);
  if (!file.ok()) return file.status();
  base->file = std::move(*file);
  auto size = base->file->Size();
  if (!size.ok()) return size.status();
  base->size = *size;
  if (auto s = CheckRawBase(child.path(), child.header(), path, base->size, "the base changed");
      !s.ok()) {
    return s;
  }
  if (options.direct_io) {
    auto direct = env->Open(path, {.direct_io = true});
    if (!direct.ok()) return direct.status();
    if (auto s = CheckSameFile(*base->file, **direct); !s.ok()) return s;
    base->direct = std::move(*direct);
  }
  if (options.lock) {
    if (auto s = TryLock(*base->file, LockMode::kShared); !s.ok()) return s;
  }
  return base;
}

// Whether the NBD export `remote` can be the base the layer at `child_path` (header `ch`) was
// created on: the size it recorded and, when it recorded one, the strata layer UUID. `why`
// ends the message.
absl::Status CheckRemoteBase(const std::string& child_path, const LayerHeader& ch,
                             const RemoteBase& remote, absl::string_view why) {
  const std::string link = absl::StrCat("NBD base ", remote.uri());
  if (remote.size() != ch.parent_size) {
    return absl::FailedPreconditionError(absl::StrCat(
        "layer ", child_path, ": ", link, " is ", remote.size(), " bytes but was ",
        ch.parent_size, " when the layer was created: ", why));
  }
  if (auto s = CheckParentSize(ch, ch.parent_size); !s.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("layer ", child_path, ": ", link, ": ", s.message()));
  }
  if (!IsNil(ch.parent_uuid) && remote.layer_uuid() != ch.parent_uuid) {
    return absl::FailedPreconditionError(absl::StrCat(
        "layer ", child_path, " was created on strata layer ", UuidToString(ch.parent_uuid),
        " but ", link, " serves ",
        IsNil(remote.layer_uuid()) ? std::string("no strata layer")
                                   : UuidToString(remote.layer_uuid()),
        ": ", why));
  }
  return absl::OkStatus();
}

// The NBD export that `child` names as its base, trusted by `scope` (parent_place.h): the size
// it recorded and, when it recorded one, the strata layer it was created on.
absl::StatusOr<std::unique_ptr<RemoteBase>> OpenRemoteBase(const Layer& child,
                                                           const ParentScope& scope,
                                                           const ChainOptions& options) {
  const LayerHeader& ch = child.header();
  if (auto s = CheckRemoteParent(child.path(), ch.parent_path, scope); !s.ok()) return s;
  const RemoteBaseOpener& open = OpenerOrDefault(options.open_remote_base);
  if (!open) {
    return absl::FailedPreconditionError(absl::StrCat(
        "layer ", child.path(), ": its base is the NBD export ", ch.parent_path,
        ", which this program cannot connect to"));
  }
  auto remote = open(ch.parent_path, child.path());
  if (!remote.ok()) return remote.status();
  if (auto s = CheckRemoteBase(child.path(), ch, **remote, "the base changed"); !s.ok()) return s;
  return remote;
}

// The strata parent at `path` that `child` names: the same UUID, size and geometry, frozen.
absl::StatusOr<std::unique_ptr<Layer>> OpenParent(Env* env, const Layer& child,
                                                  const std::string& path,
                                                  const ParentScope& scope,
                                                  const ChainOptions& options) {
  auto file = OpenParentFile(env, child.path(), path, ParentFormat::kStrata, scope);
  if (!file.ok()) return file.status();
  auto parent = Layer::Open(env, *std::move(file), Layer::Mode::kReadOnly, options.direct_io);
  if (!parent.ok()) {
    return absl::Status(parent.status().code(), absl::StrCat("layer ", child.path(), ": parent: ",
                                                             parent.status().message()));
  }
  if (auto s = CheckParentHeader(child.path(), child.header(), path, (*parent)->header(),
                                 "the parent was replaced");
      !s.ok()) {
    return s;
  }
  return parent;
}

}  // namespace

namespace {

// The header of the would-be new parent at `path`, checked against what the layer at
// `layer_path` (header `ch`) recorded of its parent.
absl::Status CheckNewParent(Env* env, const std::string& layer_path, const LayerHeader& ch,
                            const std::string& path) {
  constexpr absl::string_view kWhy = "not the parent it was created on (rebase -u only fixes "
                                     "a moved parent's path; the data would be wrong)";
  // Named by the user, so trusted wherever it is, but a regular file as every parent.
  auto file = env->Open(path, {.no_follow = true});
  if (!file.ok()) return file.status();
  if (ch.parent_format == ParentFormat::kRaw) {
    auto size = (*file)->Size();
    if (!size.ok()) return size.status();
    return CheckRawBase(layer_path, ch, path, *size, kWhy);
  }
  auto header = ReadLayerHeader(file->get());
  if (!header.ok()) return header.status();
  if (auto s = RefuseUnfinishedMerge(env, path, layer_path); !s.ok()) return s;
  return CheckParentHeader(layer_path, ch, path, *header, kWhy);
}

// The would-be new URI of the NBD base that `layer_path` (header `ch`) was created on: the
// export must be the same size and, when the layer recorded one, the same strata layer.
absl::Status CheckNewRemoteParent(const std::string& layer_path, const LayerHeader& ch,
                                  const RebaseOptions& options) {
  const RemoteBaseOpener& open = OpenerOrDefault(options.open_remote_base);
  if (!open) return absl::FailedPreconditionError("this program cannot connect to an NBD base");
  auto remote = open(options.parent, layer_path);
  if (!remote.ok()) return remote.status();
  return CheckRemoteBase(layer_path, ch, **remote,
                         "rebase -u only fixes a moved base's address; the data would be wrong");
}

}  // namespace

absl::StatusOr<LayerHeader> RebaseLayer(const std::string& layer_path,
                                        const RebaseOptions& options) {
  Env* env = options.env ? options.env : Env::Default();
  LockSet locks;
  if (auto s = locks.Exclusive(env, layer_path); !s.ok()) return s;
  if (auto s = RefuseUnfinishedMerge(env, layer_path, layer_path); !s.ok()) return s;
  auto header = ReadLayerHeader(env, layer_path);
  if (!header.ok()) return header.status();
  if (header->parent_format == ParentFormat::kNone) {
    return absl::FailedPreconditionError(absl::StrCat(
        layer_path, " has no parent: there is no link to fix"));
  }
  if (options.parent_format != ParentFormat::kNone &&
      options.parent_format != header->parent_format) {
    return absl::FailedPreconditionError(absl::StrCat(
        layer_path, " was created on a ", Name(header->parent_format), " parent, not a ",
        Name(options.parent_format), " one"));
  }
  const bool remote = header->parent_format == ParentFormat::kNbd;
  const std::string parent =
      remote ? options.parent : ResolvePath(DirName(layer_path), options.parent);
  if (auto s = remote ? CheckNewRemoteParent(layer_path, *header, options)
                      : CheckNewParent(env, layer_path, *header, parent);
      !s.ok()) {
    return s;
  }
  const std::string link = remote ? parent : ParentLink(DirName(layer_path), parent);
  if (header->parent_format == ParentFormat::kStrata) {
    if (auto s = RegisterChildUnlessReadOnly(env, parent, header->parent_uuid, layer_path,
                                             header->uuid);
        !s.ok()) {
      return s;
    }
  }
  if (auto s = EditLayerHeader(env, layer_path, [&](LayerHeader* h) { h->parent_path = link; });
      !s.ok()) {
    return s;
  }
  header->parent_path = link;
  return header;
}

namespace {

// An O_DIRECT read of a range whose pages are dirty in the page cache (a base just copied in
// and not yet written back) cannot be served without blocking: io_uring hands each such read to
// a worker thread, which writes the pages back first (measured on a 1 GiB base just written:
// 24 685 against 39 049 4k random reads/s at QD32 once it was synced). The files below the top
// never change, so their dirty pages are written back once, here. Best effort: a failure
// only leaves the reads slower.
void WriteBackBelowTop(const std::vector<std::unique_ptr<Layer>>& stack, const RawBase* base) {
  constexpr unsigned kFlags =
      SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER;
  for (size_t i = 1; i < stack.size(); ++i) {
    (void)sync_file_range(stack[i]->file()->fd(), 0, 0, kFlags);
  }
  if (base != nullptr) (void)sync_file_range(base->file->fd(), 0, 0, kFlags);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Chain>> Chain::Open(const std::string& top_path,
                                                   ChainOptions options) {
  auto chain = std::unique_ptr<Chain>(new Chain());
  Env* env = options.env ? options.env : Env::Default();
  chain->env_ = env;
  chain->options_ = options;
  chain->top_path_ = top_path;
  if (options.writable && options.top_file.empty()) {
    // Only with the disk locked (RecoverChain takes the locks, released before the layers'
    // own below): recovery renames and removes files, which must never race a server's live
    // snapshot or another writer. A read-only open leaves them alone (a frozen top reads as
    // the snapshot it is; an unfinished merge is refused below).
    // The parent links first, as OpenLayers checks them: recovery follows them too, and must
    // not finish a merge beside a parent this chain may not have.
    if (auto s = CheckChainParents(env, {top_path, options.allowed_parent_dirs}); !s.ok()) {
      return s;
    }
    LockSet locks;
    auto recovered = RecoverChain(env, top_path, options.lock ? &locks : nullptr, nullptr,
                                  options.serve_streams ? PendingStreams::kServe
                                                        : PendingStreams::kFinish);
    if (!recovered.ok()) return recovered.status();
  }
  std::vector<std::unique_ptr<Layer>> stack;
  if (auto s = chain->OpenLayers(&stack); !s.ok()) return s;
  if (options.lock) {
    for (size_t i = 0; i < stack.size(); ++i) {
      const bool exclusive = i == 0 && options.writable;
      auto s = TryLock(*stack[i]->file(), exclusive ? LockMode::kExclusive : LockMode::kShared);
      if (!s.ok()) return s;
    }
  }
  if (options.direct_io) WriteBackBelowTop(stack, chain->base_.get());
  chain->Adopt(std::move(stack));
  // So that the first writes find slots ready. A full volume fails only the writes that need
  // space (they replenish again), not the open: reads go on.
  if (options.writable) (void)chain->ReplenishSlots();
  return chain;
}

absl::Status Chain::OpenLayers(std::vector<std::unique_ptr<Layer>>* stack) {
  if (auto s = RefuseUnfinishedMerge(env_, top_path_, top_path_); !s.ok()) return s;
  // Top down: open each layer and check it is the parent its child names.
  auto top = Layer::Open(env_, options_.top_file.empty() ? top_path_ : options_.top_file,
                         options_.writable ? Layer::Mode::kWritable : Layer::Mode::kReadOnly,
                         options_.direct_io);
  if (!top.ok()) return top.status();
  stack->push_back(std::move(*top));
  absl::flat_hash_set<std::string> seen;
  const ParentScope scope{top_path_, options_.allowed_parent_dirs};
  for (;;) {
    const Layer& child = *stack->back();
    const LayerHeader& ch = child.header();
    if (!seen.insert(UuidToString(ch.uuid)).second || stack->size() > kMaxDepth) {
      return absl::DataLossError(absl::StrCat("layer ", child.path(), ": parent links loop"));
    }
    if (ch.parent_format == ParentFormat::kNone) return absl::OkStatus();
    if (ch.parent_format == ParentFormat::kNbd) {
      auto remote = OpenRemoteBase(child, scope, options_);
      if (!remote.ok()) return remote.status();
      remote_ = std::move(*remote);
      return absl::OkStatus();
    }
    std::string parent_path = ResolvePath(DirName(child.path()), ch.parent_path);
    if (ch.parent_format == ParentFormat::kRaw) {
      if (auto s = RefuseUnfinishedMerge(env_, parent_path, top_path_); !s.ok()) return s;
      auto base = OpenRawBase(env_, child, parent_path, scope, options_);
      if (!base.ok()) return base.status();
      base_ = std::move(*base);
      return absl::OkStatus();
    }
    // Before the parent's UUID is compared: an unfinished relink changes UUIDs first.
    if (auto s = RefuseUnfinishedMerge(env_, parent_path, top_path_); !s.ok()) return s;
    auto parent = OpenParent(env_, child, parent_path, scope, options_);
    if (!parent.ok()) return parent.status();
    stack->push_back(std::move(*parent));
  }
}

void Chain::Adopt(std::vector<std::unique_ptr<Layer>> stack) {
  MutexLock lock(&mu_);
  const LayerHeader& th = stack.front()->header();
  size_ = th.virtual_size;
  cluster_size_ = th.cluster_size;
  sub_block_size_ = th.sub_block_size;
  view_ = std::make_unique<FlatView>(th.SubBlocksPerCluster());
  // Bottom-up: positions 1..N-1 are the frozen layers, flattened once here.
  for (size_t i = stack.size(); i-- > 1;) {
    Layer& layer = *stack[i];
    uint16_t position = static_cast<uint16_t>(frozen_.size() + 1);
    layer.index().ForEach([&](uint64_t cluster, const ClusterEntry& e) {
      view_->Overlay(position, cluster, e);
    });
    layer.ReleaseIndex();
    frozen_.push_back(std::move(stack[i]));
  }
  active_ = std::move(stack.front());
}

void Chain::TopFileRenamed() {
  MutexLock lock(&mu_);
  active_->set_path(top_path_);
  options_.top_file.clear();
}

int Chain::top_position() const {
  ReaderMutexLock lock(&mu_);
  return static_cast<int>(frozen_.size()) + 1;
}

std::vector<LayerInfo> Chain::Layers() const {
  MutexLock lock(&mu_);
  std::vector<LayerInfo> out;
  if (base_) {
    LayerInfo info;
    info.position = 0;
    info.path = base_->file->path();
    info.is_raw_base = true;
    info.allocated_bytes = base_->size;
    info.file_bytes = base_->file->AllocatedBytes().value_or(0);
    out.push_back(std::move(info));
  }
  if (remote_) {
    LayerInfo info;
    info.position = 0;
    info.path = remote_->uri();
    info.is_raw_base = info.is_remote_base = true;
    info.allocated_bytes = remote_->size();
    info.remote = remote_->State();
    out.push_back(std::move(info));
  }
  auto add = [&](const Layer& layer, int position) {
    LayerInfo info;
    info.position = position;
    info.header = layer.header();
    info.allocated_bytes = layer.referenced_slots() * layer.cluster_size();
    info.file_bytes = layer.file()->AllocatedBytes().value_or(0);
    if (freezing_view_ != nullptr && freezing_view_->layer == &layer) {
      info.freezing = true;
      info.header.snapshot_name = freezing_view_->name;
    }
    info.path = CurrentPathLocked(layer);
    if (info.path != layer.path()) info.final_path = layer.path();
    out.push_back(std::move(info));
  };
  for (size_t i = 0; i < frozen_.size(); ++i) add(*frozen_[i], static_cast<int>(i + 1));
  add(*active_, static_cast<int>(frozen_.size() + 1));
  return out;
}

std::string Chain::CurrentPathLocked(const Layer& layer) const {
  // The active layer above a freezing one is not renamed yet: that is the last step of the
  // freeze below it.
  if (freezing_view_ != nullptr && &layer == active_.get()) return PendingLayerPath(top_path_);
  return layer.path();
}

std::string Chain::DescribeLayer(int position) const {
  ReaderMutexLock lock(&mu_);
  const int top = static_cast<int>(frozen_.size()) + 1;
  if (position == -1) return "no layer (reads as zeros)";
  if (position == 0 && base_) return absl::StrCat("base (", base_->file->path(), ")");
  if (position == 0 && remote_) return absl::StrCat("NBD base (", remote_->uri(), ")");
  if (position < 1 || position > top) {
    return absl::StrCat("layer ", position, " (not in the chain of ", top_path_, ")");
  }
  const Layer& layer = position == top ? *active_ : *frozen_[position - 1];
  return absl::StrCat("layer ", position, " (", CurrentPathLocked(layer), ")");
}

absl::Status Chain::CheckRange(uint64_t offset, uint64_t length) const {
  if (offset > size_ || length > size_ - offset) {
    return absl::OutOfRangeError(absl::StrCat("range ", offset, "+", length,
                                              " beyond the end of the disk (", size_, " bytes)"));
  }
  return absl::OkStatus();
}

absl::Status Chain::CheckWritable() const {
  if (!options_.writable) {
    return absl::FailedPreconditionError(absl::StrCat(top_path_, " is open read-only"));
  }
  return absl::OkStatus();
}

Segment Chain::SegmentFor(uint64_t cluster, uint32_t sb, uint64_t offset, uint64_t length) const {
  uint64_t within = offset - cluster * cluster_size_ - uint64_t{sb} * sub_block_size_;
  const int active_position = static_cast<int>(frozen_.size()) + 1;
  ClusterEntry a = active_->Get(cluster);
  uint32_t bit = 1u << sb;
  if (a.present & bit) {
    return {Segment::Kind::kData, length, active_->data_fd(),
            active_->DataOffset(a.slot, sb) + within, active_position};
  }
  if (a.zero & bit) return {Segment::Kind::kZero, length, -1, 0, active_position};
  Source src = view_->Resolve(cluster, sb);
  // A frozen layer smaller than the disk (it grew since: resize.h) answers nothing past its
  // end, which is a sub-block boundary (CheckParentSize), as the raw base below does.
  if (src.layer != 0 && offset < frozen_[src.layer - 1]->header().virtual_size) {
    if (src.zero) return {Segment::Kind::kZero, length, -1, 0, src.layer};
    const Layer& layer = *frozen_[src.layer - 1];
    return {Segment::Kind::kData, length, layer.data_fd(), layer.DataOffset(src.slot, sb) + within,
            src.layer};
  }
  if (base_ && offset < base_->size) {
    return {Segment::Kind::kData, std::min(length, base_->size - offset), base_->fd(), offset, 0};
  }
  if (remote_ && offset < remote_->size()) {
    return {Segment::Kind::kRemote, std::min(length, remote_->size() - offset), -1, offset, 0};
  }
  return {Segment::Kind::kZero, length, -1, 0, -1};
}

template <typename Fn>
void Chain::ForEachSegment(uint64_t offset, uint64_t length, Fn fn) const {
  const uint64_t end = offset + length;
  while (offset < end) {
    uint64_t cluster = offset / cluster_size_;
    uint32_t sb = static_cast<uint32_t>((offset % cluster_size_) / sub_block_size_);
    uint64_t sb_end = cluster * cluster_size_ + uint64_t{sb + 1} * sub_block_size_;
    Segment seg = SegmentFor(cluster, sb, offset, std::min(end, sb_end) - offset);
    fn(offset, seg);
    offset += seg.length;
  }
}

void Chain::MapReadLocked(uint64_t offset, uint64_t length, std::vector<Segment>* out) const {
  ForEachSegment(offset, length, [out](uint64_t, const Segment& seg) { Append(out, seg); });
}

absl::Status Chain::MapRead(uint64_t offset, uint64_t length, std::vector<Segment>* out,
                            ReadPin* pin) const {
  if (auto s = CheckRange(offset, length); !s.ok()) return s;
  ReaderMutexLock lock(&mu_);  // readers resolve in parallel; writers exclude them
  MapReadLocked(offset, length, out);
  // Under mu_: a flush ending the epoch (under mu_ too) comes entirely before or after.
  pin->Release();
  pin->chain_ = this;
  pin->epoch_ = Pin();
  return absl::OkStatus();
}

ReadPin& ReadPin::operator=(ReadPin&& other) noexcept {
  if (this != &other) {
    Release();
    chain_ = std::exchange(other.chain_, nullptr);
    epoch_ = other.epoch_;
  }
  return *this;
}

void ReadPin::Release() {
  if (chain_ != nullptr) std::exchange(chain_, nullptr)->Unpin(epoch_);
}

uint64_t Chain::Pin() const {
  MutexLock lock(&pin_mu_);
  ++pins_[read_epoch_];
  return read_epoch_;
}

void Chain::Unpin(uint64_t epoch) const {
  MutexLock lock(&pin_mu_);
  auto it = pins_.find(epoch);
  if (--it->second == 0) pins_.erase(it);
}

uint64_t Chain::OldestPinnedEpoch() const {
  MutexLock lock(&pin_mu_);
  return pins_.empty() ? read_epoch_ : pins_.begin()->first;
}

uint64_t Chain::EndReadEpoch() {
  MutexLock lock(&pin_mu_);
  return read_epoch_++;
}

void Chain::ReleaseQuarantinedLocked() {
  // Lazily, where slots are taken: an unpin stays a counter decrement.
  if (active_->has_quarantined()) active_->ReleaseQuarantined(OldestPinnedEpoch());
}

absl::Status Chain::failure() const {
  ReaderMutexLock lock(&mu_);
  return failure_;
}

void Chain::FailLocked(const std::string& layer_path, const absl::Status& cause) {
  if (!failure_.ok()) return;
  failure_ = absl::DataLossError(absl::StrCat(
      layer_path, ": a sync failed (", cause.message(),
      "); writes since the last completed flush may be lost, so the disk takes no more writes "
      "and every flush fails until it is reopened, at its last durable state"));
}

absl::StatusOr<WritePlan> Chain::PrepareWrite(uint64_t offset, uint64_t length) {
  if (auto s = CheckWritable(); !s.ok()) return s;
  if (auto s = CheckRange(offset, length); !s.ok()) return s;
  if (length == 0) return absl::InvalidArgumentError("empty write");
  WritePlan plan;
  plan.start = offset / sub_block_size_ * sub_block_size_;
  plan.end = std::min(size_, (offset + length + sub_block_size_ - 1) / sub_block_size_ *
                                 sub_block_size_);
  Inflight::Range range{plan.start / sub_block_size_,
                        (plan.end + sub_block_size_ - 1) / sub_block_size_, -1, -1};
  if (plan.start < offset) range.head_excl = static_cast<int64_t>(range.start_sb);
  if (plan.end > offset + length) range.tail_excl = static_cast<int64_t>(range.end_sb - 1);

  MutexLock lock(&mu_);
  if (!failure_.ok()) return failure_;
  if (inflight_->Conflicts(range)) {
    return RetryableError(kWriteConflict, absl::StrCat("write ", offset, "+", length,
                                                       " overlaps an unaligned write in flight"));
  }
  if (CopyUpInFlightIn(range.start_sb, range.end_sb)) {
    return RetryableError(kWriteConflict, absl::StrCat("write ", offset, "+", length,
                                                       " overlaps a stream's copy in flight"));
  }
  ReleaseQuarantinedLocked();
  for (uint64_t pos = plan.start; pos < plan.end;) {
    uint64_t cluster = pos / cluster_size_;
    uint64_t piece_end = std::min(plan.end, (cluster + 1) * cluster_size_);
    ClusterEntry entry = active_->Get(cluster);
    if (entry.slot == 0) {
      std::optional<uint32_t> slot = active_->slots()->Take();
      if (!slot.has_value()) {
        return RetryableError(kNeedsSlots, absl::StrCat("write ", offset, "+", length,
                                                        ": cluster ", cluster, ": layer ",
                                                        active_->path(), " has no ready slot"));
      }
      entry.slot = *slot;
      active_->SetEntry(cluster, entry);
      plan.replenish = active_->slots()->wants_refill();
    }
    Append(&plan.targets, {Segment::Kind::kData, piece_end - pos, active_->data_fd(),
                           uint64_t{entry.slot} * cluster_size_ + pos % cluster_size_});
    pos = piece_end;
  }
  if (plan.start < offset) MapReadLocked(plan.start, offset - plan.start, &plan.head_fill);
  if (plan.end > offset + length) {
    MapReadLocked(offset + length, plan.end - offset - length, &plan.tail_fill);
  }
  if (plan.widened()) plan.fill_pin = Pin();
  inflight_->Add(range);
  return plan;
}

absl::Status Chain::ReplenishSlots() {
  if (auto s = CheckWritable(); !s.ok()) return s;
  MutexLock replenish_lock(&replenish_mu_);
  Layer* layer;
  SlotAllocator::Refill refill;
  {
    MutexLock lock(&mu_);
    if (!failure_.ok()) return failure_;
    ReleaseQuarantinedLocked();
    // Lives as long as the chain. Should SwitchSnapshot freeze it meanwhile, the refill still
    // publishes into it, before CompleteSnapshot (which takes replenish_mu_) releases its space.
    layer = active_.get();
    refill = layer->slots()->PlanRefill();
  }
  // Without mu_: ring threads map reads and prepare writes (from what is ready) meanwhile.
  layer->slots()->Fill(&refill);
  MutexLock lock(&mu_);
  return layer->slots()->Publish(refill);
}

absl::StatusOr<WritePlan> Chain::PrepareWriteBlocking(uint64_t offset, uint64_t length) {
  // First, as a server does in the background (plan.replenish): freed slots are then ready
  // and reused before the tail. A failure here fails only a write that needs a slot, below.
  (void)ReplenishSlots();
  // Terminates: with no other writer beside a synchronous caller, a replenish that returns OK
  // left a slot ready, and each retry gives at least one more cluster its slot.
  // A conflict (another thread's unaligned write, a stream's copy of the cluster) lasts well
  // under a millisecond: waited out, as the server parks the request, for up to 10 s.
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (;;) {
    auto plan = PrepareWrite(offset, length);
    if (IsWriteConflict(plan.status()) && std::chrono::steady_clock::now() < give_up) {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
      continue;
    }
    if (!NeedsSlots(plan.status())) return plan;
    if (auto s = ReplenishSlots(); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("write ", offset, "+", length, ": ", s.message()));
    }
  }
}

void Chain::FinishWrite(const WritePlan& plan, bool succeeded) {
  MutexLock lock(&mu_);
  uint64_t start_sb = plan.start / sub_block_size_;
  uint64_t end_sb = (plan.end + sub_block_size_ - 1) / sub_block_size_;
  if (!inflight_->Remove(start_sb, end_sb)) {
    // A plan finished twice, or one PrepareWrite never returned: the in-flight ranges no
    // longer say which edge sub-blocks a widened write owns (a second finish of a range may
    // even remove another write's identical range), so two overlapping unaligned writes could
    // rewrite each other's bytes with stale margins. That is a bug in the caller; stop before
    // it corrupts data. Reopening gives the last flushed state, which NBD allows.
    std::fprintf(stderr, "strata: %s: internal error: FinishWrite of sub-blocks [%llu, %llu) "
                         "that no write in flight holds\n",
                 top_path_.c_str(), static_cast<unsigned long long>(start_sb),
                 static_cast<unsigned long long>(end_sb));
    std::abort();
  }
  // After the check: a plan finished twice has no pin left to end.
  if (plan.fill_pin != 0) Unpin(plan.fill_pin);
  if (!succeeded) return;  // the slot stays reserved and unreferenced by data: harmless
  ForEachCluster(start_sb, end_sb, [&](uint64_t cluster, uint32_t mask) {
    ClusterEntry entry = active_->Get(cluster);
    entry.present |= mask;
    entry.zero &= ~mask;
    active_->SetEntry(cluster, entry);
  });
}

void Chain::ForEachCluster(uint64_t start_sb, uint64_t end_sb,
                           const std::function<void(uint64_t, uint32_t)>& fn) const {
  const uint64_t per_cluster = cluster_size_ / sub_block_size_;
  for (uint64_t sb = start_sb; sb < end_sb;) {
    uint64_t cluster = sb / per_cluster;
    uint64_t last = std::min(end_sb, (cluster + 1) * per_cluster);
    fn(cluster, SubBlockMask(sb % per_cluster, sb % per_cluster + (last - sb)));
    sb = last;
  }
}

bool Chain::CopyUpInFlightIn(uint64_t first_sb, uint64_t end_sb) const {
  const uint64_t per_cluster = cluster_size_ / sub_block_size_;
  for (uint64_t cluster : copyups_) {
    if (cluster * per_cluster < end_sb && (cluster + 1) * per_cluster > first_sb) return true;
  }
  return false;
}

bool Chain::WriteInFlightIn(uint64_t first_cluster, uint64_t end_cluster) const {
  uint64_t per_cluster = cluster_size_ / sub_block_size_;
  if (CopyUpInFlightIn(first_cluster * per_cluster, end_cluster * per_cluster)) return true;
  for (const auto& r : inflight_->ranges) {
    if (r.start_sb < end_cluster * per_cluster && r.end_sb > first_cluster * per_cluster) {
      return true;
    }
  }
  return false;
}

absl::Status Chain::MarkZero(uint64_t offset, uint64_t length, bool may_trim) {
  if (!failure_.ok()) return failure_;
  uint64_t start_sb = (offset + sub_block_size_ - 1) / sub_block_size_;
  uint64_t end_sb = (offset + length) / sub_block_size_;
  if (offset + length == size_) end_sb = (size_ + sub_block_size_ - 1) / sub_block_size_;
  ForEachCluster(start_sb, end_sb, [&](uint64_t cluster, uint32_t mask) {
    ClusterEntry entry = active_->Get(cluster);
    entry.zero |= mask;
    entry.present &= ~mask;
    // A slot left without data goes back to the free pool, unless NO_HOLE asked to keep the
    // space, or a write in flight still targets it.
    if (entry.present == 0 && may_trim && !WriteInFlightIn(cluster, cluster + 1)) entry.slot = 0;
    active_->SetEntry(cluster, entry);
  });
  return absl::OkStatus();
}

absl::Status Chain::Zero(uint64_t offset, uint64_t length, bool may_trim,
                         std::vector<std::pair<uint64_t, uint64_t>>* data_ranges) {
  if (auto s = CheckWritable(); !s.ok()) return s;
  if (auto s = CheckRange(offset, length); !s.ok()) return s;
  uint64_t end = offset + length;
  uint64_t inner_start = (offset + sub_block_size_ - 1) / sub_block_size_ * sub_block_size_;
  uint64_t inner_end = end == size_ ? end : end / sub_block_size_ * sub_block_size_;
  if (inner_start >= inner_end) {
    if (length > 0) data_ranges->emplace_back(offset, length);
    return absl::OkStatus();
  }
  if (offset < inner_start) data_ranges->emplace_back(offset, inner_start - offset);
  if (inner_end < end) data_ranges->emplace_back(inner_end, end - inner_end);
  MutexLock lock(&mu_);
  return MarkZero(inner_start, inner_end - inner_start, may_trim);
}

absl::Status Chain::Trim(uint64_t offset, uint64_t length) {
  std::vector<std::pair<uint64_t, uint64_t>> ignored;  // TRIM is advisory: edges stay
  return Zero(offset, length, /*may_trim=*/true, &ignored);
}

absl::Status Chain::Flush() {
  if (!options_.writable) return absl::OkStatus();
  MutexLock flush_lock(&flush_mu_);
  return FlushLocked();
}

absl::Status Chain::FlushLocked() {
  if (auto s = failure(); !s.ok()) return s;
  // Writes acknowledged before a snapshot live in the layer it froze: that must be durable
  // before a flush of the layer above can acknowledge anything.
  if (auto s = CompleteSnapshotLocked(); !s.ok()) return s;
  FlushBatch batch;
  {
    MutexLock lock(&mu_);
    auto prepared = active_->PrepareFlush();
    if (!prepared.ok()) return prepared.status();
    batch = std::move(*prepared);
  }
  // Invariant (FORMAT.md, Durability): the data of every write finished before PrepareFlush
  // is synced before the journal records that point to it are written.
  Layer* layer;
  {
    MutexLock lock(&mu_);
    layer = active_.get();  // stable: SwitchSnapshot also holds flush_mu_
  }
  absl::Status s = layer->file()->Sync();
  if (s.ok()) s = layer->WriteFlush(&batch);
  MutexLock lock(&mu_);
  layer->FinishFlush(&batch, s.ok(), EndReadEpoch());
  if (!s.ok()) FailLocked(layer->path(), s);
  ReleaseRetiredLocked();
  return s.ok() ? s : failure_;
}

namespace {

// Appends `e` to *out, merged into the last run when it continues it.
void AppendExtent(std::vector<Extent>* out, const Extent& e) {
  if (!out->empty() && out->back().offset + out->back().length == e.offset &&
      out->back().layer == e.layer && out->back().zero == e.zero && out->back().data == e.data) {
    Extent& back = out->back();
    if (back.file_offset < 0 ||
        back.file_offset + static_cast<int64_t>(back.length) != e.file_offset) {
      back.file_offset = -1;
    }
    back.length += e.length;
  } else {
    out->push_back(e);
  }
}

}  // namespace

absl::Status Chain::Extents(uint64_t offset, uint64_t length, std::vector<Extent>* out) const {
  if (auto s = CheckRange(offset, length); !s.ok()) return s;
  std::vector<Extent> walked;
  {
    ReaderMutexLock lock(&mu_);
    ForEachSegment(offset, length, [&walked](uint64_t at, const Segment& seg) {
      const bool data = seg.kind != Segment::Kind::kZero;
      AppendExtent(&walked, {at, seg.length, seg.layer, /*zero=*/!data, data,
                             data ? static_cast<int64_t>(seg.file_offset) : -1});
    });
  }
  for (const Extent& e : walked) {
    if (e.layer != 0 || !e.data) {
      AppendExtent(out, e);
      continue;
    }
    // The raw base's own holes read as zeros and hold no data: said so, as qemu-img map and
    // qemu-nbd's base:allocation do, so that copies (export, nbdcopy, a backup) keep them sparse.
    absl::StatusOr<std::vector<std::pair<uint64_t, uint64_t>>> ranges =
        remote_ ? remote_->DataRanges(e.offset, e.length)
                : DataRanges(base_->file->fd(), base_->file->path(), e.offset, e.length);
    if (!ranges.ok()) return ranges.status();
    uint64_t at = e.offset;
    for (const auto& [start, end] : *ranges) {
      if (start > at) AppendExtent(out, {at, start - at, 0, /*zero=*/true, /*data=*/false, -1});
      AppendExtent(out, {start, end - start, 0, false, true, static_cast<int64_t>(start)});
      at = end;
    }
    if (at < e.offset + e.length) {
      AppendExtent(out, {at, e.offset + e.length - at, 0, true, false, -1});
    }
  }
  return absl::OkStatus();
}

absl::Status Chain::CheckNewSnapshotName(absl::string_view name) const {
  for (const auto& layer : frozen_) {
    if (layer->header().snapshot_name == name) {
      return absl::AlreadyExistsError(absl::StrCat("snapshot '", name, "' already exists (",
                                                   layer->path(), ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Chain::SnapshotResult> Chain::Snapshot(absl::string_view name) {
  if (auto s = PrepareSnapshot(name); !s.ok()) return s;
  auto result = SwitchSnapshot(name);
  if (!result.ok()) {
    CancelSnapshot();
    return result.status();
  }
  if (auto s = CompleteSnapshot(); !s.ok()) return s;
  return result;
}

absl::Status Chain::PrepareSnapshot(absl::string_view name) {
  if (auto s = CheckWritable(); !s.ok()) return s;
  if (auto s = ValidateSnapshotName(name); !s.ok()) return s;
  // The next layer's file goes where a snapshot not yet durable still keeps its new layer.
  if (auto s = CompleteSnapshot(); !s.ok()) return s;
  MutexLock snapshot_lock(&snapshot_mu_);
  if (prepared_ != nullptr && prepared_->name == name) return absl::OkStatus();
  CancelPreparedLocked();
  // The active layer changes only in SwitchSnapshot, which needs snapshot_mu_: it stays.
  const Layer* active;
  {
    ReaderMutexLock lock(&mu_);
    if (auto s = CheckNewSnapshotName(name); !s.ok()) return s;
    active = active_.get();
  }
  const std::string snapshot(name);
  if (auto s = PrepareNextLayer(env_, *active, top_path_, snapshot); !s.ok()) return s;
  auto next = Layer::Open(env_, PendingLayerPath(top_path_), Layer::Mode::kWritable,
                          options_.direct_io);
  absl::Status s = next.status();
  if (s.ok() && options_.lock) s = TryLock(*(*next)->file(), LockMode::kExclusive);
  if (!s.ok()) {
    AbandonNextLayer(env_, *active, top_path_, snapshot);
    return s;
  }
  prepared_ = std::make_unique<PreparedSnapshot>(PreparedSnapshot{snapshot, std::move(*next)});
  return absl::OkStatus();
}

absl::StatusOr<Chain::SnapshotResult> Chain::SwitchSnapshot(absl::string_view name) {
  MutexLock snapshot_lock(&snapshot_mu_);
  if (prepared_ == nullptr || prepared_->name != name) {
    return absl::FailedPreconditionError(absl::StrCat("snapshot '", name, "' was not prepared"));
  }
  MutexLock flush_lock(&flush_mu_);
  if (freezing_ != nullptr) {  // PrepareSnapshot completes it; a stack of two is never built
    return absl::FailedPreconditionError(absl::StrCat(
        "snapshot '", name, "': snapshot '", freezing_->name, "' is not durable yet"));
  }
  // Not replenish_mu_: a refill's fallocate must not lengthen the pause. One planned for the
  // layer that freezes here publishes into it before CompleteSnapshot releases its space.
  MutexLock lock(&mu_);
  if (!inflight_->ranges.empty()) {
    return absl::FailedPreconditionError("snapshot with writes in flight: drain first");
  }
  // A full journal makes the next flush write a checkpoint table, which allocates space. Do
  // it now, while a failure (a full volume) still leaves the disk as it was: after the switch
  // freezing the layer must need no new space.
  if (active_->FlushNeedsCheckpoint()) {
    if (auto s = active_->Flush(); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("snapshot '", name, "': checkpoint of ",
                                                 top_path_, ": ", s.message()));
    }
  }
  // The frozen layer keeps its exclusive lock until CompleteSnapshot has renamed the new one
  // to the disk's path.
  const uint16_t position = static_cast<uint16_t>(frozen_.size() + 1);
  active_->index().ForEach([&](uint64_t cluster, const ClusterEntry& e) {
    view_->Overlay(position, cluster, e);
  });
  const std::string frozen_path = SnapshotPath(top_path_, name);
  active_->set_path(frozen_path);
  prepared_->next->set_path(top_path_);
  SnapshotResult result{frozen_path, active_->header().uuid};
  freezing_ = std::make_unique<FreezingLayer>(
      FreezingLayer{prepared_->name, WallClockNs(), active_.get()});
  freezing_view_ = freezing_.get();
  frozen_.push_back(std::move(active_));
  active_ = std::move(prepared_->next);
  prepared_.reset();
  return result;
}

absl::Status Chain::CompleteSnapshot() {
  MutexLock flush_lock(&flush_mu_);
  return CompleteSnapshotLocked();
}

absl::Status Chain::CompleteSnapshotLocked() {
  if (freezing_ == nullptr) return absl::OkStatus();
  if (auto s = failure(); !s.ok()) return s;
  // A refill planned before the switch may still be allocating in the frozen layer: wait for
  // it to end (any later one refills the new active layer) before the layer's flush reads its
  // allocator and its unused space is given back.
  { MutexLock barrier(&replenish_mu_); }
  Layer* layer = freezing_->layer;
  // The frozen layer takes no writes any more, so its flush and header need no lock; readers
  // see its header change only under mu_.
  auto frozen = layer->WriteFrozenHeader(freezing_->name, freezing_->frozen_ns);
  absl::Status s = frozen.status();
  if (!s.ok()) {
    // Its flush syncs guest data: a failure there is sticky as in Flush(). Only step 4 (the
    // rename) may be retried.
    MutexLock lock(&mu_);
    FailLocked(layer->path(), s);
  }
  if (s.ok()) s = StackNextLayer(env_, top_path_);
  if (!s.ok()) {
    return absl::Status(s.code(), absl::StrCat("snapshot '", freezing_->name, "' of ", top_path_,
                                               " is not durable yet (new writes go above it; "
                                               "every flush retries): ", s.message()));
  }
  // The disk's path names the new layer now, locked exclusively since PrepareSnapshot: only
  // from here may the frozen layer's lock become shared. flock converts a lock by dropping it
  // first, so before the rename another process could have locked the disk's path in that gap
  // and rolled the snapshot back under us.
  CompletedSnapshot done{freezing_->name, layer->path(), frozen->uuid, absl::OkStatus()};
  if (options_.lock) done.lock = TryLock(*layer->file(), LockMode::kShared);
  // Before the index is dropped (it finds the last slot in use); nothing else reads or
  // changes a frozen layer's index or allocator.
  layer->ReleaseQuarantined(OldestPinnedEpoch());
  layer->ReleaseUnusedSpace();
  {
    MutexLock lock(&mu_);
    layer->PublishHeader(*std::move(frozen));
    layer->ReleaseIndex();
    freezing_view_ = nullptr;
  }
  freezing_.reset();
  if (snapshot_listener_) snapshot_listener_(done);
  return absl::OkStatus();
}

void Chain::SetSnapshotListener(std::function<void(const CompletedSnapshot&)> listener) {
  MutexLock flush_lock(&flush_mu_);
  snapshot_listener_ = std::move(listener);
}

void Chain::CancelSnapshot() {
  MutexLock snapshot_lock(&snapshot_mu_);
  CancelPreparedLocked();
}

void Chain::CancelPreparedLocked() {
  if (prepared_ == nullptr) return;
  const std::string name = prepared_->name;
  prepared_.reset();  // closes the new layer's file
  ReaderMutexLock lock(&mu_);
  AbandonNextLayer(env_, *active_, top_path_, name);
}

absl::StatusOr<CopyUpResult> Chain::CopyUp(uint64_t cluster, const ClusterEntry& entry,
                                           const Layer& from) {
  const Uuid& from_uuid = from.header().uuid;
  if (auto s = CheckWritable(); !s.ok()) return s;
  const uint32_t per_cluster = cluster_size_ / sub_block_size_;
  Layer* target;
  uint32_t data, slot;
  CopyUpResult result;
  {
    MutexLock lock(&mu_);
    if (!failure_.ok()) return failure_;
    if (active_->header().parent_uuid != from_uuid) {
      return absl::AbortedError(absl::StrCat("the active layer of ", top_path_,
                                             " no longer stands on layer ",
                                             UuidToString(from_uuid)));
    }
    ClusterEntry a = active_->Get(cluster);
    const uint32_t absent = SubBlockMask(0, per_cluster) & ~(a.present | a.zero);
    data = entry.present & absent;
    const ClusterEntry before = a;
    a.zero |= entry.zero & absent;  // metadata only: a write finishing later still wins
    if (data != 0) {
      if (auto s = ClaimForCopyUpLocked(cluster, &a); !s.ok()) return s;
    }
    if (!(a == before)) active_->SetEntry(cluster, a);
    result.replenish = active_->slots()->wants_refill();
    if (data == 0) return result;
    target = active_.get();
    slot = a.slot;
  }
  // The target's pages are allocated (and zeroed) here, outside the file's inode lock that the
  // copy's write holds and every guest write to the layer needs.
  AdviseWillNeed(*target->file(), target->DataOffset(slot, 0), cluster_size_);
  absl::Status s = CopyClusterData(env_, from, entry.slot, target, slot, data);
  MutexLock lock(&mu_);
  // A snapshot that froze the target meanwhile leaves this cluster to do: the stream goes on
  // into the frozen layer.
  result.bytes = EndCopyUpLocked(target, cluster, s.ok() ? data : 0);
  if (!s.ok()) return s;
  return result;
}

absl::Status Chain::ClaimForCopyUpLocked(uint64_t cluster, ClusterEntry* a) {
  // A write in flight there would land before or after the copy: either order could put the
  // older data over the newer. Try this cluster later.
  if (WriteInFlightIn(cluster, cluster + 1)) {
    return RetryableError(kWriteConflict,
                          absl::StrCat("cluster ", cluster, ": a write is in flight"));
  }
  if (a->slot == 0) {
    ReleaseQuarantinedLocked();
    std::optional<uint32_t> taken = active_->slots()->Take();
    if (!taken.has_value()) {
      return RetryableError(kNeedsSlots, absl::StrCat("cluster ", cluster, ": layer ",
                                                      active_->path(), " has no ready slot"));
    }
    a->slot = *taken;
  }
  copyups_.push_back(cluster);
  return absl::OkStatus();
}

uint64_t Chain::EndCopyUpLocked(Layer* target, uint64_t cluster, uint32_t copied) {
  copyups_.erase(std::find(copyups_.begin(), copyups_.end(), cluster));
  if (copied == 0 || target != active_.get()) return 0;
  ClusterEntry a = target->Get(cluster);
  const uint32_t landed = copied & ~(a.present | a.zero);
  a.present |= landed;
  target->SetEntry(cluster, a);
  return uint64_t{static_cast<uint32_t>(__builtin_popcount(landed))} * sub_block_size_;
}

absl::StatusOr<CopyUpResult> Chain::CopyUpFromBase(uint64_t offset, absl::string_view data) {
  if (auto s = CheckWritable(); !s.ok()) return s;
  const uint64_t cluster = offset / cluster_size_;
  const uint32_t first_sb = static_cast<uint32_t>(offset % cluster_size_ / sub_block_size_);
  const uint32_t count = static_cast<uint32_t>(data.size() / sub_block_size_);
  if (offset % sub_block_size_ != 0 || data.size() % sub_block_size_ != 0 || count == 0 ||
      first_sb + count > cluster_size_ / sub_block_size_) {
    return absl::InvalidArgumentError(absl::StrCat("copy-on-read of ", data.size(), " bytes @ ",
                                                   offset, ": not whole sub-blocks of a cluster"));
  }
  Layer* target;
  uint32_t wanted = 0, slot;
  CopyUpResult result;
  {
    MutexLock lock(&mu_);
    if (!failure_.ok()) return failure_;
    ClusterEntry a = active_->Get(cluster);
    for (uint32_t sb = first_sb; sb < first_sb + count; ++sb) {
      const uint32_t bit = 1u << sb;
      if ((a.present | a.zero) & bit) continue;
      if (SegmentFor(cluster, sb, cluster * cluster_size_ + uint64_t{sb} * sub_block_size_,
                     sub_block_size_).kind == Segment::Kind::kRemote) {
        wanted |= bit;
      }
    }
    if (wanted == 0) return result;
    const uint32_t had_slot = a.slot;
    if (auto s = ClaimForCopyUpLocked(cluster, &a); !s.ok()) return s;
    if (a.slot != had_slot) active_->SetEntry(cluster, a);
    result.replenish = active_->slots()->wants_refill();
    target = active_.get();
    slot = a.slot;
  }
  absl::Status s;
  for (uint32_t sb = first_sb; s.ok() && sb < first_sb + count; ++sb) {
    if (!(wanted & (1u << sb))) continue;
    s = target->file()->Write(target->DataOffset(slot, sb),
                              data.substr(uint64_t{sb - first_sb} * sub_block_size_,
                                          sub_block_size_));
  }
  MutexLock lock(&mu_);
  result.bytes = EndCopyUpLocked(target, cluster, s.ok() ? wanted : 0);  // 0 if frozen meanwhile
  if (!s.ok()) return s;
  return result;
}

absl::Status Chain::CommitStream(const Uuid& from_uuid, const ParentRef& link) {
  if (auto s = CheckWritable(); !s.ok()) return s;
  MutexLock snapshot_lock(&snapshot_mu_);
  {
    MutexLock flush_lock(&flush_mu_);
    if (auto s = CompleteSnapshotLocked(); !s.ok()) return s;
    Layer* active;
    {
      ReaderMutexLock lock(&mu_);
      if (active_->header().parent_uuid != from_uuid) {
        return absl::AbortedError(absl::StrCat("the active layer of ", top_path_,
                                               " no longer stands on layer ",
                                               UuidToString(from_uuid)));
      }
      active = active_.get();  // stable: a switch needs snapshot_mu_
    }
    // Every copy up finished before this call: the flush makes them durable before the header
    // stops naming the layer they came from.
    if (auto s = FlushLocked(); !s.ok()) return s;
    auto header = active->WriteEditedHeader([&](LayerHeader* h) { link.ApplyTo(h); });
    if (!header.ok()) {
      return absl::Status(header.status().code(),
                          absl::StrCat("relinking ", top_path_, ": ", header.status().message()));
    }
    // Under flush_mu_: a later checkpoint's header starts from this one.
    MutexLock lock(&mu_);
    active->PublishHeader(*std::move(header));
  }
  return DropFrozenLayerLocked(from_uuid);
}

absl::Status Chain::DropFrozenLayer(const Uuid& uuid) {
  MutexLock snapshot_lock(&snapshot_mu_);
  {
    // A layer still freezing has no final index on disk to rebuild the view from.
    MutexLock flush_lock(&flush_mu_);
    if (auto s = CompleteSnapshotLocked(); !s.ok()) return s;
  }
  return DropFrozenLayerLocked(uuid);
}

absl::Status Chain::DropFrozenLayerLocked(const Uuid& uuid) {
  std::vector<std::string> paths;
  std::vector<Uuid> uuids;
  {
    ReaderMutexLock lock(&mu_);
    for (const auto& layer : frozen_) {
      paths.push_back(layer->path());
      uuids.push_back(layer->header().uuid);
    }
  }
  const auto dropped = std::find(uuids.begin(), uuids.end(), uuid);
  if (dropped == uuids.end()) {
    return absl::NotFoundError(absl::StrCat("layer ", UuidToString(uuid), " is not in the chain of ",
                                            top_path_));
  }
  const size_t drop = static_cast<size_t>(dropped - uuids.begin());
  // Frozen layers change on disk only by a stream's relink, and no snapshot switches while
  // snapshot_mu_ is held: what is read here is what the chain will have.
  auto view = std::make_unique<FlatView>(cluster_size_ / sub_block_size_);
  std::vector<std::unique_ptr<Layer>> reopened(paths.size());
  for (size_t i = 0; i < paths.size(); ++i) {
    if (i == drop) continue;
    auto layer = Layer::Open(env_, paths[i], Layer::Mode::kReadOnly);
    if (!layer.ok()) return layer.status();
    if ((*layer)->header().uuid != uuids[i]) {
      return absl::FailedPreconditionError(absl::StrCat(
          paths[i], " is no longer layer ", UuidToString(uuids[i]), ": the file was replaced"));
    }
    const uint16_t position = static_cast<uint16_t>(i < drop ? i + 1 : i);
    (*layer)->index().ForEach([&](uint64_t cluster, const ClusterEntry& e) {
      view->Overlay(position, cluster, e);
    });
    (*layer)->ReleaseIndex();
    reopened[i] = std::move(*layer);
  }
  MutexLock lock(&mu_);
  for (size_t i = 0; i < frozen_.size(); ++i) {
    if (i != drop) frozen_[i]->AdoptReopened(*reopened[i]);
  }
  // Reads mapped until now may still use the dropped layer's descriptor.
  retired_.emplace_back(EndReadEpoch(), std::move(frozen_[drop]));
  frozen_.erase(frozen_.begin() + static_cast<long>(drop));
  view_ = std::move(view);
  return absl::OkStatus();
}

void Chain::ReleaseRetiredLocked() {
  const uint64_t oldest = OldestPinnedEpoch();
  std::erase_if(retired_, [oldest](const auto& r) { return r.first < oldest; });
}

absl::Status Chain::ReadSegments(const std::vector<Segment>& segments, char* out) const {
  for (const Segment& seg : segments) {
    if (seg.kind == Segment::Kind::kZero) {
      std::memset(out, 0, seg.length);
    } else if (seg.kind == Segment::Kind::kRemote) {
      if (auto s = remote_->Read(seg.file_offset, absl::MakeSpan(out, seg.length)); !s.ok()) {
        return s;
      }
    } else {
      uint64_t done = 0;
      while (done < seg.length) {
        ssize_t n = pread(seg.fd, out + done, seg.length - done,
                          static_cast<off_t>(seg.file_offset + done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
          return n < 0 ? ErrnoStatus(errno, "read", absl::StrCat("fd ", seg.fd),
                                     static_cast<int64_t>(seg.file_offset + done))
                       : absl::DataLossError(absl::StrCat("short read at file offset ",
                                                          seg.file_offset + done));
        }
        done += static_cast<uint64_t>(n);
      }
    }
    out += seg.length;
  }
  return absl::OkStatus();
}

absl::Status Chain::Read(uint64_t offset, absl::Span<char> out) const {
  if (options_.direct_io) return absl::FailedPreconditionError("synchronous read with O_DIRECT");
  std::vector<Segment> segments;
  ReadPin pin;
  if (auto s = MapRead(offset, out.size(), &segments, &pin); !s.ok()) return s;
  return ReadSegments(segments, out.data());
}

absl::Status Chain::Write(uint64_t offset, absl::string_view data) {
  if (options_.direct_io) return absl::FailedPreconditionError("synchronous write with O_DIRECT");
  constexpr uint64_t kPiece = 8 << 20;  // bounds the widened buffer
  std::string buf;
  while (!data.empty()) {
    uint64_t n = std::min<uint64_t>(kPiece, data.size());
    auto plan = PrepareWriteBlocking(offset, n);
    if (!plan.ok()) return plan.status();
    buf.resize(plan->end - plan->start);
    uint64_t head = offset - plan->start;
    absl::Status s = ReadSegments(plan->head_fill, buf.data());
    std::memcpy(buf.data() + head, data.data(), n);
    if (s.ok()) s = ReadSegments(plan->tail_fill, buf.data() + head + n);
    // Through the active layer's File (not the bare fd) so a test Env sees every write.
    File* file;
    {
      MutexLock lock(&mu_);
      file = active_->file();
    }
    const char* src = buf.data();
    for (const Segment& t : plan->targets) {
      if (!s.ok()) break;
      s = file->Write(t.file_offset, absl::string_view(src, t.length));
      src += t.length;
    }
    FinishWrite(*plan, s.ok());
    if (!s.ok()) return s;
    offset += n;
    data.remove_prefix(n);
  }
  return absl::OkStatus();
}

absl::Status Chain::WriteZeroes(uint64_t offset, uint64_t length, bool may_trim) {
  std::vector<std::pair<uint64_t, uint64_t>> data_ranges;
  if (auto s = Zero(offset, length, may_trim, &data_ranges); !s.ok()) return s;
  for (const auto& [off, len] : data_ranges) {
    if (auto s = Write(off, std::string(len, '\0')); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace strata
