#!/usr/bin/env bash
# Sets up everything and runs strata's main job on a demo disk it creates itself:
# a 1 GiB raw base with some content, one snapshot, and an active layer on top; shows the
# chain (info, map, check), then serves it over NBD on a unix socket until Ctrl-C.
# Usage: scripts/demo.sh [DEMO_DIR]            (default: ./demo in the checkout)
#        STRATA_DEMO_RUN='CMD' scripts/demo.sh  serves, runs CMD with $uri set, then stops
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
demo=${1:-$top/demo}
"$top/scripts/install-deps.sh"
"$top/scripts/build.sh" "$top/build"
strata=$top/build/cli/strata
mkdir -p "$demo"
if [ ! -e "$demo/disk.strata" ]; then
  echo "=== creating the demo disk in $demo"
  # A raw base image: 1 GiB, sparse, with a recognizable first MiB.
  truncate -s 1G "$demo/base.raw"
  (yes "strata demo base image" || true) | head -c 1048576 | dd of="$demo/base.raw" conv=notrunc status=none
  "$strata" create -b base.raw -F raw "$demo/disk.strata" >/dev/null
  "$strata" snapshot "$demo/disk.strata" fresh-install
fi
echo "=== strata info"
"$strata" info "$demo/disk.strata"
echo "=== strata map"
"$strata" map "$demo/disk.strata"
echo "=== strata check"
"$strata" check "$demo/disk.strata"
echo "=== strata serve (Ctrl-C stops it)"
if [ -n "${STRATA_DEMO_RUN:-}" ]; then
  exec "$strata" serve --run "$STRATA_DEMO_RUN" "$demo/disk.strata"
fi
exec "$strata" serve --foreground "$demo/disk.strata"
