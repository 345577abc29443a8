#include "server/tls/tls.h"

#include <gnutls/gnutls.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace strata {

namespace {

// One TLS record is at most 16 KiB of plaintext plus its header and tag; four fit, so a recv
// always has room for at least a whole record once the buffer is compacted.
constexpr size_t kCipherInput = 64 << 10;

// PSK and its (EC)DHE variants on top of GnuTLS's defaults, as qemu and nbdkit ask for.
constexpr char kPskPriority[] = "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK";

absl::Status GnutlsError(int rc, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(what, ": ", gnutls_strerror(rc)));
}

// A readable file, or an error naming it (GnuTLS's own says only "Error while reading file").
absl::Status Readable(const std::string& path) {
  if (access(path.c_str(), R_OK) == 0) return absl::OkStatus();
  return absl::ErrnoToStatus(errno, absl::StrCat("cannot read ", path));
}

// GnuTLS's PSK lookup: the session's pointer is its TlsSession.
int PskKey(gnutls_session_t session, const char* username, gnutls_datum_t* key);

}  // namespace

// ---------------------------------------------------------------------------------------------
// Credentials

TlsCredentials::~TlsCredentials() {
  if (x509_ != nullptr) gnutls_certificate_free_credentials(x509_);
  if (psk_ != nullptr) gnutls_psk_free_server_credentials(psk_);
}

absl::StatusOr<std::unique_ptr<TlsCredentials>> TlsCredentials::LoadX509(const std::string& dir,
                                                                         bool verify_peer) {
  const std::string ca = dir + "/ca-cert.pem";
  const std::string cert = dir + "/server-cert.pem";
  const std::string key = dir + "/server-key.pem";
  for (const std::string& path : {cert, key}) {
    if (absl::Status st = Readable(path); !st.ok()) return st;
  }
  if (verify_peer) {
    if (absl::Status st = Readable(ca); !st.ok()) {
      return absl::Status(st.code(), absl::StrCat(st.message(), " (--tls-verify-peer checks "
                                                                "client certificates against it)"));
    }
  }
  std::unique_ptr<TlsCredentials> c(new TlsCredentials);
  c->verify_peer_ = verify_peer;
  if (int rc = gnutls_certificate_allocate_credentials(&c->x509_); rc < 0) {
    return GnutlsError(rc, "TLS credentials");
  }
  if (int rc = gnutls_certificate_set_x509_key_file(c->x509_, cert.c_str(), key.c_str(),
                                                    GNUTLS_X509_FMT_PEM);
      rc < 0) {
    return GnutlsError(rc, absl::StrCat(cert, " with ", key));
  }
  if (access(ca.c_str(), R_OK) == 0) {
    int rc = gnutls_certificate_set_x509_trust_file(c->x509_, ca.c_str(), GNUTLS_X509_FMT_PEM);
    if (rc < 0) return GnutlsError(rc, ca);
    if (rc == 0) return absl::InvalidArgumentError(absl::StrCat(ca, ": no certificate in it"));
  }
  c->description_ = absl::StrCat("X.509 certificates in ", dir,
                                 verify_peer ? ", client certificates verified" : "");
  return c;
}

absl::StatusOr<std::unique_ptr<TlsCredentials>> TlsCredentials::LoadPsk(const std::string& file) {
  if (absl::Status st = Readable(file); !st.ok()) return st;
  std::ifstream in(file);
  std::unique_ptr<TlsCredentials> c(new TlsCredentials);
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    absl::string_view text = absl::StripAsciiWhitespace(line);
    if (text.empty()) continue;
    size_t colon = text.find(':');
    absl::string_view user = text.substr(0, colon);
    absl::string_view hex = colon == absl::string_view::npos ? "" : text.substr(colon + 1);
    const bool is_hex = !hex.empty() && hex.size() % 2 == 0 &&
                        std::all_of(hex.begin(), hex.end(), absl::ascii_isxdigit);
    if (user.empty() || !is_hex) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s line %d: expected username:hexkey (psktool's format)", file, number));
    }
    c->psk_keys_[std::string(user)] = absl::HexStringToBytes(hex);
  }
  if (in.bad()) return absl::ErrnoToStatus(errno, absl::StrCat("reading ", file));
  if (c->psk_keys_.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": no username:hexkey line"));
  }
  if (int rc = gnutls_psk_allocate_server_credentials(&c->psk_); rc < 0) {
    return GnutlsError(rc, "TLS credentials");
  }
  gnutls_psk_set_server_credentials_function(c->psk_, PskKey);
  c->description_ = absl::StrFormat("pre-shared keys of %d users in %s", c->psk_keys_.size(),
                                    file);
  return c;
}

