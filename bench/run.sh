#!/usr/bin/env bash
# One-command end-to-end benchmark (project issue 6), one machine, one run, < 10 minutes:
#   (i)   loopback ceiling:   load → smtp-sink
#   (ii)  default Postfix:    load → private Postfix (relayhost → sink) → smtp-sink
#   (iii) alertgate:          load → alertgate (relay → sink) → smtp-sink
# Load = 20,000 alert mails of ~2 KB over 10 sessions (Postfix's smtp-source, and
# bench/loadgen.py for distinct alert mails and accept latencies), plus a storm scenario.
# Every daemon is a private instance on a free loopback port under one temp dir, started
# fresh for every run and stopped by pid. Prints a markdown table; raw results in
# $BENCH_OUT (default bench/results/<date>.jsonl).
#
# Environment: ALERTGATE_BIN (default: cargo build --release), BENCH_COUNT (20000),
# BENCH_PAUSE (seconds between runs, 5), BENCH_LAT_RATE (msgs/s of the latency runs, 200),
# BENCH_DRAIN_TIMEOUT (150 s), BENCH_ONLY="run names" (e.g. "alertgate-storm"),
# BENCH_ALERTGATE=0 to skip (iii), KEEP=1 to keep the temp dir, BENCH_STORE=postgres to
# run (iii) on a private PostgreSQL (bench/pg.sh, a fresh one for every run, stopped by
# pid with the rest; its processes' peak RSS is reported apart from alertgate's).
set -u

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
# shellcheck source=../tests/interop/lib.sh
. "$REPO/tests/interop/lib.sh"
# shellcheck source=pg.sh
. "$HERE/pg.sh"
STORE=${BENCH_STORE:-sqlite}

COUNT=${BENCH_COUNT:-20000}
SESSIONS=10
SIZE=2048
PAUSE=${BENCH_PAUSE:-5}
LAT_RATE=${BENCH_LAT_RATE:-200}
LAT_COUNT=$((LAT_RATE * 10))
DRAIN_TIMEOUT=${BENCH_DRAIN_TIMEOUT:-120}
mkdir -p "$HERE/results"
OUT=${BENCH_OUT:-$HERE/results/$(date -u +%Y%m%dT%H%M%SZ).jsonl}
: >"$OUT"

ig_install_deps
T=$(ig_mktemp alertgate-bench)
PIDS=()          # sinks, alertgate, samplers: stopped by pid
POSTFIX_DIRS=()  # private Postfix instances: stopped by their master pid

stop_all() {
    local p d
    for p in "${PIDS[@]}"; do ig_kill_pid "$p"; done
    for d in "${POSTFIX_DIRS[@]}"; do ig_postfix_stop "$d"; done
    bench_pg_stop
    PIDS=()
    POSTFIX_DIRS=()
}
cleanup() {
    local rc=$?
    stop_all
    if [ "${KEEP:-0}" = 1 ]; then echo "# kept $T" >&2; else rm -rf "$T"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- alertgate binary -------------------------------------------------------------
AG=""
if [ "${BENCH_ALERTGATE:-1}" != 0 ]; then
    if [ -n "${ALERTGATE_BIN:-}" ]; then
        AG=$ALERTGATE_BIN
    else
        export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target}"
        (cd "$REPO" && cargo build --release --quiet) || ig_die "cargo build --release failed"
        AG="$CARGO_TARGET_DIR/release/alertgate"
    fi
    "$AG" serve --help >/dev/null 2>&1 || {
        ig_log "no usable 'alertgate serve' at $AG: skipping (iii)"
        AG=""
    }
fi

# --- mail sets --------------------------------------------------------------------
ig_log "generating mail sets ($COUNT mails of ~$SIZE bytes each) in $T/sets"
for s in distinct repeats storm; do
    python3 "$REPO/tests/interop/gen_alerts.py" "$s" --count "$COUNT" --size "$SIZE" \
        --full-headers --out "$T/sets/$s" 2>>"$T/gen.log" || ig_die "gen_alerts $s failed"
done
# Latency runs use their own keys (a different host range) so they start on a fresh state.
python3 "$REPO/tests/interop/gen_alerts.py" distinct --count "$LAT_COUNT" --size "$SIZE" --seed 7 \
    --full-headers --out "$T/sets/latency" 2>>"$T/gen.log"
