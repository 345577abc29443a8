#include "blockstore/crash_env.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <functional>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace strata {
namespace {

constexpr uint64_t kBlock = 4096;  // a pending write persists block by block, in any subset
constexpr uint64_t kSector = 512;  // and a block it keeps may still be torn at sectors
constexpr uint8_t kWhole = 0xff;   // every sector of a piece (a block has 8)

// A 4 KiB block, and the hash of its bytes once asked (a shared block is copied, not changed).
struct Block {
  std::string bytes = std::string(kBlock, '\0');
  mutable uint64_t hash = 0;  // 0: not computed yet
  uint64_t Hash() const {
    if (hash == 0) hash = std::hash<std::string_view>()(bytes) | 1;
    return hash;
  }
};

// Sparse file content: 4 KiB blocks, absent ones read as zeros. Copies share their blocks
// until one of them writes (a CrashPoint costs little).
class Content {
 public:
  void Write(uint64_t offset, absl::string_view data) {
    while (!data.empty()) {
      uint64_t within = offset % kBlock;
      size_t n = std::min<uint64_t>(data.size(), kBlock - within);
      std::memcpy(Mutable(offset / kBlock) + within, data.data(), n);
      offset += n;
      data.remove_prefix(n);
    }
  }
  // [offset, offset + length) reads as zeros.
  void Zero(uint64_t offset, uint64_t length) {
    uint64_t end = length > UINT64_MAX - offset ? UINT64_MAX : offset + length;
    for (auto it = blocks_.lower_bound(offset / kBlock);
         it != blocks_.end() && it->first * kBlock < end;) {
      uint64_t start = it->first * kBlock;
      uint64_t from = std::max(start, offset), to = std::min(start + kBlock, end);
      if (from == start && to == start + kBlock) {
        it = blocks_.erase(it);
        continue;
      }
      std::memset(Mutable(it->first) + (from - start), 0, to - from);
      ++it;
    }
  }
  // Everything at and past `size` reads as zeros.
  void Cut(uint64_t size) { Zero(size, UINT64_MAX); }
  const std::map<uint64_t, std::shared_ptr<Block>>& blocks() const { return blocks_; }

 private:
  char* Mutable(uint64_t b) {
    std::shared_ptr<Block>& block = blocks_[b];
    if (!block) {
      block = std::make_shared<Block>();
    } else if (block.use_count() > 1) {
      block = std::make_shared<Block>(*block);
    }
    block->hash = 0;
    return block->bytes.data();
  }

  std::map<uint64_t, std::shared_ptr<Block>> blocks_;
};

// One pending operation on an inode.
struct Op {
  enum class Kind { kWrite, kPunch, kResize } kind;
  uint64_t offset = 0;  // kWrite, kPunch
  uint64_t length = 0;  // kWrite, kPunch
  uint64_t size = 0;    // kResize: the file's size after it
  std::shared_ptr<const std::string> data;  // kWrite
};

// Pieces a crash keeps or loses independently: a write's blocks; a punch (a metadata change on
// real file systems) whole.
uint64_t Pieces(const Op& op) {
  switch (op.kind) {
    case Op::Kind::kWrite:
      return op.length == 0 ? 0 : (op.offset + op.length - 1) / kBlock - op.offset / kBlock + 1;
    case Op::Kind::kPunch: return 1;
    case Op::Kind::kResize: return 0;
  }
  return 0;
}

// What one inode's crash state keeps of its pending operations.
struct Kept {
  std::vector<uint8_t> pieces;  // per piece: bit k set = its k-th sector persisted
  size_t size_changes = 0;      // how many of its size changes (a prefix)
};

// How many sectors the block piece [from, to) of a write covers.
uint64_t SectorsIn(uint64_t from, uint64_t to) { return (to - 1) / kSector - from / kSector + 1; }

// Disjoint byte ranges [begin, end), for the holes a file has.
class Ranges {
 public:
  void Add(uint64_t begin, uint64_t end) {
    if (begin >= end) return;
    Remove(begin, end);
    ranges_[begin] = end;
  }
  void Remove(uint64_t begin, uint64_t end) {
    auto it = ranges_.lower_bound(begin);
    if (it != ranges_.begin() && std::prev(it)->second > begin) --it;
    while (it != ranges_.end() && it->first < end) {
      const auto [b, e] = *it;
      it = ranges_.erase(it);
      if (b < begin) ranges_[b] = begin;
      if (e > end) ranges_[end] = e;
    }
  }
  bool Overlaps(uint64_t begin, uint64_t end) const {
    auto it = ranges_.lower_bound(end);  // the ranges before it start before `end`
    return it != ranges_.begin() && std::prev(it)->second > begin;
  }

