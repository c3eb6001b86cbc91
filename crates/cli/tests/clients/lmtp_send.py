#!/usr/bin/env python3
"""Deliver a message with Python's smtplib.LMTP, as a Python MTA or script would.

usage: lmtp_send.py HOST PORT POP3-PORT USER PASSWORD FROM MESSAGE-FILE RCPT...

Prints one line per recipient: "<address> <code>" (250 when accepted and delivered). Then reads
USER's newest message back with poplib and checks that it is the sent message, byte for byte,
after the trace headers the server prepended. Prints "ok" at the end.
"""
import poplib
import smtplib
import sys

host, port, pop3_port, user, password, sender, path = sys.argv[1:8]
rcpts = sys.argv[8:]
msg = open(path, "rb").read()
lmtp = smtplib.LMTP(host, int(port))
lmtp.ehlo("python.test")  # sends LHLO on an LMTP object
assert lmtp.has_extn("pipelining") and lmtp.has_extn("enhancedstatuscodes") and lmtp.has_extn("chunking")
try:
    refused = lmtp.sendmail(sender, rcpts, msg)
except smtplib.SMTPRecipientsRefused as e:
    refused = e.recipients
for r in rcpts:
    print(r, refused[r][0] if r in refused else 250)
lmtp.quit()

p = poplib.POP3(host, int(pop3_port), timeout=20)
p.user(user)
p.pass_(password)
count, _ = p.stat()
resp, lines, octets = p.retr(count)
p.quit()
got = b"".join(l + b"\r\n" for l in lines)
want = msg if msg.endswith(b"\r\n") else msg + b"\r\n"
assert got.startswith(b"Return-Path: <" + sender.encode() + b">\r\n"), got[:200]
assert got.endswith(b"\r\n" + want), (got, want)
print("ok")
