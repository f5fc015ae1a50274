#!/usr/bin/env bash
# Send-throughput benchmark (BENCHMARKS.md): starts Postfix's smtp-sink on loopback, measures
# this machine's limit with smtp-source, then `herald bench send` against the same sink, and
# stops the sink. Installs the Debian package `postfix` when smtp-sink is missing (needs root).
#
# Usage: scripts/bench-send.sh [MESSAGES] [-- extra `herald bench send` arguments]
#   e.g. scripts/bench-send.sh 5000
#        scripts/bench-send.sh 5000 -- --database postgres://postgres@127.0.0.1:5432/herald_bench
# Environment: SINK (default 127.0.0.1:2525), POOL (default 16), RUNS (default 2).
set -euo pipefail

MESSAGES="${1:-5000}"
shift || true
if [[ "${1:-}" == "--" ]]; then shift; fi
SINK="${SINK:-127.0.0.1:2525}"
POOL="${POOL:-16}"
RUNS="${RUNS:-2}"
SBIN=/usr/sbin

if [[ ! -x "$SBIN/smtp-sink" || ! -x "$SBIN/smtp-source" ]]; then
    echo "smtp-sink/smtp-source not found: installing postfix" >&2
    sudo_cmd=()
    if [[ "$(id -u)" != 0 ]]; then sudo_cmd=(sudo); fi
    echo "postfix postfix/main_mailer_type select No configuration" | "${sudo_cmd[@]}" debconf-set-selections
    "${sudo_cmd[@]}" apt-get update -q
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix
fi

cd "$(dirname "$0")/.."
cargo build --release --quiet
HERALD="${CARGO_TARGET_DIR:-target}/release/herald"

echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"

# -c: count deliveries; backlog 1000. As root, smtp-sink insists on dropping privileges (-u).
sink_user=()
if [[ "$(id -u)" == 0 ]]; then sink_user=(-u nobody); fi
"$SBIN/smtp-sink" "${sink_user[@]}" -c "$SINK" 1000 >/dev/null &
SINK_PID=$!
trap 'kill "$SINK_PID" 2>/dev/null || true; wait "$SINK_PID" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    if (exec 3<>"/dev/tcp/${SINK%:*}/${SINK##*:}") 2>/dev/null; then break; fi
    sleep 0.1
done

for run in $(seq "$RUNS"); do
    echo
    echo "== run $run: smtp-source -d -s $POOL -m $MESSAGES $SINK"
    start=$(date +%s.%N)
    "$SBIN/smtp-source" -d -s "$POOL" -m "$MESSAGES" -f a@example.com -t b@example.com "$SINK"
    end=$(date +%s.%N)
    awk -v n="$MESSAGES" -v s="$start" -v e="$end" \
        'BEGIN { printf "smtp-source: %.3f s, %.0f messages/s\n", e - s, n / (e - s) }'
    echo "== run $run: herald bench send --messages $MESSAGES --pool $POOL $*"
    RUST_LOG="${RUST_LOG:-warn}" "$HERALD" bench send --messages "$MESSAGES" --smtp "$SINK" \
        --pool "$POOL" "$@"
done
