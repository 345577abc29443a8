#include "server/remote/nbd_base.h"

#include <libnbd.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/log.h"

namespace strata {
namespace {

constexpr absl::Duration kMinBackoff = absl::Milliseconds(100);
// At most a second between attempts: a read waits for a reconnection only --base-timeout long.
constexpr absl::Duration kMaxBackoff = absl::Seconds(1);
constexpr uint64_t kMaxRequest = 32 << 20;     // what strata itself serves per request
constexpr uint64_t kStatusQuery = 1ull << 30;  // block status asked per request
// How a strata export says it serves one frozen layer (ChainStorage::Describe).
constexpr absl::string_view kFrozenLayerTag = "frozen layer ";

std::string LibnbdError() {
  const char* e = nbd_get_error();
  return e != nullptr && *e != '\0' ? e : "connection lost";
}

void Signal(int fd) {
  const uint64_t one = 1;
  (void)!write(fd, &one, sizeof(one));
}

void Drain(int fd) {
  uint64_t n;
  (void)!read(fd, &n, sizeof(n));
}

// Runs h's state machine until `finished()` holds: polls its socket, and `stop_fd`, which
// abandons the wait. kUnavailable when libnbd fails, kDeadlineExceeded past `deadline`.
absl::Status DriveUntil(nbd_handle* h, absl::Time deadline, int stop_fd,
                        const std::function<bool()>& finished, absl::string_view what) {
  while (!finished()) {
    if (nbd_aio_is_dead(h) == 1 || nbd_aio_is_closed(h) == 1) {
      return absl::UnavailableError(absl::StrCat(what, ": ", LibnbdError()));
    }
    const int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (ms <= 0) return absl::DeadlineExceededError(absl::StrCat(what, ": no answer in time"));
    const unsigned dir = nbd_aio_get_direction(h);
    pollfd fds[2] = {{nbd_aio_get_fd(h), 0, 0}, {stop_fd, POLLIN, 0}};
    if (dir & LIBNBD_AIO_DIRECTION_READ) fds[0].events |= POLLIN;
    if (dir & LIBNBD_AIO_DIRECTION_WRITE) fds[0].events |= POLLOUT;
    const int n = poll(fds, 2, static_cast<int>(std::min<int64_t>(ms, 1000)));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return absl::InternalError(absl::StrCat(what, ": poll: ", strerror(errno)));
    if (fds[1].revents != 0) return absl::CancelledError(absl::StrCat(what, ": stopping"));
    int rc = 0;
    if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      rc = nbd_aio_notify_read(h);
    } else if (fds[0].revents & POLLOUT) {
      rc = nbd_aio_notify_write(h);
    }
    if (rc == -1) return absl::UnavailableError(absl::StrCat(what, ": ", LibnbdError()));
  }
  return absl::OkStatus();
}

// A new connection to `uri`, negotiated and ready for commands.
absl::StatusOr<nbd_handle*> OpenHandle(const std::string& uri, absl::Time deadline, int stop_fd) {
  nbd_handle* h = nbd_create();
  if (h == nullptr) return absl::InternalError(absl::StrCat("libnbd: ", LibnbdError()));
  // The URI passed CheckRemoteParent (blockstore/parent_place.h): its local files are trusted.
  if (nbd_set_uri_allow_local_file(h, true) == -1 ||
      nbd_set_uri_allow_transports(h, LIBNBD_ALLOW_TRANSPORT_TCP | LIBNBD_ALLOW_TRANSPORT_UNIX) ==
          -1 ||
      nbd_set_full_info(h, true) == -1 ||
      nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) == -1 ||
      nbd_aio_connect_uri(h, uri.c_str()) == -1) {
    absl::Status s = absl::UnavailableError(LibnbdError());
    nbd_close(h);
    return s;
  }
  absl::Status s = DriveUntil(
      h, deadline, stop_fd, [h] { return nbd_aio_is_connecting(h) != 1; }, "connecting");
  if (s.ok() && nbd_aio_is_ready(h) != 1) s = absl::UnavailableError(LibnbdError());
  if (!s.ok()) {
    nbd_close(h);
    return s;
  }
  return h;
}

