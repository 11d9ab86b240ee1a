#!/usr/bin/env bash
# `make demo`: start (or reuse) the local control plane with a process node (pods run Tator's real
# processes; see docs/testing.md), install the CRD, run the operator in the background, apply
# deploy/examples/minimal.yaml, wait for Ready and show what was created and where to log in.
# Called by the Makefile, which exports TATOR_TESTBED_BIN, CARGO_TARGET_DIR and CLUSTER_DIR.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cluster_dir=${CLUSTER_DIR:-$root/.testbed/cluster}
demo_dir=$root/.testbed/demo
operator=${CARGO_TARGET_DIR:-$root/target}/debug/tator-operator
mkdir -p "$demo_dir"

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

say "Starting the local control plane (etcd, kube-apiserver, controllers, scheduler) and a process node"
exports=$("$TATOR_TESTBED_BIN" up --process-node --dir "$cluster_dir")
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
  # A free port for /metrics: a fixed one may be taken by something else on this machine.
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  setsid "$operator" run --metrics-addr "127.0.0.1:$port" >"$demo_dir/operator.log" 2>&1 </dev/null &
  echo "metrics, health and readiness at http://127.0.0.1:$port/metrics"
  echo $! >"$demo_dir/operator.pid"
  echo "operator started (pid $!)"
fi

say "Applying deploy/examples/minimal.yaml"
kubectl apply -f "$root/deploy/examples/minimal.yaml"
# A browser on this machine reaches NGINX at the LoadBalancer address; Tator answers only the
# names it knows (ALLOWED_HOSTS), so the address becomes an alias of the installation.
lb=
for ((i = 0; i < 120; i++)); do
  lb=$(kubectl get svc tator-nginx -o jsonpath='{.status.loadBalancer.ingress[0].ip}' 2>/dev/null || true)
  [[ -n $lb ]] && break
  sleep 0.5
done
[[ -n $lb ]] && kubectl patch tatordeployment tator --type merge -p "{\"spec\":{\"aliases\":[\"$lb\"]}}"
echo "waiting for Ready: migrations, then Tator's processes (a few minutes the first time)..."
if ! wait_true tatordeployment/tator Ready 900; then
  kubectl get tator tator -o yaml
  echo "operator log:" && tail -20 "$demo_dir/operator.log"
  exit 1
fi

say "kubectl get tator -o wide"
kubectl get tator -o wide
say "The children (kubectl get all,pvc,pdb,cm -l app.kubernetes.io/instance=tator)"
kubectl get deploy,svc,pod,pvc,pdb,cm -l app.kubernetes.io/instance=tator

say "Tator is up: open http://$lb/accounts/login/ in a browser on this machine"
curl -s -o /dev/null -w "GET http://$lb/accounts/login/ -> %{http_code}\n" "http://$lb/accounts/login/" || true

say "Use the cluster from your shell (make cluster-down stops everything):"
echo "$exports"
