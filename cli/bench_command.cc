#include "cli/bench_command.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "cli/args.h"
#include "cli/command.h"

namespace strata::cli {
namespace {

const CommandSpec kBench{.name = "bench",
                         .usage = R"(usage: strata bench [--quick] [--base IMAGE | --size SIZE] [options]

Measures what copy-on-write costs on this machine and disk: this strata beside qemu-nbd,
nbdkit, qemu's qcow2 and fio on the file itself, every server up in the same run, through
fio's nbd engine over unix sockets. Prints progress (case, round, ETA) while it runs and
writes results.json, report.md and PNG charts (with gnuplot) into the results directory:
every figure beside its peer and its ceiling, with the ratio. Server CPU microseconds per
I/O (from /proc) is the primary efficiency figure; the ceiling of each workload is
min(the device at that depth, CPUs / (client + server CPU per I/O)), measured in the run.
Needs fio, qemu-utils, nbdkit, libnbd-bin, python3 and qemu-storage-daemon
(scripts/install-deps.sh); run it as root so it can drop the page cache between reads.
The full run takes about 25 minutes on 2 CPUs, --quick under 3 (bench/README.md).

  --quick            every case at tiny sizes and times: checks the set-up, not a measurement
  --base IMAGE       a raw image to serve as the base (read only; default: a scratch one of
                     random data)
  --size SIZE        size of the scratch base (default 1G; --quick 64M)
  --dir SCRATCH      where scratch layers and images go (default /var/tmp; not tmpfs)
  --results DIR      where results go (default ./strata-bench-YYYYmmdd-HHMMSS)
  --cases LIST       comma-separated, of transport,cow,depth,snapshot,merge,fragmentation
                     (default all)
  -h, --help         this text
)",
                         .args = {.flags = {"--quick"},
                                  .valued = {"--base", "--size", "--dir", "--results", "--cases"}},
                         .positional = 0};

// bench/run.sh beside the binary `exe`: in the build tree (build/cli/strata and build/bench/,
// which links the sources), or installed (bin/strata and share/strata/bench/).
std::string FindRunScript(const std::filesystem::path& exe, std::vector<std::string>* tried) {
  for (const char* rel : {"../bench/run.sh", "../share/strata/bench/run.sh"}) {
    const std::filesystem::path script = exe.parent_path() / rel;
    tried->push_back(script.lexically_normal().string());
    if (::access(script.c_str(), R_OK) == 0) return tried->back();
  }
  return "";
}

}  // namespace

int BenchCommand(int argc, char** argv) {
  Args args;
  if (auto rc = ParseCommand(argc, argv, kBench, &args)) return *rc;
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  std::vector<std::string> tried;
  const std::string script = ec ? "" : FindRunScript(exe, &tried);
  if (script.empty()) {
    std::string where = ec ? "/proc/self/exe unreadable" : "";
    for (const std::string& t : tried) where += (where.empty() ? "" : ", ") + t;
    std::fprintf(stderr, "strata bench: bench/run.sh not found beside the binary (looked at %s)\n",
                 where.c_str());
    return 1;
  }
  // run.sh measures this very binary.
  ::setenv("STRATA", exe.c_str(), 1);
  std::vector<char*> exec_argv = {const_cast<char*>("bash"), const_cast<char*>(script.c_str())};
  for (int i = 2; i < argc; ++i) exec_argv.push_back(argv[i]);
  exec_argv.push_back(nullptr);
  ::execvp("bash", exec_argv.data());
  std::fprintf(stderr, "strata bench: cannot run bash %s: %s\n", script.c_str(),
               std::strerror(errno));
  return 1;
}

}  // namespace strata::cli
