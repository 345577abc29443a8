# Host side of the TCG guest tests, sourced by tests/guest_kernel_nbd.sh and
# tests/guest_qemu_disk.sh (see /work/shared/GUEST-NOTES.md): finds Debian's cloud kernel,
# builds the initramfs, boots one bounded guest and reads its nonce result line.
# The sourcing script sets `me` and defines nothing of these names.
export PATH="/usr/bin:/usr/sbin:/bin:/sbin:$PATH"
guest_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

skip() { echo "$me: SKIP: $*" >&2; exit 77; }
fail() { echo "$me: FAIL: $*" >&2; exit 1; }

# Skips unless every tool named is installed.
guest_need_tools() {  # TOOL...
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null 2>&1 || skip "$t not installed (scripts/install-deps.sh --with-guest)"
  done
}

# Sets kernel and kver to the newest linux-image-cloud-amd64, and work to a fresh scratch
# directory that the EXIT trap removes (with STRATA_TEST_KEEP set, it stays). A script with
# its own cleanup calls guest_cleanup from it.
guest_setup() {
  kernel="$(ls /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -V | tail -1 || true)"
  [ -n "$kernel" ] || skip "no /boot/vmlinuz-*-cloud-amd64 (linux-image-cloud-amd64)"
  kver="${kernel#/boot/vmlinuz-}"
  work="$(mktemp -d /tmp/strata-guest-XXXXXX)"
  qemu_pid=""
  nonce="$(od -An -N8 -tx8 /dev/urandom | tr -d ' \n')"
  trap 'rc=$?; guest_cleanup; exit $rc' EXIT
}
guest_cleanup() {
  guest_kill
  [ -n "${STRATA_TEST_KEEP:-}" ] || rm -rf "$work"
}
guest_kill() {  # only the qemu this script started, by its PID
  if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
    kill -KILL "$qemu_pid" 2>/dev/null || true
    wait "$qemu_pid" 2>/dev/null || true
  fi
  qemu_pid=""
}

# Starts a guest in the background, its console in $work/console-NAME.raw: bounded by
# `timeout SECONDS`, stdin from /dev/null, no network, no reboot. Sets qemu_pid and console.
guest_start() {  # NAME SECONDS INITRAMFS [QEMU OPTIONS...]
  local name="$1" seconds="$2" initrd="$3"
  shift 3
  console="$work/console-$name"
  timeout "$seconds" qemu-system-x86_64 -accel tcg -smp 2 -m 1024 -nic none -nographic -no-reboot \
    -kernel "$kernel" -initrd "$initrd" \
    -append "rdinit=/init console=ttyS0 quiet panic=-1" "$@" \
    </dev/null >"$console.raw" 2>&1 &
  qemu_pid=$!
}

# The console so far without its CR line ends.
guest_console() { tr -d '\r' <"$console.raw"; }
show_console() { echo "--- guest console (last 60 lines) ---" >&2; guest_console | tail -60 >&2; }

# Waits for the guest started last, then fails on a timeout, a kernel panic or oops, or a
# result line other than PASS; prints the guest's step lines. SECONDS is its bound, for the
# message.
guest_wait() {  # SECONDS
  local rc=0 line
  wait "$qemu_pid" || rc=$?
  qemu_pid=""
  guest_console >"$console.log"
  [ "$rc" -ne 124 ] || { show_console; fail "guest did not finish within $1 s"; }
  if grep -Eq "Kernel panic|Oops:|BUG: |general protection fault|Call Trace:" "$console.log"; then
    show_console; fail "kernel panic/oops/BUG in the guest"
  fi
  line="$(grep -a "^STRATA-GUEST-RESULT $nonce " "$console.log" | tail -1 || true)"
  [ -n "$line" ] || { show_console; fail "no result line with our nonce (qemu exit $rc)"; }
  case "$line" in
    "STRATA-GUEST-RESULT $nonce PASS"*) grep -a "^guest: " "$console.log" >&2 || true ;;
    *) show_console; fail "guest reported: ${line#STRATA-GUEST-RESULT $nonce }" ;;
  esac
}
