// NbdBase: a chain's base read from an NBD export through libnbd (blockstore/remote_base.h) —
// a golden image served once (by another strata, qemu-nbd, nbdkit; Ceph RBD or HTTP behind
// them) for the writable layers of many hosts.
//
// Design note. One I/O thread drives every connection with libnbd's asynchronous API: reads
// from any thread are queued, the thread sends them (several in flight, round robin over the
// connections; more than one connection only when the export offers multi-conn, as the NBD
// spec requires for consistent reads across connections), polls the sockets and calls each
// read's `done` from its completion. Nothing blocks a server's ring thread: a read's `done`
// posts to its worker. Faults never produce wrong data. A read has `read_timeout` to be
// answered: a connection that fails is closed and its reads are sent again on another one (a
// base never changes, so a read may be repeated), a connection on which a read waits past its
// deadline is closed as hung, and a read not answered by its deadline fails (kUnavailable:
// EIO to the client); an error the server returns fails the read at once. A connector thread
// makes connections again with backoff (0.1 s doubling to 1 s), and each new connection must
// show the identity the first one had (size, read-only, strata layer UUID), or it is refused:
// a base that changed under its layers would corrupt them. A base restarted within the
// timeout is therefore invisible to the client; one that stays away gives EIO.
//
// The export's allocation (base:allocation) is read once at the first connection, so
// DataRanges() answers block status and merges without I/O (a base never changes).
#ifndef STRATA_SERVER_REMOTE_NBD_BASE_H_
#define STRATA_SERVER_REMOTE_NBD_BASE_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "blockstore/mutex.h"
#include "blockstore/remote_base.h"

struct nbd_handle;

namespace strata {

struct NbdBaseOptions {
  // Accept an export that a client may write (a base that changes corrupts its layers): only
  // when the user says so (--allow-writable-base).
  bool allow_writable = false;
  int max_connections = 4;  // used only when the export offers multi-conn
  absl::Duration connect_timeout = absl::Seconds(10);
  absl::Duration read_timeout = absl::Seconds(10);
  // At most this many data runs of the allocation map are kept; past them the rest of the
  // export counts as data (bounded memory for a badly fragmented base).
  size_t max_allocation_runs = 1 << 20;
};

class NbdBase final : public RemoteBase {
 public:
  // Connects (blocks up to connect_timeout), checks the export can be a base, reads its
  // allocation map and starts the threads. Errors name the layer and the URI.
  static absl::StatusOr<std::unique_ptr<NbdBase>> Connect(const std::string& uri,
                                                          const std::string& layer_path,
                                                          const NbdBaseOptions& options);
  ~NbdBase() override;  // fails what is still queued or in flight, then closes

  const std::string& uri() const override { return uri_; }
  uint64_t size() const override { return identity_.size; }
  Uuid layer_uuid() const override { return identity_.layer_uuid; }
  void ReadAsync(uint64_t offset, absl::Span<char> out,
                 std::function<void(absl::Status)> done) override;
  std::vector<std::pair<uint64_t, uint64_t>> DataRanges(uint64_t offset,
                                                        uint64_t length) const override;
  RemoteBaseState State() const override;

  // What makes an export the same base again after a reconnection.
  struct Identity {
    uint64_t size = 0;
    bool read_only = true;
    Uuid layer_uuid{};
    bool multi_conn = false;
    uint64_t min_block = 1;  // reads are aligned to it
    uint64_t max_request = 1 << 25;
  };

 private:
  struct PendingRead;
  struct Conn;
  NbdBase(std::string uri, std::string layer_path, NbdBaseOptions options);

  void StartThreads();
  void IoLoop();
  void ConnectorLoop();
  bool ConnectorHasWork() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // I/O thread: sends queued reads, fails the ones that waited too long.
  void SendQueued(absl::Time now);
  bool Send(Conn* c, std::unique_ptr<PendingRead>* read);
  Conn* NextConn();  // the next connection that is up, round robin; null when none is
  // I/O thread: closes `c` and fails every read on it; `closing`: the base is being closed, not
  // the connection lost (no reconnection, no log line).
  void Drop(Conn* c, const std::string& why, bool closing);
  void FailRead(std::unique_ptr<PendingRead> read, const std::string& why);
  void Finish(uint64_t id, int error);
  void Wake();

  const std::string uri_;
  const std::string layer_path_;
  const NbdBaseOptions options_;
  Identity identity_;
  std::vector<std::pair<uint64_t, uint64_t>> data_runs_;  // sorted; empty + !have_map_: all data
  bool have_map_ = false;
  int wake_fd_ = -1;  // eventfd: a read was queued, a connection is ready, or stop
  int stop_fd_ = -1;  // eventfd: stops a connection attempt in progress

  mutable Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::unique_ptr<PendingRead>> queue_ ABSL_GUARDED_BY(mu_);
  std::vector<nbd_handle*> ready_ ABSL_GUARDED_BY(mu_);  // made by the connector, not yet used
  int wanted_ ABSL_GUARDED_BY(mu_) = 0;                  // connections the connector should make
  int up_ ABSL_GUARDED_BY(mu_) = 0;
  RemoteBaseState state_ ABSL_GUARDED_BY(mu_);  // counters and last_error; State() adds up_

  // I/O thread only.
  std::vector<std::unique_ptr<Conn>> conns_;
  size_t next_conn_ = 0;
  uint64_t next_id_ = 1;

  std::once_flag started_;
  std::thread io_thread_;
  std::thread connector_thread_;
};

// The opener Chain::Open and CreateLayer take (blockstore/remote_base.h).
RemoteBaseOpener NbdBaseOpener(const NbdBaseOptions& options);

}  // namespace strata

#endif  // STRATA_SERVER_REMOTE_NBD_BASE_H_
