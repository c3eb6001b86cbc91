#!/usr/bin/env python3
"""Check an autoconfig file (stdin) against what Thunderbird's reader requires of one, and a
POP3 offer: prints the incoming servers as "socketType port auth,auth leave" lines, or exits 1
with the rules broken.

Thunderbird (readFromXML.sys.mjs) drops a config without a valid incoming server and one
without an outgoingServer; socketType is one of plain, SSL, STARTTLS; port is a number;
authentication is one of its known names.
"""
import sys
import xml.etree.ElementTree as ET

SOCKETS = {"plain", "SSL", "STARTTLS"}
AUTHS = {"password-cleartext", "plain", "password-encrypted", "secure", "GSSAPI", "NTLM",
         "TLS-client-cert", "OAuth2", "none"}

doc = ET.fromstring(sys.stdin.read())
problems = []
if doc.tag != "clientConfig" or doc.get("version") != "1.1":
    problems.append("the root is not <clientConfig version=\"1.1\">")
provider = doc.find("emailProvider")
if provider is None or not provider.get("id"):
    problems.append("no emailProvider with an id")
    provider = ET.Element("none")
if not provider.findall("domain"):
    problems.append("no domain")
incoming = provider.findall("incomingServer")
if not incoming:
    problems.append("no incomingServer")
for server in incoming + provider.findall("outgoingServer"):
    kind = server.tag + "/" + (server.get("type") or "?")
    for field in ("hostname", "port", "socketType", "username", "authentication"):
        if server.find(field) is None or not (server.find(field).text or "").strip():
            problems.append(f"{kind}: no {field}")
    if server.findtext("socketType") not in SOCKETS:
        problems.append(f"{kind}: socketType {server.findtext('socketType')!r}")
    if not (server.findtext("port") or "").isdigit():
        problems.append(f"{kind}: port {server.findtext('port')!r}")
    for a in server.findall("authentication"):
        if a.text not in AUTHS:
            problems.append(f"{kind}: authentication {a.text!r}")
if not provider.findall("outgoingServer"):
    problems.append("no outgoingServer (Thunderbird drops the whole config)")
if problems:
    print("\n".join(problems))
    sys.exit(1)
for server in incoming:
    auths = ",".join(a.text for a in server.findall("authentication"))
    leave = server.findtext("pop3/leaveMessagesOnServer")
    days = server.findtext("pop3/daysToLeaveMessagesOnServer")
    print(server.get("type"), server.findtext("hostname"), server.findtext("socketType"), server.findtext("port"),
          server.findtext("username"), auths, leave, days or "-")
