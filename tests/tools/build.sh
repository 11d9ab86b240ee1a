#!/usr/bin/env bash
# Builds the local test bed's binaries (kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, etcd, kwok, helm, promtool and the kstatus test helper) from Go modules pinned in
# tests/tools/*/go.mod, into a cache folder outside the clone keyed by the pinned versions.
# A second run with the same pins is a no-op.
#
# Usage: tests/tools/build.sh [--oldest] [--print-bin] [--demo]
#   --print-bin  only print the bin folder the current pins map to (builds nothing)
#   --demo       only what `make demo` needs: no helm, promtool or kstatus (used by tests only)
#   --oldest     the oldest supported Kubernetes release instead (tests/tools/kubernetes-oldest,
#                for make test-compat): its own control-plane binaries, the other tools linked
set -euo pipefail

oldest=
print_only=
demo=
for arg in "$@"; do
  case "$arg" in
    --demo) demo=1 ;;
    --oldest) oldest=1 ;;
    --print-bin) print_only=1 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root=${TATOR_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tator-operator}

pin() { # pin <tool dir> <module path>: the version that module is pinned to
  awk -v m="$2" '$1 == "require" && $2 == m { print $3 } $1 == m && NF == 2 { print $2 }' "$here/$1/go.mod" | head -n1
}
k8s_version=$(pin kubernetes k8s.io/kubernetes)
etcd_version=$(pin etcd go.etcd.io/etcd/server/v3)
kwok_version=$(pin kwok sigs.k8s.io/kwok)
helm_version=$(pin helm helm.sh/helm/v3)
key="k8s-${k8s_version}_etcd-${etcd_version}_kwok-${kwok_version}_helm-${helm_version}"
bin="$cache_root/$key/bin"
old_version=$(pin kubernetes-oldest k8s.io/kubernetes)
old_key="k8s-${old_version}_etcd-${etcd_version}_kwok-${kwok_version}_helm-${helm_version}"
old_bin="$cache_root/$old_key/bin"

if [[ -n $print_only ]]; then
  if [[ -n $oldest ]]; then echo "$old_bin"; else echo "$bin"; fi
  exit 0
fi

mkdir -p "$bin"
log() { printf '[tools] %s\n' "$*" >&2; }

