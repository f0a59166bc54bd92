# shellcheck shell=bash
# Shared helpers for the interop tests and the benchmark: install real mail software
# from Debian packages if missing, and run private, loopback-only instances of Postfix
# and Dovecot under a temp dir. Everything is stopped by pid, never by name.
#
# Source this file; it defines functions only (plus IG_* defaults) and changes no shell
# options of the caller.

IG_LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
IG_VERBOSE="${IG_VERBOSE:-0}"

ig_log() { printf '# %s\n' "$*" >&2; }
ig_debug() { [ "$IG_VERBOSE" = 1 ] && printf '# %s\n' "$*" >&2; return 0; }
ig_die() { printf 'FATAL: %s\n' "$*" >&2; exit 2; }

# --- packages ---------------------------------------------------------------------

# Install postfix, dovecot-imapd and swaks when a binary is missing. Runs
# `apt-get update` once, only if something has to be installed. Idempotent and quiet.
ig_install_deps() {
    local need=()
    command -v postfix >/dev/null 2>&1 && [ -x /usr/sbin/smtp-source ] || need+=(postfix)
    command -v dovecot >/dev/null 2>&1 && [ -x /usr/lib/dovecot/imap ] || need+=(dovecot-imapd)
    command -v swaks >/dev/null 2>&1 || need+=(swaks)
    [ ${#need[@]} -eq 0 ] && return 0
    [ "$(id -u)" = 0 ] || ig_die "need root to install: ${need[*]}"
    ig_log "installing ${need[*]} (once)"
    echo "postfix postfix/main_mailer_type select Local only" | debconf-set-selections
    echo "postfix postfix/mailname string localhost" | debconf-set-selections
    apt-get update -qq >/dev/null 2>&1 || ig_die "apt-get update failed"
    # policy-rc.d on these machines keeps the system services from starting; we never
    # rely on the system instances anyway.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 ||
        ig_die "apt-get install ${need[*]} failed"
}

# ig_mktemp PREFIX: a fresh temp dir that the postfix/nobody users may traverse.
ig_mktemp() {
    local d
    d=$(mktemp -d "/tmp/$1.XXXXXX") || ig_die "mktemp failed"
    chmod 755 "$d"
    echo "$d"
}

# --- ports ------------------------------------------------------------------------

# Print N currently free TCP ports on 127.0.0.1 (distinct). Racy by nature, but the
# window is short and every port is checked again by the daemon's own bind.
ig_free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks, ports = [], []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
    ports.append(s.getsockname()[1])
print(" ".join(map(str, ports)))
EOF
}

# Wait until something accepts TCP connections on 127.0.0.1:PORT (timeout seconds, default 20).
ig_wait_port() {
    local port=$1 timeout=${2:-20}
    python3 - "$port" "$timeout" <<'EOF'
import socket, sys, time
port, deadline = int(sys.argv[1]), time.time() + float(sys.argv[2])
while time.time() < deadline:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit(1)
EOF
}

# Wait until nothing listens on 127.0.0.1:PORT any more.
ig_wait_port_closed() {
    local port=$1 timeout=${2:-20} i
    for ((i = 0; i < timeout * 10; i++)); do
        ig_wait_port "$port" 0.05 || return 0
        sleep 0.1
    done
    return 1
}

# Wait until pid PID has exited (timeout seconds); returns 1 on timeout.
ig_wait_pid_gone() {
    local pid=$1 timeout=${2:-20} i
    for ((i = 0; i < timeout * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    return 1
}

# --- Postfix ----------------------------------------------------------------------

# ig_postfix_setup DIR NAME SMTPD_PORT [key=value ...]
# Writes a private Postfix instance under DIR (config in DIR/etc, queue in DIR/queue,
# data in DIR/data, log in DIR/maillog). The smtpd listens on 127.0.0.1:SMTPD_PORT only;
# nothing is delivered locally unless the extra main.cf settings say so. Extra
# arguments are main.cf settings appended last (they win).
ig_postfix_setup() {
    local dir=$1 name=$2 port=$3
    shift 3
    mkdir -p "$dir/etc" "$dir/queue" "$dir/data"
    # Postfix daemons drop to the postfix user and must traverse to their directories.
    chmod 755 "$dir"
    chown postfix "$dir/data"
    : >"$dir/maillog"
    cat >"$dir/etc/main.cf" <<EOF
# private instance "$name", written by tests/interop/lib.sh
compatibility_level = 3.6
queue_directory = $dir/queue
data_directory = $dir/data
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
daemon_directory = /usr/lib/postfix/sbin
command_directory = /usr/sbin
mail_owner = postfix
setgid_group = postdrop
myhostname = $name.interop.test
mydomain = interop.test
myorigin = \$myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions =
alias_maps =
alias_database =
local_recipient_maps =
local_transport = error:local delivery is disabled in this instance
biff = no
append_dot_mydomain = no
readme_directory = no
syslog_name = postfix-$name
maillog_file = $dir/maillog
maillog_file_prefixes = $dir
smtpd_banner = \$myhostname ESMTP $name
smtp_tls_security_level = none
smtpd_tls_security_level = none
# keep loopback tests quick when a peer is down
queue_run_delay = 5s
minimal_backoff_time = 5s
maximal_backoff_time = 10s
smtp_connect_timeout = 5s
EOF
    local kv
    for kv in "$@"; do printf '%s\n' "${kv/=/ = }" >>"$dir/etc/main.cf"; done
    # master.cf: Debian's, with the public smtpd replaced by ours and no chroot
    # (the chroot would need a populated copy of /etc and libs in our queue dir).
    awk -v port="$port" '
        /^smtp[ \t]+inet[ \t]/ { print "127.0.0.1:" port " inet n - n - - smtpd"; next }
        /^[a-z0-9.:\[\]-]+[ \t]+(inet|unix|unix-dgram|fifo|pass)[ \t]/ && NF >= 8 { $5 = "n" }
        { print }
    ' /etc/postfix/master.cf >"$dir/etc/master.cf"
    postfix -c "$dir/etc" check >>"$dir/maillog" 2>&1 || {
        cat "$dir/maillog" >&2
        ig_die "postfix check failed for $dir"
    }
}

# ig_postfix_start DIR: start the instance, wait for its smtpd, print the master pid.
ig_postfix_start() {
    local dir=$1 port
    port=$(awk '/^127\.0\.0\.1:[0-9]+ inet/ { split($1, a, ":"); print a[2]; exit }' "$dir/etc/master.cf")
    postfix -c "$dir/etc" start >>"$dir/maillog" 2>&1 || {
        tail -20 "$dir/maillog" >&2
        ig_die "postfix start failed for $dir"
    }
    ig_wait_port "$port" 20 || {
        tail -20 "$dir/maillog" >&2
        ig_die "postfix $dir: smtpd on $port did not come up"
    }
    ig_postfix_pid "$dir"
}

# ig_postfix_pid DIR: the instance's master pid (empty when not running).
ig_postfix_pid() {
    local f="$1/data/master.lock"
    [ -f "$f" ] || f="$1/queue/pid/master.pid"
    [ -f "$f" ] && tr -dc '0-9' <"$f"
}

# ig_postfix_stop DIR: stop the master by its pid (SIGTERM, like `postfix stop`) and wait.
ig_postfix_stop() {
    local dir=$1 pid
    pid=$(ig_postfix_pid "$dir")
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    ig_wait_pid_gone "$pid" 20 || kill -KILL "$pid" 2>/dev/null
    return 0
}

# ig_postfix_flush DIR: ask the instance to retry its deferred mail now.
ig_postfix_flush() { postqueue -c "$1/etc" -f >/dev/null 2>&1 || true; }

# ig_postfix_queue_count DIR: messages in the instance's queue (0 when empty).
ig_postfix_queue_count() {
    local n
    n=$(find "$1/queue/incoming" "$1/queue/active" "$1/queue/deferred" "$1/queue/maildrop" \
        -type f 2>/dev/null | wc -l)
    echo "$n"
}

# --- Back end: Postfix virtual mailbox + Dovecot IMAP ------------------------------

# ig_back_setup DIR SMTPD_PORT IMAP_PORT USER PASSWORD
# A Postfix instance delivering USER (e.g. glpi@example.test) into DIR/mail/<domain>/<local>/
# (Maildir, uid nobody), and a Dovecot serving that Maildir on 127.0.0.1:IMAP_PORT with a
# passwd-file login USER/PASSWORD.
ig_back_setup() {
    local dir=$1 smtp_port=$2 imap_port=$3 user=$4 pass=$5
    local domain=${user#*@} local=${user%@*}
    local uid gid
    uid=$(id -u nobody)
    gid=$(getent group nogroup | cut -d: -f3)
    mkdir -p "$dir/mail" "$dir/dovecot/run" "$dir/dovecot/state"
    chmod 755 "$dir" "$dir/mail"
    chown "$uid:$gid" "$dir/mail"
    printf '%s %s/%s/\n' "$user" "$domain" "$local" >"$dir/vmailbox"
    ig_postfix_setup "$dir/postfix" back "$smtp_port" \
        "virtual_mailbox_domains=$domain" \
        "virtual_mailbox_base=$dir/mail" \
        "virtual_mailbox_maps=texthash:$dir/vmailbox" \
        "virtual_uid_maps=static:$uid" \
        "virtual_gid_maps=static:$gid" \
        "virtual_minimum_uid=1" \
        "virtual_mailbox_limit=0" \
        "message_size_limit=20971520"
    printf '%s:{PLAIN}%s:%s:%s::%s/mail/%s/%s\n' "$user" "$pass" "$uid" "$gid" "$dir" "$domain" "$local" \
        >"$dir/dovecot/passwd"
    cat >"$dir/dovecot/dovecot.conf" <<EOF
# private Dovecot, written by tests/interop/lib.sh
base_dir = $dir/dovecot/run
state_dir = $dir/dovecot/state
instance_name = dovecot-interop-$imap_port
listen = 127.0.0.1
protocols = imap
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
log_path = $dir/dovecot/dovecot.log
mail_location = maildir:~
first_valid_uid = 1
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u $dir/dovecot/passwd
}
userdb {
  driver = passwd-file
  args = username_format=%u $dir/dovecot/passwd
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $imap_port
  }
  inet_listener imaps {
    port = 0
  }
}
service stats {
  unix_listener stats-reader {
    mode = 0600
  }
  unix_listener stats-writer {
    mode = 0600
  }
}
EOF
}

# ig_dovecot_start DIR IMAP_PORT: start the private Dovecot, print its master pid.
ig_dovecot_start() {
    local dir=$1 port=$2
    dovecot -c "$dir/dovecot/dovecot.conf" >>"$dir/dovecot/dovecot.log" 2>&1 || {
        tail -20 "$dir/dovecot/dovecot.log" >&2
        ig_die "dovecot did not start"
    }
    ig_wait_port "$port" 20 || {
        tail -20 "$dir/dovecot/dovecot.log" >&2
        ig_die "dovecot imap on $port did not come up"
    }
    tr -dc '0-9' <"$dir/dovecot/run/master.pid"
}

ig_dovecot_stop() {
    local dir=$1 pid
    [ -f "$dir/dovecot/run/master.pid" ] || return 0
    pid=$(tr -dc '0-9' <"$dir/dovecot/run/master.pid")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid"
    ig_wait_pid_gone "$pid" 20 || kill -KILL "$pid" 2>/dev/null
    return 0
}

# --- smtp-sink --------------------------------------------------------------------

# ig_sink_start DIR PORT: smtp-sink counting messages into DIR/sink.out; prints its pid.
ig_sink_start() {
    local dir=$1 port=$2
    mkdir -p "$dir"
    chmod 755 "$dir"
    /usr/sbin/smtp-sink -c -u nobody "127.0.0.1:$port" 1024 >"$dir/sink.out" 2>"$dir/sink.err" &
    local pid=$!
    ig_wait_port "$port" 10 || ig_die "smtp-sink on $port did not come up"
    echo "$pid"
}

# ig_sink_count DIR: messages received so far by the sink started in DIR.
ig_sink_count() {
    local n
    n=$(tail -c 200 "$1/sink.out" 2>/dev/null | tr '\r' '\n' | grep -o 'mesg=[0-9]*' | tail -1 | cut -d= -f2)
    echo "${n:-0}"
}

# ig_smtp_data FILE: the file as SMTP DATA content: CRLF line ends, dot-stuffed, a final
# line end added when missing (e.g. Centreon's printf "%b" body has none). Byte-exact
# otherwise; the terminating "." is left to the caller.
ig_smtp_data() {
    awk '{ sub(/\r$/, ""); if (substr($0, 1, 1) == ".") $0 = "." $0; printf "%s\r\n", $0 }' "$1"
}

ig_kill_pid() {
    local pid=$1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    ig_wait_pid_gone "$pid" 10 || kill -KILL "$pid" 2>/dev/null
    return 0
}
