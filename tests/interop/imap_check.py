#!/usr/bin/env python3
"""Read a real IMAP mailbox (the GLPI mailbox stand-in) and check what alertgate put in it.

Logs in with stdlib imaplib, fetches every message of INBOX and prints one TAP-style line
per check (`ok - name` / `not ok - name`). Exit status 0 when every check passed.
With --wait it first polls until the mailbox holds at least --expect-count messages.
"""

import argparse
import email
import email.policy
import imaplib
import json
import re
import sys
import time


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--wait", type=float, default=0.0,
                   help="poll up to this many seconds for --expect-count messages")
    p.add_argument("--settle", type=float, default=0.0,
                   help="after the count is reached, wait this long more (to catch duplicates)")
    p.add_argument("--expect-count", type=int, help="exact number of messages")
    p.add_argument("--expect-threads", type=int, help="exact number of distinct thread tags")
    p.add_argument("--expect-subject", action="append", default=[], metavar="REGEX",
                   help="some message's subject must match (repeatable)")
    p.add_argument("--tag-regex", default=r"\[ALERT-[0-9A-Za-z_-]{4,}\]",
                   help="every subject must contain this; the match is the thread tag")
    p.add_argument("--alertgate", action="store_true",
                   help="check alertgate's output rules: tag, threading, HTML part, "
                        "no Auto-Submitted, no GLPI in Message-ID, X-Alertgate-* headers")
    p.add_argument("--unique", action="store_true",
                   help="every Message-ID appears once (delivered exactly once)")
    p.add_argument("--count-only", action="store_true",
                   help="print the number of messages and exit")
    p.add_argument("--dump", metavar="FILE", help="write a JSON summary of every message")
    p.add_argument("--prefix", default="", help="prefix for check names")
    return p.parse_args(argv)


def connect(args):
    imap = imaplib.IMAP4(args.host, args.port)
    imap.login(args.user, args.password)
    imap.select("INBOX", readonly=True)
    return imap


def message_count(args):
    imap = connect(args)
    try:
        typ, data = imap.search(None, "ALL")
        if typ != "OK":
            raise RuntimeError(f"IMAP SEARCH failed: {typ} {data}")
        return len(data[0].split())
    finally:
        imap.logout()


def fetch_all(args):
    imap = connect(args)
    try:
        typ, data = imap.search(None, "ALL")
        if typ != "OK":
            raise RuntimeError(f"IMAP SEARCH failed: {typ} {data}")
        messages = []
        for num in data[0].split():
            typ, parts = imap.fetch(num, "(RFC822)")
            if typ != "OK":
                raise RuntimeError(f"IMAP FETCH {num!r} failed: {typ}")
            raw = next(p[1] for p in parts if isinstance(p, tuple))
            messages.append(email.message_from_bytes(raw, policy=email.policy.default))
        return messages
    finally:
        imap.logout()


def ids_in(value):
    return re.findall(r"<[^<>\s]+>", value or "")


def alternative_with_html(msg):
    """True when the mail's own structure (not an attached original) holds a
    multipart/alternative part with a text/html alternative."""
    def walk(part):
        if part.get_content_type() == "message/rfc822":
            return False
        if part.get_content_type() == "multipart/alternative":
            if any(p.get_content_type() == "text/html" for p in part.iter_parts()):
                return True
        if part.is_multipart():
            return any(walk(p) for p in part.iter_parts())
        return False
    return walk(msg)


def summarize(msg):
    html = alternative_with_html(msg)
    return {
        "subject": str(msg.get("Subject", "")),
        "message_id": (ids_in(msg.get("Message-ID", "")) or [""])[0],
        "in_reply_to": ids_in(msg.get("In-Reply-To", "")),
        "references": ids_in(msg.get("References", "")),
        "content_type": msg.get_content_type(),
        "has_html": html,
        "auto_submitted": msg.get("Auto-Submitted"),
        "x_auto_response_suppress": msg.get("X-Auto-Response-Suppress"),
        "x_alertgate": {k: str(v) for k, v in msg.items() if k.lower().startswith("x-alertgate-")},
        "from": str(msg.get("From", "")),
        "to": str(msg.get("To", "")),
    }


class Checks:
    def __init__(self, prefix):
        self.prefix = prefix
        self.failed = 0
        self.passed = 0

    def check(self, ok, name, detail=""):
        if ok:
            self.passed += 1
            print(f"ok - {self.prefix}{name}")
        else:
            self.failed += 1
            print(f"not ok - {self.prefix}{name}")
            if detail:
                for line in str(detail).splitlines()[:20]:
                    print(f"#   {line}")
        sys.stdout.flush()


