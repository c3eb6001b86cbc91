#!/usr/bin/env python3
"""Fill a Maildir with COUNT deterministic, realistic messages (same seed, same bytes).

usage: genmail.py MAILDIR COUNT AVG_KB SEED

Messages mix plain text, quoted-printable and multipart with base64 attachments, with lines
starting with a dot and some 8-bit headers; sizes vary around AVG_KB (log-normal). Files are
written with LF line ends and Dovecot-style names carrying ,S= (stored) and ,W= (CRLF) sizes.
"""
import base64
import os
import random
import sys

maildir, count, avg_kb, seed = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
WORDS = ("mail server client message download protocol maildrop latency the of and to in is that for "
         "it as was with be by on not this are or from at which but have an they you were").split()
for sub in ("cur", "new", "tmp"):
    os.makedirs(os.path.join(maildir, sub), exist_ok=True)


def text(n):
    out, line = [], []
    while sum(len(l) + 1 for l in out) < n:
        line.append(rng.choice(WORDS))
        if len(" ".join(line)) > 66:
            l = " ".join(line)
            out.append("." + l if rng.random() < 0.02 else l)
            line = []
    return "\n".join(out) + "\n"


for i in range(count):
    target = max(600, int(rng.lognormvariate(0, 0.8) * avg_kb * 1024 / 1.377))
    head = (f"From: Sender {i} <s{i}@example.org>\nTo: alice@example.org\n"
            f"Subject: {'Grüße' if i % 7 == 0 else 'Report'} {i}\nMessage-ID: <{seed}.{i}@bench>\n"
            f"Date: Thu, 26 Nov 2026 07:{i % 60:02d}:00 +0000\nMIME-Version: 1.0\n")
    if i % 3 == 0 and target > 4000:
        blob = base64.encodebytes(rng.randbytes(int((target - 1500) * 0.74))).decode()
        body = (f"Content-Type: multipart/mixed; boundary=b{i}\n\n--b{i}\nContent-Type: text/plain\n\n"
                f"{text(800)}--b{i}\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
                f"{blob}--b{i}--\n")
    else:
        body = "Content-Type: text/plain; charset=utf-8\n\n" + text(target - len(head))
    data = (head + body).encode()
    crlf = len(data) + data.count(b"\n")
    name = f"{1790000000 + i}.M{i}P1.bench,S={len(data)},W={crlf}"
    with open(os.path.join(maildir, "new", name), "wb") as f:
        f.write(data)