NbdBase::Identity ReadIdentity(nbd_handle* h) {
  NbdBase::Identity id;
  id.size = static_cast<uint64_t>(std::max<int64_t>(nbd_get_size(h), 0));
  id.read_only = nbd_is_read_only(h) == 1;
  id.multi_conn = nbd_can_multi_conn(h) == 1;
  if (char* desc = nbd_get_export_description(h); desc != nullptr) {
    const absl::string_view text(desc);
    if (size_t at = text.find(kFrozenLayerTag); at != absl::string_view::npos) {
      auto uuid = ParseUuid(text.substr(at + kFrozenLayerTag.size(), 36));
      if (uuid.ok()) id.layer_uuid = *uuid;
    }
    free(desc);
  }
  const int64_t min = nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM);
  const int64_t max = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);
  id.min_block = min > 1 ? static_cast<uint64_t>(min) : 1;
  id.max_request =
      max > 0 ? std::min<uint64_t>(static_cast<uint64_t>(max), kMaxRequest) : kMaxRequest;
  id.max_request = std::max(id.max_request / id.min_block * id.min_block, id.min_block);
  return id;
}

std::string Describe(const NbdBase::Identity& id) {
  return absl::StrCat(id.size, " bytes", id.read_only ? ", read-only" : ", writable",
                      IsNil(id.layer_uuid) ? "" : ", strata layer ",
                      IsNil(id.layer_uuid) ? "" : UuidToString(id.layer_uuid));
}

// Whether the export behind `now` can stand in for the one the base was opened on.
absl::Status CheckIdentity(const NbdBase::Identity& first, const NbdBase::Identity& now) {
  if (now.size != first.size || now.layer_uuid != first.layer_uuid ||
      now.read_only != first.read_only) {
    return absl::FailedPreconditionError(absl::StrCat("the export changed (", Describe(now),
                                                      "; it was ", Describe(first), "): not used"));
  }
  return absl::OkStatus();
}

// Collects the data runs of base:allocation replies into `runs`, up to a bound.
struct AllocationWalk {
  std::vector<std::pair<uint64_t, uint64_t>>* runs;
  size_t max_runs;
  uint64_t reached = 0;  // the end of what the replies described
  bool truncated = false;

  static int OnExtents(void* user, const char* context, uint64_t offset, uint32_t* entries,
                       size_t n, int* /*error*/) {
    auto* w = static_cast<AllocationWalk*>(user);
    if (std::strcmp(context, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0) return 0;
    for (size_t i = 0; i + 1 < n; i += 2) {
      const uint64_t end = offset + entries[i];
      if (!(entries[i + 1] & LIBNBD_STATE_HOLE) && !w->truncated) {
        if (!w->runs->empty() && w->runs->back().second == offset) {
          w->runs->back().second = end;
        } else if (w->runs->size() < w->max_runs) {
          w->runs->push_back({offset, end});
        } else {
          w->truncated = true;
        }
      }
      offset = end;
    }
    w->reached = std::max(w->reached, offset);
    return 0;
  }
};

// The export's data runs; false when it offers no base:allocation (everything is data then).
absl::StatusOr<bool> ReadAllocation(nbd_handle* h, uint64_t size, size_t max_runs,
                                    absl::Time deadline, int stop_fd,
                                    std::vector<std::pair<uint64_t, uint64_t>>* runs) {
  if (nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) != 1) return false;
  AllocationWalk walk{runs, max_runs};
  while (walk.reached < size && !walk.truncated) {
    const uint64_t at = walk.reached;
    const int64_t cookie = nbd_aio_block_status(
        h, std::min(size - at, kStatusQuery), at,
        nbd_extent_callback{.callback = AllocationWalk::OnExtents, .user_data = &walk},
        NBD_NULL_COMPLETION, 0);
    if (cookie == -1) return absl::UnavailableError(LibnbdError());
    int done = 0;
    if (auto s = DriveUntil(
            h, deadline, stop_fd,
            [&] { return (done = nbd_aio_command_completed(h, cookie)) != 0; },
            "reading the allocation map");
        !s.ok()) {
      return s;
    }
    if (done == -1) return absl::UnavailableError(LibnbdError());
    if (walk.reached <= at) break;  // no progress: the rest counts as data
  }
  if (walk.reached < size || walk.truncated) {
    const uint64_t from = walk.truncated && !runs->empty() ? runs->back().second : walk.reached;
    runs->push_back({from, size});
  }
  return true;
}