build() { # build <tool dir> <output name> <package> [ldflags]
  local dir=$1 out=$2 pkg=$3 ldflags=${4:-}
  if [[ -x "$bin/$out" ]]; then
    return 0
  fi
  log "building $out from $pkg (first build takes minutes; cached afterwards in $bin)"
  local start=$SECONDS
  (cd "$here/$dir" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $ldflags" -o "$bin/$out.tmp" "$pkg")
  mv "$bin/$out.tmp" "$bin/$out"
  log "built $out in $((SECONDS - start)) s"
}

k8s_minor=$(echo "$k8s_version" | cut -d. -f2)
stamp="-X k8s.io/component-base/version.gitVersion=${k8s_version}"
stamp+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${k8s_minor}"
stamp+=" -X k8s.io/component-base/version.gitTreeState=clean"
stamp+=" -X k8s.io/client-go/pkg/version.gitVersion=${k8s_version}"
stamp+=" -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=${k8s_minor}"

build etcd etcd go.etcd.io/etcd/server/v3
build kubernetes kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler "$stamp"
build kubernetes kubectl k8s.io/kubernetes/cmd/kubectl "$stamp"
[[ -n $demo ]] || build helm helm helm.sh/helm/v3/cmd/helm "-X helm.sh/helm/v3/internal/version.version=${helm_version}"
build kwok kwok sigs.k8s.io/kwok/cmd/kwok "-X sigs.k8s.io/kwok/pkg/consts.Version=${kwok_version#v}"
build kubernetes kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager "$stamp"
build kubernetes kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$stamp"

# SeaweedFS (the S3 server of the object-storage tests) is cached under its own version, so that
# bumping it does not rebuild the control plane; the bin folder gets a link to it.
weed_version=$(pin seaweedfs github.com/seaweedfs/seaweedfs)
weed_dir="$cache_root/seaweedfs-${weed_version}"
if [[ ! -x "$weed_dir/weed" ]]; then
  mkdir -p "$weed_dir"
  log "building weed from github.com/seaweedfs/seaweedfs/weed (about 4 minutes the first time)"
  start=$SECONDS
  (cd "$here/seaweedfs" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$weed_dir/weed.tmp" github.com/seaweedfs/seaweedfs/weed)
  mv "$weed_dir/weed.tmp" "$weed_dir/weed"
  log "built weed in $((SECONDS - start)) s"
fi
ln -sfn "$weed_dir/weed" "$bin/weed"

# promtool (Prometheus' configuration checker, for the observability tests) is cached under its
# own module version, like weed; the bin folder gets a link to it.
prom_version=$(pin prometheus github.com/prometheus/prometheus)
prom_dir="$cache_root/prometheus-${prom_version}"
if [[ -z $demo && ! -x "$prom_dir/promtool" ]]; then
  mkdir -p "$prom_dir"
  log "building promtool from github.com/prometheus/prometheus/cmd/promtool (about 4 minutes the first time)"
  start=$SECONDS
  (cd "$here/prometheus" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$prom_dir/promtool.tmp" github.com/prometheus/prometheus/cmd/promtool)
  mv "$prom_dir/promtool.tmp" "$prom_dir/promtool"
  log "built promtool in $((SECONDS - start)) s"
fi
[[ -x "$prom_dir/promtool" ]] && ln -sfn "$prom_dir/promtool" "$bin/promtool"

# The kstatus helper (tests/tools/kstatus: Flux's readiness library behind a stdin/stdout CLI) is
# cached under a hash of its sources, so editing it rebuilds only it; the bin folder gets a link.
kstatus_hash=$(cat "$here/kstatus/go.mod" "$here/kstatus/go.sum" "$here/kstatus/main.go" | sha256sum | cut -c1-16)
kstatus_dir="$cache_root/kstatus-${kstatus_hash}"
if [[ -z $demo && ! -x "$kstatus_dir/kstatus" ]]; then
  mkdir -p "$kstatus_dir"
  log "building kstatus from tests/tools/kstatus (sigs.k8s.io/cli-utils)"
  start=$SECONDS
  (cd "$here/kstatus" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$kstatus_dir/kstatus.tmp" .)
  mv "$kstatus_dir/kstatus.tmp" "$kstatus_dir/kstatus"
  log "built kstatus in $((SECONDS - start)) s"
fi
[[ -x "$kstatus_dir/kstatus" ]] && ln -sfn "$kstatus_dir/kstatus" "$bin/kstatus"

# kwok refuses to start without stages: keep the ones shipped in its module beside the binaries.
stages="$cache_root/$key/kwok-stages.yaml"
if [[ ! -s "$stages" ]]; then
  kwok_dir=$(cd "$here/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
  if [[ -z "$kwok_dir" || ! -d "$kwok_dir" ]]; then
    (cd "$here/kwok" && go mod download sigs.k8s.io/kwok)
    kwok_dir=$(cd "$here/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
  fi
  : > "$stages.tmp"
  for s in node/fast node/heartbeat-with-lease pod/fast pod/chaos volume/fast; do
    for f in "$kwok_dir/kustomize/stage/$s"/*.yaml; do
      # kustomization.yaml is not a Stage; the StorageClass is created by the launcher.
      case "$(basename "$f")" in kustomization.yaml | storage-class.yaml) continue ;; esac
      { echo "---"; cat "$f"; } >> "$stages.tmp"
    done
  done
  mv "$stages.tmp" "$stages"
fi

if [[ -z $oldest ]]; then
  echo "$bin"
  exit 0
fi

# The oldest supported release: its own API server, controller-manager and scheduler; every other
# tool (etcd, kwok, kubectl, helm, weed, kstatus, promtool) and the kwok stages are shared.
new_bin=$bin
bin=$old_bin
mkdir -p "$bin"
old_minor=$(echo "$old_version" | cut -d. -f2)
old_stamp="-X k8s.io/component-base/version.gitVersion=${old_version}"
old_stamp+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${old_minor}"
old_stamp+=" -X k8s.io/component-base/version.gitTreeState=clean"
build kubernetes-oldest kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler "$old_stamp"
build kubernetes-oldest kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager "$old_stamp"
build kubernetes-oldest kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$old_stamp"
for tool in "$new_bin"/*; do
  case "$(basename "$tool")" in kube-apiserver | kube-controller-manager | kube-scheduler) continue ;; esac
  ln -sfn "$(readlink -f "$tool")" "$bin/$(basename "$tool")"
done
ln -sfn "$stages" "$cache_root/$old_key/kwok-stages.yaml"
echo "$bin"