 private:
  std::map<uint64_t, uint64_t> ranges_;  // begin -> end
};

uint64_t BlockDown(uint64_t offset) { return offset / kBlock * kBlock; }
uint64_t BlockUp(uint64_t offset) { return (offset + kBlock - 1) / kBlock * kBlock; }

}  // namespace

struct Inode {
  Content durable;
  uint64_t durable_size = 0;
  std::vector<Op> pending;  // since the last Sync(), in program order
  uint64_t size = 0;        // now: the real file's size
  // A real operation failed part way: the real file may hold what no operation recorded, so a
  // crash writes it out anew instead of patching it.
  bool diverged = false;
  // What of [0, size) holds no space (punched, or grown by a truncate) since the last crash,
  // which counts everything in a file's size as allocated: on a full volume, writing there or
  // past the size fails.
  Ranges holes;
};

// A directory operation in the log.
struct DirOp {
  enum class Kind { kCreate, kLink, kRename, kRemove } kind;
  std::string path;  // the name created, linked, renamed to, or removed (canonical)
  std::string from;  // kRename
  uint64_t inode = 0;

  bool Touches(const std::string& dir) const {
    return DirName(path) == dir || (kind == Kind::kRename && DirName(from) == dir);
  }
  void ApplyTo(std::map<std::string, uint64_t>* names) const {
    if (kind == Kind::kRename) names->erase(from);
    if (kind == Kind::kRemove) {
      names->erase(path);
    } else {
      (*names)[path] = inode;
    }
  }
};

struct CrashModel {
  std::map<uint64_t, Inode> inodes;
  std::map<std::string, uint64_t> durable_names;
  std::map<std::string, uint64_t> names;  // now: what the real directories hold
  std::vector<DirOp> dir_log;             // not durable yet, in program order

  // Inodes some crash state can name: durably named, or named by a pending directory op.
  std::set<uint64_t> Reachable() const {
    std::set<uint64_t> out;
    for (const auto& [path, id] : durable_names) out.insert(id);
    for (const DirOp& op : dir_log) out.insert(op.inode);
    return out;
  }
};

