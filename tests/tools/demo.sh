#!/usr/bin/env bash
# `make demo`: start (or reuse) the local control plane, install the CRD, run the operator in the
# background, apply deploy/examples/minimal.yaml, wait for Ready and show what was created.
# Called by the Makefile, which exports TATOR_TESTBED_BIN, CARGO_TARGET_DIR and CLUSTER_DIR.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cluster_dir=${CLUSTER_DIR:-$root/.testbed/cluster}
demo_dir=$root/.testbed/demo
operator=${CARGO_TARGET_DIR:-$root/target}/debug/tator-operator
mkdir -p "$demo_dir"

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

say "Starting the local control plane (etcd, kube-apiserver, controllers, scheduler, kwok)"
exports=$("$TATOR_TESTBED_BIN" up --dir "$cluster_dir")
eval "$exports"

# `kubectl wait --for=condition=...` fails at once while an object has no status.conditions yet;
# poll the condition instead.
wait_true() { # wait_true <resource> <condition type> <seconds>
  local i
  for ((i = 0; i < $3 * 2; i++)); do
    if [[ $(kubectl get "$1" -o jsonpath="{.status.conditions[?(@.type==\"$2\")].status}" 2>/dev/null) == True ]]; then
      echo "$1 condition $2 met"
      return 0
    fi
    sleep 0.5
  done
  return 1
}

say "Installing the TatorDeployment CRD"
kubectl apply --server-side --force-conflicts -f "$root/crds/"
wait_true crd/tatordeployments.tator.io Established 30

say "Running the operator in the background (log: $demo_dir/operator.log)"
if [[ -f $demo_dir/operator.pid ]] && kill -0 "$(cat "$demo_dir/operator.pid")" 2>/dev/null; then
  echo "operator already running (pid $(cat "$demo_dir/operator.pid"))"
else
  setsid "$operator" run --metrics-addr 127.0.0.1:8080 >"$demo_dir/operator.log" 2>&1 </dev/null &
  echo $! >"$demo_dir/operator.pid"
  echo "operator started (pid $!)"
fi

say "Applying deploy/examples/minimal.yaml"
kubectl apply -f "$root/deploy/examples/minimal.yaml"
echo "waiting for Ready (the kwok nodes run the pods without containers)..."
if ! wait_true tatordeployment/tator Ready 120; then
  kubectl get tator tator -o yaml
  echo "operator log:" && tail -20 "$demo_dir/operator.log"
  exit 1
fi

say "kubectl get tator -o wide"
kubectl get tator -o wide
say "The children (kubectl get all,pvc,pdb,cm -l app.kubernetes.io/instance=tator)"
kubectl get deploy,svc,pod,pvc,pdb,cm -l app.kubernetes.io/instance=tator

say "Use the cluster from your shell (make cluster-down stops everything):"
echo "$exports"
