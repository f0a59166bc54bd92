#!/usr/bin/env python3
"""Write alert notification mails, one .eml per file, in the wire formats of Nagios Core's
and Centreon's default `notify-*-by-email` commands (see design/alert-formats.md §1a, §2),
as sent by bsd-mailx: To + Subject only, unless --full-headers adds From/Date/Message-ID.

Scenarios (files are numbered in send order; manifest.json lists every mail's key and type):
  interop   K keys get a PROBLEM each, then the first R of them a RECOVERY.
  distinct  N mails, every one for a different host/service (worst case for correlation).
  repeats   N mails over N/10 keys; each key runs one episode: PROBLEM, 8 re-notifications
            (state WARNING/CRITICAL as it changes), RECOVERY; episodes interleave in time.
  storm     500 hosts x 40 services, 10% of hosts DOWN: one host DOWN mail per down host,
            then service PROBLEM mails (CRITICAL on down hosts) until N mails in total.
--size pads the plugin output (Centreon/Nagios print it in the body) so each mail is about
that many bytes, like a long plugin output with performance data would.
"""

import argparse
import json
import os
import random
import sys
import time
from email.utils import formatdate

SERVICES = [
    "CPU", "Load", "Memory", "Swap", "Disk-/", "Disk-/var", "Disk-/home", "Disk-/data",
    "Ping", "SSH", "HTTP", "HTTPS", "NTP", "DNS", "SMTP", "IMAP", "MySQL", "PostgreSQL",
    "Redis", "Nginx", "Apache", "Tomcat", "JVM-Heap", "Uptime", "Processes", "Zombies",
    "Users", "Interface-eth0", "Interface-eth1", "Backup", "Certificate", "Cron",
    "Syslog", "Inodes-/", "Raid", "Temperature", "Fan", "PSU", "Multipath", "Kernel",
]


def plugin_output(state, service, pad_to):
    head = {
        "OK": f"OK - {service} is fine",
        "WARNING": f"WARNING - {service} above warning threshold (81%)",
        "CRITICAL": f"CRITICAL - {service} above critical threshold (97%)",
        "UNKNOWN": f"UNKNOWN - {service} check timed out after 10 seconds",
        "DOWN": "CRITICAL - Host Unreachable (10.0.0.1)",
        "UP": "PING OK - Packet loss = 0%, RTA = 0.41 ms",
    }[state]
    # Long plugin output with performance data, wrapped like $LONGSERVICEOUTPUT$ lines
    # (SMTP forbids lines over 998 bytes).
    lines, line, i = [], "", 0
    while len(head) + sum(len(x) + 1 for x in lines) + len(line) < pad_to:
        line += f"m{i}={(i * 37) % 100}%;80;95;0;100 "
        i += 1
        if len(line) > 70:
            lines.append(line.rstrip())
            line = ""
    if line:
        lines.append(line.rstrip())
    return "\n".join([head] + lines)


def nagios_service(ntype, host, service, state, when, pad):
    subject = f"** {ntype} Service Alert: {host}/{service} is {state} **"
    body = (f"***** Nagios *****\n\nNotification Type: {ntype}\n\nService: {service}\n"
            f"Host: {host}\nAddress: {address(host)}\nState: {state}\n\n"
            f"Date/Time: {time.strftime('%a %b %d %H:%M:%S UTC %Y', time.gmtime(when))}\n\n"
            f"Additional Info:\n\n{plugin_output(state, service, pad)}\n")
    return subject, body


def nagios_host(ntype, host, state, when, pad):
    subject = f"** {ntype} Host Alert: {host} is {state} **"
    body = (f"***** Nagios *****\n\nNotification Type: {ntype}\nHost: {host}\nState: {state}\n"
            f"Address: {address(host)}\nInfo: {plugin_output(state, 'host', pad)}\n\n"
            f"Date/Time: {time.strftime('%a %b %d %H:%M:%S UTC %Y', time.gmtime(when))}\n")
    return subject, body


def centreon_service(ntype, host, service, state, when, pad):
    subject = f"** {ntype} alert - {host}/{service} is {state} **"
    body = (f"***** centreon Notification *****\n\nNotification Type: {ntype}\n\n"
            f"Service: {service}\nHost: {host}\nAddress: {address(host)}\nState: {state}\n\n"
            f"Date/Time: {time.strftime('%Y-%m-%d', time.gmtime(when))} "
            f"Additional Info : {plugin_output(state, service, pad)}")
    return subject, body


def centreon_host(ntype, host, state, when, pad):
    subject = f"Host {state} alert for {host}!"
    body = (f"***** centreon Notification *****\n\nType:{ntype}\nHost: {host}\nState: {state}\n"
            f"Address: {address(host)}\nInfo: {plugin_output(state, 'host', pad)}\n"
            f"Date/Time: {time.strftime('%Y-%m-%d', time.gmtime(when))}")
    return subject, body


def address(host):
    n = sum(map(ord, host))
    return f"10.{n % 200}.{(n // 7) % 250}.{(n // 3) % 250 + 1}"