// Joins the pieces of a read split to the export's largest request: `done` once, with the
// first error.
struct Joined {
  Mutex mu;
  int remaining ABSL_GUARDED_BY(mu) = 0;
  absl::Status status ABSL_GUARDED_BY(mu);
  std::function<void(absl::Status)> done;

  void PieceDone(absl::Status s) {
    absl::Status result;
    {
      MutexLock lock(&mu);
      if (!s.ok() && status.ok()) status = std::move(s);
      if (--remaining > 0) return;
      result = status;
    }
    done(std::move(result));
  }
};

}  // namespace

// One read request to the export: an aligned piece of a ReadAsync.
struct NbdBase::PendingRead {
  uint64_t id = 0;
  uint64_t offset = 0;  // what the caller asked for
  uint64_t length = 0;
  char* dst = nullptr;
  uint64_t read_offset = 0;  // what goes to the export (aligned to min_block)
  uint64_t read_length = 0;
  std::vector<char> bounce;  // the aligned read, when it is not the caller's range
  std::function<void(absl::Status)> done;
  absl::Time deadline;  // answered by then (over every connection it is sent on), or failed
};

struct NbdBase::Conn {
  nbd_handle* h = nullptr;
  std::map<uint64_t, std::unique_ptr<PendingRead>> inflight;  // by PendingRead::id
};

namespace {

// libnbd's completion callback for one read.
struct Completion {
  uint64_t id;
  std::function<void(uint64_t, int)> finish;
  static int OnComplete(void* user, int* error) {
    auto* c = static_cast<Completion*>(user);
    c->finish(c->id, *error);
    return 1;
  }
  static void Free(void* user) { delete static_cast<Completion*>(user); }
};

}  // namespace

NbdBase::NbdBase(std::string uri, std::string layer_path, NbdBaseOptions options)
    : uri_(std::move(uri)), layer_path_(std::move(layer_path)), options_(options) {}

absl::StatusOr<std::unique_ptr<NbdBase>> NbdBase::Connect(const std::string& uri,
                                                          const std::string& layer_path,
                                                          const NbdBaseOptions& options) {
  auto base = std::unique_ptr<NbdBase>(new NbdBase(uri, layer_path, options));
  auto fail = [&](const absl::Status& s) {
    return absl::Status(s.code(),
                        absl::StrCat("layer ", layer_path, ": NBD base ", uri, ": ", s.message()));
  };
  base->wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  base->stop_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (base->wake_fd_ < 0 || base->stop_fd_ < 0) {
    return fail(absl::InternalError(absl::StrCat("eventfd: ", strerror(errno))));
  }
  const absl::Time deadline = absl::Now() + options.connect_timeout;
  auto h = OpenHandle(uri, deadline, base->stop_fd_);
  if (!h.ok()) return fail(h.status());
  base->identity_ = ReadIdentity(*h);
  absl::Status s;
  if (!base->identity_.read_only && !options.allow_writable) {
    s = absl::FailedPreconditionError(
        "the export can be written by its clients, and a base that changes corrupts the layers "
        "on it: serve it read-only (strata serve --read-only, qemu-nbd -r, nbdkit -r), or pass "
        "--allow-writable-base");
  }
  if (s.ok()) {
    auto map = ReadAllocation(*h, base->identity_.size, options.max_allocation_runs, deadline,
                              base->stop_fd_, &base->data_runs_);
    if (map.ok()) base->have_map_ = *map;
    s = map.status();
  }
  if (!s.ok()) {
    nbd_close(*h);
    return fail(s);
  }
  {
    MutexLock lock(&base->mu_);
    base->ready_.push_back(*h);
    base->up_ = 1;
    base->wanted_ = base->identity_.multi_conn ? std::max(options.max_connections, 1) - 1 : 0;
  }
  return base;
}

// At the first read, not at Connect: `strata serve` opens its disk before it forks into the
// background, and a fork keeps only the thread that called it (the connection's socket and
// libnbd's state survive it).
void NbdBase::StartThreads() {
  std::call_once(started_, [this] {
    io_thread_ = std::thread([this] { IoLoop(); });
    connector_thread_ = std::thread([this] { ConnectorLoop(); });
  });
}

