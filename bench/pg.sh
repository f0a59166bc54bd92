# A private PostgreSQL for the benchmarks (sourced), as tests/support/postgres.rs starts
# one for the tests: initdb + pg_ctl in DIR, on a free loopback port, run as `nobody`
# when root (PostgreSQL refuses root), the same settings as the tests' (fsync on), and
# stopped by its postmaster's pid.
#   bench_pg_start DIR   sets BENCH_PG_PORT, BENCH_PG_PID, BENCH_PG_URL (database "alertgate")
#   bench_pg_sql SQL     one value from the database (psql -At)
#   bench_pg_stop        fast shutdown by pid, waits until it is gone

bench_pg_bindir() {
    if [ -n "${ALERTGATE_PG_BINDIR:-}" ]; then echo "$ALERTGATE_PG_BINDIR"; return; fi
    local best
    best=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    [ -x "$best/initdb" ] || { echo "no /usr/lib/postgresql/*/bin/initdb (apt-get install postgresql)" >&2; return 1; }
    echo "$best"
}

bench_pg_as_server_user() {
    if [ "$(id -u)" = 0 ]; then
        (cd "$BENCH_PG_DIR" && HOME="$BENCH_PG_DIR" setpriv --reuid=nobody --regid="$(id -g nobody)" --clear-groups "$@")
    else
        (cd "$BENCH_PG_DIR" && "$@")
    fi
}

bench_pg_start() {
    BENCH_PG_DIR=$1
    local bin
    bin=$(bench_pg_bindir) || return 1
    BENCH_PG_BIN=$bin
    mkdir -p "$BENCH_PG_DIR"
    chmod 755 "$BENCH_PG_DIR"
    [ "$(id -u)" = 0 ] && chown nobody:"$(id -g nobody)" "$BENCH_PG_DIR"
    BENCH_PG_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    bench_pg_as_server_user "$bin/initdb" -D "$BENCH_PG_DIR/data" -U postgres -A trust \
        --no-instructions --encoding=UTF8 --locale=C >"$BENCH_PG_DIR/initdb.log" 2>&1 ||
        { cat "$BENCH_PG_DIR/initdb.log" >&2; return 1; }
    bench_pg_as_server_user "$bin/pg_ctl" -D "$BENCH_PG_DIR/data" -l "$BENCH_PG_DIR/server.log" -w -t 60 \
        -o "-p $BENCH_PG_PORT -c listen_addresses=127.0.0.1 -k $BENCH_PG_DIR -c fsync=on -c synchronous_commit=on -c max_connections=400 -c shared_buffers=32MB" \
        start >/dev/null || { cat "$BENCH_PG_DIR/server.log" >&2; return 1; }
    BENCH_PG_PID=$(head -1 "$BENCH_PG_DIR/data/postmaster.pid")
    "$bin/psql" -X -q -h 127.0.0.1 -p "$BENCH_PG_PORT" -U postgres -d postgres -c "CREATE DATABASE alertgate" || return 1
    BENCH_PG_URL="postgres://postgres@127.0.0.1:$BENCH_PG_PORT/alertgate"
}

bench_pg_sql() {
    "$BENCH_PG_BIN/psql" -X -q -A -t -h 127.0.0.1 -p "$BENCH_PG_PORT" -U postgres -d alertgate -c "$1"
}

# Peak RSS (VmHWM, kB) summed over the server's processes (postmaster and backends).
bench_pg_rss_kb() {
    local total=0 p kb
    for p in $BENCH_PG_PID $(pgrep -P "$BENCH_PG_PID" 2>/dev/null); do
        kb=$(awk '$1 == "VmHWM:" {print $2}' "/proc/$p/status" 2>/dev/null)
        total=$((total + ${kb:-0}))
    done
    echo "$total"
}

bench_pg_stop() {
    [ -n "${BENCH_PG_PID:-}" ] || return 0
    kill -INT "$BENCH_PG_PID" 2>/dev/null || { BENCH_PG_PID=""; return 0; }
    local i
    for ((i = 0; i < 300; i++)); do
        kill -0 "$BENCH_PG_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$BENCH_PG_PID" 2>/dev/null && kill -QUIT "$BENCH_PG_PID" 2>/dev/null
    BENCH_PG_PID=""
}
