#include "cli/convert_command.h"

#include <fcntl.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "blockstore/chain.h"
#include "blockstore/file.h"
#include "cli/args.h"
#include "cli/command.h"
#include "cli/image_format.h"
#include "cli/offline_commands.h"
#include "cli/serve_command.h"
#include "nlohmann/json.hpp"

extern char** environ;

namespace strata::cli {
namespace {

const CommandSpec kConvert{
    .name = "convert",
    .usage = R"(usage: strata convert [-f FMT] [--cluster-size SIZE] [--sub-block-size SIZE] SRC DST.strata
       strata convert -O FMT [-o OPTIONS] LAYER OUT

Brings a disk image into strata, or takes a strata disk out, with qemu-img (it must be
installed) as the converter. Holes and zeros stay sparse both ways.

Import (no -O): SRC is any image qemu-img reads (qcow2, VHDX, VMDK, VDI, VHD, raw, ...; its
backing chain is read through) and DST a new strata layer of SRC's size, with no base.
Export (-O FMT): the disk topped by LAYER, flattened, into a new image OUT of format FMT
(qcow2, vmdk, vdi, vhdx, vpc, raw, ...). A served disk is refused: export one of its
snapshots instead.

Never overwrites: an existing DST or OUT is refused. On failure the half-written DST or OUT is
removed. qemu-img shows progress (-p) when stderr is a terminal.

  -f FMT               SRC's format (default: qemu-img probes it)
  -O FMT               export to this format
  -o OPTIONS           qemu-img's creation options for OUT (subformat=streamOptimized, ...)
  --cluster-size SIZE  DST's allocation unit (default 64K), as in `strata create`
  --sub-block-size SIZE  DST's write and checksum unit (default 4K)
  -h, --help           this text
)",
    .args = {.valued = {"-f", "-O", "-o", "--cluster-size", "--sub-block-size"}},
    .positional = 2,
    .follows_parents = true};

// Runs `argv` (argv[0] looked up on PATH) with stdout captured, stderr the user's: the
// program's own message says what went wrong. Returns stdout, or why it failed.
absl::StatusOr<std::string> RunCaptured(const std::vector<std::string>& argv) {
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) != 0) return ErrnoStatus(errno, "pipe", argv[0]);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, pipefd[1], STDOUT_FILENO);
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid;
  const int err = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(pipefd[1]);
  if (err != 0) {
    close(pipefd[0]);
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot run ", argv[0], ": ", strerror(err),
        err == ENOENT ? " (strata convert needs qemu-img: install qemu-utils or qemu-img)" : ""));
  }
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = read(pipefd[0], buf, sizeof(buf))) != 0;) {
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  close(pipefd[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(absl::StrJoin(argv, " "), " failed (its message is above)"));
  }
  return out;
}

