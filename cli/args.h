// A tiny argument parser for `strata SUBCOMMAND [options] ARGS`: long options with `=VALUE`
// or a separate value, short aliases, positionals. Subcommands have different flags, so
// absl::flags' process-wide globals do not fit.
#ifndef STRATA_CLI_ARGS_H_
#define STRATA_CLI_ARGS_H_

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace strata::cli {

struct ArgSpec {
  std::set<std::string> flags;                   // options without a value ("--json")
  std::set<std::string> valued;                  // options with a value ("--size")
  std::map<std::string, std::string> aliases;    // "-b" -> "--backing"
  std::set<std::string> repeated;                // valued options that may be given again
};

struct Args {
  std::map<std::string, std::string> values;     // option -> value ("" for flags)
  std::vector<std::string> positional;
  std::map<std::string, std::vector<std::string>> lists;  // every value of a repeated option
  bool Has(const std::string& option) const { return values.count(option) > 0; }
  std::string Get(const std::string& option, const std::string& fallback = "") const {
    auto it = values.find(option);
    return it == values.end() ? fallback : it->second;
  }
  // --output=json (or --json) was asked (cli/command.h: ParseCommand).
  bool Json() const { return Get("--output") == "json"; }
};

// Parses argv[first..argc).
absl::StatusOr<Args> Parse(int argc, char** argv, int first, const ArgSpec& spec);
// Parses `words` (the words after the subcommand). `--` ends the options; a repeated option
// keeps its last value (and, when spec.repeated names it, every value in Args::lists).
absl::StatusOr<Args> Parse(const std::vector<std::string>& words, const ArgSpec& spec);
// "64M", "1G", "4096", "1.5G" (binary units, K M G T; a bare number is bytes).
absl::StatusOr<uint64_t> ParseSize(const std::string& text);
// "1.0 GiB", "64 KiB", "512 B".
std::string HumanBytes(uint64_t bytes);

}  // namespace strata::cli

#endif  // STRATA_CLI_ARGS_H_
