#!/usr/bin/env python3
"""Drive an interactive program through a pseudo-terminal, as a person at a terminal would:
wait for each prompt, type its answer and Enter.

usage: pty_drive.py [--status N] PROMPT ANSWER [PROMPT ANSWER ...] -- COMMAND [ARG ...]

Each PROMPT must appear in the output after the previous one (within 60 s); an empty ANSWER
after the last PROMPT types nothing, and the ANSWER `<ctrl-c>` types the terminal's interrupt
character (no Enter); `<ctrl-c-at-password>` types it once the program has turned echo off. Prints everything the program wrote and then a last line saying whether
the terminal echoes what is typed; exits 1 when a prompt does not come or the program's exit
status is not N (default 0; 130 also matches a program ended by SIGINT).
"""
import os
import pty
import select
import sys
import termios
import time

args = sys.argv[1:]
expected_status = 0
if args[:1] == ["--status"]:
    expected_status = int(args[1])
    args = args[2:]
split = args.index("--")
pairs = list(zip(args[:split:2], args[1:split:2]))
command = args[split + 1:]

pid, fd = pty.fork()
if pid == 0:
    os.execv(command[0], command)

out = b""


def read(deadline):
    """Read what is available until the deadline; False at end of output."""
    global out
    ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.time()))
    if not ready:
        return True
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        return False
    if not chunk:
        return False
    out += chunk
    return True


def fail(message):
    sys.stdout.write(out.decode(errors="replace"))
    sys.stdout.write("\n--- " + message + "\n")
    sys.exit(1)


pos = 0
for i, (prompt, answer) in enumerate(pairs):
    deadline = time.time() + 60
    want = prompt.encode()
    while want not in out[pos:]:
        if time.time() > deadline or not read(deadline):
            fail("no prompt %r" % prompt)
    pos = out.index(want, pos) + len(want)
    if answer == "<ctrl-c-at-password>":
        # As a person would, once the password prompt reads without echo.
        until = time.time() + 10
        while termios.tcgetattr(fd)[3] & termios.ECHO and time.time() < until:
            read(time.time() + 0.02)
        os.write(fd, b"\x03")
    elif answer == "<ctrl-c>":
        os.write(fd, bytes([termios.tcgetattr(fd)[6][termios.VINTR][0]]))
    elif answer or i + 1 < len(pairs):
        os.write(fd, answer.encode() + b"\r")

deadline = time.time() + 60
while time.time() < deadline and read(deadline):
    pass
_, status = os.waitpid(pid, 0)
echo = "on" if termios.tcgetattr(fd)[3] & termios.ECHO else "off"
out += ("\n--- terminal echo %s\n" % echo).encode()
code = os.waitstatus_to_exitcode(status)
# 130 is what a shell reports for a program ended by Ctrl-C, whether it exited with 130 itself
# or was ended by the SIGINT (-2 here) before it could.
if expected_status == 130 and code == -2:
    code = 130
if code != expected_status:
    fail("exit status %d" % code)
sys.stdout.write(out.decode(errors="replace"))
