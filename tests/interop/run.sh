#!/usr/bin/env bash
# Interop test of alertgate with real, independent mail software (project issue 6):
#
#   swaks ──▶ front Postfix ──relayhost──▶ alertgate ──relay──▶ back Postfix ──▶ Maildir ◀── Dovecot IMAP
#
# Every daemon is a private instance on a free loopback port with its own config and queue
# under one temp dir, started here and stopped by pid on exit. Prints `ok - name` /
# `not ok - name` per check and `N passed, M failed` last; exits 1 if any check failed.
#
# Environment:
#   ALERTGATE_BIN    alertgate binary (default: cargo build --release, then target/release/alertgate)
#   INTEROP_MODE     alertgate (default) | passthrough (no alertgate: front relays straight to the
#                    back Postfix; checks the harness itself, alertgate-specific checks are skipped)
#   KEEP=1           keep the temp dir (configs, logs, Maildir) for inspection
#   IG_VERBOSE=1     more diagnostics
set -u

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck source=lib.sh
. "$HERE/lib.sh"

MODE="${INTEROP_MODE:-alertgate}"
case "$MODE" in alertgate | passthrough) ;; *) ig_die "INTEROP_MODE must be alertgate or passthrough" ;; esac
GLPI_USER="glpi@example.test"
GLPI_PASS="interop-secret"
SENDER="nagios@monitoring.test"

PASSED=0
FAILED=0
ok() { PASSED=$((PASSED + 1)); echo "ok - $1"; }
not_ok() {
    FAILED=$((FAILED + 1))
    echo "not ok - $1"
    [ $# -gt 1 ] && printf '%s\n' "$2" | head -20 | sed 's/^/#   /'
    return 0
}
check() { # check NAME COMMAND...: ok when the command succeeds
    local name=$1
    shift
    local out
    if out=$("$@" 2>&1); then ok "$name"; else not_ok "$name" "$out"; fi
}
# Run a TAP-printing command (imap_check.py) and fold its lines into our counters.
tap() {
    local line
    while IFS= read -r line; do
        case "$line" in
        "ok - "*) PASSED=$((PASSED + 1)) ;;
        "not ok - "*) FAILED=$((FAILED + 1)) ;;
        esac
        printf '%s\n' "$line"
    done < <("$@" 2>&1)
}

# --- setup ------------------------------------------------------------------------

ig_install_deps
T=$(ig_mktemp alertgate-interop)
FRONT="$T/front"
BACK="$T/back"
AG_PID=""

cleanup() {
    local rc=$?
    [ -n "$AG_PID" ] && ig_kill_pid "$AG_PID"
    ig_postfix_stop "$FRONT"
    ig_postfix_stop "$BACK/postfix"
    ig_dovecot_stop "$BACK"
    if [ "${KEEP:-0}" = 1 ]; then
        echo "# kept $T" >&2
    else
        rm -rf "$T"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

read -r FRONT_PORT BACK_PORT IMAP_PORT AG_PORT <<<"$(ig_free_ports 4)"
ig_log "mode=$MODE dir=$T front=$FRONT_PORT alertgate=$AG_PORT back=$BACK_PORT imap=$IMAP_PORT"

if [ "$MODE" = alertgate ]; then
    if [ -z "${ALERTGATE_BIN:-}" ]; then
        export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target}"
        (cd "$REPO" && cargo build --release --quiet) || ig_die "cargo build --release failed"
        ALERTGATE_BIN="$CARGO_TARGET_DIR/release/alertgate"
    fi
    [ -x "$ALERTGATE_BIN" ] || ig_die "no alertgate binary at $ALERTGATE_BIN"
    "$ALERTGATE_BIN" serve --help >/dev/null 2>&1 ||
        ig_die "$ALERTGATE_BIN has no 'serve' command yet (INTEROP_MODE=passthrough tests the harness alone)"
    NEXT_HOP_PORT=$AG_PORT
else
    NEXT_HOP_PORT=$BACK_PORT
fi

ig_back_setup "$BACK" "$BACK_PORT" "$IMAP_PORT" "$GLPI_USER" "$GLPI_PASS"
ig_postfix_start "$BACK/postfix" >/dev/null
ig_dovecot_start "$BACK" "$IMAP_PORT" >/dev/null