// `src` quoted for /bin/sh as one word, 'it'\''s': the --run command is a shell line.
std::string ShellQuote(const std::string& src) {
  std::string out = "'";
  for (char c : src) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

// What qemu-img says of SRC: its format and virtual size.
struct SourceImage {
  std::string format;
  uint64_t size = 0;
};

absl::StatusOr<SourceImage> ProbeSource(const std::string& src, const std::string& format) {
  std::vector<std::string> argv = {"qemu-img", "info", "--output=json"};
  if (!format.empty()) argv.insert(argv.end(), {"-f", format});
  argv.push_back(src);
  auto out = RunCaptured(argv);
  if (!out.ok()) return out.status();
  const nlohmann::json info = nlohmann::json::parse(*out, nullptr, false);
  if (info.is_discarded() || !info.contains("format") || !info.contains("virtual-size")) {
    return absl::InternalError(
        absl::StrCat("qemu-img info ", src, " gave no format and virtual size: ", *out));
  }
  return SourceImage{info["format"].get<std::string>(), info["virtual-size"].get<uint64_t>()};
}

bool Exists(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0;
}

absl::Status RefuseExisting(const std::string& path) {
  if (!Exists(path)) return absl::OkStatus();
  return absl::AlreadyExistsError(absl::StrCat(
      path, " exists: strata convert never overwrites a file (remove it, or choose another "
            "name)"));
}

// A directory of our own for the private NBD socket, removed with it. In $TMPDIR (else /tmp)
// rather than beside the disk: a unix socket's path must stay under 108 bytes.
class PrivateDir {
 public:
  absl::Status Make() {
    const char* tmp = getenv("TMPDIR");
    std::string templ = absl::StrCat(tmp && *tmp ? tmp : "/tmp", "/strata-convert-XXXXXX");
    if (mkdtemp(templ.data()) == nullptr) return ErrnoStatus(errno, "mkdtemp", templ);
    dir_ = templ;
    return absl::OkStatus();
  }
  std::string socket() const { return dir_ + "/disk.sock"; }
  ~PrivateDir() {
    if (dir_.empty()) return;
    unlink(socket().c_str());
    rmdir(dir_.c_str());
  }

 private:
  std::string dir_;
};

// Serves `layer` on a private socket while the qemu-img command `qemu_img` (its arguments,
// shell-quoted, "$uri" for the disk) runs; OK when it succeeded.
absl::Status ServeWhileQemuImgRuns(const std::string& layer, bool read_only,
                                   const std::string& qemu_img, const Args& args) {
  PrivateDir dir;
  if (auto s = dir.Make(); !s.ok()) return s;
  // exec: qemu-img takes the shell's place, so a Ctrl-C reaches it and ends the server too.
  const std::string run = absl::StrCat("exec qemu-img ", qemu_img);
  std::vector<std::string> words = {"--foreground", "--no-control", "--socket", dir.socket(),
                                    "--log-level=error", "--run", run};
  if (read_only) words.push_back("--read-only");
  for (const std::string& dir : AllowedParentDirs(args)) {
    words.insert(words.end(), {"--allow-parent-dir", dir});
  }
  words.insert(words.end(), {"--", layer});
  auto exit = ServeInProcess(words);
  if (!exit.ok()) return exit.status();
  if (*exit != 0) {
    return absl::InternalError(absl::StrCat("qemu-img ", qemu_img.substr(0, qemu_img.find(' ')),
                                            " failed with exit status ", *exit,
                                            " (its message is above)"));
  }
  return absl::OkStatus();
}

std::string ProgressFlag() { return isatty(STDERR_FILENO) ? "-p " : ""; }

// Removes `path` unless Keep() was called: a half-written DST or OUT never stays behind.
class RemoveUnlessKept {
 public:
  explicit RemoveUnlessKept(std::string path) : path_(std::move(path)) {}
  ~RemoveUnlessKept() {
    if (!path_.empty() && unlink(path_.c_str()) == 0) {
      std::fprintf(stderr, "strata convert: removed the half-written %s\n", path_.c_str());
    }
  }
  void Keep() { path_.clear(); }

 private:
  std::string path_;
};

int Import(const Args& args) {
  const std::string src = args.positional[0], dst = args.positional[1];
  if (auto s = RefuseExisting(dst); !s.ok()) return Fail(kConvert.name, s);
  auto sniffed = SniffImageFile(src);
  if (!sniffed.ok()) return Fail(kConvert.name, sniffed.status());
  if (*sniffed == ImageFormat::kStrata) {
    return Fail(kConvert.name, absl::InvalidArgumentError(absl::StrCat(
                                   src, " is a strata layer already: use it as it is, or "
                                        "`strata convert -O FMT` it out")));
  }
  CreateOptions options;
  if (auto s = ParseLayerGeometry(args, &options); !s.ok()) return Fail(kConvert.name, s);
  auto image = ProbeSource(src, args.Get("-f"));
  if (!image.ok()) return Fail(kConvert.name, image.status());
  options.size = image->size;
  auto header = CreateLayer(dst, options);
  if (!header.ok()) return Fail(kConvert.name, header.status());
  RemoveUnlessKept cleanup(dst);
  // -n --target-is-zero: DST exists and reads as zeros, so qemu-img writes only SRC's data and
  // leaves its holes and zeros unallocated in DST.
  const std::string convert =
      absl::StrCat("convert -n --target-is-zero ", ProgressFlag(), "-f ",
                   ShellQuote(image->format), " ", ShellQuote(src), " -O raw \"$uri\"");
  if (auto s = ServeWhileQemuImgRuns(dst, /*read_only=*/false, convert, args); !s.ok()) {
    return Fail(kConvert.name, s);
  }
  // The result opens as a chain (headers, index, journal checked) and says how sparse it is.
  auto chain = Chain::Open(dst, {.writable = false, .allowed_parent_dirs = AllowedParentDirs(args)});
  if (!chain.ok()) return Fail(kConvert.name, chain.status());
  cleanup.Keep();
  std::printf("imported %s (%s, %s) into %s: %s of data\n", src.c_str(), image->format.c_str(),
              HumanBytes(image->size).c_str(), dst.c_str(),
              HumanBytes((*chain)->Layers().back().allocated_bytes).c_str());
  return 0;
}

int Export(const Args& args) {
  const std::string layer = args.positional[0], out = args.positional[1];
  if (auto s = RefuseExisting(out); !s.ok()) return Fail(kConvert.name, s);
  if (auto s = RefuseForeignImage(layer); !s.ok()) return Fail(kConvert.name, s);
  uint64_t size = 0;
  {
    // Refuses a served disk (its exclusive lock) with the lock's own message before qemu-img
    // creates OUT; the private server takes the same shared locks right after.
    auto chain =
        Chain::Open(layer, {.writable = false, .allowed_parent_dirs = AllowedParentDirs(args)});
    if (!chain.ok()) return Fail(kConvert.name, chain.status());
    size = (*chain)->size();
  }
  std::string convert = absl::StrCat("convert ", ProgressFlag(), "-f raw \"$uri\" -O ",
                                     ShellQuote(args.Get("-O")));
  if (args.Has("-o")) absl::StrAppend(&convert, " -o ", ShellQuote(args.Get("-o")));
  absl::StrAppend(&convert, " ", ShellQuote(out));
  RemoveUnlessKept cleanup(out);
  if (auto s = ServeWhileQemuImgRuns(layer, /*read_only=*/true, convert, args); !s.ok()) {
    return Fail(kConvert.name, s);
  }
  cleanup.Keep();
  std::printf("exported %s (%s) to %s (%s)\n", layer.c_str(), HumanBytes(size).c_str(),
              out.c_str(), args.Get("-O").c_str());
  return 0;
}

}  // namespace

int ConvertCommand(int argc, char** argv) {
  Args args;
  if (auto exit = ParseCommand(argc, argv, kConvert, &args)) return *exit;
  if (!args.Has("-O") || args.Get("-O") == "strata") {
    if (args.Has("-o")) return UsageError(kConvert, "-o goes with -O (export)");
    return Import(args);
  }
  if (args.Has("-f") || args.Has("--cluster-size") || args.Has("--sub-block-size")) {
    return UsageError(kConvert, "-f, --cluster-size and --sub-block-size go with an import");
  }
  return Export(args);
}

}  // namespace strata::cli
