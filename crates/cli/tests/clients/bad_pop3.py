#!/usr/bin/env python3
"""A scripted, misbehaving POP3 server for client robustness tests. Serves one mailbox of three
messages to any number of connections until killed, misbehaving as MODE says:

  good            correct (the control case)
  size-mismatch   LIST sizes are 5 octets off
  bare-lf         every line, and the terminator, end in bare LF
  long-line       message 2 has a 100,000-octet line
  drop            the connection is cut in the middle of message 2
  dup-uidl        messages 1 and 3 have the same UIDL
  nouidl          UIDL is not supported
  garbage         the answer to RETR 2 is not +OK/-ERR
  retr-err        RETR 2 is refused with -ERR (the message vanished)
  no-stls         STLS is not offered (CAPA lists no STLS)
  no-pipelining   CAPA lists no PIPELINING; each command that arrives before the answer to the
                  one before it is appended to STATE-FILE.pipelined
  pipelining      correct, and each command read while the next was already waiting is appended
                  to STATE-FILE.pipelined (which commands the client sends in one go)
  endless         message 2 is listed at its size but RETR sends 3 MB of it
  escape          the login is refused with terminal escape sequences in the text
  utf8            offers UTF8 (RFC 6856) and, as Courier's pop3d does, hands message 2 (UTF-8
                  headers) to a client that did not send UTF8 as a notice with the original
                  attached as message/global
  oauth           logins only by SASL OAUTHBEARER and XOAUTH2 (no USER), as the large providers:
                  the token GOOD-TOKEN (or any token of 300 characters or more starting LONG-) of
                  user alice is accepted; any other gets the RFC 7628 error challenge and, after
                  the client's dummy answer, -ERR. An initial response on the AUTH line is refused
                  when that line is longer than 255 octets (RFC 2449 section 4). Each mechanism
                  used is appended to STATE-FILE.mechs. The token OTHER-MAILBOX is accepted at AUTH,
                  then every command is refused, as Microsoft does with a token for another
                  mailbox or a mailbox without POP.

usage: bad_pop3.py PORT MODE STATE-FILE
Deletions are kept in STATE-FILE (one message number per line) so they survive reconnects.
"""
import os
import select
import socket
import sys
import threading
import time

port, mode, state = int(sys.argv[1]), sys.argv[2], sys.argv[3]
MSGS = [
    b"Subject: one\r\nMessage-ID: <1@bad>\r\n\r\nfirst\r\n",
    b"Subject: two\r\nMessage-ID: <2@bad>\r\n\r\nsecond\r\n.dot\r\n",
    b"Subject: three\r\nMessage-ID: <3@bad>\r\n\r\nthird\r\n",
]
if mode == "utf8":
    MSGS[1] = "Subject: Grüße aus Köln\r\nMessage-ID: <2@bad>\r\n\r\nsecond\r\n".encode()
DOWNGRADED = (
    b"Subject: Cannot display Unicode content\r\nMessage-ID: <2@bad>\r\nContent-Type: multipart/mixed; "
    b"boundary=b\r\n\r\n--b\r\n\r\nThis message has Unicode content.\r\n--b\r\n"
    b"Content-Type: message/global\r\n\r\n(the original)\r\n--b--\r\n"
)
if mode == "long-line":
    MSGS[1] = b"Subject: two\r\nMessage-ID: <2@bad>\r\n\r\n" + b"x" * 100000 + b"\r\n"
UIDS = ["u1", "u2", "u1" if mode == "dup-uidl" else "u3"]
lock = threading.Lock()


def deleted():
    try:
        return {int(l) for l in open(state).read().split()}
    except FileNotFoundError:
        return set()