namespace {

// The content and size an inode has once `kept` of its pending operations persisted.
void Apply(const Inode& inode, const Kept& kept, Content* content, uint64_t* size) {
  Content out = inode.durable;
  uint64_t out_size = inode.durable_size;
  size_t piece = 0, resizes = 0;
  for (const Op& op : inode.pending) {
    switch (op.kind) {
      case Op::Kind::kWrite:
        for (uint64_t b = op.offset / kBlock; b * kBlock < op.offset + op.length; ++b) {
          uint8_t mask = kept.pieces[piece++];
          uint64_t from = std::max(b * kBlock, op.offset);
          uint64_t to = std::min((b + 1) * kBlock, op.offset + op.length);
          absl::string_view data(*op.data);
          if (mask == kWhole) {
            out.Write(from, data.substr(from - op.offset, to - from));
            continue;
          }
          for (uint64_t k = 0; k < SectorsIn(from, to); ++k) {
            if (!(mask & (1u << k))) continue;
            uint64_t s = std::max(from, (from / kSector + k) * kSector);
            uint64_t e = std::min(to, (from / kSector + k + 1) * kSector);
            out.Write(s, data.substr(s - op.offset, e - s));
          }
        }
        break;
      case Op::Kind::kPunch:
        if (kept.pieces[piece++]) out.Zero(op.offset, op.length);
        break;
      case Op::Kind::kResize:
        if (resizes++ < kept.size_changes) {
          out_size = op.size;
          out.Cut(op.size);
        }
        break;
    }
  }
  out.Cut(out_size);
  *content = std::move(out);
  *size = out_size;
}

size_t SizeChanges(const Inode& inode) {
  return static_cast<size_t>(std::count_if(inode.pending.begin(), inode.pending.end(), [](const Op& op) {
    return op.kind == Op::Kind::kResize;
  }));
}

Kept KeepAll(const Inode& inode) {
  Kept kept;
  for (const Op& op : inode.pending) kept.pieces.resize(kept.pieces.size() + Pieces(op), kWhole);
  kept.size_changes = SizeChanges(inode);
  return kept;
}

uint64_t SaturatingMul(uint64_t a, uint64_t b) {
  return b != 0 && a > UINT64_MAX / b ? UINT64_MAX : a * b;
}

// What a crash state keeps, decoded from a choice.
struct Selection {
  std::map<uint64_t, Kept> kept;  // the reachable inodes with pending operations
  size_t dir_ops = 0;             // how many of the directory log (a prefix)
};

Selection Select(const CrashModel& m, const CrashChoice& choice) {
  using Kind = CrashChoice::Kind;
  std::mt19937_64 rng(choice.value);
  const double p = std::uniform_real_distribution<double>(0, 1)(rng);
  uint64_t index = choice.value;
  // Mixed radix for State: the directory log prefix, each inode's size prefix, then one bit
  // per block piece.
  auto digit = [&](uint64_t radix) -> uint64_t {
    switch (choice.kind) {
      case Kind::kNothing: return 0;
      case Kind::kEverything: return radix - 1;
      case Kind::kState: {
        uint64_t d = index % radix;
        index /= radix;
        return d;
      }
      case Kind::kRandom: return rng() % radix;
    }
    return 0;
  };
  Selection sel;
  sel.dir_ops = digit(m.dir_log.size() + 1);
  for (uint64_t id : m.Reachable()) {
    const Inode& inode = m.inodes.at(id);
    if (!inode.pending.empty()) sel.kept[id].size_changes = digit(SizeChanges(inode) + 1);
  }
  for (auto& [id, kept] : sel.kept) {
    for (const Op& op : m.inodes.at(id).pending) {
      for (uint64_t i = 0; i < Pieces(op); ++i) {
        bool on = choice.kind == Kind::kEverything || (choice.kind == Kind::kState && digit(2)) ||
                  (choice.kind == Kind::kRandom && std::uniform_real_distribution<double>(0, 1)(rng) < p);
        uint8_t mask = on ? kWhole : 0;
        if (on && choice.kind == Kind::kRandom && op.kind == Op::Kind::kWrite && rng() % 8 == 0) {
          uint64_t b = op.offset / kBlock + i;
          uint64_t n = SectorsIn(std::max(b * kBlock, op.offset),
                                 std::min((b + 1) * kBlock, op.offset + op.length));
          if (n > 1) mask = static_cast<uint8_t>(1 + rng() % ((1u << n) - 2));  // torn
        }
        kept.pieces.push_back(mask);
      }
    }
  }
  return sel;
}

uint64_t Mix(uint64_t h, uint64_t v) {
  h = (h ^ v) * 0x9e3779b97f4a7c15ull;
  return h ^ (h >> 29);
}

uint64_t Fingerprint(const Content& content, uint64_t size) {
  uint64_t h = Mix(0, size);
  for (const auto& [b, block] : content.blocks()) {
    h = Mix(Mix(h, b), block->Hash());
  }
  return h;
}

// Brings the real file `fd` from content `from` (`from_size` bytes) to `to` (`size` bytes):
// writes the blocks that differ, in runs, and punches out the blocks `to` does not have.
absl::Status Rewrite(int fd, const std::string& path, const Content& from, uint64_t from_size,
                     const Content& to, uint64_t size) {
  constexpr size_t kRun = 1 << 20;
  if (size != from_size && ftruncate(fd, static_cast<off_t>(size)) != 0) {
    return ErrnoStatus(errno, "crash: truncate", path);
  }
  std::string run;
  uint64_t run_at = 0;
  auto write_run = [&]() -> absl::Status {
    if (!run.empty() && pwrite(fd, run.data(), run.size(), static_cast<off_t>(run_at)) !=
                            static_cast<ssize_t>(run.size())) {
      return ErrnoStatus(errno, "crash: write", path, static_cast<int64_t>(run_at));
    }
    run.clear();
    return absl::OkStatus();
  };
  auto old = from.blocks().begin(), now = to.blocks().begin();
  while (old != from.blocks().end() || now != to.blocks().end()) {
    uint64_t b = std::min(old != from.blocks().end() ? old->first : UINT64_MAX,
                          now != to.blocks().end() ? now->first : UINT64_MAX);
    const Block* was = old != from.blocks().end() && old->first == b ? (old++)->second.get() : nullptr;
    const Block* is = now != to.blocks().end() && now->first == b ? (now++)->second.get() : nullptr;
    // Copies share unchanged blocks, so most compare by pointer.
    if (b * kBlock >= size || was == is || (was && is && was->bytes == is->bytes)) continue;
    if (is == nullptr) {
      if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(b * kBlock),
                    kBlock) != 0) {
        return ErrnoStatus(errno, "crash: punch hole", path, static_cast<int64_t>(b * kBlock));
      }
      continue;
    }
    if (!run.empty() && (run_at + run.size() != b * kBlock || run.size() >= kRun)) {
      if (auto s = write_run(); !s.ok()) return s;
    }
    if (run.empty()) run_at = b * kBlock;
    run.append(is->bytes, 0, std::min<uint64_t>(kBlock, size - b * kBlock));
  }
  return write_run();
}

absl::Status WriteOut(const std::string& path, const Inode& inode) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus(errno, "crash: create", path);
  absl::Status s = Rewrite(fd, path, Content(), 0, inode.durable, inode.durable_size);
  close(fd);
  return s;
}

