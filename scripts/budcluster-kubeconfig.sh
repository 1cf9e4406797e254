#!/usr/bin/env bash
# Print a kubeconfig BudCluster accepts, for a cluster whose own kubeconfig uses `exec` or `auth-provider`
# (EKS `aws eks get-token`, GKE `gke-gcloud-auth-plugin`, AKS `kubelogin`, OIDC plugins...).
#
# BudCluster refuses such kubeconfigs: they would run a command on BudCluster's server. Run this script on
# YOUR machine instead, with your kubectl and your credentials; it creates on the cluster (idempotently,
# with `kubectl apply`) a service account for BudCluster with exactly the rights of BudCluster's ClusterRole
# (playbooks/files/budcluster-clusterrole.yaml, the file the setup playbook applies), waits for the
# service account's long-lived token and prints a kubeconfig holding only that token:
#
#   scripts/budcluster-kubeconfig.sh --context my-eks > budcluster.kubeconfig
#
# Only the kubeconfig goes to stdout; progress and errors go to stderr, which never carries the token.
# Revoke: kubectl delete secret -n bud-system budcluster-token (or the ClusterRoleBinding budcluster).
# Needs bash and kubectl (>= 1.28, for `kubectl auth whoami`); no Python, jq or yq.
set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
ROLE_FILE="$SCRIPT_DIR/../playbooks/files/budcluster-clusterrole.yaml"
PROG="$(basename -- "$0")"

KUBECONFIG_PATH=""
CONTEXT=""
NAMESPACE="bud-system"
SERVICE_ACCOUNT="budcluster"
CLUSTER_ROLE="budcluster"
SERVER=""
TIMEOUT=60
REQUEST_TIMEOUT="30s"
LABELS_JSON='{"app.kubernetes.io/managed-by":"budcluster","app.kubernetes.io/part-of":"budcluster"}'

usage() {
    cat <<EOF
Usage: $PROG [options] > budcluster.kubeconfig

Create (or reuse) a BudCluster service account on the cluster of a kubeconfig context, with the rights of
BudCluster's ClusterRole, and print a kubeconfig that authenticates with that service account's token.
Meant for clusters whose kubeconfig uses exec/auth-provider plugins, which BudCluster refuses.

Options:
  --context NAME          kubeconfig context to use (default: the current context)
  --kubeconfig PATH       kubeconfig file to read (default: \$KUBECONFIG or ~/.kube/config)
  --namespace NAME        namespace of the service account (default: $NAMESPACE)
  --service-account NAME  service account to create (default: $SERVICE_ACCOUNT)
  --cluster-role NAME     name of the ClusterRole and ClusterRoleBinding (default: $CLUSTER_ROLE)
  --server URL            API server URL to write into the kubeconfig (default: the context's server),
                          e.g. when BudCluster reaches the cluster by another address than you do
  --timeout SECONDS       how long to wait for the token (default: $TIMEOUT)
  -h, --help              show this help

Revoke the printed kubeconfig with:
  kubectl delete secret -n <namespace> <service-account>-token
EOF
}

die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}

note() {
    printf '%s: %s\n' "$PROG" "$*" >&2
}

need_value() {
    [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value (see --help)"
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --context) need_value "$@"; CONTEXT="$2"; shift 2 ;;
        --context=*) CONTEXT="${1#*=}"; shift ;;
        --kubeconfig) need_value "$@"; KUBECONFIG_PATH="$2"; shift 2 ;;
        --kubeconfig=*) KUBECONFIG_PATH="${1#*=}"; shift ;;
        --namespace | -n) need_value "$@"; NAMESPACE="$2"; shift 2 ;;
        --namespace=*) NAMESPACE="${1#*=}"; shift ;;
        --service-account) need_value "$@"; SERVICE_ACCOUNT="$2"; shift 2 ;;
        --service-account=*) SERVICE_ACCOUNT="${1#*=}"; shift ;;
        --cluster-role) need_value "$@"; CLUSTER_ROLE="$2"; shift 2 ;;
        --cluster-role=*) CLUSTER_ROLE="${1#*=}"; shift ;;
        --server) need_value "$@"; SERVER="$2"; shift 2 ;;
        --server=*) SERVER="${1#*=}"; shift ;;
        --timeout) need_value "$@"; TIMEOUT="$2"; shift 2 ;;
        --timeout=*) TIMEOUT="${1#*=}"; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

