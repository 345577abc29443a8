// Admission: which new connections a server takes, by two caps (the serve command's
// --max-connections and --max-handshakes), so that a careless or hostile client cannot make the
// server run out of descriptors or lock real clients out by holding connections open.
//
// The accept thread asks Admit for each new connection; the connection's worker tells
// Negotiated when it enters transmission and Closed when its socket is closed. A connection
// counts against max_connections from Admit to Closed, and against max_handshakes from Admit to
// Negotiated (or Closed). Over max_connections a new connection is refused: the caller closes it
// at once (as nbdkit and qemu-nbd do). When max_handshakes connections are still in handshake,
// the oldest of them is evicted to make room for the new one instead: an honest client's
// handshake takes a round trip or two, so the oldest is nearly always a squatter, and squatters
// then cannot keep new clients out. Thread-safe.
#ifndef STRATA_SERVER_ENGINE_ADMISSION_H_
#define STRATA_SERVER_ENGINE_ADMISSION_H_

#include <cstdint>
#include <deque>
#include <optional>

#include "absl/time/time.h"
#include "blockstore/mutex.h"

namespace strata {

struct AdmissionLimits {
  int max_connections = 1024;
  int max_handshakes = 64;  // at most max_connections
};

class Admission {
 public:
  // A connection still in handshake.
  struct Handshaking {
    uint64_t id;
    int worker;
    absl::Time since;
  };
  struct Decision {
    bool admitted = false;
    uint64_t id = 0;  // the connection's id (engine/worker.h NextConnectionId), when admitted
    // Admitted by evicting this connection: the caller closes it.
    std::optional<Handshaking> evict;
    int open = 0;         // connections open before this one (for the refusal's log line)
    int handshaking = 0;  // of them, in handshake
  };

  explicit Admission(AdmissionLimits limits);
  const AdmissionLimits& limits() const { return limits_; }

  // A new connection, to run on `worker`.
  Decision Admit(int worker, absl::Time now = absl::Now());
  // Connection `id` entered transmission. Unknown ids (an evicted one) are ignored.
  void Negotiated(uint64_t id);
  // Connection `id`, admitted, closed its socket.
  void Closed(uint64_t id);

  int open() const;
  int handshaking() const;

 private:
  // Removes `id` from handshaking_; false when it is not there.
  bool Forget(uint64_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const AdmissionLimits limits_;
  mutable Mutex mu_;
  int open_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<Handshaking> handshaking_ ABSL_GUARDED_BY(mu_);  // oldest first
};

}  // namespace strata

#endif  // STRATA_SERVER_ENGINE_ADMISSION_H_
