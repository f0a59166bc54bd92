#!/usr/bin/env bash
# Issue 2 benchmark: durable accept throughput and latency of alertgate's SMTP listener.
# 10 sessions send 20,000 alert-shaped 2 KB mails (max rate), then again at half that
# rate; reports msgs/s, p50/p99 accept latency and alertgate's peak RSS (VmHWM).
# Usage: bash bench/accept.sh [MESSAGES]
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${1:-20000}
PORT=${PORT:-25250}
cargo build --release --quiet --bin alertgate --example loadgen
TARGET=${CARGO_TARGET_DIR:-target}
BIN="$TARGET/release/alertgate"
LOAD="$TARGET/release/examples/loadgen"

run_once() { # $1 = rate (0 = max); prints loadgen JSON, then the peak RSS in kB
    local dir; dir=$(mktemp -d)
    cat > "$dir/alertgate.toml" <<CFG
[server]
listen = ["127.0.0.1:$PORT"]
hostname = "bench.test"
accepted_recipients = ["glpi@example.test"]
max_connections = 100
[store]
path = "$dir/alertgate.db"
[rules]
dirs = ["${RULES_DIR:-rules}"]
unmatched = "${UNMATCHED:-forward}"
[compose]
from = "alertgate@example.test"
to = "glpi@example.test"
[relay]
host = "127.0.0.1"
port = 9
tls = "none"
${EXTRA_CONFIG:-}
CFG
    ALERTGATE_LOG=warn ${BIN_ENV:-} "$BIN" serve -c "$dir/alertgate.toml" 2>"$dir/log" &
    local pid=$!
    for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
    "$LOAD" --addr 127.0.0.1:$PORT --sessions 10 --messages "$MESSAGES" --size 2048 --rate "$1" --repeat "${REPEAT:-1}"
    grep VmHWM /proc/$pid/status | awk '{print $2}'
    kill -TERM $pid; wait $pid || true
    rm -rf "$dir"
}

field() { sed -E "s/.*\"$1\":([0-9.]+).*/\1/"; }

max=$(run_once 0); max_json=$(echo "$max" | head -1); max_rss=$(echo "$max" | tail -1)
rate=$(echo "$max_json" | field msgs_per_sec)
sleep 2
half_rate=$(awk "BEGIN {printf \"%d\", $rate / 2}")
half=$(run_once "$half_rate"); half_json=$(echo "$half" | head -1); half_rss=$(echo "$half" | tail -1)

echo
echo "| run | accepted | msgs/s | p50 ms | p99 ms | max ms | peak RSS MB |"
echo "|---|---|---|---|---|---|---|"
for row in "max rate|$max_json|$max_rss" "half rate ($half_rate/s)|$half_json|$half_rss"; do
    IFS='|' read -r name json rss <<<"$row"
    printf "| %s | %s | %s | %s | %s | %s | %.1f |\n" "$name" \
        "$(echo "$json" | field accepted)" "$(echo "$json" | field msgs_per_sec)" \
        "$(echo "$json" | field p50_ms)" "$(echo "$json" | field p99_ms)" "$(echo "$json" | field max_ms)" \
        "$(awk "BEGIN {print $rss / 1024}")"
done
