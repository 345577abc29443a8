// `strata bench`: the copy-on-write overhead benchmark (bench/run.sh), run from the binary so a
// user measures the build they have, with its peers, on their own machine and disk.
#ifndef STRATA_CLI_BENCH_COMMAND_H_
#define STRATA_CLI_BENCH_COMMAND_H_

namespace strata::cli {

int BenchCommand(int argc, char** argv);

}  // namespace strata::cli

#endif  // STRATA_CLI_BENCH_COMMAND_H_
