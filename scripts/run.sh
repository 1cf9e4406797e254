#!/usr/bin/env bash
# Start web, a Celery worker, beat and the local devcluster (gpu-mixed, registered as cluster "devcluster");
# Ctrl-C (or any of them exiting) stops all of them. DEVCLUSTER=0 skips the devcluster.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
PORT="${PORT:-9082}"
HOST="${HOST:-127.0.0.1}"
DEVCLUSTER="${DEVCLUSTER:-1}"
# Everything the processes started here write (var/: the SQLite database with tokens and sessions, the
# devcluster's kubeconfig, Terraform state, broker messages) is readable by this user only.
umask 077
mkdir -p -m 700 var

# The devcluster listens on loopback; the kubeconfig guard refuses loopback servers unless this is on. It is
# set for the processes started here only (keep it off in production).
if [ "$DEVCLUSTER" = "1" ]; then
  export BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS="${BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS:-1}"
fi
RUN_VAR_DIR="${BUDCLUSTER_VAR_DIR:-var}"
mkdir -p -m 700 "$RUN_VAR_DIR"

# Local provisioning (a test aid, never in production): PROVISIONING_MODULE_OVERRIDE=terraform/testing/local-cluster
# make run. The devcluster then also serves a spare virtual cluster, "provisioned", whose API server, CA and token
# attach_devcluster writes to PROVISIONING_MODULE_VARIABLES_FILE (0600): the module hands that cluster back as the
# one it "created". Terraform installs the module's null provider from a local mirror of the pinned wheel (no
# registry access) unless TERRAFORM_CLI_CONFIG_FILE says otherwise.
PROVISION_TARGET=""
if [ -n "${PROVISIONING_MODULE_OVERRIDE:-}" ]; then
  if [ -z "${TERRAFORM_CLI_CONFIG_FILE:-}" ]; then
    TERRAFORM_CLI_CONFIG_FILE="$($PY -m provisioning.toolchain mirror "$RUN_VAR_DIR/terraform-toolchain")" || exit 1
    export TERRAFORM_CLI_CONFIG_FILE
  fi
  if [ "$DEVCLUSTER" = "1" ] && [ -z "${PROVISIONING_MODULE_VARIABLES_FILE:-}" ]; then
    PROVISION_TARGET=provisioned
    export PROVISIONING_MODULE_VARIABLES_FILE="$(cd "$RUN_VAR_DIR" && pwd)/provisioning-module-variables.json"
    rm -f "$PROVISIONING_MODULE_VARIABLES_FILE"  # written again once this start's devcluster is up
  fi
fi
# Commands typed in another terminal (manage.py check_clusters, demo, benchmark, provision) read these from
# var/make-run.env (budcluster_site/settings.py), so they judge clusters and provision as the service does.
# Rewritten at every start: a start without the devcluster (or the override) forgets those settings.
$PY -m budcluster_site.env write "$RUN_VAR_DIR/make-run.env" BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS \
  PROVISIONING_MODULE_OVERRIDE PROVISIONING_MODULE_VARIABLES_FILE TERRAFORM_CLI_CONFIG_FILE || exit 1

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo; echo "stopping..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  wait 2>/dev/null
  echo "stopped"
}
trap cleanup INT TERM EXIT

port_free() { "$PY" -c "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1])))" "$1" 2>/dev/null; }

DC_KUBECONFIG=var/devcluster.yaml
if [ "$DEVCLUSTER" = "1" ]; then
  DC_PORT="${DEVCLUSTER_PORT:-6443}"
  if [ -z "${DEVCLUSTER_PORT:-}" ] && ! port_free "$DC_PORT"; then
    echo "port $DC_PORT is busy; the devcluster takes a free port (set DEVCLUSTER_PORT to choose one)"
    DC_PORT=0
  fi
  rm -f "$DC_KUBECONFIG"
  DC_WAIT="$DC_KUBECONFIG"
  DC_NAMES="default"
  if [ -n "$PROVISION_TARGET" ]; then
    DC_NAMES="default,$PROVISION_TARGET"
    DC_WAIT="var/devcluster.d/$PROVISION_TARGET.yaml"  # written after $DC_KUBECONFIG
    rm -f "$DC_WAIT"
  fi
  # var/devcluster-state keeps its CA, tokens and objects across restarts (rm -rf it for a fresh devcluster,
  # e.g. after changing DEVCLUSTER_NODES: a restored cluster keeps the nodes it had).
  $PY -m devcluster serve --port "$DC_PORT" --nodes "${DEVCLUSTER_NODES:-gpu-mixed}" --kubeconfig "$DC_KUBECONFIG" \
    --names "$DC_NAMES" --state-dir var/devcluster-state --log-level WARNING &
  pids+=($!)
fi

.venv/bin/gunicorn budcluster_site.wsgi --bind "$HOST:$PORT" --workers "${WEB_CONCURRENCY:-2}" \
  --access-logfile - --log-level "${LOG_LEVEL:-info}" &
pids+=($!)
# Two workers: run steps and beat tasks on the default queue; the checks of waiting steps on their own queue
# (WORKFLOW_POLL_QUEUE), so a cluster that stops answering holds poll workers only, never the main pool.
$PY -m celery -A budcluster_site worker -l "${LOG_LEVEL:-INFO}" -c "${WORKER_CONCURRENCY:-2}" -Q celery -n "main@%h" &
pids+=($!)
$PY -m celery -A budcluster_site worker -l "${LOG_LEVEL:-INFO}" -c "${POLL_WORKER_CONCURRENCY:-4}" \
  -Q "${WORKFLOW_POLL_QUEUE:-polls}" -n "polls@%h" &
pids+=($!)
$PY -m celery -A budcluster_site beat -l "${LOG_LEVEL:-INFO}" --pidfile= &
pids+=($!)

for _ in $(seq 1 60); do
  curl -fsS "http://$HOST:$PORT/health" >/dev/null 2>&1 && break
  sleep 0.5
done

DC_MSG="    Devcluster not started (DEVCLUSTER=0)"
if [ "$DEVCLUSTER" = "1" ]; then
  for _ in $(seq 1 60); do [ -s "$DC_WAIT" ] && break; sleep 0.5; done
  if [ -s "$DC_WAIT" ]; then
    $PY manage.py attach_devcluster "$DC_KUBECONFIG" --name devcluster ${PROVISION_TARGET:+--provisioning-target "$PROVISION_TARGET"}
    DC_MSG="    Devcluster $(grep -m1 'server:' "$DC_KUBECONFIG" | awk '{print $2}')  (kubeconfig $DC_KUBECONFIG; cluster \"devcluster\")
    Demo       .venv/bin/python manage.py demo   (plan, deploy, health, delete through the API)"
    if [ -n "$PROVISION_TARGET" ]; then
      DC_MSG="$DC_MSG
    Provision  module $PROVISIONING_MODULE_OVERRIDE \"creates\" virtual cluster $PROVISION_TARGET (README \"The newcomer's path\")"
    fi
  else
    DC_MSG="    Devcluster did not write $DC_KUBECONFIG (see its log above)"
  fi
fi

cat <<MSG

  BudCluster is up.
    API docs   http://$HOST:$PORT/docs   (OpenAPI schema: /schema, ReDoc: /redoc)
    Admin      http://$HOST:$PORT/admin/
    Health     http://$HOST:$PORT/health  /health/db  /health/broker
$DC_MSG
  Press Ctrl-C to stop everything.

MSG
wait -n