sed -i 's/srv-\([0-9]\)/lat-\1/g' "$T"/sets/latency/*.eml
ONE_ALERT="$T/sets/one-alert.eml" # smtp-source -F sends this one file for every message
cp "$T/sets/distinct/000000.eml" "$ONE_ALERT"

# --- targets ------------------------------------------------------------------------

# start_sink NAME: a fresh smtp-sink; sets SINK_DIR SINK_PORT.
start_sink() {
    SINK_DIR="$T/$1/sink"
    SINK_PORT=$(ig_free_ports 1)
    PIDS+=("$(ig_sink_start "$SINK_DIR" "$SINK_PORT")")
}

# sample PID NAME: peak RSS sampler for PID's process tree -> $T/NAME.rss.json
sample() {
    python3 "$HERE/procstat.py" --pid "$1" --out "$T/$2.rss.json" &
    PIDS+=("$!")
}

# start_target KIND NAME: fresh sink (+ Postfix or alertgate in front); sets TARGET_PORT.
start_target() {
    local kind=$1 name=$2
    mkdir -p "$T/$name"
    start_sink "$name"
    case "$kind" in
    sink)
        TARGET_PORT=$SINK_PORT
        sample "${PIDS[0]}" "$name"
        ;;
    postfix)
        TARGET_PORT=$(ig_free_ports 1)
        # Default Postfix settings apart from what a private instance needs (ports, dirs,
        # no local delivery) and the relayhost.
        ig_postfix_setup "$T/$name/postfix" bench "$TARGET_PORT" "relayhost=[127.0.0.1]:$SINK_PORT"
        POSTFIX_DIRS+=("$T/$name/postfix")
        sample "$(ig_postfix_start "$T/$name/postfix")" "$name"
        ;;
    alertgate-digest | alertgate)
        TARGET_PORT=$(ig_free_ports 1)
        local per_minute=1000000000
        # "alertgate" mails every new incident on its own (measures the per-mail path);
        # "alertgate-digest" keeps the shipped default (60 new incidents/min, then digests).
        [ "$kind" = alertgate-digest ] && per_minute=60
        local url_line=""
        if [ "$STORE" = postgres ]; then
            bench_pg_start "$T/$name/pg" || ig_die "private PostgreSQL did not start"
            url_line="url = \"$BENCH_PG_URL\""
        fi
        cat >"$T/$name/alertgate.toml" <<EOF
[server]
listen = ["127.0.0.1:$TARGET_PORT"]
hostname = "alertgate.bench"
allowed_networks = ["127.0.0.0/8"]
accepted_recipients = ["glpi@example.test"]
max_message_size = 10485760
[store]
path = "$T/$name/var/alertgate.db"
$url_line
[rules]
dirs = ["$REPO/rules"]
unmatched = "forward"
[relay]
host = "127.0.0.1"
port = $SINK_PORT
tls = "none"
[compose]
from = "alertgate@example.test"
to = "glpi@example.test"
[correlation]
max_new_incidents_per_minute = $per_minute
EOF
        AG_CONFIG="$T/$name/alertgate.toml"
        "$AG" serve -c "$AG_CONFIG" >"$T/$name/alertgate.log" 2>&1 &
        PIDS+=("$!")
        sample "$!" "$name"
        ig_wait_port "$TARGET_PORT" 30 || ig_die "alertgate did not start: $(tail -5 "$T/$name/alertgate.log")"
        ;;
    esac
}

# ag_backlog: spooled-but-unprocessed + queued outbound mails in the running alertgate.
ag_backlog() {
    "$AG" queue -c "$AG_CONFIG" list 2>/dev/null | awk '
        $1 == "spool:" || $1 == "outbound:" { for (i = 2; i <= NF; i++) { split($i, a, "=");
            if (a[1] == "new" || a[1] == "queued") n += a[2] } }
        END { print n + 0 }'
}

# wait_drained KIND WANT: until the sink has WANT mails (postfix) or alertgate has nothing
# left to process and the sink count is stable (at most $DRAIN_TIMEOUT s); prints the Unix
# time of the last arrival and 1 if drained, 0 on timeout.
wait_drained() {
    local kind=$1 want=$2 deadline=$((SECONDS + DRAIN_TIMEOUT)) n last_n=-1 last_change
    last_change=$(date +%s.%N)
    while [ $SECONDS -lt $deadline ]; do
        n=$(ig_sink_count "$SINK_DIR")
        if [ "$n" != "$last_n" ]; then last_n=$n; last_change=$(date +%s.%N); fi
        case "$kind" in
        sink) break ;;
        postfix) [ "$n" -ge "$want" ] && break ;;
        alertgate*)
            # Drained = nothing new or queued and no arrival for $quiet s. With the storm
            # digest on, the digest of a minute leaves only once that minute is over, so
            # wait out more than one window before calling it drained.
            local quiet=1
            [ "$kind" = alertgate-digest ] && quiet=75
            if [ "$(ag_backlog)" = 0 ] &&
                [ "$(awk -v a="$(date +%s.%N)" -v b="$last_change" 'BEGIN { print (a - b >= '"$quiet"') }')" = 1 ]; then
                break
            fi
            ;;
        esac
        sleep 0.2
    done
    local drained=1
    if [ $SECONDS -ge $deadline ]; then
        ig_log "drain timeout after ${DRAIN_TIMEOUT}s (sink has $n)"
        drained=0
    fi
    echo "$last_change $drained"
}

# run_bench NAME KIND TOOL SET [RATE]: one fresh run; appends a JSON line to $OUT.
# TOOL: smtp-source (one file, -F) | loadgen (SET's distinct files) | latency (loadgen at RATE)
run_bench() {
    if [ -n "${BENCH_ONLY:-}" ] && ! [[ " $BENCH_ONLY " == *" $1 "* ]]; then return 0; fi
    local name=$1 kind=$2 tool=$3 set=$4 rate=${5:-0} load t0 t1 tdrain drained arrivals sent
    ig_log "run $name: $kind, $tool, ${set:-one file}"
    start_target "$kind" "$name"
    t0=$(date +%s.%N)
    case "$tool" in
    smtp-source)
        sent=$COUNT
        /usr/sbin/smtp-source -s $SESSIONS -m "$COUNT" -F "$ONE_ALERT" -f nagios@monitoring.test \
            -t glpi@example.test "127.0.0.1:$TARGET_PORT" 2>"$T/$name/source.err" ||
            ig_log "smtp-source: $(tail -3 "$T/$name/source.err")"
        t1=$(date +%s.%N)
        load="{\"accepted\": $COUNT, \"elapsed_s\": $(awk "BEGIN { printf \"%.3f\", $t1 - $t0 }"), \"errors\": $(wc -l <"$T/$name/source.err")}"
        ;;
    loadgen | latency)
        load=$(python3 "$HERE/loadgen.py" --port "$TARGET_PORT" --dir "$T/sets/$set" \
            --sessions $SESSIONS --rate "$rate")
        sent=$(echo "$load" | python3 -c 'import json,sys; print(json.load(sys.stdin)["sent"])')
        ;;
    esac
    read -r tdrain drained <<<"$(wait_drained "$kind" "$sent")"
    arrivals=$(ig_sink_count "$SINK_DIR")
    local store=none pg_kb=0
    if [[ "$kind" == alertgate* ]]; then
        store=$STORE
        [ "$STORE" = postgres ] && pg_kb=$(bench_pg_rss_kb)
    fi
    sleep 0.3
    stop_all
    python3 - "$name" "$kind" "$tool" "$set" "$t0" "$tdrain" "$arrivals" "$sent" "$T/$name.rss.json" "$load" "$drained" "$store" "$pg_kb" >>"$OUT" <<'EOF'
import json, sys
name, kind, tool, mset, t0, tdrain, arrivals, sent, rssf, load, drained, store, pg_kb = sys.argv[1:]
drained = drained == "1"
load = json.loads(load)
rss = json.load(open(rssf)) if rssf and __import__("os").path.exists(rssf) else {}
t0, tdrain, arrivals, sent = float(load.get("t_start", t0)), float(tdrain), int(arrivals), int(sent)
if kind == "sink":  # the sink is the end: arrival == acceptance
    tdrain = t0 + load["elapsed_s"]
e2e_s = max(tdrain - t0, load["elapsed_s"])
print(json.dumps(dict(name=name, kind=kind, tool=tool, set=mset, sent=sent,
    accepted=load["accepted"], accept_s=load["elapsed_s"],
    accept_rate=round(load["accepted"] / load["elapsed_s"], 1) if load["elapsed_s"] else None,
    drained=drained, e2e_s=round(e2e_s, 3),
    e2e_rate=round(sent / e2e_s, 1) if e2e_s and drained else None,
    out_rate=round(arrivals / e2e_s, 1) if e2e_s else None,
    arrivals=arrivals, p50_ms=load.get("p50_ms"), p99_ms=load.get("p99_ms"),
    errors=load.get("errors", 0) + load.get("rejected", 0),
    peak_rss_kb=rss.get("peak_tree_rss_kb"), peak_pss_kb=rss.get("peak_tree_pss_kb"),
    root_vmhwm_kb=rss.get("root_vmhwm_kb"), max_procs=rss.get("max_procs"),
    store=store, pg_vmhwm_sum_kb=int(pg_kb) or None)))
EOF
    tail -n 1 "$OUT" >&2
    sleep "$PAUSE"
}

START=$SECONDS
run_bench ceiling-source sink smtp-source ""
run_bench ceiling-load sink loadgen distinct
run_bench ceiling-latency sink latency latency "$LAT_RATE"
run_bench postfix-source postfix smtp-source ""
run_bench postfix-load postfix loadgen distinct
run_bench postfix-latency postfix latency latency "$LAT_RATE"
if [ -n "$AG" ]; then
    run_bench alertgate-distinct alertgate loadgen distinct
    run_bench alertgate-repeats alertgate loadgen repeats
    run_bench alertgate-latency alertgate latency latency "$LAT_RATE"
    run_bench alertgate-source alertgate smtp-source ""
    run_bench alertgate-storm alertgate-digest loadgen storm
fi
ig_log "total $((SECONDS - START)) s; raw results: $OUT"
python3 "$HERE/report.py" "$OUT"
