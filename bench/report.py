#!/usr/bin/env python3
"""Markdown table from bench/run.sh's JSON lines. Ratios compare runs made with the same
load tool and mail set within this one run (back-to-back runs on a 2-core box drift, so
only same-run ratios are meaningful)."""

import json
import sys

LABELS = {
    "ceiling-source": "(i) ceiling: smtp-source → smtp-sink",
    "ceiling-load": "(i) ceiling: loadgen, distinct alerts → smtp-sink",
    "ceiling-latency": "(i) ceiling: latency run → smtp-sink",
    "postfix-source": "(ii) smtp-source → Postfix → smtp-sink",
    "postfix-load": "(ii) loadgen, distinct alerts → Postfix → smtp-sink",
    "postfix-latency": "(ii) latency run → Postfix → smtp-sink",
    "alertgate-distinct": "(iii) loadgen, 20k distinct alerts → alertgate → smtp-sink",
    "alertgate-repeats": "(iii) loadgen, realistic repeats → alertgate → smtp-sink",
    "alertgate-latency": "(iii) latency run → alertgate → smtp-sink",
    "alertgate-source": "(iii) smtp-source, one alert repeated → alertgate → smtp-sink",
    "alertgate-storm": "(iii) storm 500 hosts × 40 svc, 10% DOWN → alertgate (default digest) → smtp-sink",
}


def fmt(v, nd=0):
    if v is None:
        return "–"
    return f"{v:,.{nd}f}"


def main(path):
    rows = [json.loads(l) for l in open(path) if l.strip()]
    by = {r["name"]: r for r in rows}

    def ratio(r, base_name):
        b = by.get(base_name)
        if not b or not b.get("accept_rate") or not r.get("accept_rate"):
            return "–"
        return f"{r['accept_rate'] / b['accept_rate']:.2f}"

    base = {"smtp-source": ("ceiling-source", "postfix-source"),
            "loadgen": ("ceiling-load", "postfix-load"),
            "latency": ("ceiling-latency", "postfix-latency")}
    print("End-to-end = mails in / time from the first send until the last mail reached the sink "
          "with nothing left queued.\n")
    print("| run | mails in | accepted msgs/s | end-to-end msgs/s | p50 / p99 accept ms | "
          "peak RSS / PSS MB (procs) | mails out | accept vs ceiling | accept vs Postfix |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        c, p = base.get(r["tool"], (None, None))
        lat = "–" if r.get("p50_ms") is None else f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f}"
        mem = "–"
        if r.get("peak_rss_kb") is not None:
            mem = f"{r['peak_rss_kb'] / 1024:.1f} / {(r.get('peak_pss_kb') or 0) / 1024:.1f} ({r.get('max_procs')})"
        errs = f" ({r['errors']} errors)" if r.get("errors") else ""
        if r.get("drained", True):
            e2e = f"{fmt(r['e2e_rate'])} ({r['e2e_s']:.1f} s)"
        else:
            e2e = (f"**not drained** after {r['e2e_s']:.0f} s: {fmt(r['arrivals'])} out, "
                   f"{fmt(r.get('out_rate', r['arrivals'] / r['e2e_s']))} out/s")
        label = LABELS.get(r["name"], r["name"])
        if r.get("store") == "postgres":
            pg = r.get("pg_vmhwm_sum_kb")
            label += " [PostgreSQL store" + (f"; its processes' VmHWM sum {pg / 1024:.0f} MB]" if pg else "]")
        print(f"| {label} | {fmt(r['sent'])}{errs} | {fmt(r['accept_rate'])} | "
              f"{e2e} | {lat} | {mem} | {fmt(r['arrivals'])} | "
              f"{ratio(r, c)} | {ratio(r, p)} |")


if __name__ == "__main__":
    main(sys.argv[1])