def thread_checks(checks, mails, tag_regex):
    """Every mail of a thread (same tag) except its opener references the opener."""
    by_tag = {}
    for m in mails:
        tag = re.search(tag_regex, m["subject"])
        by_tag.setdefault(tag.group(0) if tag else None, []).append(m)
    by_tag.pop(None, None)
    all_ids = {m["message_id"]: m for m in mails}
    problems = []
    for tag, group in sorted(by_tag.items()):
        openers = [m for m in group if not m["in_reply_to"] and not m["references"]]
        if len(openers) != 1:
            problems.append(f"{tag}: {len(openers)} mails without In-Reply-To/References "
                            f"(want exactly 1 opener) in a thread of {len(group)}")
            continue
        root = openers[0]["message_id"]
        for m in group:
            if m is openers[0]:
                continue
            if root not in m["references"]:
                problems.append(f"{tag}: {m['subject']!r} References {m['references']} "
                                f"lacks the opener {root}")
            if not m["in_reply_to"]:
                problems.append(f"{tag}: {m['subject']!r} has no In-Reply-To")
            for ref in m["references"]:
                other = all_ids.get(ref)
                if other is not None and re.search(tag_regex, other["subject"]).group(0) != tag:
                    problems.append(f"{tag}: {m['subject']!r} references a mail of another "
                                    f"thread: {other['subject']!r}")
    return by_tag, problems


def run_checks(args, mails):
    checks = Checks(args.prefix)
    n = len(mails)
    if args.expect_count is not None:
        checks.check(n == args.expect_count, f"mailbox holds {args.expect_count} messages",
                     f"found {n}: " + "; ".join(m["subject"] for m in mails[:10]))
    if args.unique:
        seen = {}
        for m in mails:
            seen[m["message_id"]] = seen.get(m["message_id"], 0) + 1
        dups = {k: v for k, v in seen.items() if v > 1 or not k}
        checks.check(not dups, "every Message-ID delivered exactly once", dups)
    for regex in args.expect_subject:
        checks.check(any(re.search(regex, m["subject"]) for m in mails),
                     f"a subject matches /{regex}/",
                     "subjects: " + "; ".join(m["subject"] for m in mails[:10]))
    if args.alertgate:
        untagged = [m["subject"] for m in mails if not re.search(args.tag_regex, m["subject"])]
        checks.check(n > 0 and not untagged, "every subject carries the thread tag", untagged)
        no_html = [(m["subject"], m["content_type"]) for m in mails if not m["has_html"]]
        checks.check(n > 0 and not no_html, "every mail has multipart/alternative with text/html",
                     no_html)
        auto = [m["subject"] for m in mails if m["auto_submitted"] or m["x_auto_response_suppress"]]
        checks.check(n > 0 and not auto, "no Auto-Submitted / X-Auto-Response-Suppress", auto)
        glpi_ids = [m["message_id"] for m in mails if "glpi" in m["message_id"].lower()]
        checks.check(n > 0 and not glpi_ids, "no Message-ID contains GLPI", glpi_ids)
        no_mid = [m["subject"] for m in mails if not m["message_id"]]
        checks.check(n > 0 and not no_mid, "every mail has a Message-ID", no_mid)
        no_x = [m["subject"] for m in mails if not m["x_alertgate"]]
        checks.check(n > 0 and not no_x, "every mail carries X-Alertgate-* headers", no_x)
        by_tag, problems = thread_checks(checks, mails, args.tag_regex)
        checks.check(n > 0 and bool(by_tag) and not problems, "References/In-Reply-To chain each thread to its opener",
                     "\n".join(problems))
        if args.expect_threads is not None:
            checks.check(len(by_tag) == args.expect_threads,
                         f"{args.expect_threads} distinct thread tags",
                         f"found {len(by_tag)}: {sorted(by_tag)[:10]}")
    return checks


def main(argv):
    args = parse_args(argv)
    if args.count_only:
        print(message_count(args))
        return 0
    deadline = time.time() + args.wait
    want = args.expect_count or 1
    n = message_count(args)
    while n < want and time.time() < deadline:
        time.sleep(0.5)
        n = message_count(args)
    if args.settle:
        time.sleep(args.settle)
    mails = [summarize(m) for m in fetch_all(args)]
    if args.dump:
        with open(args.dump, "w", encoding="utf-8") as f:
            json.dump(mails, f, indent=1)
    checks = run_checks(args, mails)
    return 0 if checks.failed == 0 else 1


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (OSError, imaplib.IMAP4.error, RuntimeError) as e:
        print(f"not ok - IMAP check could not run: {e}")
        sys.exit(1)
