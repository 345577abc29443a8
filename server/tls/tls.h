// TLS for NBD connections, with GnuTLS, over memory buffers.
//
// Design note. The worker's io_uring ring owns the socket: it receives ciphertext into a
// session's input buffer and sends the session's output buffer, exactly as it moves plaintext
// without TLS. GnuTLS only ever sees those buffers (custom push/pull functions), so it never
// blocks and never touches the descriptor: a pull with nothing buffered says EAGAIN, and the
// connection arms another recv. The TLS handshake is driven by the same recv/send completions
// (Read runs it until it is done).
//
// Output is two buffers: the one a send is in flight on stays put (the kernel reads it) while
// new records go to the other; NextOutput swaps them once the first is sent.
//
// Not done: kernel TLS offload. The kernel this was built on has no "tls" ULP (setsockopt
// TCP_ULP fails with ENOENT), and GnuTLS's own kTLS needs GnuTLS to own the socket
// (gnutls_transport_set_int), which the ring does here; handing the keys to the kernel
// ourselves (gnutls_record_get_state, TLS_TX/TLS_RX) is future work. Records are encrypted in
// user space, on the ring thread.
#ifndef STRATA_SERVER_TLS_TLS_H_
#define STRATA_SERVER_TLS_TLS_H_

#include <sys/uio.h>

#include <cstddef>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

// GnuTLS's handle types, declared so that users of this header need not include GnuTLS.
struct gnutls_session_int;
struct gnutls_certificate_credentials_st;
struct gnutls_psk_server_credentials_st;

namespace strata {

// The server's credentials, loaded once at start (an error names the file); shared read-only
// by every session of every worker.
class TlsCredentials {
 public:
  // DIR/server-cert.pem and DIR/server-key.pem; DIR/ca-cert.pem, required with verify_peer
  // (clients must then show a certificate the CA signed).
  static absl::StatusOr<std::unique_ptr<TlsCredentials>> LoadX509(const std::string& dir,
                                                                   bool verify_peer);
  // psktool's format: one "username:hexkey" per line.
  static absl::StatusOr<std::unique_ptr<TlsCredentials>> LoadPsk(const std::string& file);
  ~TlsCredentials();
  TlsCredentials(const TlsCredentials&) = delete;
  TlsCredentials& operator=(const TlsCredentials&) = delete;

  // "X.509 certificates in DIR" or "pre-shared keys of N users in FILE", for logs.
  const std::string& description() const { return description_; }
  // The key of a PSK user, or null.
  const std::string* FindPsk(absl::string_view username) const;

 private:
  friend class TlsSession;
  TlsCredentials() = default;

  gnutls_certificate_credentials_st* x509_ = nullptr;
  gnutls_psk_server_credentials_st* psk_ = nullptr;
  bool verify_peer_ = false;
  std::map<std::string, std::string, std::less<>> psk_keys_;  // username -> key bytes
  std::string description_;
};

// One connection's server side of TLS.
class TlsSession {
 public:
  // `credentials` outlives the session.
  static absl::StatusOr<std::unique_ptr<TlsSession>> NewServer(const TlsCredentials* credentials);
  ~TlsSession();
  TlsSession(const TlsSession&) = delete;
  TlsSession& operator=(const TlsSession&) = delete;

  // Ciphertext in: the recv goes to [recv_space(), + recv_space_size()), then Received(n).
  char* recv_space();
  size_t recv_space_size();
  void Received(size_t n);
  // Bytes received that plaintext has not come out of yet.
  bool HasInput() const { return in_end_ > in_begin_; }

  // Plaintext out, up to `len` bytes into `buf`; completes the handshake first. 0 means it
  // needs more ciphertext. An error ends the session: a failed handshake (wrong CA, unknown
  // PSK user, wrong key), a bad record, or the client's close_notify.
  absl::StatusOr<size_t> Read(char* buf, size_t len);
  // Encrypts every byte of `iov` into the output. REQUIRES: handshake_done().
  absl::Status Write(const iovec* iov, size_t count);
  // Queues a close_notify alert in the output (gnutls_bye(GNUTLS_SHUT_WR): no wait for the
  // client's), so the client reads a clean end of the session rather than a truncation.
  // REQUIRES: handshake_done(), and no fatal error from Read or Write.
  absl::Status Close();

  // Ciphertext for the socket: the bytes a send should take next (empty when none); the
  // view stays valid until Sent consumes it all.
  absl::string_view NextOutput();
  void Sent(size_t n);
  bool HasOutput() const { return buffered_output() > 0; }
  size_t buffered_output() const { return sending_.size() - sent_ + pending_.size(); }

  bool handshake_done() const { return handshake_done_; }
  // For GnuTLS's PSK callback only: the key of `username`, or null; remembered for errors.
  const std::string* LookUpPsk(const char* username);
  // "TLS1.3 AES-256-GCM, PSK user alice", once the handshake is done.
  std::string Description() const;

 private:
  TlsSession() = default;
  static long Push(void* self, const void* data, size_t len);
  static long Pull(void* self, void* data, size_t len);
  absl::Status Handshake();

  const TlsCredentials* credentials_ = nullptr;
  gnutls_session_int* session_ = nullptr;
  std::string psk_user_;  // the PSK username the client gave, for errors
  bool handshake_done_ = false;
  std::vector<char> in_;
  size_t in_begin_ = 0;
  size_t in_end_ = 0;
  std::string sending_;  // a send may be in flight on it
  size_t sent_ = 0;
  std::string pending_;
};

}  // namespace strata

#endif  // STRATA_SERVER_TLS_TLS_H_
