#!/usr/bin/env bash
# Sums cargo's "test result:" lines from a log and prints one closing line:
#   tests: N passed, M failed, K skipped
# Exits non-zero when nothing ran (a run that tests nothing is a failure here).
set -euo pipefail
awk '
  /^test result:/ {
    for (i = 1; i <= NF; i++) {
      if ($(i) ~ /^passed;?$/) p += $(i - 1)
      if ($(i) ~ /^failed;?$/) f += $(i - 1)
      if ($(i) ~ /^ignored;?$/) s += $(i - 1)
    }
  }
  END {
    printf "tests: %d passed, %d failed, %d skipped\n", p, f, s
    if (p + f == 0) exit 1
  }
' "$1"
