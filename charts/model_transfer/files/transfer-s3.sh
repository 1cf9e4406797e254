#!/bin/sh
# Copy model weights from S3-compatible storage into the mounted volume and report progress.
#
# Progress goes into ConfigMap $PROGRESS_CONFIGMAP (keys bytes_done, bytes_total, phase) through the
# Kubernetes API with this pod's service account, which may patch that one ConfigMap only.
# `aws s3 sync` skips files already copied, so a retried pod resumes instead of starting over.
set -eu

SA_DIR="${SA_DIR:-/var/run/secrets/kubernetes.io/serviceaccount}"
DEST_DIR="${DEST_DIR:?DEST_DIR is required}"
INTERVAL="${PROGRESS_INTERVAL_SECONDS:-10}"
SOURCE_URL="s3://${S3_BUCKET:?S3_BUCKET is required}/${S3_PREFIX:-}"

api_host="${KUBERNETES_SERVICE_HOST:-kubernetes.default.svc}"
case "$api_host" in *:*) api_host="[${api_host}]" ;; esac  # IPv6 literal
API_URL="${KUBE_API_URL:-https://${api_host}:${KUBERNETES_SERVICE_PORT:-443}}"
CM_URL="${API_URL}/api/v1/namespaces/${POD_NAMESPACE:?}/configmaps/${PROGRESS_CONFIGMAP:?}"

# report PHASE BYTES_DONE BYTES_TOTAL -- best effort: a failed update must not fail the copy.
report() {
    body=$(printf '{"data":{"phase":"%s","bytes_done":"%s","bytes_total":"%s"}}' "$1" "$2" "$3")
    curl --silent --show-error --fail --max-time 10 \
        --cacert "${SA_DIR}/ca.crt" \
        -H "Authorization: Bearer $(cat "${SA_DIR}/token")" \
        -H "Content-Type: application/merge-patch+json" \
        -X PATCH --data "$body" "$CM_URL" >/dev/null \
        || echo "warning: progress update failed" >&2
}

bytes_on_disk() {
    du -sb "$DEST_DIR" 2>/dev/null | cut -f1 || echo 0
}

set -- aws s3
if [ -n "${S3_ENDPOINT:-}" ]; then
    set -- aws --endpoint-url "$S3_ENDPOINT" s3
fi

mkdir -p "$DEST_DIR"
total="${MODEL_SIZE_BYTES:-0}"
if [ "$total" -eq 0 ]; then
    # "Total Size: N" is the last line of a summarised listing.
    total=$("$@" ls --recursive --summarize "$SOURCE_URL" | awk '/Total Size:/ { print $3 }')
    total="${total:-0}"
fi
echo "copying ${SOURCE_URL} (${total} bytes) to ${DEST_DIR}"
report Running "$(bytes_on_disk)" "$total"

"$@" sync --no-progress --only-show-errors "$SOURCE_URL" "$DEST_DIR" &
sync_pid=$!
while kill -0 "$sync_pid" 2>/dev/null; do
    done_bytes=$(bytes_on_disk)
    # Directory entries count towards du; never claim more than the total while still copying.
    if [ "$total" -gt 0 ] && [ "$done_bytes" -gt "$total" ]; then
        done_bytes="$total"
    fi
    report Running "$done_bytes" "$total"
    sleep "$INTERVAL"
done

if wait "$sync_pid"; then
    if [ "$total" -eq 0 ]; then
        total=$(bytes_on_disk)
    fi
    report Succeeded "$total" "$total"
    echo "done"
else
    status=$?
    report Failed "$(bytes_on_disk)" "$total"
    echo "copy failed with status ${status}" >&2
    exit "$status"
fi