AG_CONFIG="$T/alertgate/alertgate.toml"
write_alertgate_config() {
    mkdir -p "$T/alertgate/var"
    cat >"$AG_CONFIG" <<EOF
[server]
listen = ["127.0.0.1:$AG_PORT"]
hostname = "alertgate.test"
allowed_networks = ["127.0.0.0/8", "::1/128"]
accepted_recipients = ["$GLPI_USER"]
max_message_size = 10485760

[store]
path = "$T/alertgate/var/alertgate.db"

[rules]
dirs = ["$REPO/rules"]
unmatched = "forward"

[relay]
host = "127.0.0.1"
port = $BACK_PORT
tls = "none"

[relay.retry]
# short, so the outage check (d) does not wait minutes for the retry
initial_backoff_secs = 2
max_backoff_secs = 5

[compose]
from = "alertgate@example.test"
to = "$GLPI_USER"
EOF
}
start_alertgate() {
    "$ALERTGATE_BIN" serve -c "$AG_CONFIG" >>"$T/alertgate/alertgate.log" 2>&1 &
    AG_PID=$!
    ig_wait_port "$AG_PORT" 30 || {
        tail -20 "$T/alertgate/alertgate.log" >&2
        ig_die "alertgate did not listen on $AG_PORT"
    }
}
if [ "$MODE" = alertgate ]; then
    write_alertgate_config
    start_alertgate
fi

ig_postfix_setup "$FRONT" front "$FRONT_PORT" "relayhost=[127.0.0.1]:$NEXT_HOP_PORT"
ig_postfix_start "$FRONT" >/dev/null

# --- helpers ----------------------------------------------------------------------

# send_eml FILE PORT: byte-exact SMTP submission with swaks (no token expansion: we do the
# wire encoding ourselves — CRLF, dot-stuffing, final dot — and pass --no-data-fixup).
send_eml() {
    local file=$1 port=$2
    { ig_smtp_data "$file"; printf '.'; } |
        swaks --server 127.0.0.1 --port "$port" --from "$SENDER" --to "$GLPI_USER" \
            --data - --no-data-fixup --timeout 30 >"$T/swaks.last" 2>&1
    local rc=$?
    # swaks exits 0 only when every reply was positive; insist on 250 for the DATA dot.
    [ $rc = 0 ] && grep -q '^<-  250 .*' "$T/swaks.last" && tail -n 4 "$T/swaks.last" | grep -q '^<-  250'
}

# send_dir DIR FIRST LAST PORT: send DIR/NNNNNN.eml numbered FIRST..LAST; prints failures.
send_range() {
    local dir=$1 first=$2 last=$3 port=$4 i f bad=0
    for ((i = first; i <= last; i++)); do
        f=$(printf '%s/%06d.eml' "$dir" "$i")
        send_eml "$f" "$port" || {
            echo "rejected: $f"
            tail -n 5 "$T/swaks.last"
            bad=1
        }
    done
    return $bad
}

wait_front_drained() { # the front Postfix handed everything to the next hop
    local i
    for ((i = 0; i < ${1:-60} * 2; i++)); do
        [ "$(ig_postfix_queue_count "$FRONT")" = 0 ] && return 0
        sleep 0.5
    done
    echo "front queue still holds $(ig_postfix_queue_count "$FRONT") messages"
    return 1
}

# ag_count spool|outbound STATE: that count from `alertgate queue list` (0 when absent).
ag_count() {
    "$ALERTGATE_BIN" queue -c "$AG_CONFIG" list 2>/dev/null |
        awk -v kind="$1:" -v st="$2" '$1 == kind { for (i = 2; i <= NF; i++) { split($i, a, "="); if (a[1] == st) n = a[2] } } END { print n + 0 }'
}
# expect_ag_count spool|outbound STATE N [timeout]: wait until the count reaches N.
expect_ag_count() {
    local i n
    for ((i = 0; i < ${4:-30} * 2; i++)); do
        n=$(ag_count "$1" "$2")
        [ "$n" = "$3" ] && return 0
        sleep 0.5
    done
    echo "$1 $2=$n, want $3"
    "$ALERTGATE_BIN" queue -c "$AG_CONFIG" list 2>&1 | head -12
    return 1
}

imap() { python3 "$HERE/imap_check.py" --port "$IMAP_PORT" --user "$GLPI_USER" --password "$GLPI_PASS" "$@"; }
agcheck=()
[ "$MODE" = alertgate ] && agcheck=(--alertgate)

