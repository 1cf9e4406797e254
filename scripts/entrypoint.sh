#!/bin/sh
# The image's one entrypoint: every BudCluster process starts through it (compose.yaml, charts/budcluster).
#
#   web                 gunicorn on $PORT (9082), $WEB_CONCURRENCY workers (2), $WEB_TIMEOUT s per request (30)
#   worker [ARGS...]    Celery worker, $WORKER_CONCURRENCY processes (4); ARGS go to `celery worker`
#                       (e.g. -Q polls -n polls@%h for the poll checks' own pool)
#   beat                Celery beat (the schedule lives in the database: django-celery-beat)
#   migrate             manage.py migrate --noinput (run before web and workers of a new version start)
#   manage ARGS...      any management command: manage generate_keys, manage ensure_admin, manage check --deploy
#   anything else       run as given (a shell for debugging)
#
# LOG_LEVEL (INFO) applies to all; LOG_FORMAT=json makes every line a JSON object (core/logformat.py): gunicorn's
# lines through its JSON logger class, Celery's without the start-up banner.
set -eu

cmd="${1:-web}"
[ "$#" -gt 0 ] && shift

level="${LOG_LEVEL:-INFO}"
json=""
case "${LOG_FORMAT:-plain}" in json | JSON) json=1 ;; esac

# The one writable place (a read-only root filesystem mounts a volume here): temporary files of Terraform,
# Ansible and gunicorn's worker heartbeats go below it.
if [ -n "${BUDCLUSTER_VAR_DIR:-}" ]; then
    mkdir -p "$BUDCLUSTER_VAR_DIR/tmp"
fi

case "$cmd" in
web)
    if [ -n "$json" ]; then
        set -- --logger-class core.logformat.GunicornLogger "$@"
    fi
    exec gunicorn budcluster_site.wsgi \
        --bind "0.0.0.0:${PORT:-9082}" \
        --workers "${WEB_CONCURRENCY:-2}" \
        --timeout "${WEB_TIMEOUT:-30}" \
        --graceful-timeout "${WEB_TIMEOUT:-30}" \
        --log-level "$(echo "$level" | tr '[:upper:]' '[:lower:]')" \
        --access-logfile - \
        "$@"
    ;;
worker)
    # ARGS after the defaults: a -c or -l given there wins.
    set -- worker -l "$level" -c "${WORKER_CONCURRENCY:-4}" "$@"
    if [ -n "$json" ]; then
        set -- --quiet "$@"
    fi
    exec celery -A budcluster_site "$@"
    ;;
beat)
    # --pidfile= : no pid file (the root filesystem may be read-only; the chart runs exactly one beat).
    exec celery -A budcluster_site beat -l "$level" --pidfile= "$@"
    ;;
migrate)
    exec python manage.py migrate --noinput "$@"
    ;;
manage)
    exec python manage.py "$@"
    ;;
*)
    exec "$cmd" "$@"
    ;;
esac
