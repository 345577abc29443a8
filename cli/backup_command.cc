// `strata backup`. Design note: what may be copied is decided from the layer headers and the
// record beside OUT before anything is written, so a refused run leaves OUT as it was. Then:
//
// Full (no --from): the snapshot's data ranges go into OUT.partial, a new sparse file of the
//   snapshot's size, which is synced; the old record goes (so a crash from here on never
//   leaves a record naming what OUT no longer holds), OUT.partial is renamed over OUT, and
//   the new record is written. Killed at any instant, OUT is the previous copy or the new
//   one, never a half file; a leftover OUT.partial is replaced by the next full backup.
// Incremental (--from SNAP1): the record must say OUT holds SNAP1 (by UUID). It is first
//   replaced by an "in-progress" one naming SNAP1 and SNAP2, then ChangedRanges(SNAP1, SNAP2)
//   are copied onto OUT, which is synced, then the record says OUT holds SNAP2. Killed, the
//   in-progress record stays: only the same incremental may run on it (it rewrites every
//   range that may have been half written, outside them OUT still equals SNAP1 and SNAP2).
//
// The source: the running server's read-only `@SNAP2` export through libnbd when its socket
// (--socket, else the default one beside LAYER) has a server, else the frozen chain of SNAP2
// read directly. The export is preferred because it is the server's own view of the snapshot;
// reading the files is safe too, because a snapshot's layer is found only once it is frozen
// (durable and immutable: a live deletion below it only adds copies of what it reads already).
#include "cli/backup_command.h"

#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "blockstore/children.h"
#include "blockstore/clock.h"
#include "blockstore/diff.h"
#include "blockstore/file.h"
#include "blockstore/layer.h"
#include "cli/args.h"
#include "cli/backup_copy.h"
#include "cli/command.h"
#include "cli/serve_command.h"
#include "nlohmann/json.hpp"

namespace strata::cli {
namespace {

using json = nlohmann::json;

const CommandSpec kBackup{
    .name = "backup",
    .usage = R"(usage: strata backup [--from SNAPSHOT1] --to SNAPSHOT2 [--socket PATH] [--force]
                     [--rate-limit BYTES] [--output=human|json] LAYER OUT

Backs up snapshot SNAPSHOT2 of the disk topped by LAYER into OUT, a raw file, while the disk
keeps running or offline. Without --from, a full copy: OUT is replaced by SNAPSHOT2's content,
sparse (holes and zeros stay holes), written beside it as OUT.partial and renamed over OUT once
synced, so a killed backup never leaves a half file named OUT. With --from SNAPSHOT1, an
incremental: OUT must be a copy of SNAPSHOT1 made by strata backup, and only the ranges that
changed from SNAPSHOT1 to SNAPSHOT2 (those `strata map` lists for their diff) are copied
onto it.

OUT.strata-backup records what OUT holds (the snapshot's name, UUID and size, LAYER, the
time); an incremental whose SNAPSHOT1 is not what OUT holds is refused and OUT left
untouched. A killed incremental leaves the record "in-progress": only the same incremental
may run again (it finishes the copy), or a full backup. A full backup replaces only a file
strata backup made.

The snapshot is read through the running server's read-only @SNAPSHOT2 export (libnbd,
several reads in flight) when the data socket, PATH or by default the one `strata serve
LAYER` makes beside LAYER (<layer stem>.sock), has a server; otherwise from SNAPSHOT2's
frozen layer files directly.

  --to SNAPSHOT2        the snapshot to back up (required)
  --from SNAPSHOT1      an incremental: OUT holds SNAPSHOT1, an older snapshot of the chain
  --socket PATH         the server's data socket (it must answer: no fallback to the files)
  --tls-certs DIR       TLS to a server started with --tls-certs: DIR holds ca-cert.pem
                        (and client-cert.pem, client-key.pem if the server checks them)
  --tls-psk FILE        TLS to a server started with --tls-psk: psktool's username:hexkey
  --tls-username USER   the PSK user (default: the login name)
  --force               do without the record's checks: OUT is a copy of SNAPSHOT1 (or, for
                        a full backup, may be replaced) although no record says so
  --rate-limit BYTES    read at most BYTES per second (K, M, G suffixes)
  --output=human|json   the format of the summary (default human; --json is --output=json):
                        mode, snapshot, uuid, from, layer, out, source, size, ranges,
                        bytes_copied (read from the snapshot), zero_bytes (of them, holes in
                        OUT), elapsed_seconds
  -h, --help            this text

Exit status: 0 done, 1 refused or failed (the message says why), 2 bad usage.
)",
    .args = {.flags = {"--force"},
             .valued = {"--from", "--to", "--socket", "--rate-limit", "--tls-certs", "--tls-psk",
                        "--tls-username"}},
    .output = true,
    .positional = 2,
    .follows_parents = true};

