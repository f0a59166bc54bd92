#!/usr/bin/env bash
# Issue 13 benchmark: memory bounded by work, not by history. The real gateway
# (`alertgate serve`, SQLite store, relay down so every mail stays queued) receives
# N distinct alert mails over SMTP (10 sessions, `examples/loadgen.rs`), each opening
# its own incident (storm guard lifted), then the same N alerts again: repeats of
# incidents the bounded cache evicted long ago (LRU with a cyclic order: every one a
# miss, read from the store by index). Reports the open incidents, the pipeline's time
# for each pass and the process's VmHWM (peak) and VmRSS after each pass.
# Usage: bash bench/open_incidents.sh [N (100000)]   env: CACHE (incident_cache, default
# of the config), PORT (25260), ALERTGATE_BIN / LOADGEN_BIN (prebuilt binaries), KEEP=1,
# STORE=postgres (the store on a private PostgreSQL started here, bench/pg.sh; its
# processes' peak RSS is reported apart: it is the database's, not alertgate's).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
PORT=${PORT:-25260}
TARGET=${CARGO_TARGET_DIR:-target}
if [ -z "${ALERTGATE_BIN:-}" ] || [ -z "${LOADGEN_BIN:-}" ]; then
    cargo build --release --quiet --bin alertgate --example loadgen
fi
BIN=${ALERTGATE_BIN:-$TARGET/release/alertgate}
LOAD=${LOADGEN_BIN:-$TARGET/release/examples/loadgen}
dir=$(mktemp -d)
pid=""
STORE=${STORE:-sqlite}
store_url_line=""
if [ "$STORE" = postgres ]; then
    # shellcheck source=pg.sh
    . bench/pg.sh
fi
cleanup() {
    if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    if [ "$STORE" = postgres ]; then bench_pg_stop; fi
    if [ "${KEEP:-0}" = 1 ]; then echo "# kept $dir" >&2; else rm -rf "$dir"; fi
}
trap cleanup EXIT
if [ "$STORE" = postgres ]; then
    chmod 755 "$dir"
    bench_pg_start "$dir/pg" || { echo "private PostgreSQL did not start" >&2; exit 1; }
    store_url_line="url = \"$BENCH_PG_URL\""
fi
cache_line=""
[ -n "${CACHE:-}" ] && cache_line="incident_cache = $CACHE"
cat > "$dir/alertgate.toml" <<CFG
[server]
listen = ["127.0.0.1:$PORT"]
hostname = "bench.test"
accepted_recipients = ["glpi@example.test"]
max_connections = 100
[store]
path = "$dir/alertgate.db"
$store_url_line
[rules]
dirs = ["rules"]
[compose]
from = "alertgate@example.test"
to = "glpi@example.test"
[relay]
host = "127.0.0.1"
port = 9
tls = "none"
[correlation]
max_new_incidents_per_minute = 100000000
$cache_line
CFG
ALERTGATE_LOG=warn "$BIN" serve -c "$dir/alertgate.toml" 2>"$dir/log" &
pid=$!
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done

mem() { awk -v f="$1:" '$1 == f {printf "%.1f", $2 / 1024}' "/proc/$pid/status"; }
sql_sqlite() { python3 -c "import sqlite3,sys; c=sqlite3.connect(sys.argv[1], timeout=30); print(c.execute(sys.argv[2]).fetchone()[0])" "$dir/alertgate.db" "$1"; }
sql() { if [ "$STORE" = postgres ]; then bench_pg_sql "$1"; else sql_sqlite "$1"; fi; }
# Wait until the pipeline has processed every spooled mail; prints the seconds it took.
drain() {
    local start=$1
    while [ "$(sql "SELECT COUNT(*) FROM spool WHERE state = 'new'")" != 0 ]; do sleep 0.5; done
    python3 -c "import time,sys; print(f'{time.time() - float(sys.argv[1]):.1f}')" "$start"
}
pass() { # $1 = name: sends N mails, waits for the pipeline, prints one table row
    local start; start=$(date +%s.%N)
    local json; json=$("$LOAD" --addr "127.0.0.1:$PORT" --sessions 10 --messages "$N" --size 2048 --repeat 1)
    local secs; secs=$(drain "$start")
    local accepted; accepted=$(echo "$json" | sed -E 's/.*"accepted":([0-9]+).*/\1/')
    printf "| %s | %s | %s | %s | %s | %s | %s |%s\n" "$1" "$accepted" \
        "$(sql "SELECT COUNT(*) FROM incidents WHERE open = 1")" \
        "$(sql "SELECT COUNT(*) FROM outbound")" "$secs" "$(mem VmHWM)" "$(mem VmRSS)" "$(pg_col)"
}
pg_col() { if [ "$STORE" = postgres ]; then awk -v k="$(bench_pg_rss_kb)" 'BEGIN {printf " %.1f |", k / 1024}'; fi; }
echo "alertgate $(git rev-parse --short HEAD), $N distinct alerts, incident_cache ${CACHE:-default}, store $STORE"
echo
if [ "$STORE" = postgres ]; then
    echo "| pass | accepted | open incidents | outbound mails | accept + pipeline s | VmHWM MB | VmRSS MB | PostgreSQL processes' VmHWM sum MB |"
    echo "|---|---|---|---|---|---|---|---|"
else
    echo "| pass | accepted | open incidents | outbound mails | accept + pipeline s | VmHWM MB | VmRSS MB |"
    echo "|---|---|---|---|---|---|---|"
fi
printf "| start | 0 | 0 | 0 | - | %s | %s |%s\n" "$(mem VmHWM)" "$(mem VmRSS)" "$(pg_col)"
pass "1: N new incidents (opens)"
pass "2: the same N again (repeats, all cache misses)"
