#!/usr/bin/env bash
# cargo audit of Cargo.lock against the RustSec advisories kept in tests/tools/advisory-db.
#
# The build machines reach package registries only, not GitHub, so cargo audit cannot fetch the
# advisory database itself. tests/tools/advisory-db holds a snapshot of it: the advisories of
# every crate in Cargo.lock that has any, plus INDEX, the names of every crate the database had
# advisories for at that commit (SNAPSHOT). A crate that enters Cargo.lock and is in INDEX but
# not in the snapshot fails the check until the snapshot is refreshed:
#
#   tests/tools/audit.sh                 check (installs cargo-audit into ~/.cache once)
#   tests/tools/audit.sh --refresh DIR   re-take the snapshot from an advisory-db checkout or
#                                        git directory (github.com/rustsec/advisory-db)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

db=tests/tools/advisory-db
version=0.22.2
cache="${CACHE_DIR:-$HOME/.cache/tator-operator}"
root="$cache/cargo-audit-$version"

lock_crates() { sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.lock | sort -u; }

if [[ ${1:-} == --refresh ]]; then
  src=${2:?usage: audit.sh --refresh ADVISORY_DB_DIR}
  if [[ -d $src/crates ]]; then
    list() { (cd "$src" && find crates -mindepth 2 -maxdepth 2 -name '*.md' | sort); }
    show() { cat "$src/$1"; }
    commit=$(git -C "$src" log -1 --format='%H %cs' 2>/dev/null || echo "unknown")
  else
    list() { git --git-dir="$src" ls-tree -r --name-only HEAD crates/ | grep '\.md$'; }
    show() { git --git-dir="$src" show "HEAD:$1"; }
    commit=$(git --git-dir="$src" log -1 --format='%H %cs')
  fi
  all=$(list)
  rm -rf "$db/crates"
  mkdir -p "$db/crates"
  cut -d/ -f2 <<<"$all" | sort -u >"$db/INDEX"
  wanted=$(comm -12 "$db/INDEX" <(lock_crates))
  for name in $wanted; do
    mkdir -p "$db/crates/$name"
    for f in $(grep "^crates/$name/" <<<"$all"); do show "$f" >"$db/$f"; done
  done
  echo "$commit" >"$db/SNAPSHOT"
  echo "advisory snapshot $commit: $(wc -l <"$db/INDEX") crates in the database, $(wc -w <<<"$wanted") of them in Cargo.lock"
  exit 0
fi

# Every crate of Cargo.lock the database knows must be in the snapshot.
missing=$(comm -12 "$db/INDEX" <(lock_crates) | while read -r name; do
  [[ -d $db/crates/$name ]] || echo "$name"
done)
if [[ -n $missing ]]; then
  echo "advisories of these crates are not in $db (refresh it: tests/tools/audit.sh --refresh DIR):" $missing >&2
  exit 1
fi

if [[ ! -x $root/bin/cargo-audit ]]; then
  echo "installing cargo-audit $version into $root"
  cargo install cargo-audit --version "$version" --locked --quiet \
    --root "$root" --target-dir "$cache/cargo-audit-target"
fi
echo "advisory snapshot: $(cat "$db/SNAPSHOT")"
# --no-fetch: use the snapshot; warnings (unmaintained, unsound, yanked) fail the check too.
"$root/bin/cargo-audit" audit --no-fetch --db "$db" --deny warnings
