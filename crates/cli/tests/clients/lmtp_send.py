#!/usr/bin/env python3
"""Deliver a message with Python's smtplib.LMTP, as a Python MTA or script would.

usage: lmtp_send.py HOST PORT FROM MESSAGE-FILE RCPT...

Prints one line per recipient: "<address> <code>" (250 when accepted and delivered), then "ok".
"""
import smtplib
import sys

host, port, sender, path = sys.argv[1:5]
rcpts = sys.argv[5:]
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
print("ok")
