// A progress bar on stderr when it is a terminal, nothing otherwise (logs stay clean).
#ifndef STRATA_CLI_PROGRESS_H_
#define STRATA_CLI_PROGRESS_H_

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace strata::cli {

class ProgressBar {
 public:
  explicit ProgressBar(std::string label);
  // For tests: draws on `out` when `enabled`.
  ProgressBar(std::string label, FILE* out, bool enabled);
  ~ProgressBar() { Finish(); }
  void Update(uint64_t done, uint64_t total);
  // Ends the bar's line, so that what is printed next starts on its own; call it before the
  // command's result. Idempotent.
  void Finish();

 private:
  std::string label_;
  FILE* out_;
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point last_{};
};

}  // namespace strata::cli

#endif  // STRATA_CLI_PROGRESS_H_
