#include "cli/progress.h"

#include <unistd.h>

#include <cstdio>

#include "cli/args.h"

namespace strata::cli {

ProgressBar::ProgressBar(std::string label)
    : ProgressBar(std::move(label), stderr, isatty(STDERR_FILENO) == 1) {}

ProgressBar::ProgressBar(std::string label, FILE* out, bool enabled)
    : label_(std::move(label)), out_(out), enabled_(enabled) {}

void ProgressBar::Finish() {
  if (!drawn_) return;
  std::fputc('\n', out_);
  std::fflush(out_);
  drawn_ = false;
}

void ProgressBar::Update(uint64_t done, uint64_t total) {
  if (!enabled_) return;
  auto now = std::chrono::steady_clock::now();
  if (done < total && now - last_ < std::chrono::milliseconds(100)) return;  // no flicker
  last_ = now;
  constexpr int kWidth = 30;
  int percent = total ? static_cast<int>(done * 100 / total) : 100;
  int filled = percent * kWidth / 100;
  std::string bar(filled, '#');
  bar.append(kWidth - filled, '.');
  std::fprintf(out_, "\r%s %3d%% [%s] %s / %s ", label_.c_str(), percent, bar.c_str(),
               HumanBytes(done).c_str(), HumanBytes(total).c_str());
  std::fflush(out_);
  drawn_ = true;
}

}  // namespace strata::cli