// Rewrites the real file `path`, which holds `now`'s content with everything pending applied,
// as `target`'s durable content.
absl::Status Patch(const std::string& path, const Inode& now, const Inode& target) {
  Content current;
  uint64_t size;
  Apply(now, KeepAll(now), &current, &size);
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, "crash: open", path);
  absl::Status s = Rewrite(fd, path, current, size, target.durable, target.durable_size);
  close(fd);
  return s;
}

absl::Status PowerCut(absl::string_view op, const std::string& path) {
  return absl::UnavailableError(absl::StrCat(op, " ", path, ": power cut (crash test)"));
}

}  // namespace

std::string CrashChoice::ToString() const {
  switch (kind) {
    case Kind::kNothing: return "nothing pending persisted";
    case Kind::kEverything: return "everything pending persisted";
    case Kind::kState: return absl::StrCat("crash state ", value);
    case Kind::kRandom: return absl::StrCat("random crash state, seed ", value);
  }
  return "";
}

std::vector<CrashChoice> CrashPoint::Choices(uint64_t exhaustive_bound, int samples,
                                             uint64_t seed) const {
  std::vector<CrashChoice> out;
  if (states_ <= exhaustive_bound) {
    for (uint64_t i = 0; i < states_; ++i) out.push_back(CrashChoice::State(i));
    return out;
  }
  out.push_back(CrashChoice::Nothing());
  out.push_back(CrashChoice::Everything());
  std::mt19937_64 rng(seed);
  for (int i = 0; i < samples; ++i) out.push_back(CrashChoice::Random(rng()));
  return out;
}

std::string CrashPoint::Describe(const CrashChoice& choice) const {
  const CrashModel& m = *model_;
  const Selection sel = Select(m, choice);
  auto name = [&](uint64_t id) {
    for (const auto& [path, inode] : m.durable_names) {
      if (inode == id) return BaseName(path);
    }
    for (const DirOp& op : m.dir_log) {
      if (op.inode == id) return BaseName(op.path);
    }
    return std::string("(no name)");
  };
  std::vector<std::string> parts;
  for (const auto& [id, kept] : sel.kept) {
    std::vector<std::string> ops;
    size_t piece = 0, resizes = 0;
    for (const Op& op : m.inodes.at(id).pending) {
      if (op.kind == Op::Kind::kResize) {
        ops.push_back(absl::StrCat("size ", op.size, resizes++ < kept.size_changes ? " kept" : " lost"));
        continue;
      }
      // Runs of pieces in one state: kept, lost, or torn (some sectors).
      std::vector<std::string> runs;
      uint64_t at = op.offset, run_at = op.offset;
      int run_state = -1;
      for (uint64_t i = 0; i < Pieces(op); ++i) {
        uint8_t mask = kept.pieces[piece++];
        int state = mask == kWhole ? 0 : mask == 0 ? 1 : 2;
        uint64_t end = op.kind == Op::Kind::kPunch ? op.offset + op.length
                                                    : std::min((at / kBlock + 1) * kBlock, op.offset + op.length);
        if (state != run_state && run_state >= 0) {
          runs.push_back(absl::StrCat(run_state == 0 ? "kept" : run_state == 1 ? "lost" : "torn",
                                      " @", run_at, "+", at - run_at));
          run_at = at;
        }
        run_state = state;
        at = end;
      }
      runs.push_back(absl::StrCat(run_state == 0 ? "kept" : run_state == 1 ? "lost" : "torn", " @",
                                  run_at, "+", at - run_at));
      ops.push_back(absl::StrCat(op.kind == Op::Kind::kWrite ? "write @" : "punch @", op.offset,
                                 "+", op.length, ": ", absl::StrJoin(runs, ", ")));
    }
    constexpr size_t kShown = 12;  // a failure message, not a dump
    if (ops.size() > kShown) {
      const size_t more = ops.size() - kShown;
      ops.resize(kShown);
      ops.push_back(absl::StrCat("... ", more, " more"));
    }
    parts.push_back(absl::StrCat(name(id), ": ", absl::StrJoin(ops, "; ")));
  }
  if (!m.dir_log.empty()) {
    std::vector<std::string> dir_ops;
    for (size_t i = 0; i < m.dir_log.size(); ++i) {
      const DirOp& op = m.dir_log[i];
      const char* kind[] = {"create ", "link ", "rename ", "remove "};
      dir_ops.push_back(absl::StrCat(kind[static_cast<int>(op.kind)],
                                     op.kind == DirOp::Kind::kRename ? BaseName(op.from) + " -> " : "",
                                     BaseName(op.path), i < sel.dir_ops ? " kept" : " lost"));
    }
    parts.push_back(absl::StrCat("directories: ", absl::StrJoin(dir_ops, ", ")));
  }
  return parts.empty() ? "nothing pending" : absl::StrJoin(parts, " | ");
}

