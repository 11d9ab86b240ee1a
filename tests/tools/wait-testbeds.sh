#!/usr/bin/env bash
# Waits until every throw-away test cluster (started by the Rust test support under the temp
# folder) has stopped: their supervisors stop the control plane when the test binary exits and
# remove their folder last. Fails if one is still running after 90 s.
set -u
root=${TMPDIR:-/tmp}
deadline=$((SECONDS + 90))
running() { # the supervisors whose pid file names a live process
  local f
  for f in "$root"/tator-testbed-*/pid; do
    [[ -f $f ]] && kill -0 "$(cat "$f")" 2>/dev/null && echo "$(dirname "$f") pid $(cat "$f")"
  done
  return 0
}
while [[ -n $(running) ]]; do
  if ((SECONDS > deadline)); then
    echo "test clusters still running:" >&2
    running | sed 's/^/  /' >&2
    exit 1
  fi
  sleep 0.5
done
# A process node's containers die with their supervisor; anything still running from Tator's
# images (their folders are in the e2e cache) leaked, and fails the run.
cache=${TATOR_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tator-operator}
leaked() {
  pgrep -af -- "$cache/e2e-|testbed container-init|/tator_online/|nodemon" | grep -v -e pgrep -e wait-testbeds || true
}
while [[ -n $(leaked) ]]; do
  if ((SECONDS > deadline)); then
    echo "process-node containers still running after their cluster stopped:" >&2
    leaked | sed 's/^/  /' >&2
    exit 1
  fi
  sleep 0.5
done
