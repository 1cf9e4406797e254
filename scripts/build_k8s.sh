#!/usr/bin/env bash
# Build the real Kubernetes control plane the test bed runs (`make k8s`), once, into a cache outside the
# repository, keyed by the pinned versions and the build module's checksums:
#
#   $BUDCLUSTER_K8S_CACHE/k8s-<kubernetes>-etcd-<etcd>-kwok-<kwok>-<sum>/bin/
#       kube-apiserver kube-controller-manager kube-scheduler etcd kwok
#   .../stages/   KWOK's published stage configurations (nodes, pods, volumes)
#
# kube-apiserver, kube-controller-manager, kube-scheduler and etcd come from the build module in
# devcluster/real/build (go.mod pins k8s.io/kubernetes and go.etcd.io/etcd/server/v3 and carries the
# staging `replace` lines); KWOK is built from its own module with `go install` at a pinned version.
# A finished build writes a stamp file; later calls print the directory and return at once.
# Prints the bin directory as the last line of its output.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=devcluster/real/build
KWOK_VERSION=$(sed -n 's/^kwok_version=//p' "$BUILD_DIR/versions")
K8S_VERSION=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$BUILD_DIR/go.mod")
ETCD_VERSION=$(awk '$1 == "go.etcd.io/etcd/server/v3" {print $2; exit}' "$BUILD_DIR/go.mod")
[ -n "$K8S_VERSION" ] && [ -n "$ETCD_VERSION" ] && [ -n "$KWOK_VERSION" ] || {
  echo "build_k8s: cannot read the pinned versions from $BUILD_DIR" >&2; exit 1; }
SUM=$(cat "$BUILD_DIR/go.mod" "$BUILD_DIR/go.sum" "$BUILD_DIR/versions" | sha256sum | cut -c1-12)
CACHE=${BUDCLUSTER_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/budcluster}
OUT="$CACHE/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION-$SUM"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler etcd kwok)

if [ -f "$OUT/.complete" ]; then
  echo "$OUT/bin"
  exit 0
fi

command -v go >/dev/null || { echo "build_k8s: Go is not installed (Go >= 1.26 is needed)" >&2; exit 1; }
echo "build_k8s: building Kubernetes $K8S_VERSION, etcd $ETCD_VERSION and KWOK $KWOK_VERSION into $OUT" >&2
echo "build_k8s: $(go version) (a cold build takes a while; later runs reuse the cache)" >&2
start=$(date +%s)
rm -rf "$OUT.tmp"
mkdir -p "$OUT.tmp/bin"
# -trimpath: reproducible paths; -p: one package per core keeps the link steps inside the machine's memory.
(cd "$BUILD_DIR" && go build -trimpath -ldflags=-s -o "$OUT.tmp/bin/" tool)
# etcd's server module builds a binary named after its directory ("server").
mv "$OUT.tmp/bin/server" "$OUT.tmp/bin/etcd"
GOBIN="$OUT.tmp/bin" GOFLAGS=-trimpath go install -ldflags=-s "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
# KWOK's own published stages (node initialise + lease heartbeat, pod ready/complete/delete, volume
# provisioning): the control plane harness hands them to kwok with --config.
STAGES="$(go env GOMODCACHE)/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage"
mkdir -p "$OUT.tmp/stages"
for f in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
         pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete \
         volume/fast/pvc-provision volume/fast/pv-bind volume/fast/pv-delete volume/fast/pvc-delete; do
  cp "$STAGES/$f.yaml" "$OUT.tmp/stages/$(basename "$f").yaml"
done
chmod -R u+w "$OUT.tmp/stages"
for b in "${BINARIES[@]}"; do
  [ -x "$OUT.tmp/bin/$b" ] || { echo "build_k8s: $b was not built" >&2; exit 1; }
done
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
echo "built in $(( $(date +%s) - start )) s: ${BINARIES[*]}" >"$OUT/.complete"
echo "build_k8s: built in $(( $(date +%s) - start )) s" >&2
echo "$OUT/bin"
