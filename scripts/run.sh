#!/usr/bin/env bash
# Start web, a Celery worker and beat; Ctrl-C (or any of them exiting) stops all of them.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
PORT="${PORT:-9082}"
HOST="${HOST:-127.0.0.1}"
mkdir -p var

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo; echo "stopping..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  wait 2>/dev/null
  echo "stopped"
}
trap cleanup INT TERM EXIT

.venv/bin/gunicorn budcluster_site.wsgi --bind "$HOST:$PORT" --workers "${WEB_CONCURRENCY:-2}" \
  --access-logfile - --log-level "${LOG_LEVEL:-info}" &
pids+=($!)
$PY -m celery -A budcluster_site worker -l "${LOG_LEVEL:-INFO}" -c "${WORKER_CONCURRENCY:-2}" &
pids+=($!)
$PY -m celery -A budcluster_site beat -l "${LOG_LEVEL:-INFO}" --pidfile= &
pids+=($!)

for _ in $(seq 1 60); do
  curl -fsS "http://$HOST:$PORT/health" >/dev/null 2>&1 && break
  sleep 0.5
done
cat <<MSG

  BudCluster is up.
    API docs   http://$HOST:$PORT/docs   (OpenAPI schema: /schema, ReDoc: /redoc)
    Admin      http://$HOST:$PORT/admin/
    Health     http://$HOST:$PORT/health  /health/db  /health/broker
  Press Ctrl-C to stop web, worker and beat.

MSG
wait -n
