#!/usr/bin/env python3
"""Peak resident memory of a process and all its descendants (summed VmRSS, and summed PSS,
which counts shared library pages once across processes; sampled every 100 ms), e.g. a Postfix master with its smtpd/cleanup/qmgr/smtp children. Also reports the
root's own VmHWM (kernel-tracked peak, exact for a single-process server like alertgate).
Runs until the root process exits or SIGTERM; writes a JSON object to --out on every new
peak, so the file is valid whenever it is read.
"""

import argparse
import json
import os
import signal
import sys
import time


def children_map():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def status_kb(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kb(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree(root, kids):
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def main(argv):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    peak = {"peak_tree_rss_kb": 0, "peak_tree_pss_kb": 0, "root_vmhwm_kb": 0, "max_procs": 0}
    while os.path.exists(f"/proc/{args.pid}"):
        pids = tree(args.pid, children_map())
        rss = sum(status_kb(x, "VmRSS") for x in pids)
        pss = sum(pss_kb(x) for x in pids)
        hwm = status_kb(args.pid, "VmHWM")
        if (rss > peak["peak_tree_rss_kb"] or pss > peak["peak_tree_pss_kb"]
                or hwm > peak["root_vmhwm_kb"] or len(pids) > peak["max_procs"]):
            peak = {"peak_tree_rss_kb": max(rss, peak["peak_tree_rss_kb"]),
                    "peak_tree_pss_kb": max(pss, peak["peak_tree_pss_kb"]),
                    "root_vmhwm_kb": max(hwm, peak["root_vmhwm_kb"]),
                    "max_procs": max(len(pids), peak["max_procs"])}
            tmp = args.out + ".tmp"
            with open(tmp, "w") as f:
                json.dump(peak, f)
            os.replace(tmp, args.out)
        time.sleep(0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
