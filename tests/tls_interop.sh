#!/usr/bin/env bash
# Issue 13, TLS: `strata serve --tls-certs DIR` / `--tls-psk FILE` (NBD_OPT_STARTTLS, GnuTLS)
# against the clients people use: libnbd (python3-nbd, nbdinfo) with nbds:// and nbds+unix://
# URIs, qemu-img and qemu-io with tls-creds-x509 / tls-creds-psk objects, `strata backup
# --tls-psk`. Data written over
# TLS is read back with matching checksums; a client holding the wrong CA or the wrong key is
# refused; --tls=require refuses a plain client (NBD_OPT_GO before STARTTLS gets
# NBD_REP_ERR_TLS_REQD); --tls=on serves both; --tls-verify-peer wants a client certificate.
# The session ends with the server's close_notify after NBD_CMD_DISC, after the client's own
# close_notify (which logs no error) and when the server stops (SIGTERM); a TCP close or reset
# in the middle of a record closes that connection with one line, and the server serves on.
# Certificates are made here with certtool, keys with psktool. The first server runs the
# README way: in the background (the default), relative paths, from another directory.
# Usage: tls_interop.sh STRATA_BINARY [TLS_CLOSE_CLIENT]
set -euo pipefail
source "$(dirname "$0")/lib/interop_lib.sh"
[ "$SERVER_KIND" = strata ] || skip "strata's TLS options: nothing to compare with $SERVER_KIND"
need certtool psktool nbdinfo qemu-img qemu-io timeout sha256sum
/usr/bin/python3 -c 'import nbd; assert nbd.NBD().supports_tls()' 2>/dev/null ||
  skip "python3-libnbd without TLS"
interop_init "$@"
STRATA="$(realpath "$STRATA")"
CLOSE="$(realpath "${2:-$(dirname "$STRATA")/../tests/tls_close_client}")"  # tls_close_client.cc
cd "$WORK"
mkdir -p pki client client-cert other elsewhere

# --- credentials -------------------------------------------------------------------------------
certs() {
  printf 'cn = strata test CA\nca\ncert_signing_key\nexpiration_days = 2\n' >ca.info
  printf 'cn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\n'`
        `'encryption_key\nsigning_key\nexpiration_days = 2\n' >server.info
  printf 'cn = strata test client\ntls_www_client\nencryption_key\nsigning_key\n'`
        `'expiration_days = 2\n' >client.info
  certtool -p --outfile ca-key.pem
  certtool -s --load-privkey ca-key.pem --template ca.info --outfile pki/ca-cert.pem
  certtool -p --outfile pki/server-key.pem
  certtool -c --load-privkey pki/server-key.pem --load-ca-certificate pki/ca-cert.pem \
    --load-ca-privkey ca-key.pem --template server.info --outfile pki/server-cert.pem
  cp pki/ca-cert.pem client/ca-cert.pem            # a client holding only the CA
  cp pki/ca-cert.pem client-cert/ca-cert.pem       # and one with a certificate too
  certtool -p --outfile client-cert/client-key.pem
  certtool -c --load-privkey client-cert/client-key.pem --load-ca-certificate pki/ca-cert.pem \
    --load-ca-privkey ca-key.pem --template client.info --outfile client-cert/client-cert.pem
  certtool -p --outfile other-key.pem              # a CA that signed nothing here
  certtool -s --load-privkey other-key.pem --template ca.info --outfile other/ca-cert.pem
  mkdir -p psk wrong-psk
  psktool -u alice -p psk/keys.psk
  psktool -u alice -p wrong-psk/keys.psk           # same user, another key
}
certs >certs.log 2>&1 || { cat certs.log >&2; fail "certtool/psktool failed"; }

"$STRATA" create --size 64M disk.strata >/dev/null

# python3-nbd: `write URI` writes 4 MiB of random data at 1 MiB and prints its sha256;
# `read URI [PSK-USER]` prints the sha256 of the same range.
cat >rw.py <<'EOF'
import hashlib, os, sys
import nbd
mode, uri = sys.argv[1], sys.argv[2]
h = nbd.NBD()
h.set_uri_allow_local_file(True)  # tls-certificates= and tls-psk-file= name local files
if len(sys.argv) > 3:
    h.set_tls_username(sys.argv[3])  # libnbd 1.14 asks getlogin_r otherwise (no tty here)
