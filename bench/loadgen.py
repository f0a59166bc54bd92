#!/usr/bin/env python3
"""SMTP load client for the benchmark: sends the .eml files of a directory (in name order,
cycled if --count is larger) over N parallel sessions and measures every message's accept
latency: from sending MAIL FROM to the 250 reply to the final dot (with PIPELINING, like
Postfix's client: MAIL+RCPT+DATA in one write). Sessions reuse their connection (like a
Postfix relayhost client) unless --per-connection says otherwise.

--rate R paces the whole load at R msgs/s (open loop: latency counts from each message's
scheduled send time, so a stalled server is not hidden by the client waiting). Without
--rate, each session sends as fast as the server answers.

Prints one JSON object: sent, accepted, rejected, errors, elapsed_s, accept_rate, p50_ms,
p90_ms, p99_ms, max_ms, t_start, t_end (Unix times).
"""

import argparse
import asyncio
import json
import os
import sys
import time


def smtp_data(raw):
    """File bytes -> DATA payload: CRLF line ends, dot-stuffed, terminated."""
    lines = raw.replace(b"\r\n", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = [b"." + l if l.startswith(b".") else l for l in lines]
    return b"\r\n".join(out) + b"\r\n.\r\n"


class Session:
    def __init__(self, args):
        self.args = args
        self.reader = None
        self.writer = None
        self.pipelining = False
        self.sent_on_conn = 0

    async def reply(self):
        lines = []
        while True:
            line = await self.reader.readline()
            if not line:
                raise ConnectionError("server closed the connection")
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                return int(line[:3]), b"".join(lines)

    async def connect(self):
        self.reader, self.writer = await asyncio.open_connection(self.args.host, self.args.port)
        code, _ = await self.reply()
        if code != 220:
            raise ConnectionError(f"greeting {code}")
        self.writer.write(b"EHLO loadgen.test\r\n")
        code, text = await self.reply()
        if code != 250:
            raise ConnectionError(f"EHLO {code}")
        self.pipelining = b"PIPELINING" in text.upper()
        self.sent_on_conn = 0

    async def close(self):
        if self.writer is None:
            return
        try:
            self.writer.write(b"QUIT\r\n")
            await asyncio.wait_for(self.reply(), 5)
        except (OSError, ConnectionError, asyncio.TimeoutError):
            pass
        self.writer.close()
        self.writer = None

    async def send(self, payload):
        """One transaction; returns the final reply code."""
        if self.writer is None or (self.args.per_connection and self.sent_on_conn >= self.args.per_connection):
            await self.close()
            await self.connect()
        a = self.args
        cmds = [f"MAIL FROM:<{a.sender}>\r\n".encode(), f"RCPT TO:<{a.rcpt}>\r\n".encode(), b"DATA\r\n"]
        if self.pipelining:
            self.writer.write(b"".join(cmds))
            codes = [(await self.reply())[0] for _ in cmds]
        else:
            codes = []
            for c in cmds:
                self.writer.write(c)
                codes.append((await self.reply())[0])
                if codes[-1] >= 400:
                    break
        if len(codes) < 3 or codes[0] != 250 or codes[1] not in (250, 251) or codes[2] != 354:
            self.writer.write(b"RSET\r\n")
            await self.reply()
            return next((c for c in codes if c >= 400), 554)
        self.writer.write(payload)
        code, _ = await self.reply()
        self.sent_on_conn += 1
        return code


async def worker(args, queue, payloads, results, t0):
    s = Session(args)
    while True:
        item = await queue.get()
        if item is None:
            break
        i, scheduled = item
        if scheduled is not None:
            delay = scheduled - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            start = scheduled
        else:
            start = time.monotonic()
        try:
            code = await s.send(payloads[i % len(payloads)])
        except (OSError, ConnectionError, asyncio.IncompleteReadError) as e:
            results["errors"] += 1
            results["last_error"] = str(e)
            s.writer = None
            continue
        end = time.monotonic()
        if code == 250:
            results["accepted"] += 1
            results["lat"].append(end - start)
            results["t_last"] = end
        else:
            results["rejected"] += 1
            results["last_error"] = f"reply {code}"
    await s.close()


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, int(round(p / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


async def main_async(args):
    files = sorted(f for f in os.listdir(args.dir) if f.endswith(".eml"))
    if not files:
        raise SystemExit(f"no .eml files in {args.dir}")
    count = args.count or len(files)
    payloads = []
    for f in files[:count]:
        with open(os.path.join(args.dir, f), "rb") as fh:
            payloads.append(smtp_data(fh.read()))
    queue = asyncio.Queue()
    t0 = time.monotonic()
    for i in range(count):
        queue.put_nowait((i, t0 + i / args.rate if args.rate else None))
    for _ in range(args.sessions):
        queue.put_nowait(None)
    results = {"accepted": 0, "rejected": 0, "errors": 0, "lat": [], "t_last": t0}
    wall0 = time.time()
    # With --rate, message i must go out at its time whichever session is free: the queue
    # is FIFO, so sessions take messages in schedule order.
    await asyncio.gather(*(worker(args, queue, payloads, results, t0) for _ in range(args.sessions)))
    elapsed = results["t_last"] - t0
    lat = sorted(results["lat"])
    ms = lambda v: None if v is None else round(v * 1000, 2)
    out = {
        "target_port": args.port, "dir": args.dir, "sessions": args.sessions, "rate": args.rate,
        "sent": count, "accepted": results["accepted"], "rejected": results["rejected"],
        "errors": results["errors"], "elapsed_s": round(elapsed, 3),
        "accept_rate": round(results["accepted"] / elapsed, 1) if elapsed > 0 else None,
        "p50_ms": ms(percentile(lat, 50)), "p90_ms": ms(percentile(lat, 90)),
        "p99_ms": ms(percentile(lat, 99)), "max_ms": ms(lat[-1] if lat else None),
        "t_start": wall0, "t_end": wall0 + elapsed,
    }
    if "last_error" in results:
        out["last_error"] = results["last_error"]
    return out


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--dir", required=True, help="directory of .eml files")
    p.add_argument("--count", type=int, default=0, help="messages to send (default: one per file)")
    p.add_argument("--sessions", type=int, default=10)
    p.add_argument("--rate", type=float, default=0.0, help="total msgs/s (default: as fast as possible)")
    p.add_argument("--per-connection", type=int, default=0,
                   help="messages per connection before reconnecting (0: reuse forever)")
    p.add_argument("--sender", default="nagios@monitoring.test")
    p.add_argument("--rcpt", default="glpi@example.test")
    args = p.parse_args(argv)
    out = asyncio.run(main_async(args))
    print(json.dumps(out))
    return 0 if out["errors"] == 0 and out["rejected"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