// A file of the model: real I/O, each change recorded on the inode.
class CrashFile final : public File {
 public:
  CrashFile(CrashEnv* env, std::unique_ptr<File> real, uint64_t inode)
      : File(real->path()), env_(env), real_(std::move(real)), inode_(inode) {}
  ~CrashFile() override { env_->Closed(this); }

  absl::Status Read(uint64_t offset, size_t n, char* dst) const override {
    MutexLock lock(&env_->mu_);
    if (auto s = env_->CheckPowerLocked("read", path()); !s.ok()) return s;
    return real_->Read(offset, n, dst);
  }
  absl::Status Write(uint64_t offset, absl::string_view data) override {
    MutexLock lock(&env_->mu_);
    if (auto s = env_->CheckPowerLocked("write", path()); !s.ok()) return s;
    if (auto s = SpaceLocked("write", offset, data.size()); !s.ok()) return s;
    absl::Status s = real_->Write(offset, data);
    Inode& i = Touched(s);
    if (!s.ok() || data.empty()) return s;
    Filled(&i, offset, data.size());
    Resized(&i, std::max(i.size, offset + data.size()));
    i.pending.push_back({Op::Kind::kWrite, offset, data.size(), 0,
                         std::make_shared<const std::string>(data)});
    return absl::OkStatus();
  }
  absl::Status Sync() override {
    MutexLock lock(&env_->mu_);
    if (auto s = env_->SyncPointLocked("fdatasync", path()); !s.ok()) return s;
    Inode& i = env_->model_->inodes.at(inode_);
    Apply(i, KeepAll(i), &i.durable, &i.durable_size);
    i.pending.clear();
    return absl::OkStatus();
  }
  absl::Status Allocate(uint64_t offset, uint64_t length) override {
    MutexLock lock(&env_->mu_);
    if (auto s = env_->CheckPowerLocked("fallocate", path()); !s.ok()) return s;
    if (auto s = SpaceLocked("fallocate", offset, length); !s.ok()) return s;
    absl::Status s = real_->Allocate(offset, length);
    Inode& i = Touched(s);
    if (!s.ok()) return s;
    Filled(&i, offset, length);
    Resized(&i, std::max(i.size, offset + length));
    return s;
  }
  absl::Status PunchHole(uint64_t offset, uint64_t length) override {
    MutexLock lock(&env_->mu_);
    if (auto s = env_->CheckPowerLocked("punch hole", path()); !s.ok()) return s;
    absl::Status s = real_->PunchHole(offset, length);
    Inode& i = Touched(s);
    if (s.ok() && offset < i.size) {
      i.pending.push_back({Op::Kind::kPunch, offset, std::min(length, i.size - offset)});
      i.holes.Add(BlockUp(offset), BlockDown(std::min(offset + length, i.size)));
    }
    return s;
  }
  absl::Status Truncate(uint64_t size) override {
    MutexLock lock(&env_->mu_);
    if (auto s = env_->CheckPowerLocked("truncate", path()); !s.ok()) return s;
    absl::Status s = real_->Truncate(size);
    Inode& i = Touched(s);
    if (!s.ok()) return s;
    i.holes.Remove(size, UINT64_MAX);
    i.holes.Add(BlockUp(i.size), size);
    Resized(&i, size);
    return s;
  }
  absl::StatusOr<uint64_t> Size() const override {
    MutexLock lock(&env_->mu_);
    if (auto s = env_->CheckPowerLocked("stat", path()); !s.ok()) return s;
    return real_->Size();
  }
  absl::StatusOr<uint64_t> AllocatedBytes() const override {
    MutexLock lock(&env_->mu_);
    if (auto s = env_->CheckPowerLocked("stat", path()); !s.ok()) return s;
    return real_->AllocatedBytes();
  }
  int fd() const override { return real_->fd(); }
  void set_path(std::string path) override {
    real_->set_path(path);
    File::set_path(std::move(path));
  }

 private:
  // The inode after a real operation that returned `s`.
  Inode& Touched(const absl::Status& s) {
    Inode& i = env_->model_->inodes.at(inode_);
    i.diverged |= !s.ok();
    return i;
  }
  // ENOSPC (as the real file would give it) when the volume is full and [offset, offset +
  // length) needs space the file does not hold.
  absl::Status SpaceLocked(absl::string_view op, uint64_t offset, uint64_t length) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(env_->mu_) {
    if (!env_->volume_full_ || length == 0) return absl::OkStatus();
    const Inode& i = env_->model_->inodes.at(inode_);
    if (offset + length <= i.size && !i.holes.Overlaps(offset, offset + length)) {
      return absl::OkStatus();
    }
    return ErrnoStatus(ENOSPC, op, path(), static_cast<int64_t>(offset));
  }
  static void Filled(Inode* i, uint64_t offset, uint64_t length) {
    i->holes.Remove(BlockDown(offset), BlockUp(offset + length));
  }
  static void Resized(Inode* i, uint64_t size) {
    if (size == i->size) return;
    i->pending.push_back({Op::Kind::kResize, 0, 0, size});
    i->size = size;
  }

