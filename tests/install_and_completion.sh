#!/usr/bin/env bash
# strata as its users install it: `cmake --install` into a DESTDIR puts bin/strata, the man page,
# the bash completion and the docs where GNUInstallDirs says; the installed binary runs; the man
# page renders without warnings and documents every command and option the binary has; the
# completion, sourced as bash-completion does, offers commands, options, their values, layer
# files, control sockets and snapshot names, and only options the commands accept.
# Usage: install_and_completion.sh BUILD_DIR [CMAKE]
set -euo pipefail
source "$(dirname "$0")/lib/interop_lib.sh"
[ "$SERVER_KIND" = strata ] || skip "strata's own installation: nothing to compare with $SERVER_KIND"
BUILD=$1 CMAKE=${2:-cmake}
need groff
interop_init "$BUILD/cli/strata"

# --- cmake --install ---------------------------------------------------------------------------
DEST=$WORK/dest PREFIX=$DEST/usr/local
DESTDIR=$DEST "$CMAKE" --install "$BUILD" --prefix /usr/local >"$WORK/install.log" \
  || fail "cmake --install: $(tail -3 "$WORK/install.log")"
for f in bin/strata share/man/man1/strata.1 share/bash-completion/completions/strata \
         share/doc/strata/README.md share/doc/strata/FORMAT.md share/doc/strata/PROTOCOL.md \
         share/strata/bench/run.sh share/strata/bench/lib.sh share/strata/bench/cases.sh \
         share/strata/bench/report.py share/strata/bench/util.py; do
  [ -f "$PREFIX/$f" ] || fail "not installed: $f"
done
[ -x "$PREFIX/bin/strata" ] || fail "bin/strata is not executable"
[ -x "$PREFIX/share/strata/bench/run.sh" ] || fail "share/strata/bench/run.sh is not executable"
extra=$(cd "$PREFIX" && find . -type f | grep -Ev '^\./(bin/strata|share/(man/man1/strata\.1|bash-completion/completions/strata|doc/strata/[A-Z]+\.md|strata/bench/(run\.sh|lib\.sh|cases\.sh|util\.py|report\.py)))$' || true)
[ -z "$extra" ] || fail "installed beyond strata's files: $extra"
export PATH="$PREFIX/bin:$PATH"
strata --version | grep -q '^strata [0-9]' || fail "installed strata --version: $(strata --version)"
# The installed `strata bench` finds its scripts under share/strata/bench/.
strata bench --cases nosuch >"$WORK/bench.out" 2>&1 && fail "strata bench --cases nosuch succeeded"
grep -q "unknown case 'nosuch'" "$WORK/bench.out" || fail "installed strata bench: $(head -3 "$WORK/bench.out")"

# --- the man page --------------------------------------------------------------------------------
MAN=$PREFIX/share/man/man1/strata.1
groff -man -Tutf8 -ww -z "$MAN" 2>"$WORK/groff.err" || fail "groff: $(cat "$WORK/groff.err")"
[ ! -s "$WORK/groff.err" ] || fail "groff warns: $(head -5 "$WORK/groff.err")"
if command -v man >/dev/null; then
  MANWIDTH=80 man --warnings -l "$MAN" >"$WORK/man.txt" 2>"$WORK/man.err" || fail "man -l failed"
  [ ! -s "$WORK/man.err" ] || fail "man --warnings: $(head -5 "$WORK/man.err")"
else
  groff -man -Tutf8 -rLL=80n "$MAN" 2>/dev/null | sed 's/.\x08//g' >"$WORK/man.txt"
fi
commands=$(strata --help | sed -n 's/^  \([a-z][a-z-]*\) .*/\1/p' | sort -u)
[ "$(wc -l <<<"$commands")" -ge 13 ] || fail "strata --help lists only: $commands"
for c in $commands; do
  grep -q "^   $c\$" "$WORK/man.txt" || fail "the man page has no section for '$c'"
done
for section in NAME SYNOPSIS DESCRIPTION COMMANDS 'EXIT STATUS' FILES ENVIRONMENT EXAMPLES 'SEE ALSO'; do
  grep -q "^$section\$" "$WORK/man.txt" || fail "the man page has no $section"
done

# --- bash completion ---------------------------------------------------------------------------
mkdir "$WORK/files" && cd "$WORK/files"
touch a.strata b.raw x.ctl notes.txt
strata create --size 1M d.strata >/dev/null && strata snapshot d.strata s1 >/dev/null
# The completions of a command line whose last word is being completed, one per line, sorted.
complete_line() {
  timeout 10 bash -c 'source "$1"; shift
    COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
    _strata; printf "%s\n" "${COMPREPLY[@]}" | sort' \
    _ "$PREFIX/share/bash-completion/completions/strata" "$@"
}
# expect WORDS... -- WANT...: every WANT among the completions of WORDS.
expect() {
  local words=() got
  while [ "$1" != -- ]; do words+=("$1"); shift; done; shift
  got=$(complete_line "${words[@]}")
  for want in "$@"; do
    grep -qx -- "$want" <<<"$got" || fail "'${words[*]}<TAB>' offers $(tr '\n' ' ' <<<"$got"), not $want"
  done
}
expect strata sn -- snapshot
expect strata create --s -- --size --sub-block-size
expect strata info "" -- a.strata b.raw d.strata
expect strata serve --control "" -- x.ctl
expect strata create -F "" -- raw strata
expect strata info --output = "" -- human json
expect strata delete-snapshot d.strata "" -- s1
[ "$(complete_line strata serve --control "")" = x.ctl ] || fail "--control offers more than *.ctl"
[ -z "$(complete_line strata info "" | grep -x notes.txt)" ] || fail "a LAYER offers notes.txt"

# Every option the completion offers (read from `strata CMD --help`) is one CMD accepts, and one
# the man page documents.
for c in $commands; do
  for option in $(complete_line strata "$c" --); do
    err=$(strata "$c" "$option=x" --help 2>&1 >/dev/null || true)
    ! grep -q "unknown option" <<<"$err" || fail "completion offers '$c $option', which $c refuses"
    grep -qe "${option}" "$WORK/man.txt" || fail "the man page does not mention $c's $option"
  done
done
log "PASS"