# Names go into manifests and the printed YAML: hold them to what Kubernetes accepts, so nothing needs quoting.
dns_label='^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'
dns_subdomain='^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$'
[[ "$NAMESPACE" =~ $dns_label && ${#NAMESPACE} -le 63 ]] \
    || die "--namespace '$NAMESPACE' is not a valid namespace name (lowercase letters, digits, '-')"
[[ "$SERVICE_ACCOUNT" =~ $dns_subdomain && ${#SERVICE_ACCOUNT} -le 247 ]] \
    || die "--service-account '$SERVICE_ACCOUNT' is not a valid name (lowercase letters, digits, '-', '.')"
[[ "$CLUSTER_ROLE" =~ $dns_subdomain && ${#CLUSTER_ROLE} -le 253 ]] \
    || die "--cluster-role '$CLUSTER_ROLE' is not a valid name (lowercase letters, digits, '-', '.')"
[[ "$TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "--timeout must be a whole number of seconds, got '$TIMEOUT'"
if [[ -n "$SERVER" && ! "$SERVER" =~ ^https://[^[:space:]\"\\]+$ ]]; then
    die "--server must be an https:// URL (BudCluster only talks to API servers over TLS), got '$SERVER'"
fi

command -v kubectl >/dev/null 2>&1 \
    || die "kubectl not found on PATH: install it (https://kubernetes.io/docs/tasks/tools/) and retry"
[[ -r "$ROLE_FILE" ]] \
    || die "cannot read BudCluster's ClusterRole at $ROLE_FILE (run the script from a BudCluster checkout)"
if [[ -n "$KUBECONFIG_PATH" && ! -r "$KUBECONFIG_PATH" ]]; then
    die "cannot read the kubeconfig '$KUBECONFIG_PATH'"
fi

KUBECTL=(kubectl)
[[ -n "$KUBECONFIG_PATH" ]] && KUBECTL+=(--kubeconfig "$KUBECONFIG_PATH")

# --- the context and the cluster it points at ------------------------------------------------------------

if [[ -z "$CONTEXT" ]]; then
    CONTEXT="$("${KUBECTL[@]}" config current-context 2>/dev/null)" \
        || die "the kubeconfig has no current context: name one with --context (see 'kubectl config get-contexts')"
fi
contexts="$("${KUBECTL[@]}" config get-contexts -o name)" || die "cannot read the kubeconfig's contexts"
[[ -n "$contexts" ]] || die "the kubeconfig has no contexts"
grep -Fxq -- "$CONTEXT" <<<"$contexts" \
    || die "context '$CONTEXT' not found in the kubeconfig (available: $(paste -sd ' ' - <<<"$contexts"))"
KUBECTL+=(--context "$CONTEXT" --request-timeout "$REQUEST_TIMEOUT")

# --flatten inlines a certificate-authority file as certificate-authority-data (resolving relative paths the
# way kubectl does); --raw keeps the data instead of "DATA+OMITTED". Only the cluster's fields are read here,
# never the user's credentials.
cluster_field() {
    "${KUBECTL[@]}" config view --raw --minify --flatten -o "jsonpath={.clusters[0].$1}"
}
cluster_name="$(cluster_field name)" \
    || die "cannot read the cluster of context '$CONTEXT' (is a certificate-authority file missing?)"
[[ -n "$cluster_name" ]] || die "context '$CONTEXT' names no cluster"
context_server="$(cluster_field cluster.server)"
ca_data="$(cluster_field 'cluster.certificate-authority-data')"
insecure="$(cluster_field 'cluster.insecure-skip-tls-verify')"
tls_server_name="$(cluster_field 'cluster.tls-server-name')"
proxy_url="$(cluster_field 'cluster.proxy-url')"

if [[ "$insecure" == "true" ]]; then
    die "cluster '$cluster_name' sets insecure-skip-tls-verify: BudCluster refuses to send credentials to an" \
        "API server it cannot verify. Give the cluster its CA (certificate-authority-data) and retry."
fi
server="${SERVER:-$context_server}"
[[ -n "$server" ]] || die "cluster '$cluster_name' has no server address; pass --server"
[[ "$server" =~ ^https://[^[:space:]\"\\]+$ ]] \
    || die "the server of cluster '$cluster_name' is '$server', not an https:// URL; BudCluster needs https"
[[ -z "$tls_server_name" || "$tls_server_name" =~ ^[A-Za-z0-9.:-]+$ ]] \
    || die "tls-server-name of cluster '$cluster_name' is not a host name: '$tls_server_name'"
if [[ -z "$ca_data" ]]; then
    note "warning: cluster '$cluster_name' has no certificate-authority-data; the kubeconfig relies on the" \
        "system's trusted CAs to verify $server"
fi
if [[ -n "$proxy_url" ]]; then
    note "warning: cluster '$cluster_name' is reached through proxy $proxy_url, which is not copied into the" \
        "printed kubeconfig (BudCluster must reach $server by itself)"
fi

# --- the service account, its token Secret, the ClusterRole and its binding -------------------------------

apply() { # $1: what (for messages); stdin: manifests
    local what="$1" out
    if ! out="$("${KUBECTL[@]}" apply -f - 2>&1)"; then
        printf '%s\n' "$out" >&2
        die "could not create $what on the cluster of context '$CONTEXT' (kubectl's message is above)." \
            "The account you use must be allowed to create namespaces, service accounts, secrets and RBAC" \
            "objects, and must itself hold every right in BudCluster's ClusterRole (cluster-admin does)."
    fi
    note "$out"
}

labels_yaml="    app.kubernetes.io/managed-by: budcluster
    app.kubernetes.io/part-of: budcluster"

note "context '$CONTEXT', cluster '$cluster_name' at $context_server"

apply "namespace $NAMESPACE" <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: $NAMESPACE
  labels:
$labels_yaml
EOF

# The ServiceAccount before its token Secret: the token controller deletes a token Secret whose account
# does not exist.
apply "service account $NAMESPACE/$SERVICE_ACCOUNT" <<EOF
apiVersion: v1
kind: ServiceAccount
metadata:
  name: $SERVICE_ACCOUNT
  namespace: $NAMESPACE
  labels:
$labels_yaml
EOF

# A long-lived token (Kubernetes >= 1.24 creates none by itself); deleting this Secret revokes it.
apply "the token Secret $NAMESPACE/$SERVICE_ACCOUNT-token" <<EOF
apiVersion: v1
kind: Secret
type: kubernetes.io/service-account-token
metadata:
  name: $SERVICE_ACCOUNT-token
  namespace: $NAMESPACE
  labels:
$labels_yaml
  annotations:
    kubernetes.io/service-account.name: $SERVICE_ACCOUNT
EOF

# The one definition of BudCluster's rights, shared with playbooks/setup_cluster.yml: only its name and
# labels are set here (patch --local works on the file and contacts no server).
role_patch="{\"metadata\":{\"name\":\"$CLUSTER_ROLE\",\"labels\":$LABELS_JSON}}"
role_yaml="$(kubectl patch --local -f "$ROLE_FILE" --type merge -p "$role_patch" -o yaml)" \
    || die "cannot read BudCluster's ClusterRole from $ROLE_FILE"
apply "the ClusterRole $CLUSTER_ROLE" <<<"$role_yaml"

apply "the ClusterRoleBinding $CLUSTER_ROLE" <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: $CLUSTER_ROLE
  labels:
$labels_yaml
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: $CLUSTER_ROLE
subjects:
  - kind: ServiceAccount
    name: $SERVICE_ACCOUNT
    namespace: $NAMESPACE
EOF

# --- the token --------------------------------------------------------------------------------------------

# Decoded by kubectl's template (no base64 binary needed); kept in a variable, never echoed to stderr.
token_template='{{with .data}}{{with .token}}{{. | base64decode}}{{end}}{{end}}'
token=""
deadline=$((SECONDS + TIMEOUT))
while :; do
    if ! token="$("${KUBECTL[@]}" get secret "$SERVICE_ACCOUNT-token" -n "$NAMESPACE" \
        -o "go-template=$token_template" 2>/dev/null)"; then
        token=""
        "${KUBECTL[@]}" get secret "$SERVICE_ACCOUNT-token" -n "$NAMESPACE" -o name >/dev/null \
            || die "cannot read the Secret $NAMESPACE/$SERVICE_ACCOUNT-token (kubectl's message is above)"
    fi
    [[ -n "$token" ]] && break
    if ((SECONDS >= deadline)); then
        die "the token controller did not fill the Secret $NAMESPACE/$SERVICE_ACCOUNT-token within" \
            "${TIMEOUT}s. Is kube-controller-manager running with its service-account token controller" \
            "(--service-account-private-key-file)? See 'kubectl describe secret -n $NAMESPACE" \
            "$SERVICE_ACCOUNT-token'; raise --timeout if the cluster is slow."
    fi
    sleep 1
done
[[ "$token" =~ ^[A-Za-z0-9._-]+$ ]] \
    || die "the Secret $NAMESPACE/$SERVICE_ACCOUNT-token holds no service-account token (unexpected characters)"

# --- the kubeconfig ---------------------------------------------------------------------------------------

# Double-quoted YAML scalar (context and cluster names may hold ':' and '/', EKS's are ARNs).
yaml_quote() {
    local s="${1//\\/\\\\}"
    printf '"%s"' "${s//\"/\\\"}"
}

user_name="$SERVICE_ACCOUNT@$cluster_name"
context_name="budcluster@$cluster_name"
cluster_extra=""
[[ -n "$ca_data" ]] && cluster_extra+="
      certificate-authority-data: $ca_data"
[[ -n "$tls_server_name" ]] && cluster_extra+="
      tls-server-name: $tls_server_name"

kubeconfig="apiVersion: v1
kind: Config
clusters:
  - name: $(yaml_quote "$cluster_name")
    cluster:
      server: $(yaml_quote "$server")$cluster_extra
users:
  - name: $(yaml_quote "$user_name")
    user:
      token: $token
contexts:
  - name: $(yaml_quote "$context_name")
    context:
      cluster: $(yaml_quote "$cluster_name")
      user: $(yaml_quote "$user_name")
      namespace: $NAMESPACE
current-context: $(yaml_quote "$context_name")
preferences: {}"

# Check that the printed kubeconfig works before handing it over (read from stdin: the token touches no
# file and no command line). With --server the address may be one only BudCluster reaches: then warn only.
expected="system:serviceaccount:$NAMESPACE:$SERVICE_ACCOUNT"
if whoami="$(kubectl --kubeconfig /dev/stdin --request-timeout "$REQUEST_TIMEOUT" auth whoami \
    -o 'jsonpath={.status.userInfo.username}' 2>/dev/null <<<"$kubeconfig")" && [[ "$whoami" == "$expected" ]]; then
    note "the kubeconfig authenticates as $expected"
elif [[ -n "$SERVER" ]]; then
    note "warning: could not check the kubeconfig against $server from here"
else
    die "the new kubeconfig does not authenticate as $expected at $server (got '${whoami:-no answer}';" \
        "kubectl >= 1.28 is needed for 'kubectl auth whoami')"
fi

printf '%s\n' "$kubeconfig"
note "done: the kubeconfig above (stdout) has the rights of ClusterRole '$CLUSTER_ROLE'; revoke it with" \
    "'kubectl delete secret -n $NAMESPACE $SERVICE_ACCOUNT-token'"
