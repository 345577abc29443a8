// A progress bar on stderr when it is a terminal, nothing otherwise (logs stay clean).
#ifndef STRATA_CLI_PROGRESS_H_
#define STRATA_CLI_PROGRESS_H_

#include <chrono>
#include <cstdint>
#include <string>

namespace strata::cli {

class ProgressBar {
 public:
  explicit ProgressBar(std::string label);
  ~ProgressBar();  // ends the line
  void Update(uint64_t done, uint64_t total);

 private:
  std::string label_;
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point last_{};
};

}  // namespace strata::cli

#endif  // STRATA_CLI_PROGRESS_H_