  CrashEnv* const env_;
  const std::unique_ptr<File> real_;
  const uint64_t inode_;
};

CrashEnv::CrashEnv(uint64_t seed) : model_(std::make_unique<CrashModel>()), rng_(seed) {}
CrashEnv::~CrashEnv() = default;

absl::Status CrashEnv::Import(const std::string& root) {
  MutexLock lock(&mu_);
  std::map<std::pair<dev_t, ino_t>, uint64_t> seen;  // hard links: one inode
  std::error_code error;
  for (std::filesystem::recursive_directory_iterator it(root, error), end; !error && it != end;
       it.increment(error)) {
    if (!it->is_regular_file()) continue;
    const std::string path = CanonicalLocked(it->path().string());
    struct stat st;
    if (stat(path.c_str(), &st) != 0) return ErrnoStatus(errno, "crash env: stat", path);
    auto [known, fresh] = seen.emplace(std::make_pair(st.st_dev, st.st_ino), 0);
    if (fresh) {
      if (model_->names.count(path)) {
        known->second = model_->names[path];
      } else if (auto s = ImportLocked(path, &known->second); !s.ok()) {
        return s;
      }
    }
    model_->names[path] = model_->durable_names[path] = known->second;
  }
  if (error) return ErrnoStatus(error.value(), "crash env: list", root);
  return absl::OkStatus();
}

absl::Status CrashEnv::ImportLocked(const std::string& path, uint64_t* inode) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, "crash env: open", path);
  struct stat st;
  Inode i;
  absl::Status s;
  if (fstat(fd, &st) != 0) s = ErrnoStatus(errno, "crash env: stat", path);
  i.durable_size = i.size = s.ok() ? static_cast<uint64_t>(st.st_size) : 0;
  // Only the data extents, and of them only blocks that are not zeros: absent reads as zeros.
  std::string block(kBlock, '\0');
  const std::string zeros(kBlock, '\0');
  auto ranges = DataRanges(fd, path, 0, i.size);  // none when fstat failed (size 0)
  if (s.ok() && !ranges.ok()) s = ranges.status();
  for (const auto& [data, hole] : s.ok() ? *ranges : std::vector<std::pair<uint64_t, uint64_t>>{}) {
    for (uint64_t b = data / kBlock; s.ok() && b * kBlock < hole; ++b) {
      ssize_t n = pread(fd, block.data(), kBlock, static_cast<off_t>(b * kBlock));
      if (n < 0) s = ErrnoStatus(errno, "crash env: read", path, static_cast<int64_t>(b * kBlock));
      if (n > 0 && block.compare(0, n, zeros, 0, n) != 0) {
        i.durable.Write(b * kBlock, absl::string_view(block.data(), n));
      }
    }
  }
  close(fd);
  if (!s.ok()) return s;
  *inode = next_inode_++;
  model_->inodes[*inode] = std::move(i);
  model_->names[path] = model_->durable_names[path] = *inode;
  return absl::OkStatus();
}

std::string CrashEnv::CanonicalLocked(const std::string& path) {
  const std::string dir = DirName(path);
  auto known = dir[0] == '/' ? dirs_.find(dir) : dirs_.end();  // relative: the cwd may change
  if (known == dirs_.end()) {
    char* real = realpath(dir.c_str(), nullptr);
    std::string resolved = real ? real : dir;
    free(real);
    if (resolved == "/") resolved.clear();
    if (dir[0] != '/') return resolved + "/" + BaseName(path);
    known = dirs_.emplace(dir, std::move(resolved)).first;
  }
  return known->second + "/" + BaseName(path);
}

uint64_t CrashEnv::InodeAtLocked(const std::string& path) {
  if (auto it = model_->names.find(path); it != model_->names.end()) return it->second;
  struct stat st;
  uint64_t inode = 0;
  if (stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode) || !ImportLocked(path, &inode).ok()) {
    return 0;
  }
  return inode;
}

absl::Status CrashEnv::CheckPowerLocked(absl::string_view op, const std::string& path) const {
  return power_cut_ ? PowerCut(op, path) : absl::OkStatus();
}