def render(event, args, seq, when):
    """event: dict(tool, kind, ntype, host, service, state) -> bytes of one mail."""
    pad = max(0, args.size - 420)
    if event["kind"] == "service":
        fn = nagios_service if event["tool"] == "nagios" else centreon_service
        subject, body = fn(event["ntype"], event["host"], event["service"], event["state"], when, pad)
    else:
        fn = nagios_host if event["tool"] == "nagios" else centreon_host
        subject, body = fn(event["ntype"], event["host"], event["state"], when, pad)
    headers = [f"To: {args.to}", f"Subject: {subject}"]
    if args.full_headers:
        headers = [f"From: {event['tool']} <{event['tool']}@monitoring.test>"] + headers + [
            f"Date: {formatdate(when)}",
            f"Message-ID: <{args.run_id}.{seq}@monitoring.test>",
        ]
    # bsd-mailx adds no MIME headers; the body is ASCII here.
    return ("\n".join(headers) + "\n\n" + body).encode()


def host_name(i):
    return f"srv-{i:05d}.dc1.example.test"


def scenario_interop(args, rng):
    keys = [(("nagios", "centreon")[i % 2], host_name(i), SERVICES[i % len(SERVICES)])
            for i in range(args.keys)]
    events = [dict(tool=t, kind="service", ntype="PROBLEM", host=h, service=s, state="CRITICAL")
              for t, h, s in keys]
    events += [dict(tool=t, kind="service", ntype="RECOVERY", host=h, service=s, state="OK")
               for t, h, s in keys[:args.recoveries]]
    return events


def scenario_distinct(args, rng):
    return [dict(tool=("nagios", "centreon")[i % 2], kind="service", ntype="PROBLEM",
                 host=host_name(i // len(SERVICES)), service=SERVICES[i % len(SERVICES)],
                 state=rng.choice(["WARNING", "CRITICAL"])) for i in range(args.count)]


def scenario_repeats(args, rng):
    per_key = 10
    nkeys = max(1, args.count // per_key)
    episodes = []
    for k in range(nkeys):
        tool = ("nagios", "centreon")[k % 2]
        host, service = host_name(k // len(SERVICES)), SERVICES[k % len(SERVICES)]
        ep = []
        state = rng.choice(["WARNING", "CRITICAL"])
        ep.append(dict(ntype="PROBLEM", state=state))
        for _ in range(per_key - 2):
            if rng.random() < 0.2:
                state = "CRITICAL" if state == "WARNING" else "WARNING"
            ep.append(dict(ntype="PROBLEM", state=state))
        ep.append(dict(ntype="RECOVERY", state="OK"))
        episodes.append([dict(e, tool=tool, kind="service", host=host, service=service) for e in ep])
    # Interleave the episodes at random while keeping each episode's own order.
    events, cursors = [], [0] * nkeys
    live = list(range(nkeys))
    while live and len(events) < args.count:
        i = rng.randrange(len(live))
        k = live[i]
        events.append(episodes[k][cursors[k]])
        cursors[k] += 1
        if cursors[k] == len(episodes[k]):
            live[i] = live[-1]
            live.pop()
    return events


def scenario_storm(args, rng):
    hosts = [host_name(i) for i in range(500)]
    down = set(rng.sample(range(500), 50))
    events = [dict(tool="nagios", kind="host", ntype="PROBLEM", host=hosts[i], service=None,
                   state="DOWN") for i in sorted(down)]
    services = [(i, s) for i in range(500) for s in SERVICES]
    rng.shuffle(services)
    for i, s in services:
        if len(events) >= args.count:
            break
        state = "CRITICAL" if i in down else rng.choice(["WARNING", "CRITICAL", "UNKNOWN"])
        events.append(dict(tool="nagios", kind="service", ntype="PROBLEM", host=hosts[i],
                           service=s, state=state))
    return events


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=["interop", "distinct", "repeats", "storm"])
    p.add_argument("--out", required=True, help="directory for NNNNNN.eml + manifest.json")
    p.add_argument("--count", type=int, default=20000)
    p.add_argument("--keys", type=int, default=6, help="interop: number of alert keys")
    p.add_argument("--recoveries", type=int, default=2, help="interop: keys that recover")
    p.add_argument("--size", type=int, default=0, help="pad each mail to about this many bytes")
    p.add_argument("--to", default="glpi@example.test")
    p.add_argument("--full-headers", action="store_true", help="add From, Date, Message-ID")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    args.run_id = f"{int(time.time())}.{os.getpid()}"
    rng = random.Random(args.seed)
    events = globals()[f"scenario_{args.scenario}"](args, rng)
    os.makedirs(args.out, exist_ok=True)
    now = time.time()
    for seq, ev in enumerate(events):
        with open(os.path.join(args.out, f"{seq:06d}.eml"), "wb") as f:
            f.write(render(ev, args, seq, now + seq * 0.001))
    keys = {(e["host"], e["service"]) for e in events}
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump({"scenario": args.scenario, "mails": len(events), "keys": len(keys),
                   "events": events}, f)
    print(f"{len(events)} mails, {len(keys)} keys -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