# --- (a) + (b): alerts through the whole chain -----------------------------------

K=6 R=2
python3 "$HERE/gen_alerts.py" interop --keys $K --recoveries $R --out "$T/mails-a" 2>/dev/null
# PROBLEMs first; the RECOVERYs only once the problems have left the front Postfix, which
# delivers in parallel and would otherwise be free to reorder them.
check "front Postfix accepts $K PROBLEM mails (250)" send_range "$T/mails-a" 0 $((K - 1)) "$FRONT_PORT"
check "front Postfix relays the PROBLEM mails to the next hop" wait_front_drained 60
check "front Postfix accepts $R RECOVERY mails (250)" send_range "$T/mails-a" $K $((K + R - 1)) "$FRONT_PORT"
check "front Postfix relays the RECOVERY mails to the next hop" wait_front_drained 60
if [ "$MODE" = alertgate ]; then
    check "(a) alertgate spooled and processed all $((K + R)) mails" expect_ag_count spool processed $((K + R)) 60
    check "(a) alertgate sent $((K + R)) outbound mails" expect_ag_count outbound sent $((K + R)) 60
fi
tap imap --wait 90 --settle 2 --expect-count $((K + R)) --unique "${agcheck[@]}" \
    $([ "$MODE" = alertgate ] && echo "--expect-threads $K") \
    --expect-subject 'srv-00000\.dc1' --expect-subject 'srv-00001\.dc1' \
    --dump "$T/imap-a.json" --prefix "(b) "

# --- (d): relay outage with a real MTA --------------------------------------------

BASE=$(imap --count-only)
N_OUT=20
python3 "$HERE/gen_alerts.py" interop --keys $((K + N_OUT)) --recoveries 0 --out "$T/mails-d" 2>/dev/null
send_range "$T/mails-d" $K $((K + N_OUT / 2 - 1)) "$FRONT_PORT" >"$T/send-d1.log" 2>&1 &
SEND1=$!
sleep 0.5
ig_postfix_stop "$BACK/postfix"
wait $SEND1
check "front accepts the first half while the back MTA goes down" test "$(wc -l <"$T/send-d1.log")" = 0
check "front accepts the second half while the back MTA is down" \
    send_range "$T/mails-d" $((K + N_OUT / 2)) $((K + N_OUT - 1)) "$FRONT_PORT"
if [ "$MODE" = alertgate ]; then
    check "front Postfix hands the outage mails to alertgate" wait_front_drained 60
    sleep 3 # let alertgate try the relay, fail and keep the mails queued
    check "(d) alertgate keeps the outage mails queued while the relay is down" \
        test "$(ag_count outbound queued)" -gt 0
else
    sleep 3
    check "front Postfix (the next hop here) keeps the outage mails queued" \
        test "$(ig_postfix_queue_count "$FRONT")" -gt 0
fi
check "back MTA is down (its smtpd port is closed)" ig_wait_port_closed "$BACK_PORT" 5
ig_postfix_start "$BACK/postfix" >/dev/null
[ "$MODE" = passthrough ] && ig_postfix_flush "$FRONT"
tap imap --wait 180 --settle 5 --expect-count $((BASE + N_OUT)) --unique --prefix "(d) after outage: "

# --- (c): every fixture is accepted byte-exact -----------------------------------

FIXTURES=()
while IFS= read -r -d '' f; do FIXTURES+=("$f"); done < <(
    find "$REPO/tests/fixtures" "$HERE/samples" -name '*.eml' -type f -print0 2>/dev/null | sort -z)
C_PORT=$([ "$MODE" = alertgate ] && echo "$AG_PORT" || echo "$FRONT_PORT")
for f in "${FIXTURES[@]}"; do
    if send_eml "$f" "$C_PORT"; then
        ok "(c) accepted with 250: ${f#"$REPO"/}"
    else
        not_ok "(c) accepted with 250: ${f#"$REPO"/}" "$(tail -n 6 "$T/swaks.last")"
    fi
done
[ ${#FIXTURES[@]} -gt 0 ] || not_ok "(c) found fixtures to send"

if [ "$MODE" = alertgate ]; then
    check "(c) alertgate processed every fixture (none left new)" expect_ag_count spool new 0 60
    check "(c) no spooled message failed processing" expect_ag_count spool failed 0 5
    check "alertgate still running after all checks" kill -0 "$AG_PID"
fi

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
