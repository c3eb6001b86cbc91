#!/usr/bin/env python3
"""Drive a running Pillarbox with Python's poplib, the way real scripts and clients do.

usage: poplib_check.py HOST POP3_PORT POP3S_PORT CAFILE USER PASSWORD APOP_USER APOP_SECRET MSG...

Each MSG is a file as it was delivered; RETR must return it with CRLF line ends.
Exits non-zero (with a traceback) on the first mismatch; prints "ok" at the end.
"""
import hashlib
import poplib
import socket
import ssl
import sys

host, port, sport, cafile, user, password, apop_user, apop_secret = sys.argv[1:9]
port, sport = int(port), int(sport)
files = sys.argv[9:]


def crlf(data):
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def joined(lines):
    """poplib returns unstuffed lines without CRLF; rebuild the octets the server sent."""
    return b"".join(l + b"\r\n" for l in lines)


expected = [open(f, "rb").read() for f in files]
wire = [crlf(m) if m.endswith(b"\n") else crlf(m) + b"\r\n" for m in expected]
# LIST and STAT count what RETR sends, the CRLF after a last line without one included.
sizes = [len(w) for w in wire]
ctx = ssl.create_default_context(cafile=cafile)

# 1. USER/PASS on the plain port (loopback is a trusted network), every listing command.
p = poplib.POP3(host, port, timeout=20)
assert p.getwelcome().startswith(b"+OK"), p.getwelcome()
caps = p.capa()
for cap in ("TOP", "UIDL", "USER", "PIPELINING", "RESP-CODES", "STLS"):
    assert cap in caps, (cap, caps)
p.user(user)
p.pass_(password)
assert p.stat() == (len(files), sum(sizes)), (p.stat(), sizes)
resp, listing, _ = p.list()
assert [int(l.split()[1]) for l in listing] == sizes, (listing, sizes)
resp, uidls, _ = p.uidl()
ids = [l.split()[1] for l in uidls]
assert len(set(ids)) == len(ids) and all(0 < len(i) <= 70 for i in ids), ids
for i, want in enumerate(wire, start=1):
    resp, lines, octets = p.retr(i)
    got = joined(lines)
    assert got == want, (i, hashlib.sha256(got).hexdigest(), hashlib.sha256(want).hexdigest())
    assert resp.startswith(b"+OK %d octets" % sizes[i - 1]), resp
    header = want.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    resp, lines, _ = p.top(i, 0)
    assert joined(lines) == header, (i, joined(lines))
    body = want.split(b"\r\n\r\n", 1)[1]
    body_lines = body[:-2].split(b"\r\n")[:2] if body else []
    resp, lines, _ = p.top(i, 2)
    assert joined(lines) == header + b"".join(l + b"\r\n" for l in body_lines), (i, joined(lines))
assert "USER" in p.capa(), "USER stays listed after login"
p.quit()

# 2. APOP.
p = poplib.POP3(host, port, timeout=20)
assert b"<" in p.getwelcome(), "greeting carries an APOP timestamp when a user has an APOP secret"
p.apop(apop_user, apop_secret)
p.stat()
p.quit()
p = poplib.POP3(host, port, timeout=20)
try:
    p.apop(apop_user, "wrong secret")
    raise SystemExit("APOP with a wrong secret succeeded")
except poplib.error_proto as e:
    assert str(e).startswith("b'-ERR [AUTH]"), e
p.quit()

# 3. STLS with certificate verification, then login inside TLS.
p = poplib.POP3(host, port, timeout=20)
p.stls(context=ctx)
assert "STLS" not in p.capa(), "STLS is not offered inside TLS"
p.user(user)
p.pass_(password)
assert p.stat()[0] == len(files)
p.quit()

# 4. Implicit TLS (POP3S).
p = poplib.POP3_SSL(host, sport, context=ctx, timeout=20)
assert "STLS" not in p.capa()
p.user(user)
p.pass_(password)
assert p.uidl()[1] == uidls, "UIDLs are the same in every session"
p.quit()

# 5. STARTTLS command injection: a command pipelined after STLS must not be answered inside TLS.
s = socket.create_connection((host, port), timeout=20)
f = s.makefile("rb")
assert f.readline().startswith(b"+OK")
s.sendall(b"STLS\r\nCAPA\r\n")
assert f.readline().startswith(b"+OK"), "STLS accepted"
t = ctx.wrap_socket(s, server_hostname=host)
t.sendall(b"QUIT\r\n")
first = t.makefile("rb").readline()
assert first == b"+OK Pillarbox signing off\r\n", ("injected CAPA was answered inside TLS", first)
t.close()

# 6. Delete everything, and see it gone in the next session.
p = poplib.POP3(host, port, timeout=20)
p.user(user)
p.pass_(password)
for i in range(1, len(files) + 1):
    p.dele(i)
p.quit()
p = poplib.POP3(host, port, timeout=20)
p.user(user)
p.pass_(password)
assert p.stat() == (0, 0), p.stat()
p.quit()
print("ok")