std::string RecordPath(const std::string& out) { return out + ".strata-backup"; }
std::string PartialPath(const std::string& out) { return out + ".partial"; }

// A snapshot of LAYER's chain, as the backup names it in records and messages.
struct Snapshot {
  std::string name;
  std::string uuid;
  std::string path;
  uint64_t size = 0;
  int position = 0;  // in the chain's headers, top first
};

// Snapshot `name` of the chain `layers` (ReadChainHeaders) topped by `layer`. Only a frozen
// layer counts: a live snapshot is durable, and its file no longer written, from then on.
absl::StatusOr<Snapshot> FindSnapshot(const std::vector<ChainLayer>& layers,
                                      const std::string& layer, const std::string& name) {
  for (size_t i = 0; i < layers.size(); ++i) {
    const LayerHeader& h = layers[i].header;
    if (h.state == LayerState::kFrozen && h.snapshot_name == name) {
      return Snapshot{name, UuidToString(h.uuid), layers[i].path, h.virtual_size,
                      static_cast<int>(i)};
    }
  }
  std::string why = absl::StrCat("no snapshot '", name, "' in the chain of ", layer);
  // The walk stops at the first header that does not read: say which, it may be the reason.
  const LayerHeader* last = layers.empty() ? nullptr : &layers.back().header;
  const std::string unread =
      last == nullptr ? layer
      : last->parent_format == ParentFormat::kStrata
          ? ResolvePath(DirName(layers.back().path), last->parent_path)
          : "";
  if (!unread.empty()) {
    return absl::NotFoundError(absl::StrCat(
        why, ": ", ReadLayerHeader(Env::Default(), unread).status().message()));
  }
  return absl::NotFoundError(
      absl::StrCat(why, " (`strata info ", layer, "` lists its snapshots)"));
}

// The record beside OUT, or null when there is none.
absl::StatusOr<json> ReadRecord(const std::string& out) {
  const std::string path = RecordPath(out);
  if (!Env::Default()->Exists(path)) return json(nullptr);
  auto text = ReadWholeFile(Env::Default(), path);
  if (!text.ok()) return text.status();
  json record = json::parse(*text, nullptr, false);
  if (record.is_discarded() || !record.is_object() || !record.contains("uuid")) {
    return absl::DataLossError(absl::StrCat(path, " is not a strata backup record: remove it "
                                            "and make a full backup"));
  }
  return record;
}

json NewRecord(const std::string& state, const Snapshot& snap, const std::string& layer) {
  return {{"strata_backup", 1},
          {"state", state},
          {"snapshot", snap.name},
          {"uuid", snap.uuid},
          {"size", snap.size},
          {"layer", std::filesystem::absolute(layer).lexically_normal().string()},
          {"snapshot_file", std::filesystem::absolute(snap.path).lexically_normal().string()},
          {"time", absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::FromUnixNanos(WallClockNs()),
                                    absl::UTCTimeZone())}};
}

absl::Status WriteRecord(const std::string& out, const json& record) {
  return ReplaceFile(Env::Default(), RecordPath(out), record.dump(2) + "\n");
}

std::string Field(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : "";
}

// Why an incremental from `from` to `to` must not go onto OUT, as its record says; OK if it may.
absl::Status CheckIncremental(const std::string& out, const json& record, const Snapshot& from,
                              const Snapshot& to) {
  const std::string record_path = RecordPath(out);
  if (record.is_null()) {
    return absl::FailedPreconditionError(absl::StrCat(
        out, " has no record ", record_path, " of the snapshot it holds, and an incremental "
        "onto the wrong copy would silently corrupt it: make a full backup (without --from), "
        "or add --force if ", out, " is a copy of snapshot '", from.name, "'"));
  }
  if (Field(record, "state") == "in-progress") {
    if (Field(record, "base_uuid") == from.uuid && Field(record, "uuid") == to.uuid) {
      return absl::OkStatus();  // the same incremental again: it finishes the copy
    }
    return absl::FailedPreconditionError(absl::StrCat(
        "an incremental backup from '", Field(record, "base_snapshot"), "' to '",
        Field(record, "snapshot"), "' onto ", out, " was interrupted, so it holds neither: run "
        "that one again (--from ", Field(record, "base_snapshot"), " --to ",
        Field(record, "snapshot"), "), or make a full backup"));
  }
  if (Field(record, "uuid") != from.uuid) {
    return absl::FailedPreconditionError(absl::StrCat(
        out, " holds snapshot '", Field(record, "snapshot"), "' (uuid ", Field(record, "uuid"),
        ", of ", Field(record, "layer"), "), not '", from.name, "' (uuid ", from.uuid,
        "), as ", record_path, " says: nothing was copied; use --from with the snapshot it "
        "holds, or make a full backup"));
  }
  return absl::OkStatus();
}

