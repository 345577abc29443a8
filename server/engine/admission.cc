#include "server/engine/admission.h"

#include <algorithm>

#include "server/engine/worker.h"

namespace strata {

Admission::Admission(AdmissionLimits limits) : limits_(limits) {}

Admission::Decision Admission::Admit(int worker, absl::Time now) {
  MutexLock lock(&mu_);
  Decision d{.open = open_, .handshaking = static_cast<int>(handshaking_.size())};
  const bool handshakes_full = d.handshaking >= limits_.max_handshakes;
  // An evicted connection counts as open until its worker has closed it: evictions can take
  // the count past max_connections, but never past this ceiling.
  const int ceiling = limits_.max_connections + (handshakes_full ? limits_.max_handshakes : 0);
  if (open_ >= ceiling) return d;
  if (handshakes_full) {
    d.evict = handshaking_.front();
    handshaking_.pop_front();
  } else if (open_ >= limits_.max_connections) {
    return d;
  }
  d.admitted = true;
  d.id = NextConnectionId();
  ++open_;
  handshaking_.push_back({d.id, worker, now});
  return d;
}

bool Admission::Forget(uint64_t id) {
  auto it = std::find_if(handshaking_.begin(), handshaking_.end(),
                         [id](const Handshaking& h) { return h.id == id; });
  if (it == handshaking_.end()) return false;
  handshaking_.erase(it);
  return true;
}

void Admission::Negotiated(uint64_t id) {
  MutexLock lock(&mu_);
  Forget(id);
}

void Admission::Closed(uint64_t id) {
  MutexLock lock(&mu_);
  Forget(id);
  --open_;
}

int Admission::open() const {
  MutexLock lock(&mu_);
  return open_;
}

int Admission::handshaking() const {
  MutexLock lock(&mu_);
  return static_cast<int>(handshaking_.size());
}

}  // namespace strata
