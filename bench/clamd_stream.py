#!/usr/bin/env python3
"""The scanner's own time: send every message file under a folder to clamd over INSTREAM (64 KiB
chunks, as pillarbox fetch sends them), WORKERS at a time, and wait for every verdict. What a
fetch that scans would take if the link cost nothing.

usage: clamd_stream.py SOCKET FOLDER [WORKERS]

Prints the number of messages scanned and of verdicts other than OK.
"""
import os
import socket
import struct
import sys
from concurrent.futures import ThreadPoolExecutor

sock_path, folder = sys.argv[1], sys.argv[2]
workers = int(sys.argv[3]) if len(sys.argv) > 3 else 4
files = [os.path.join(d, f) for d, _, names in os.walk(folder) for f in names]


def scan(path):
    with open(path, "rb") as f, socket.socket(socket.AF_UNIX) as s:
        s.connect(sock_path)
        s.sendall(b"zINSTREAM\0")
        while chunk := f.read(64 * 1024):
            s.sendall(struct.pack(">I", len(chunk)) + chunk)
        s.sendall(struct.pack(">I", 0))
        reply = b""
        while not reply.endswith(b"\0"):
            more = s.recv(4096)
            if not more:
                break
            reply += more
        return reply.rstrip(b"\0").endswith(b"OK")


with ThreadPoolExecutor(workers) as pool:
    results = list(pool.map(scan, files))
print(len(results), results.count(False))