// OUT's size must be SNAP1's: a copy that is not proves it holds something else.
absl::Status CheckOutSize(const std::string& out, const Snapshot& from) {
  struct stat st;
  if (stat(out.c_str(), &st) != 0) {
    return ErrnoStatus(errno, "stat the previous copy (an incremental needs it)", out);
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(out, " is not a regular file"));
  }
  if (static_cast<uint64_t>(st.st_size) != from.size) {
    return absl::FailedPreconditionError(absl::StrCat(
        out, " is ", st.st_size, " bytes, snapshot '", from.name, "' ", from.size,
        ": it is not a copy of it; make a full backup"));
  }
  return absl::OkStatus();
}

// The server's @NAME export when its socket has a server, else the frozen files (not when
// --socket named the socket: then the user expects that server to answer).
absl::StatusOr<std::unique_ptr<SnapshotReader>> OpenReader(const Args& args,
                                                           const std::string& layer,
                                                           const Snapshot& snap) {
  const std::string socket = args.Get("--socket", DefaultSocketPath(layer));
  const NbdTls tls = {.certs = args.Get("--tls-certs"), .psk_file = args.Get("--tls-psk"),
                      .username = args.Get("--tls-username")};
  auto nbd = OpenNbdReader(socket, absl::StrCat("@", snap.name), tls);
  if (nbd.ok() || !absl::IsUnavailable(nbd.status())) return nbd;
  if (args.Has("--socket")) {
    return absl::UnavailableError(absl::StrCat(
        nbd.status().message(), " (is `strata serve` running there? without --socket, a "
        "disk that is not served is read from its files)"));
  }
  return OpenChainReader(snap.path, AllowedParentDirs(args));
}

absl::Status FullBackup(const std::string& layer, const std::string& out, const Snapshot& to,
                        SnapshotReader& reader, const CopyOptions& options, bool force,
                        CopyStats* stats) {
  Env* env = Env::Default();
  auto record = ReadRecord(out);
  if (!record.ok()) return record.status();
  if (record->is_null() && env->Exists(out) && !force) {
    return absl::AlreadyExistsError(absl::StrCat(
        out, " exists and has no record ", RecordPath(out), ": strata backup replaces only "
        "copies it made (remove it, choose another name, or add --force)"));
  }
  auto ranges = reader.DataRanges();
  if (!ranges.ok()) return ranges.status();
  const std::string partial = PartialPath(out);
  (void)env->Remove(partial);
  auto file = env->Open(partial, {.writable = true, .create = true});
  if (!file.ok()) return file.status();
  if (auto s = (*file)->Truncate(to.size); !s.ok()) return s;
  auto copied = CopyRanges(reader, *ranges, file->get(), {.out_is_empty = true, .rate_limit = options.rate_limit});
  file->reset();
  if (!copied.ok()) {
    (void)env->Remove(partial);
    return copied.status();
  }
  *stats = *copied;
  // The old record goes durably before OUT changes: never a record naming what OUT was.
  if (!record->is_null()) {
    if (auto s = env->Remove(RecordPath(out)); !s.ok()) return s;
    if (auto s = env->SyncDir(DirName(out)); !s.ok()) return s;
  }
  if (auto s = env->Rename(partial, out); !s.ok()) return s;
  if (auto s = env->SyncDir(DirName(out)); !s.ok()) return s;
  return WriteRecord(out, NewRecord("complete", to, layer));
}

