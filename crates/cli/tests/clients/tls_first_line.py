#!/usr/bin/env python3
"""Connect with implicit TLS (verifying CAFILE) and print the server's first line.

usage: tls_first_line.py HOST PORT CAFILE
"""
import socket
import ssl
import sys

host, port, cafile = sys.argv[1:4]
ctx = ssl.create_default_context(cafile=cafile)
with ctx.wrap_socket(socket.create_connection((host, int(port)), timeout=20), server_hostname="localhost") as s:
    print(s.makefile("rb").readline().decode().rstrip("\r\n"))
