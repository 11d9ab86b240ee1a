#!/usr/bin/env bash
# Waits until every throw-away test cluster (started by the Rust test support under the temp
# folder) has stopped: their supervisors stop the control plane when the test binary exits and
# remove their folder last. Fails if one is still running after 90 s.
set -u
root=${TMPDIR:-/tmp}
deadline=$((SECONDS + 90))
while compgen -G "$root/tator-testbed-*/pid" >/dev/null; do
  if ((SECONDS > deadline)); then
    echo "test clusters still running:" >&2
    for f in "$root"/tator-testbed-*/pid; do echo "  $(dirname "$f") pid $(cat "$f")" >&2; done
    exit 1
  fi
  sleep 0.5
done