absl::Status IncrementalBackup(const std::string& layer, const std::string& out,
                               const Snapshot& from, const Snapshot& to, SnapshotReader& reader,
                               const CopyOptions& options, bool force, CopyStats* stats) {
  if (from.position <= to.position) {
    return absl::InvalidArgumentError(absl::StrCat(
        "snapshot '", from.name, "' is not older than '", to.name, "' in the chain of ", layer,
        ": --from names the snapshot OUT holds, --to a later one"));
  }
  if (auto s = CheckOutSize(out, from); !s.ok()) return s;
  auto record = ReadRecord(out);
  if (!record.ok()) return record.status();
  if (!force) {
    if (auto s = CheckIncremental(out, *record, from, to); !s.ok()) return s;
  }
  auto ranges = ChangedRanges(Env::Default(), layer, from.name, to.name);
  if (!ranges.ok()) return ranges.status();
  json in_progress = NewRecord("in-progress", to, layer);
  in_progress["base_snapshot"] = from.name;
  in_progress["base_uuid"] = from.uuid;
  if (auto s = WriteRecord(out, in_progress); !s.ok()) return s;
  auto file = Env::Default()->Open(out, {.writable = true});
  if (!file.ok()) return file.status();
  // A resized disk: OUT takes SNAP2's size (the changed ranges cover what SNAP2 wrote there).
  if (to.size != from.size) {
    if (auto s = (*file)->Truncate(to.size); !s.ok()) return s;
  }
  auto copied = CopyRanges(reader, *ranges, file->get(), options);
  if (!copied.ok()) return copied.status();
  *stats = *copied;
  return WriteRecord(out, NewRecord("complete", to, layer));
}

void PrintResult(const Args& args, const std::string& layer, const std::string& out,
                 const Snapshot& to, const SnapshotReader& reader, const CopyStats& stats,
                 double seconds) {
  const std::string from = args.Get("--from");
  if (args.Json()) {
    json j = {{"mode", from.empty() ? "full" : "incremental"},
              {"snapshot", to.name},
              {"uuid", to.uuid},
              {"from", from.empty() ? json(nullptr) : json(from)},
              {"layer", layer},
              {"out", out},
              {"source", reader.source()},
              {"size", to.size},
              {"ranges", stats.ranges},
              {"bytes_copied", stats.bytes},
              {"zero_bytes", stats.zero_bytes},
              {"elapsed_seconds", seconds}};
    std::cout << j.dump(2) << "\n";
    return;
  }
  std::printf("%s of snapshot '%s' (%s) into %s: %s, %s copied (%s of it zeros) from %s in "
              "%.1f s\n",
              from.empty() ? "full backup" : absl::StrCat("incremental from '", from, "'").c_str(),
              to.name.c_str(), HumanBytes(to.size).c_str(), out.c_str(),
              Count(stats.ranges, "range").c_str(), HumanBytes(stats.bytes).c_str(),
              HumanBytes(stats.zero_bytes).c_str(), reader.source().c_str(), seconds);
}

}  // namespace

int BackupCommand(int argc, char** argv) {
  Args args;
  if (auto exit = ParseCommand(argc, argv, kBackup, &args)) return *exit;
  if (!args.Has("--to")) return UsageError(kBackup, "--to SNAPSHOT2 is required");
  const std::string layer = args.positional[0], out = args.positional[1];
  CopyOptions options;
  if (args.Has("--rate-limit")) {
    auto rate = ParseSize(args.Get("--rate-limit"));
    if (!rate.ok()) return UsageError(kBackup, rate.status().message());
    options.rate_limit = *rate;
  }
  const auto started = std::chrono::steady_clock::now();
  if (auto s = CheckParents(args, layer); !s.ok()) return Fail(kBackup.name, s);
  const std::vector<ChainLayer> layers = ReadChainHeaders(Env::Default(), layer);
  auto to = FindSnapshot(layers, layer, args.Get("--to"));
  if (!to.ok()) return Fail(kBackup.name, to.status());
  std::optional<Snapshot> from;
  if (args.Has("--from")) {
    auto found = FindSnapshot(layers, layer, args.Get("--from"));
    if (!found.ok()) return Fail(kBackup.name, found.status());
    from = *found;
  }
  auto reader = OpenReader(args, layer, *to);
  if (!reader.ok()) return Fail(kBackup.name, reader.status());
  if ((*reader)->size() != to->size) {
    return Fail(kBackup.name, absl::FailedPreconditionError(absl::StrCat(
                                  (*reader)->source(), " is ", (*reader)->size(), " bytes, but "
                                  "snapshot '", to->name, "' of ", layer, " is ", to->size,
                                  ": is that server serving another disk?")));
  }
  CopyStats stats;
  absl::Status s =
      from ? IncrementalBackup(layer, out, *from, *to, **reader, options, args.Has("--force"),
                               &stats)
           : FullBackup(layer, out, *to, **reader, options, args.Has("--force"), &stats);
  if (!s.ok()) return Fail(kBackup.name, s);
  PrintResult(args, layer, out, *to, **reader, stats,
              std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
  return 0;
}

}  // namespace strata::cli
