// BlockingPool: a few threads for the storage calls that sleep (fdatasync in Flush, fallocate
// in Zero/Trim, fadvise in Cache, and later Snapshot). Ring threads hand work here so that one
// connection's FLUSH never stalls the other connections of its worker; the work's completion
// goes back to the ring thread through Worker::Post (an eventfd read on the ring).
#ifndef STRATA_SERVER_ENGINE_BLOCKING_POOL_H_
#define STRATA_SERVER_ENGINE_BLOCKING_POOL_H_

#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "blockstore/mutex.h"

namespace strata {

class BlockingPool {
 public:
  explicit BlockingPool(int threads);
  // Runs queued work to the end, then joins.
  ~BlockingPool();
  void Submit(std::function<void()> work);

 private:
  void Loop();
  Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace strata

#endif  // STRATA_SERVER_ENGINE_BLOCKING_POOL_H_