NbdBase::~NbdBase() {
  {
    MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (stop_fd_ >= 0) Signal(stop_fd_);
  if (wake_fd_ >= 0) Signal(wake_fd_);
  if (io_thread_.joinable()) io_thread_.join();
  if (connector_thread_.joinable()) connector_thread_.join();
  MutexLock lock(&mu_);
  for (nbd_handle* h : ready_) nbd_close(h);
  if (wake_fd_ >= 0) close(wake_fd_);
  if (stop_fd_ >= 0) close(stop_fd_);
}

void NbdBase::Wake() { Signal(wake_fd_); }

void NbdBase::ReadAsync(uint64_t offset, absl::Span<char> out,
                        std::function<void(absl::Status)> done) {
  if (out.empty()) return done(absl::OkStatus());
  StartThreads();
  const uint64_t step = identity_.max_request;
  const uint64_t pieces = (out.size() + step - 1) / step;
  std::shared_ptr<Joined> joined;
  if (pieces > 1) {
    joined = std::make_shared<Joined>();
    joined->remaining = static_cast<int>(pieces);
    joined->done = std::move(done);
  }
  const absl::Time now = absl::Now();
  std::vector<std::unique_ptr<PendingRead>> reads;
  for (uint64_t at = 0; at < out.size(); at += step) {
    auto r = std::make_unique<PendingRead>();
    r->offset = offset + at;
    r->length = std::min<uint64_t>(step, out.size() - at);
    r->dst = out.data() + at;
    const uint64_t a = identity_.min_block;
    r->read_offset = r->offset / a * a;
    r->read_length =
        std::min((r->offset + r->length + a - 1) / a * a, identity_.size) - r->read_offset;
    if (r->read_offset != r->offset || r->read_length != r->length) {
      r->bounce.resize(r->read_length);
    }
    r->done =
        joined ? [joined](absl::Status s) { joined->PieceDone(std::move(s)); } : std::move(done);
    r->deadline = now + options_.read_timeout;
    reads.push_back(std::move(r));
  }
  {
    MutexLock lock(&mu_);
    if (!stopping_) {
      state_.reads += reads.size();
      for (auto& r : reads) queue_.push_back(std::move(r));
      reads.clear();
    }
  }
  for (auto& r : reads) FailRead(std::move(r), "the base is closing");
  Wake();
}

std::vector<std::pair<uint64_t, uint64_t>> NbdBase::DataRanges(uint64_t offset,
                                                               uint64_t length) const {
  const uint64_t end = offset + length;
  if (!have_map_) return {{offset, end}};
  std::vector<std::pair<uint64_t, uint64_t>> out;
  auto it = std::upper_bound(data_runs_.begin(), data_runs_.end(), offset,
                             [](uint64_t v, const auto& run) { return v < run.second; });
  for (; it != data_runs_.end() && it->first < end; ++it) {
    out.push_back({std::max(it->first, offset), std::min(it->second, end)});
  }
  return out;
}

RemoteBaseState NbdBase::State() const {
  MutexLock lock(&mu_);
  RemoteBaseState s = state_;
  s.connections = up_;
  s.connected = up_ > 0;
  return s;
}

void NbdBase::FailRead(std::unique_ptr<PendingRead> read, const std::string& why) {
  {
    MutexLock lock(&mu_);
    ++state_.failed_reads;
  }
  read->done(absl::UnavailableError(absl::StrFormat("NBD base %s: read @ %#x length %#x: %s", uri_,
                                                    read->offset, read->length, why)));
}

void NbdBase::Finish(uint64_t id, int error) {
  for (auto& c : conns_) {
    auto it = c->inflight.find(id);
    if (it == c->inflight.end()) continue;
    std::unique_ptr<PendingRead> r = std::move(it->second);
    c->inflight.erase(it);
    if (error != 0) return FailRead(std::move(r), strerror(error));
    if (!r->bounce.empty()) {
      std::memcpy(r->dst, r->bounce.data() + (r->offset - r->read_offset), r->length);
    }
    r->done(absl::OkStatus());
    return;
  }
  // Not found: its connection was dropped, and the read already failed.
}

// Sends `read` on `c`; false when `c` cannot send (the read is then not sent: it is `*read`
// still, for another connection).
bool NbdBase::Send(Conn* c, std::unique_ptr<PendingRead>* read) {
  PendingRead* r = read->get();
  r->id = next_id_++;
  char* buf = r->bounce.empty() ? r->dst : r->bounce.data();
  c->inflight[r->id] = std::move(*read);
  auto* completion = new Completion{r->id, [this](uint64_t i, int e) { Finish(i, e); }};
  const int64_t cookie = nbd_aio_pread(
      c->h, buf, r->read_length, r->read_offset,
      nbd_completion_callback{
          .callback = Completion::OnComplete, .user_data = completion, .free = Completion::Free},
      0);
  if (cookie != -1) return true;
  // libnbd called Free already; the read is still ours, and was not sent.
  const std::string why = LibnbdError();
  const int err = nbd_get_errno();
  *read = std::move(c->inflight[r->id]);
  c->inflight.erase(r->id);
  if (nbd_aio_is_dead(c->h) == 1 || nbd_aio_is_closed(c->h) == 1 || err == ESHUTDOWN ||
      err == ENOTCONN || err == EPIPE) {
    Drop(c, why, /*closing=*/false);  // the server shut it down, or it died: a new one
    return false;
  }
  FailRead(std::move(*read), why);
  return true;
}

NbdBase::Conn* NbdBase::NextConn() {
  for (size_t tries = 0; tries < conns_.size(); ++tries) {
    Conn* c = conns_[next_conn_++ % conns_.size()].get();
    if (c->h != nullptr) return c;
  }
  return nullptr;
}

void NbdBase::SendQueued(absl::Time now) {
  std::vector<std::unique_ptr<PendingRead>> queued;
  std::string last_error;
  {
    MutexLock lock(&mu_);
    queued.swap(queue_);
    last_error = state_.last_error;
  }
  std::vector<std::unique_ptr<PendingRead>> waiting;
  for (auto& r : queued) {
    if (now >= r->deadline) {
      FailRead(std::move(r),
               absl::StrCat("no answer within ", absl::FormatDuration(options_.read_timeout), " (",
                            last_error.empty() ? "no connection" : last_error, ")"));
      continue;
    }
    while (r != nullptr) {
      Conn* c = NextConn();
      if (c == nullptr) break;
      if (Send(c, &r)) r = nullptr;
    }
    if (r != nullptr) waiting.push_back(std::move(r));
  }
  if (waiting.empty()) return;
  MutexLock lock(&mu_);
  for (auto& r : waiting) queue_.push_back(std::move(r));
}

void NbdBase::Drop(Conn* c, const std::string& why, bool closing) {
  std::map<uint64_t, std::unique_ptr<PendingRead>> lost;
  lost.swap(c->inflight);
  nbd_close(c->h);  // no callback of it finds a read now
  c->h = nullptr;
  MutexLock lock(&mu_);
  --up_;
  ++wanted_;
  state_.last_error = why;
  if (!closing) {
    STRATA_LOG_LIMITED(kError,
                       "NBD base %s: connection lost (%s); reconnecting, %d read%s to send again",
                       uri_, why, static_cast<int>(lost.size()), lost.size() == 1 ? "" : "s");
  }
  // A base never changes, so a read is sent again on another connection (until its
  // deadline) rather than failed.
  for (auto& [id, r] : lost) queue_.push_back(std::move(r));
}

void NbdBase::IoLoop() {
  std::vector<pollfd> fds;
  for (;;) {
    {
      MutexLock lock(&mu_);
      if (stopping_) break;
      for (nbd_handle* h : ready_) {
        conns_.push_back(std::make_unique<Conn>());
        conns_.back()->h = h;
      }
      ready_.clear();
    }
    const absl::Time now = absl::Now();
    SendQueued(now);
    for (auto& c : conns_) {
      for (const auto& [id, r] : c->inflight) {
        if (now < r->deadline) continue;
        // A hung server: the reads on this connection fail (past their deadline), and a new
        // connection is made for the others.
        Drop(c.get(), absl::StrCat("no reply within ", absl::FormatDuration(options_.read_timeout)),
             /*closing=*/false);
        break;
      }
    }
    std::erase_if(conns_, [](const auto& c) { return c->h == nullptr; });
    fds.assign(1, pollfd{wake_fd_, POLLIN, 0});
    for (auto& c : conns_) {
      const unsigned dir = nbd_aio_get_direction(c->h);
      short events = 0;
      if (dir & LIBNBD_AIO_DIRECTION_READ) events |= POLLIN;
      if (dir & LIBNBD_AIO_DIRECTION_WRITE) events |= POLLOUT;
      fds.push_back({nbd_aio_get_fd(c->h), events, 0});
    }
    bool waiting;
    {
      MutexLock lock(&mu_);
      waiting = !queue_.empty();
    }
    if (poll(fds.data(), fds.size(), waiting ? 100 : 1000) < 0 && errno != EINTR) {
      STRATA_LOG_LIMITED(kError, "NBD base %s: poll: %s", uri_, strerror(errno));
    }
    if (fds[0].revents & POLLIN) Drain(wake_fd_);
    for (size_t i = 1; i < fds.size(); ++i) {
      Conn* c = conns_[i - 1].get();
      int rc = 0;
      if (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) {
        rc = nbd_aio_notify_read(c->h);
      } else if (fds[i].revents & POLLOUT) {
        rc = nbd_aio_notify_write(c->h);
      }
      if (rc == -1 || nbd_aio_is_dead(c->h) == 1 || nbd_aio_is_closed(c->h) == 1) {
        Drop(c, LibnbdError(), /*closing=*/false);
      }
    }
    std::erase_if(conns_, [](const auto& c) { return c->h == nullptr; });
  }
  for (auto& c : conns_) {
    if (c->h != nullptr) Drop(c.get(), "the base is closing", /*closing=*/true);
  }
  conns_.clear();
  std::vector<std::unique_ptr<PendingRead>> queued;
  {
    MutexLock lock(&mu_);
    queued.swap(queue_);
  }
  for (auto& r : queued) FailRead(std::move(r), "the base is closing");
}

bool NbdBase::ConnectorHasWork() const { return stopping_ || wanted_ > 0; }

void NbdBase::ConnectorLoop() {
  absl::Duration backoff = kMinBackoff;
  absl::Time last_logged = absl::InfinitePast();
  for (;;) {
    {
      MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &NbdBase::ConnectorHasWork));
      if (stopping_) return;
    }
    auto h = OpenHandle(uri_, absl::Now() + options_.connect_timeout, stop_fd_);
    absl::Status s = h.status();
    if (h.ok()) {
      s = CheckIdentity(identity_, ReadIdentity(*h));
      if (!s.ok()) nbd_close(*h);
    }
    MutexLock lock(&mu_);
    if (s.ok()) {
      ready_.push_back(*h);
      --wanted_;
      ++up_;
      backoff = kMinBackoff;
      Signal(wake_fd_);
      // One was lost or failed before: say it is back.
      if (!state_.last_error.empty()) {
        ++state_.reconnects;
        STRATA_LOG(kInfo, "NBD base %s: connected again (%d connection%s)", uri_, up_,
                   up_ == 1 ? "" : "s");
      }
      continue;
    }
    if (stopping_) return;
    // Once per cause, and then once a minute: a base that stays away is not a line a second.
    const absl::Time now = absl::Now();
    if (s.message() != state_.last_error || now - last_logged >= absl::Minutes(1)) {
      STRATA_LOG(kError, "NBD base %s: %s; trying again every %s at most", uri_, s.message(),
                 absl::FormatDuration(kMaxBackoff));
      last_logged = now;
    }
    state_.last_error = std::string(s.message());
    mu_.AwaitWithTimeout(absl::Condition(&stopping_), backoff);
    backoff = std::min(backoff * 2, kMaxBackoff);
  }
}

RemoteBaseOpener NbdBaseOpener(const NbdBaseOptions& options) {
  return [options](const std::string& uri,
                   const std::string& layer_path) -> absl::StatusOr<std::unique_ptr<RemoteBase>> {
    auto base = NbdBase::Connect(uri, layer_path, options);
    if (!base.ok()) return base.status();
    return std::unique_ptr<RemoteBase>(std::move(*base));
  };
}

}  // namespace strata
