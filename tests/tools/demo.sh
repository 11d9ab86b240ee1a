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

say "Installing the TatorDeployment CRD"
kubectl apply --server-side --force-conflicts -f "$root/crds/"
kubectl wait --for condition=Established crd/tatordeployments.tator.io --timeout=30s

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
if ! kubectl wait --for=condition=Ready tatordeployment/tator --timeout=120s; then
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
