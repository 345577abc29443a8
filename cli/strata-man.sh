#!/usr/bin/env bash
# Builds strata.1 from cli/strata.1.in and the binary's own help: the line "@COMMANDS@" becomes
# one subsection per command `strata --help` lists, made of that command's `strata CMD --help`,
# and "@VERSION@" the version `strata --version` prints. The prose around them is hand-written;
# the commands and options cannot go stale, since they are the texts users see. bash and awk
# only: nothing to install (help2man would document the top-level --help alone).
# Usage: strata-man.sh STRATA_BINARY TEMPLATE OUTPUT
set -euo pipefail
strata=$1 template=$2 output=$3
version=$("$strata" --version | awk '{print $2}')
commands=$("$strata" --help | sed -n 's/^  \([a-z][a-z-]*\) .*/\1/p' | awk '!seen[$0]++')

# One command's help text as troff: the usage lines unfilled, prose filled, and each option
# line "  [-X, ]--NAME[ ARG|=ARG]  description" (as cli/strata.bash reads them) a tagged
# paragraph whose continuation lines join its description.
command_section() {
  echo ".SS $1"
  "$strata" "$1" --help | awk '
    function esc(s) { gsub(/\\/, "\\e", s); gsub(/-/, "\\-", s); sub(/^[.'"'"']/, "\\\\\\&&", s); return s }
    /^usage: / { print ".PP\n.nf"; print esc(substr($0, 8)); usage = 1; next }
    usage && /^       strata / { sub(/^ +/, ""); print esc($0); next }
    usage { print ".fi"; usage = 0 }
    /^$/ { print ".PP"; next }
    match($0, /^ +(-[A-Za-z], )?--[a-z][a-z-]*([ =][^ ]+)?/) {
      term = substr($0, 1, RLENGTH); text = substr($0, RLENGTH + 1)
      sub(/^ +/, "", term); sub(/^ +/, "", text)
      # Options bold, their values italic: "\fB\-s\fR, \fB\-\-size\fR \fISIZE\fR".
      n = split(term, parts, / /); line = ""
      for (i = 1; i <= n; i++) {
        p = parts[i]; sep = (i < n ? " " : "")
        if (p ~ /^-/) {
          v = ""; if ((eq = index(p, "=")) > 0) { v = substr(p, eq + 1); p = substr(p, 1, eq - 1) }
          comma = sub(/,$/, "", p)
          line = line "\\fB" esc(p) "\\fR" (comma ? "," : "") (v != "" ? "=\\fI" esc(v) "\\fR" : "") sep
        } else {
          line = line "\\fI" esc(p) "\\fR" sep
        }
      }
      print ".TP\n" line; if (text != "") print esc(text); next
    }
    { sub(/^ +/, ""); print esc($0) }
    END { if (usage) print ".fi" }'
}

{
  while IFS= read -r line; do
    case $line in
      @COMMANDS@) for c in $commands; do command_section "$c"; done ;;
      *) echo "${line//@VERSION@/$version}" ;;
    esac
  done <"$template"
} >"$output.tmp"
mv "$output.tmp" "$output"
