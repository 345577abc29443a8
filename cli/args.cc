#include "cli/args.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace strata::cli {

absl::StatusOr<Args> Parse(int argc, char** argv, int first, const ArgSpec& spec) {
  return Parse(std::vector<std::string>(argv + std::min(first, argc), argv + argc), spec);
}

absl::StatusOr<Args> Parse(const std::vector<std::string>& words, const ArgSpec& spec) {
  Args args;
  bool options_done = false;
  for (size_t i = 0; i < words.size(); ++i) {
    std::string arg = words[i];
    if (options_done || arg.size() < 2 || arg[0] != '-') {
      args.positional.push_back(arg);
      continue;
    }
    if (arg == "--") {
      options_done = true;
      continue;
    }
    std::string value;
    bool has_value = false;
    if (size_t eq = arg.find('='); eq != std::string::npos && arg.rfind("--", 0) == 0) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      has_value = true;
    }
    if (auto alias = spec.aliases.find(arg); alias != spec.aliases.end()) arg = alias->second;
    if (spec.flags.count(arg)) {
      if (has_value) return absl::InvalidArgumentError(absl::StrCat(arg, " takes no value"));
      args.values[arg] = "";
    } else if (spec.valued.count(arg) || spec.repeated.count(arg)) {
      if (!has_value) {
        if (i + 1 >= words.size()) {
          return absl::InvalidArgumentError(absl::StrCat(arg, " needs a value"));
        }
        value = words[++i];
      }
      args.values[arg] = value;
      if (spec.repeated.count(arg)) args.lists[arg].push_back(value);
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown option ", arg));
    }
  }
  return args;
}

absl::StatusOr<uint64_t> ParseSize(const std::string& text) {
  if (text.empty()) return absl::InvalidArgumentError("empty size");
  std::string number = text;
  uint64_t unit = 1;
  char last = static_cast<char>(std::toupper(static_cast<unsigned char>(text.back())));
  std::string units = "KMGTP";
  if (size_t u = units.find(last); u != std::string::npos) {
    unit = uint64_t{1} << (10 * (u + 1));
    number.pop_back();
  } else if (last == 'B') {
    number.pop_back();
  }
  double value;
  if (!absl::SimpleAtod(number, &value) || value < 0 || !std::isfinite(value)) {
    return absl::InvalidArgumentError(absl::StrCat("bad size '", text, "' (e.g. 64M, 1G)"));
  }
  return static_cast<uint64_t>(std::llround(value * static_cast<double>(unit)));
}

std::string HumanBytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 5) {
    v /= 1024;
    ++u;
  }
  return u == 0 ? absl::StrCat(bytes, " B") : absl::StrFormat("%.1f %s", v, units[u]);
}

}  // namespace strata::cli