absl::Status CrashEnv::SyncPointLocked(absl::string_view op, const std::string& path) {
  if (auto s = CheckPowerLocked(op, path); !s.ok()) return s;
  if (syncs_until_cut_ == 0) {
    power_cut_ = true;
    syncs_until_cut_ = -1;
    return PowerCut(op, path);
  }
  if (syncs_until_failure_ == 0) {
    return absl::DataLossError(absl::StrCat(op, " ", path, ": injected I/O error"));
  }
  if (syncs_until_cut_ > 0) --syncs_until_cut_;
  if (syncs_until_failure_ > 0) --syncs_until_failure_;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<File>> CrashEnv::Open(const std::string& path,
                                                     const OpenOptions& options) {
  MutexLock lock(&mu_);
  if (auto s = CheckPowerLocked("open", path); !s.ok()) return s;
  auto real = Env::Default()->Open(path, options);
  if (!real.ok()) return real.status();
  const std::string name = CanonicalLocked(path);
  uint64_t inode;
  if (options.create) {
    inode = next_inode_++;
    model_->inodes[inode];
    model_->names[name] = inode;
    model_->dir_log.push_back({DirOp::Kind::kCreate, name, "", inode});
  } else if (inode = InodeAtLocked(name); inode == 0) {
    return absl::InternalError(absl::StrCat("crash env: ", path, " opened but not readable"));
  }
  auto file = std::make_unique<CrashFile>(this, std::move(*real), inode);
  open_[file->fd()] = file.get();
  return file;
}

void CrashEnv::Closed(CrashFile* file) {
  MutexLock lock(&mu_);
  open_.erase(file->fd());
}

absl::Status CrashEnv::Rename(const std::string& from, const std::string& to) {
  MutexLock lock(&mu_);
  if (auto s = CheckPowerLocked("rename", absl::StrCat(from, " -> ", to)); !s.ok()) return s;
  const std::string f = CanonicalLocked(from), t = CanonicalLocked(to);
  const uint64_t inode = InodeAtLocked(f);
  InodeAtLocked(t);  // a name it replaces must be able to come back
  if (auto s = Env::Default()->Rename(from, to); !s.ok() || f == t) return s;
  model_->names.erase(f);
  model_->names[t] = inode;
  model_->dir_log.push_back({DirOp::Kind::kRename, t, f, inode});
  return absl::OkStatus();
}

absl::Status CrashEnv::Link(const std::string& from, const std::string& to) {
  MutexLock lock(&mu_);
  if (auto s = CheckPowerLocked("link", absl::StrCat(from, " -> ", to)); !s.ok()) return s;
  const uint64_t inode = InodeAtLocked(CanonicalLocked(from));
  if (auto s = Env::Default()->Link(from, to); !s.ok()) return s;
  const std::string t = CanonicalLocked(to);
  model_->names[t] = inode;
  model_->dir_log.push_back({DirOp::Kind::kLink, t, "", inode});
  return absl::OkStatus();
}

absl::Status CrashEnv::Remove(const std::string& path) {
  MutexLock lock(&mu_);
  if (auto s = CheckPowerLocked("remove", path); !s.ok()) return s;
  const std::string name = CanonicalLocked(path);
  const uint64_t inode = InodeAtLocked(name);
  if (auto s = Env::Default()->Remove(path); !s.ok() || inode == 0) return s;
  model_->names.erase(name);
  model_->dir_log.push_back({DirOp::Kind::kRemove, name, "", inode});
  return absl::OkStatus();
}

bool CrashEnv::Exists(const std::string& path) { return Env::Default()->Exists(path); }

absl::Status CrashEnv::SyncDir(const std::string& dir) {
  MutexLock lock(&mu_);
  char* real = realpath(dir.c_str(), nullptr);
  if (real == nullptr) return ErrnoStatus(errno, "open directory", dir);
  const std::string name = real;
  free(real);
  if (auto s = SyncPointLocked("fsync directory", dir); !s.ok()) return s;
  // Metadata commits in order: everything up to the last operation in `dir` is durable.
  std::vector<DirOp>& log = model_->dir_log;
  auto last = std::find_if(log.rbegin(), log.rend(),
                           [&](const DirOp& op) { return op.Touches(name); });
  auto end = last.base();  // one past the last operation touching `dir`
  for (auto it = log.begin(); it != end; ++it) it->ApplyTo(&model_->durable_names);
  log.erase(log.begin(), end);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> CrashEnv::ListDir(const std::string& dir) {
  MutexLock lock(&mu_);
  if (auto s = CheckPowerLocked("list directory", dir); !s.ok()) return s;
  return Env::Default()->ListDir(dir);
}

absl::Status CrashEnv::CopyRange(File* from, uint64_t from_off, File* to, uint64_t to_off,
                                 uint64_t length) {
  // As reads and writes of the files, so the copy lands in the model like any write.
  return CopyThroughUserSpace(from, from_off, to, to_off, length);
}

CrashPoint CrashEnv::Point() const {
  MutexLock lock(&mu_);
  CrashPoint point;
  auto model = std::make_shared<CrashModel>(*model_);
  point.pending_.metadata_ops = model->dir_log.size();
  point.states_ = model->dir_log.size() + 1;
  for (uint64_t id : model->Reachable()) {
    const Inode& inode = model->inodes.at(id);
    size_t resizes = SizeChanges(inode);
    point.pending_.size_changes += resizes;
    point.states_ = SaturatingMul(point.states_, resizes + 1);
    for (const Op& op : inode.pending) {
      point.pending_.blocks += Pieces(op);
      for (uint64_t i = 0; i < Pieces(op); ++i) point.states_ = SaturatingMul(point.states_, 2);
    }
  }
  point.model_ = std::move(model);
  return point;
}

absl::StatusOr<uint64_t> CrashEnv::Crash() {
  uint64_t seed;
  {
    MutexLock lock(&mu_);
    seed = rng_();
  }
  return Crash(CrashChoice::Random(seed));
}

absl::StatusOr<uint64_t> CrashEnv::Crash(const CrashPoint& at, const CrashChoice& choice) {
  MutexLock lock(&mu_);
  if (!open_.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "crash with ", open_.size(), " files open (", open_.begin()->second->path(),
        "): close every file first"));
  }
  const CrashModel& was = *at.model_;
  const Selection sel = Select(was, choice);
  CrashModel next;
  next.durable_names = was.durable_names;
  for (size_t i = 0; i < sel.dir_ops; ++i) was.dir_log[i].ApplyTo(&next.durable_names);
  next.names = next.durable_names;
  uint64_t print = 0;
  for (const auto& [path, id] : next.names) {
    print = Mix(Mix(print, std::hash<std::string>()(path)), id);
    if (next.inodes.count(id)) continue;
    const Inode& before = was.inodes.at(id);
    Inode& after = next.inodes[id];
    auto kept = sel.kept.find(id);
    if (kept == sel.kept.end()) {
      after.durable = before.durable;
      after.durable_size = before.durable_size;
    } else {
      Apply(before, kept->second, &after.durable, &after.durable_size);
    }
    after.size = after.durable_size;
    print = Mix(print, Fingerprint(after.durable, after.durable_size));
  }
  if (auto s = MaterializeLocked(next); !s.ok()) return s;
  *model_ = std::move(next);
  power_cut_ = false;
  syncs_until_cut_ = -1;
  return print;
}

