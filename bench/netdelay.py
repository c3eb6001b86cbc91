#!/usr/bin/env python3
"""Join two network namespaces with a fixed one-way delay, for latency benchmarks on a kernel
without netem: one TUN device in each namespace, and this process moving every packet from one
to the other after DELAY_MS (in order, no loss). The namespaces get no other interface or route,
so nothing can leave them.

usage: netdelay.py NS_A NS_B DELAY_MS      (run as root; stops on SIGTERM)

NS_A gets 198.18.0.1/24 on tun device "pbdelay", NS_B gets 198.18.0.2/24 (the benchmarking
range, RFC 2544). Prints "ready" when the link is up.
"""
import ctypes
import fcntl
import heapq
import os
import select
import signal
import struct
import subprocess
import sys
import time

ns_a, ns_b, delay_ms = sys.argv[1], sys.argv[2], float(sys.argv[3])
CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
libc = ctypes.CDLL(None, use_errno=True)


def enter(ns):
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), f"setns {ns}")
    os.close(fd)


def tun(ns, addr):
    enter(ns)
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", b"pbdelay", IFF_TUN | IFF_NO_PI))
    for cmd in (["ip", "addr", "add", addr, "dev", "pbdelay"], ["ip", "link", "set", "pbdelay", "up"], ["ip", "link", "set", "lo", "up"]):
        subprocess.run(["ip", "netns", "exec", ns] + cmd, check=True)
    return fd


home = os.open("/proc/self/ns/net", os.O_RDONLY)
a = tun(ns_a, "198.18.0.1/24")
b = tun(ns_b, "198.18.0.2/24")
libc.setns(home, CLONE_NEWNET)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("ready", flush=True)
other = {a: b, b: a}
queue = []  # (due, seq, fd, packet)
seq = 0
delay = delay_ms / 1000.0
while True:
    timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else None
    ready, _, _ = select.select([a, b], [], [], timeout)
    now = time.monotonic()
    for fd in ready:
        packet = os.read(fd, 65536)
        heapq.heappush(queue, (now + delay, seq, other[fd], packet))
        seq += 1
    while queue and queue[0][0] <= time.monotonic():
        _, _, fd, packet = heapq.heappop(queue)
        os.write(fd, packet)