h.connect_uri(uri)
if mode == "write":
    data = os.urandom(4 << 20)
    h.pwrite(data, 1 << 20)
    h.flush()
else:
    data = h.pread(4 << 20, 1 << 20)
print(hashlib.sha256(data).hexdigest())
h.shutdown()
EOF
# A plain client by hand: NBD_OPT_GO before STARTTLS; prints the reply type in hex.
cat >plain_go.py <<'EOF'
import socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
def read(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c: raise SystemExit("closed")
        b += c
    return b
read(18)                                         # NBDMAGIC IHAVEOPT flags
s.sendall(struct.pack(">I", 3))                  # fixed newstyle, no zeroes
data = struct.pack(">IH", 0, 0)                  # GO: export "", no info requests
s.sendall(b"IHAVEOPT" + struct.pack(">II", 7, len(data)) + data)
magic, opt, rtype, length = struct.unpack(">QIII", read(20))
print("%#x" % rtype)
EOF

# Starts `strata serve ARGS... disk.strata` in the background from elsewhere/ (relative
# paths), the README way; sets SERVER_PID and PORT (TCP), keeps the "serving" lines in $OUT.
serve() {
  (cd elsewhere && timeout 20 "$STRATA" serve --pid-file ../disk.pid --log-file ../server.log \
     "$@" ../disk.strata) >serve.out 2>serve.err || { cat serve.err >&2; fail "serve $* failed"; }
  SERVER_PID="$(cat disk.pid)"
  OUT="$(cat serve.out)"
  PORT="$(sed -n 's|^serving .* at nbds\{0,1\}://127.0.0.1:\([0-9]*\)/.*|\1|p' serve.out)"
}
stop() { terminate_pid "$SERVER_PID"; SERVER_PID=""; }
# The client must fail; what it said goes to refusals.log.
refused() {
  local rc=0
  timeout 30 "$@" >refused.out 2>&1 || rc=$?
  { echo "=== $*"; cat refused.out; } >>refusals.log
  [ "$rc" -ne 0 ]
}

# --- X.509, --tls=require (the default with credentials), TCP -------------------------------
serve --listen 127.0.0.1:0 --tls-certs ../pki
grep -q "at nbds://127.0.0.1:$PORT/ (TLS required, X.509 certificates in" serve.out ||
  fail "the serving line does not say TLS is required: $OUT"
X509="nbds://127.0.0.1:$PORT/?tls-certificates=$WORK/client"
want="$(timeout 60 /usr/bin/python3 rw.py write "$X509")" || fail "python3-nbd write over TLS failed"
got="$(timeout 60 /usr/bin/python3 rw.py read "$X509")" || fail "python3-nbd read over TLS failed"
[ "$want" = "$got" ] || fail "read back over TLS: sha256 $got, wrote $want"
size="$(timeout 30 nbdinfo --size "$X509")" || fail "nbdinfo over TLS failed"
[ "$size" = $((64 * MiB)) ] || fail "nbdinfo --size over TLS: $size"
grep -qF "TLS established: (TLS1.3)" server.log || fail "no TLS 1.3 session in the server log"

# qemu: writes a pattern with qemu-io, reads it back, and qemu-img info sees the disk.
QX509=(--object "tls-creds-x509,id=tls0,dir=$WORK/client,endpoint=client")
QNBD="driver=nbd,host=127.0.0.1,port=$PORT,tls-creds=tls0"
timeout 60 qemu-io "${QX509[@]}" --image-opts "$QNBD" -c 'write -P 0x5a 32M 2M' >qemu.out 2>&1 ||
  { cat qemu.out >&2; fail "qemu-io write over TLS failed"; }
timeout 60 qemu-io "${QX509[@]}" --image-opts "$QNBD" -c 'read -P 0x5a 32M 2M' >qemu.out 2>&1 ||
  { cat qemu.out >&2; fail "qemu-io read -P over TLS failed"; }
grep -q "Pattern verification failed" qemu.out && fail "qemu-io read back another pattern over TLS"
timeout 30 qemu-img info "${QX509[@]}" --image-opts "$QNBD" >qemu.out 2>&1 ||
  { cat qemu.out >&2; fail "qemu-img info over TLS failed"; }
grep -q "virtual size: 64 MiB" qemu.out || fail "qemu-img info: $(cat qemu.out)"

# Refused: a client trusting another CA; a plain client; GO before STARTTLS gets TLS_REQD.
refused nbdinfo --size "nbds://127.0.0.1:$PORT/?tls-certificates=$WORK/other" ||
  fail "a client trusting another CA was served"
grep -q "certificate verification" refused.out || fail "another CA failed otherwise: $(cat refused.out)"
refused nbdinfo --size "nbd://127.0.0.1:$PORT/" || fail "--tls=require served a plain nbdinfo"
grep -q "requires TLS" refused.out || fail "plain nbdinfo failed otherwise: $(cat refused.out)"
refused qemu-img info --image-opts "driver=nbd,host=127.0.0.1,port=$PORT" ||
  fail "--tls=require served a plain qemu-img"
grep -q "TLS negotiation required" refused.out || fail "plain qemu-img failed otherwise: $(cat refused.out)"
reply="$(timeout 30 /usr/bin/python3 plain_go.py "$PORT")" || fail "plain_go.py failed"
[ "$reply" = 0x80000005 ] || fail "NBD_OPT_GO before STARTTLS got $reply, not NBD_REP_ERR_TLS_REQD"
stop

# --- how a session ends: close_notify, or a TCP close in the middle of a record ---------------
serve --listen 127.0.0.1:0 --tls-certs ../pki
CA="$WORK/client/ca-cert.pem"
from=$(($(wc -l <server.log) + 1))  # this server's lines (the log is shared)
since() { tail -n "+$from" server.log | grep -c "$1" || true; }
got="$(timeout 30 "$CLOSE" disc "$PORT" "$CA")" || fail "tls_close_client disc failed"
[ "$got" = close_notify ] || fail "after NBD_CMD_DISC the session ended with $got"
got="$(timeout 30 "$CLOSE" notify "$PORT" "$CA")" || fail "tls_close_client notify failed"
[ "$got" = close_notify ] || fail "the client's close_notify was answered with $got"
sleep 1.1  # the close lines are rate-limited per second: the next ones start a fresh second
for mode in half reset; do
  timeout 30 "$CLOSE" "$mode" "$PORT" "$CA" >/dev/null || fail "tls_close_client $mode failed"
done
timeout 30 nbdinfo --size "nbds://127.0.0.1:$PORT/?tls-certificates=$WORK/client" >/dev/null ||
  fail "the server stopped serving after connections dropped in a TLS record"
for _ in $(seq 50); do
  open=$("$STRATA" stats --json disk.strata |
    /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["connections_open"])')
  [ "$open" = 0 ] && break
  sleep 0.1
done
[ "$open" = 0 ] || fail "$open connections still open after their clients went"
[ "$(since '] error: ')" = 0 ] || fail "closes logged errors: $(tail -n "+$from" server.log)"
[ "$(since 'client closed the connection without a TLS close_notify')" = 1 ] ||
  fail "the close in a TLS record is not one line: $(tail -n "+$from" server.log)"
[ "$(since 'recv failed: Connection reset by peer')" = 1 ] ||
  fail "the reset in a TLS record is not one line: $(tail -n "+$from" server.log)"
timeout 30 "$CLOSE" hold "$PORT" "$CA" >hold.out 2>&1 &
holder=$!
for _ in $(seq 100); do grep -qs ready hold.out && break; sleep 0.1; done
grep -q ready hold.out || fail "the holding client did not connect: $(cat hold.out)"
stop
wait "$holder" || fail "the holding client failed: $(cat hold.out)"
[ "$(tail -1 hold.out)" = close_notify ] || fail "on SIGTERM the session ended with $(tail -1 hold.out)"

# --- PSK on the unix socket (nbds+unix) --------------------------------------------------------
serve --socket ../disk.sock --tls-psk ../psk/keys.psk
grep -q "at nbds+unix:///?socket=$WORK/disk.sock (TLS required, pre-shared keys" serve.out ||
  fail "the serving line for PSK: $OUT"
PSK="nbds+unix:///?socket=$WORK/disk.sock&tls-psk-file=$WORK/psk/keys.psk"
got="$(timeout 60 /usr/bin/python3 rw.py read "$PSK" alice)" || fail "python3-nbd read over TLS-PSK failed"
[ "$want" = "$got" ] || fail "read back over TLS-PSK: sha256 $got, wrote $want"
QPSK=(--object "tls-creds-psk,id=tls0,dir=$WORK/psk,username=alice,endpoint=client")
timeout 60 qemu-io "${QPSK[@]}" --image-opts "driver=nbd,path=$WORK/disk.sock,tls-creds=tls0" \
  -c 'read -P 0x5a 32M 2M' >qemu.out 2>&1 || { cat qemu.out >&2; fail "qemu-io over TLS-PSK failed"; }
grep -q "Pattern verification failed" qemu.out && fail "qemu-io over TLS-PSK read another pattern"
refused /usr/bin/python3 rw.py read "${PSK/psk\/keys/wrong-psk/keys}" alice ||
  fail "a client with the wrong PSK was served"
grep -q "handshake" refused.out || fail "the wrong PSK failed otherwise: $(cat refused.out)"
refused nbdinfo --size "nbd+unix:///?socket=$WORK/disk.sock" || fail "a plain client was served with PSK"
grep -q 'TLS handshake' server.log || fail "the refused handshakes are not in the log"
# strata backup reads a live snapshot's export through the TLS server too.
"$STRATA" snapshot --control disk.ctl s1 >/dev/null || fail "live snapshot failed"
refused "$STRATA" backup --to s1 disk.strata plain.raw || fail "backup without TLS was served"
"$STRATA" backup --to s1 --tls-psk psk/keys.psk --tls-username alice disk.strata backup.raw \
  >backup.out 2>&1 || { cat backup.out >&2; fail "backup over TLS-PSK failed"; }
got="$(dd if=backup.raw bs=1M skip=1 count=4 status=none | sha256sum | cut -d' ' -f1)"
[ "$want" = "$got" ] || fail "backup over TLS: sha256 $got, wrote $want"
stop

# --- --tls=on: TLS offered, plain clients served too -------------------------------------------
serve --listen 127.0.0.1:0 --tls-certs ../pki --tls=on
timeout 30 nbdinfo --size "nbd://127.0.0.1:$PORT/" >/dev/null || fail "--tls=on refused a plain client"
timeout 30 nbdinfo --size "nbds://127.0.0.1:$PORT/?tls-certificates=$WORK/client" >/dev/null ||
  fail "--tls=on refused a TLS client"
stop

# --- --tls-verify-peer: the client's certificate must be signed by the CA ----------------------
serve --listen 127.0.0.1:0 --tls-certs ../pki --tls-verify-peer
refused nbdinfo --size "nbds://127.0.0.1:$PORT/?tls-certificates=$WORK/client" ||
  fail "--tls-verify-peer served a client without a certificate"
grep -qi "certificate" server.log || fail "no certificate refusal in the server log"
got="$(timeout 60 /usr/bin/python3 rw.py read "nbds://127.0.0.1:$PORT/?tls-certificates=$WORK/client-cert")" ||
  fail "--tls-verify-peer refused a client certificate the CA signed"
[ "$want" = "$got" ] || fail "read back with a client certificate: sha256 $got, wrote $want"
stop

# --- --run: $tls and an nbds URI ---------------------------------------------------------------
out="$(cd elsewhere && timeout 30 "$STRATA" serve --socket ../run.sock --tls-psk ../psk/keys.psk \
         --run 'echo "$tls $uri"' ../disk.strata 2>>../server.log)" || fail "--run with TLS failed"
[ "$out" = "require nbds+unix:///?socket=$WORK/run.sock" ] || fail "--run saw \$tls \$uri = '$out'"

# --- credentials that cannot be loaded: the error names the file ------------------------------
if (cd elsewhere && timeout 20 "$STRATA" serve --foreground --tls-certs ../client ../disk.strata) \
     >/dev/null 2>serve.err; then
  fail "serve started without a server certificate"
fi
grep -q "client/server-cert.pem" serve.err || fail "the error does not name the file: $(cat serve.err)"
log "PASS"
