#!/usr/bin/env python3
"""The link's own limit for a POP3 download: log in, send every RETR (and DELE, with --delete)
and QUIT in one pipelined burst, and read the answers to the end, storing nothing and parsing
nothing. What a client that does no work at all would take.

usage: bare_pop3.py HOST PORT USER PASSWORD COUNT [--delete] [--tls CA_FILE]

Prints the octets received.
"""
import socket
import ssl
import sys
import threading

host, port, user, password, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
delete = "--delete" in sys.argv
ca = sys.argv[sys.argv.index("--tls") + 1] if "--tls" in sys.argv else None

sock = socket.create_connection((host, port))
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
if ca:
    sock = ssl.create_default_context(cafile=ca).wrap_socket(sock, server_hostname=host)
f = sock.makefile("rb")


def expect_ok():
    line = f.readline()
    if not line.startswith(b"+OK"):
        sys.exit(f"bare_pop3: {line!r}")


expect_ok()
for cmd in (f"USER {user}", f"PASS {password}"):
    sock.sendall(cmd.encode() + b"\r\n")
    expect_ok()
burst = b"".join(
    f"RETR {n}\r\n".encode() + (f"DELE {n}\r\n".encode() if delete else b"") for n in range(1, count + 1)
) + b"QUIT\r\n"
# Sent beside the reading, so that neither side waits on a full buffer.
sender = threading.Thread(target=sock.sendall, args=(burst,))
sender.start()
# What the line reader already holds, then straight from the socket.
total = len(f.read1(1 << 22))
buf = bytearray(1 << 22)
while True:
    n = sock.recv_into(buf)
    if not n:
        break
    total += n
sender.join()
print(total)
