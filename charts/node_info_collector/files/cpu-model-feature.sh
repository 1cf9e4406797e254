#!/bin/sh
# Publish this node's CPU identity as an NFD feature file.
#
# NFD's cpu source labels instruction sets (cpu-cpuid.AVX512F, ...) but not the CPU model name,
# socket or core counts. This script reads /proc/cpuinfo (the host's CPUs are visible from any
# container) and writes name=value lines into NFD's features.d directory; nfd-worker turns each line
# into a label feature.node.kubernetes.io/<name>=<value>:
#   local-cpu.vendor   Intel | AMD | the raw vendor id
#   local-cpu.model    model name made label-safe, e.g. Intel-R-Xeon-R-Platinum-8480
#   local-cpu.family   CPU family number
#   local-cpu.sockets  physical packages
#   local-cpu.cores    physical cores (hyper-threads not counted)
#   local-cpu.threads  logical CPUs
set -eu

cpuinfo="${CPUINFO:-/proc/cpuinfo}"
out_dir="${FEATURES_DIR:-/etc/kubernetes/node-feature-discovery/features.d}"
out_file="${out_dir}/bud-cpu-model"

# Label values allow at most 63 characters of [A-Za-z0-9._-] and must start and end alphanumeric.
sanitize() {
    printf '%s' "$1" | tr -c 'A-Za-z0-9._-' '-' | tr -s '-' \
        | sed -e 's/^[^A-Za-z0-9]*//' | cut -c1-63 | sed -e 's/[^A-Za-z0-9]*$//'
}

# First value of a /proc/cpuinfo key ("model name\t: Intel(R) ..." -> "Intel(R) ...").
field() {
    awk -F': *' -v key="$1" '$1 ~ ("^" key "[ \t]*$") { print $2; exit }' "$cpuinfo"
}

vendor_id="$(field vendor_id)"
case "$vendor_id" in
    GenuineIntel) vendor="Intel" ;;
    AuthenticAMD) vendor="AMD" ;;
    *) vendor="$vendor_id" ;;
esac
model="$(field 'model name')"
family="$(field 'cpu family')"

threads="$(grep -c '^processor' "$cpuinfo" || true)"
sockets="$(awk -F': *' '/^physical id/ { print $2 }' "$cpuinfo" | sort -u | wc -l | tr -d ' ')"
# A physical core is a distinct (package, core id) pair; SMT siblings share it.
cores="$(awk -F': *' '/^physical id/ { pkg = $2 } /^core id/ { print pkg "-" $2 }' "$cpuinfo" \
    | sort -u | wc -l | tr -d ' ')"
# Some virtual machines hide the topology; then every logical CPU counts as a core.
if [ "${cores:-0}" -eq 0 ]; then
    cores="$threads"
fi
if [ "${sockets:-0}" -eq 0 ]; then
    sockets=1
fi

mkdir -p "$out_dir"
tmp="${out_dir}/.bud-cpu-model.tmp"
{
    [ -n "$vendor" ] && echo "local-cpu.vendor=$(sanitize "$vendor")"
    [ -n "$model" ] && echo "local-cpu.model=$(sanitize "$model")"
    [ -n "$family" ] && echo "local-cpu.family=$(sanitize "$family")"
    echo "local-cpu.sockets=${sockets}"
    echo "local-cpu.cores=${cores}"
    echo "local-cpu.threads=${threads}"
} > "$tmp"
# Rename so nfd-worker never reads a half-written file (it skips dot files).
mv "$tmp" "$out_file"
echo "wrote ${out_file}:"
cat "$out_file"
