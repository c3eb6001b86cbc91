#!/usr/bin/env python3
"""An independent SCRAM client (RFC 5802, RFC 7677, RFC 9266) for POP3 AUTH, written with
hashlib/hmac and pyOpenSSL (for the TLS exporter that -PLUS binds to).

usage: scram_client.py HOST PORT plain|pop3s CAFILE MECHANISM USER PASSWORD [expect-fail] [wrong-binding] [sni=NAME]

Prints "ok" after a successful login (server signature checked), or "refused: <line>" when the
server refuses and expect-fail was given. Exits non-zero on anything unexpected.
"""
import base64
import hashlib
import hmac
import os
import socket
import sys

from OpenSSL import SSL

host, port, mode, cafile, mech, user, password = sys.argv[1:8]
flags = set(sys.argv[8:])
sni = next((f[4:] for f in flags if f.startswith("sni=")), "localhost")
hname = "sha1" if mech.startswith("SCRAM-SHA-1") else "sha256"
plus = mech.endswith("-PLUS")


class Conn:
    def __init__(self):
        sock = socket.create_connection((host, int(port)), timeout=20)
        # pyOpenSSL needs a blocking socket (a timeout makes it raise WantReadError).
        sock.settimeout(None)
        self.tls = None
        if mode == "pop3s":
            ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
            ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
            ctx.load_verify_locations(cafile)
            ctx.set_verify(SSL.VERIFY_PEER, lambda *a: a[-1])
            self.tls = SSL.Connection(ctx, sock)
            self.tls.set_tlsext_host_name(sni.encode())
            self.tls.set_connect_state()
            self.tls.do_handshake()
        self.sock = sock
        self.buf = b""

    def send(self, data):
        (self.tls or self.sock).sendall(data)

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = (self.tls or self.sock).recv(4096)
            if not chunk:
                raise SystemExit("connection closed")
            self.buf += chunk
        l, self.buf = self.buf.split(b"\r\n", 1)
        return l.decode()


def challenge():
    """The next `+ ` line; a refusal ends the script (successfully when expect-fail was given)."""
    l = c.line()
    if not l.startswith("+ "):
        if "expect-fail" in flags:
            print("refused:", l)
            sys.exit(0)
        raise SystemExit(l)
    return l


def H(b):
    return hashlib.new(hname, b).digest()


def HMAC(k, b):
    return hmac.new(k, b, hname).digest()


c = Conn()
assert c.line().startswith("+OK")
c.send(b"CAPA\r\n")
caps = []
while True:
    l = c.line()
    if l == ".":
        break
    caps.append(l)
sasl = next((l.split()[1:] for l in caps if l.startswith("SASL ")), [])
if mech not in sasl:
    raise SystemExit(f"{mech} not offered: {sasl}")

cb_data = b""
if plus:
    cb_data = c.tls.export_keying_material(b"EXPORTER-Channel-Binding", 32, None)
    if "wrong-binding" in flags:
        cb_data = os.urandom(32)
    gs2 = "p=tls-exporter,,"
else:
    gs2 = "n,,"
cnonce = base64.b64encode(os.urandom(18)).decode()
bare = f"n={user.replace('=', '=3D').replace(',', '=2C')},r={cnonce}"
c.send(b"AUTH " + mech.encode() + b" " + base64.b64encode((gs2 + bare).encode()) + b"\r\n")
l = challenge()
server_first = base64.b64decode(l[2:]).decode()
attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
assert attrs["r"].startswith(cnonce)
salted = hashlib.pbkdf2_hmac(hname, password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
client_key = HMAC(salted, b"Client Key")
stored_key = H(client_key)
without_proof = "c=" + base64.b64encode(gs2.encode() + cb_data).decode() + ",r=" + attrs["r"]
auth_message = f"{bare},{server_first},{without_proof}".encode()
proof = bytes(a ^ b for a, b in zip(client_key, HMAC(stored_key, auth_message)))
c.send(base64.b64encode(f"{without_proof},p={base64.b64encode(proof).decode()}".encode()) + b"\r\n")
l = challenge()
server_final = base64.b64decode(l[2:]).decode()
expected = "v=" + base64.b64encode(HMAC(HMAC(salted, b"Server Key"), auth_message)).decode()
assert server_final == expected, (server_final, expected)
c.send(b"\r\n")
l = c.line()
if "expect-fail" in flags:
    raise SystemExit(f"expected a refusal, got {l}")
assert l.startswith("+OK"), l
c.send(b"QUIT\r\n")
print("ok")