def serve(c):
    # Unbuffered when watched, so that a command sent early is still in the socket.
    watched = mode in ("no-pipelining", "pipelining")
    f = c.makefile("rb", buffering=0) if watched else c.makefile("rb")
    eol = b"\n" if mode == "bare-lf" else b"\r\n"

    def send(line):
        c.sendall(line + eol)

    send(b"+OK bad server ready")
    utf8 = False
    not_connected = False
    marked = set()
    gone = deleted()
    live = [i for i in range(3) if i + 1 not in gone]
    while True:
        line = f.readline()
        if not line:
            return
        if watched:
            # Pipelined commands come in one write: they are in the socket already. Without
            # pipelining, a client that sent early has had time to.
            time.sleep(0.02 if mode == "no-pipelining" else 0)
            if select.select([c], [], [], 0)[0]:
                with open(state + ".pipelined", "a") as p:
                    p.write(line.decode(errors="replace"))
        cmd = line.strip().split(b" ")
        verb = cmd[0].upper()
        if verb == b"CAPA":
            send(b"+OK")
            caps = [b"SASL OAUTHBEARER XOAUTH2", b"PIPELINING"] if mode == "oauth" else [b"USER", b"PIPELINING"]
            if mode == "no-pipelining":
                caps.remove(b"PIPELINING")
            if mode != "nouidl":
                caps.append(b"UIDL")
            if mode not in ("no-stls",):
                caps.append(b"TOP")
            if mode == "utf8":
                caps.append(b"UTF8")
            for cap in caps:
                send(cap)
            send(b".")
        elif verb == b"AUTH" and mode == "oauth" and len(cmd) >= 2:
            mech = cmd[1].upper()
            if mech not in (b"OAUTHBEARER", b"XOAUTH2"):
                send(b"-ERR [AUTH] unsupported mechanism")
                continue
            if len(cmd) > 2 and len(line.rstrip(b"\r\n")) > 255:
                send(b"-ERR line too long for an initial response; use the two-line form")
                continue
            if len(cmd) > 2:
                answer = cmd[2]
            else:
                send(b"+ ")
                answer = f.readline().strip()
            import base64
            import json
            text = base64.b64decode(answer)
            with open(state + ".mechs", "a") as m:
                m.write(mech.decode() + "\n")
            if mech == b"OAUTHBEARER":
                ok_user = text.startswith(b"n,a=alice,") and b"\x01auth=Bearer " in text
            else:
                ok_user = text.startswith(b"user=alice\x01auth=Bearer ")
            token = text.split(b"auth=Bearer ", 1)[-1].split(b"\x01")[0]
            good = token == b"GOOD-TOKEN" or (token.startswith(b"LONG-") and len(token) >= 300)
            if ok_user and good and text.endswith(b"\x01\x01"):
                send(b"+OK welcome")
                continue
            if token == b"OTHER-MAILBOX":
                send(b"+OK welcome")
                not_connected = True
                continue
            status = {"status": "invalid_token", "scope": "https://mail.example/pop"}
            send(b"+ " + base64.b64encode(json.dumps(status).encode()))
            dummy = f.readline().strip()
            expected = b"AQ==" if mech == b"OAUTHBEARER" else b""
            send(b"-ERR [AUTH] invalid token" if dummy == expected else b"-ERR bad dummy response")
        elif not_connected and verb != b"QUIT":
            send(b"-ERR User is authenticated but not connected.")
        elif verb in (b"USER", b"PASS") and mode == "oauth":
            send(b"-ERR use SASL")
        elif verb == b"PASS" and mode == "escape":
            send(b"-ERR \x1b]0;owned\x07\x1b[2J\x1b[31mbad password\x9b1m")
        elif verb in (b"USER", b"PASS"):
            send(b"+OK")
        elif verb == b"UTF8" and mode == "utf8":
            utf8 = True
            send(b"+OK UTF8 enabled")
        elif verb == b"STLS":
            send(b"-ERR not here")
        elif verb == b"STAT":
            send(b"+OK %d %d" % (len(live), sum(len(MSGS[i]) for i in live)))
        elif verb == b"NOOP":
            send(b"+OK")
        elif verb == b"LIST":
            send(b"+OK")
            for n, i in enumerate(live, 1):
                size = len(MSGS[i]) + (5 if mode == "size-mismatch" else 0)
                send(b"%d %d" % (n, size))
            send(b".")
        elif verb == b"UIDL":
            if mode == "nouidl":
                send(b"-ERR no UIDL")
                continue
            send(b"+OK")
            for n, i in enumerate(live, 1):
                send(b"%d %s" % (n, UIDS[i].encode()))
            send(b".")
        elif verb == b"RETR":
            n = int(cmd[1])
            i = live[n - 1]
            if mode == "retr-err" and i == 1:
                send(b"-ERR no such message")
                continue
            if mode == "garbage" and i == 1:
                c.sendall(b"HELLO THIS IS NOT POP3\r\n")
                continue
            send(b"+OK message follows")
            body = MSGS[i]
            if mode == "utf8" and i == 1 and not utf8:
                body = DOWNGRADED
            if mode == "endless" and i == 1:
                body = body + (b"y" * 998 + b"\r\n") * 3000
            lines = body.split(b"\r\n")[:-1]
            data = b"".join((b"." + l if l.startswith(b".") else l) + eol for l in lines) + b"." + eol
            if mode == "drop" and i == 1:
                c.sendall(data[: len(data) // 2])
                c.shutdown(socket.SHUT_RDWR)
                c.close()
                return
            c.sendall(data)
        elif verb == b"DELE":
            marked.add(live[int(cmd[1]) - 1] + 1)
            send(b"+OK")
        elif verb == b"QUIT":
            with lock:
                with open(state, "a") as s:
                    for m in sorted(marked):
                        s.write("%d\n" % m)
            send(b"+OK bye")
            c.close()
            return
        else:
            send(b"-ERR unknown")


s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen(16)
print("ready", flush=True)
while True:
    conn, _ = s.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