const std::string* TlsCredentials::FindPsk(absl::string_view username) const {
  auto it = psk_keys_.find(username);
  return it == psk_keys_.end() ? nullptr : &it->second;
}

// ---------------------------------------------------------------------------------------------
// Session

absl::StatusOr<std::unique_ptr<TlsSession>> TlsSession::NewServer(
    const TlsCredentials* credentials) {
  std::unique_ptr<TlsSession> s(new TlsSession);
  if (int rc = gnutls_init(&s->session_, GNUTLS_SERVER | GNUTLS_NONBLOCK); rc < 0) {
    return GnutlsError(rc, "TLS session");
  }
  s->credentials_ = credentials;
  gnutls_session_set_ptr(s->session_, s.get());
  int rc;
  if (credentials->psk_ != nullptr) {
    rc = gnutls_priority_set_direct(s->session_, kPskPriority, nullptr);
    if (rc >= 0) rc = gnutls_credentials_set(s->session_, GNUTLS_CRD_PSK, credentials->psk_);
  } else {
    rc = gnutls_set_default_priority(s->session_);
    if (rc >= 0) {
      rc = gnutls_credentials_set(s->session_, GNUTLS_CRD_CERTIFICATE, credentials->x509_);
    }
    if (credentials->verify_peer_) {
      gnutls_certificate_server_set_request(s->session_, GNUTLS_CERT_REQUIRE);
      // The client's certificate is checked against the CA during the handshake.
      gnutls_session_set_verify_cert(s->session_, nullptr, 0);
    }
  }
  if (rc < 0) return GnutlsError(rc, "TLS session");
  gnutls_transport_set_ptr(s->session_, s.get());
  gnutls_transport_set_push_function(s->session_, Push);
  gnutls_transport_set_pull_function(s->session_, Pull);
  s->in_.resize(kCipherInput);
  return s;
}

const std::string* TlsSession::LookUpPsk(const char* username) {
  psk_user_ = username;
  return credentials_->FindPsk(username);
}

namespace {

int PskKey(gnutls_session_t session, const char* username, gnutls_datum_t* key) {
  const std::string* found =
      static_cast<TlsSession*>(gnutls_session_get_ptr(session))->LookUpPsk(username);
  if (found == nullptr) return -1;
  // GnuTLS frees the key with gnutls_free.
  key->data = static_cast<unsigned char*>(gnutls_malloc(found->size()));
  if (key->data == nullptr) return -1;
  memcpy(key->data, found->data(), found->size());
  key->size = static_cast<unsigned>(found->size());
  return 0;
}

}  // namespace

TlsSession::~TlsSession() {
  if (session_ != nullptr) gnutls_deinit(session_);
}

long TlsSession::Push(void* self, const void* data, size_t len) {
  static_cast<TlsSession*>(self)->pending_.append(static_cast<const char*>(data), len);
  return static_cast<long>(len);
}

long TlsSession::Pull(void* self, void* data, size_t len) {
  auto* s = static_cast<TlsSession*>(self);
  size_t n = std::min(len, s->in_end_ - s->in_begin_);
  if (n == 0) {
    gnutls_transport_set_errno(s->session_, EAGAIN);
    return -1;
  }
  memcpy(data, s->in_.data() + s->in_begin_, n);
  s->in_begin_ += n;
  return static_cast<long>(n);
}