absl::Status CrashEnv::MaterializeLocked(const CrashModel& next) {
  // The files that stay get only their differing blocks rewritten (re-creating them would
  // also free and reallocate their preallocated extents: slow).
  std::map<uint64_t, std::string> parked;  // a file that stays, under a temporary name
  for (const auto& [path, id] : model_->names) {
    auto now = model_->inodes.find(id);
    if (!next.inodes.count(id) || parked.count(id) || now->second.diverged) continue;
    if (auto s = Patch(path, now->second, next.inodes.at(id)); !s.ok()) return s;
    std::string temp = absl::StrCat(DirName(path), "/.crash-env-", id);
    unlink(temp.c_str());
    if (link(path.c_str(), temp.c_str()) != 0) return ErrnoStatus(errno, "crash: link", temp);
    parked[id] = temp;
  }
  auto stays = [&](const std::string& path, uint64_t id) {
    auto now = model_->names.find(path);
    return now != model_->names.end() && now->second == id && parked.count(id);
  };
  for (const auto& [path, id] : model_->names) {
    auto after = next.names.find(path);
    if (after != next.names.end() && stays(path, after->second)) continue;
    if (unlink(path.c_str()) != 0 && errno != ENOENT) return ErrnoStatus(errno, "crash: remove", path);
  }
  std::map<uint64_t, std::string> written;  // hard links stay hard links
  for (const auto& [path, id] : next.names) {
    if (stays(path, id)) continue;
    const std::string* from = parked.count(id) ? &parked[id] : written.count(id) ? &written[id] : nullptr;
    if (from != nullptr) {
      if (link(from->c_str(), path.c_str()) != 0) return ErrnoStatus(errno, "crash: link", path);
      continue;
    }
    if (auto s = WriteOut(path, next.inodes.at(id)); !s.ok()) return s;
    written[id] = path;
  }
  for (const auto& [id, temp] : parked) unlink(temp.c_str());
  return absl::OkStatus();
}

void CrashEnv::FailSyncsAfter(int after) {
  MutexLock lock(&mu_);
  syncs_until_failure_ = after;
}

void CrashEnv::CutPowerAtSync(int n) {
  MutexLock lock(&mu_);
  syncs_until_cut_ = n;
}

void CrashEnv::SetVolumeFull(bool full) {
  MutexLock lock(&mu_);
  volume_full_ = full;
}

bool CrashEnv::power_cut() const {
  MutexLock lock(&mu_);
  return power_cut_;
}

File* CrashEnv::FileForFd(int fd) const {
  MutexLock lock(&mu_);
  auto it = open_.find(fd);
  return it == open_.end() ? nullptr : it->second;
}

}  // namespace strata
