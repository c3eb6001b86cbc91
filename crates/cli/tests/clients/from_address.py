#!/usr/bin/env python3
"""A POP3 conversation from a chosen local address (e.g. 127.0.0.2, outside the trusted
networks), optionally upgraded with STLS, as an untrusted client would have it.

usage: from_address.py SOURCE-IP HOST PORT CAFILE COMMAND...

Each COMMAND is sent as a line; the special command STLS also performs the TLS handshake
(verifying CAFILE), and CAPA prints the whole listing. Prints every response line.
"""
import socket
import ssl
import sys

src, host, port, cafile = sys.argv[1:5]
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.bind((src, 0))
sock.settimeout(20)
sock.connect((host, int(port)))
f = sock.makefile("rb")
print(f.readline().decode().rstrip("\r\n"))
for cmd in sys.argv[5:]:
    sock.sendall(cmd.encode() + b"\r\n")
    first = f.readline().decode().rstrip("\r\n")
    print(first)
    if cmd in ("CAPA", "AUTH") and first.startswith("+OK"):
        while True:
            l = f.readline().decode().rstrip("\r\n")
            print(l)
            if l == ".":
                break
    if cmd == "STLS" and first.startswith("+OK"):
        ctx = ssl.create_default_context(cafile=cafile)
        sock = ctx.wrap_socket(sock, server_hostname="localhost")
        f = sock.makefile("rb")