char* TlsSession::recv_space() {
  if (in_begin_ > 0) {
    std::memmove(in_.data(), in_.data() + in_begin_, in_end_ - in_begin_);
    in_end_ -= in_begin_;
    in_begin_ = 0;
  }
  return in_.data() + in_end_;
}

size_t TlsSession::recv_space_size() {
  recv_space();
  return in_.size() - in_end_;
}

void TlsSession::Received(size_t n) { in_end_ += n; }

absl::Status TlsSession::Handshake() {
  int rc = gnutls_handshake(session_);
  if (rc == GNUTLS_E_SUCCESS) {
    handshake_done_ = true;
    return absl::OkStatus();
  }
  if (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED || !gnutls_error_is_fatal(rc)) {
    return absl::OkStatus();
  }
  // The client hears why instead of a bare close (the alert goes out before the socket closes).
  gnutls_alert_send_appropriate(session_, rc);
  if (rc == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR) {
    return absl::PermissionDeniedError(
        "TLS handshake: the client's certificate is not signed by the CA (--tls-verify-peer)");
  }
  std::string user;
  if (!psk_user_.empty()) {
    user = absl::StrCat(" (PSK user \"", absl::CHexEscape(psk_user_), "\"",
                        credentials_->FindPsk(psk_user_) ? "" : ", not in the key file", ")");
  }
  return absl::PermissionDeniedError(
      absl::StrCat("TLS handshake: ", gnutls_strerror(rc), user));
}

absl::StatusOr<size_t> TlsSession::Read(char* buf, size_t len) {
  if (!handshake_done_) {
    if (absl::Status st = Handshake(); !st.ok()) return st;
    if (!handshake_done_) return 0;
  }
  for (;;) {
    ssize_t n = gnutls_record_recv(session_, buf, len);
    if (n > 0) return static_cast<size_t>(n);
    if (n == 0) return absl::UnavailableError("the client closed the TLS session");
    if (n == GNUTLS_E_AGAIN) return 0;
    // Non-fatal: a warning alert, a rehandshake request; the next record may be data.
    if (n == GNUTLS_E_INTERRUPTED || !gnutls_error_is_fatal(static_cast<int>(n))) continue;
    return absl::DataLossError(absl::StrCat("TLS record: ", gnutls_strerror(static_cast<int>(n))));
  }
}

absl::Status TlsSession::Write(const iovec* iov, size_t count) {
  // Corked, small replies share records instead of paying a header and tag each.
  gnutls_record_cork(session_);
  for (size_t i = 0; i < count; ++i) {
    const char* p = static_cast<const char*>(iov[i].iov_base);
    size_t left = iov[i].iov_len;
    while (left > 0) {
      ssize_t n = gnutls_record_send(session_, p, left);
      if (n < 0) return GnutlsError(static_cast<int>(n), "TLS send");
      p += n;
      left -= static_cast<size_t>(n);
    }
  }
  // Push never fails, so the corked records all go out now.
  int rc = gnutls_record_uncork(session_, GNUTLS_RECORD_WAIT);
  if (rc < 0) return GnutlsError(rc, "TLS send");
  return absl::OkStatus();
}

absl::Status TlsSession::Close() {
  // Push never fails, so the alert is in the output when bye returns: it never waits.
  int rc = gnutls_bye(session_, GNUTLS_SHUT_WR);
  if (rc < 0) return GnutlsError(rc, "TLS close");
  return absl::OkStatus();
}

absl::string_view TlsSession::NextOutput() {
  if (sent_ == sending_.size()) {
    sending_.clear();
    sent_ = 0;
    sending_.swap(pending_);
  }
  return absl::string_view(sending_).substr(sent_);
}

void TlsSession::Sent(size_t n) { sent_ += n; }

std::string TlsSession::Description() const {
  char* desc = gnutls_session_get_desc(session_);
  std::string out = desc != nullptr ? desc : "TLS";
  gnutls_free(desc);
  if (gnutls_auth_get_type(session_) == GNUTLS_CRD_PSK) {
    const char* user = gnutls_psk_server_get_username(session_);
    if (user != nullptr) absl::StrAppend(&out, ", PSK user ", user);
  }
  return out;
}

}  // namespace strata
