#!/usr/bin/env python3
"""A responder that answers like Chromium's: to the mDNS group (224.0.0.251:5353) only,
whatever the query asked (QU bit, legacy port). Usage: group_responder.py IFACE_IP NAME
ANSWER_IP SECONDS. Answers A questions for NAME with ANSWER_IP; prints one line per
answer; exits after SECONDS. For the NAT lab only (run inside a lab namespace)."""
import socket
import struct
import sys
import time

iface, name, answer, seconds = sys.argv[1], sys.argv[2].lower(), sys.argv[3], float(sys.argv[4])
GROUP = "224.0.0.251"


def encode_name(n):
    out = b""
    for label in n.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def read_name(buf, pos):
    labels = []
    while True:
        n = buf[pos]
        if n == 0:
            return ".".join(labels).lower(), pos + 1
        if n & 0xC0:
            raise ValueError("compressed question")
        labels.append(buf[pos + 1 : pos + 1 + n].decode("ascii", "replace"))
        pos += 1 + n


s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", 5353))
s.setsockopt(
    socket.IPPROTO_IP,
    socket.IP_ADD_MEMBERSHIP,
    socket.inet_aton(GROUP) + socket.inet_aton(iface),
)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(iface))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
print("ready", flush=True)
deadline = time.time() + seconds
while time.time() < deadline:
    s.settimeout(max(0.05, deadline - time.time()))
    try:
        buf, src = s.recvfrom(9000)
    except socket.timeout:
        break
    try:
        _id, flags, qd = struct.unpack("!HHH", buf[:6])
        if flags & 0x8000 or qd < 1:
            continue
        q, pos = read_name(buf, 12)
        qtype = struct.unpack("!H", buf[pos : pos + 2])[0]
    except (ValueError, IndexError, struct.error):
        continue
    if q != name or qtype != 1:
        continue
    rr = encode_name(name) + struct.pack("!HHIH", 1, 0x8001, 120, 4) + socket.inet_aton(answer)
    msg = struct.pack("!HHHHHH", 0, 0x8400, 0, 1, 0, 0) + rr
    s.sendto(msg, (GROUP, 5353))
    print(f"answered {src[0]}:{src[1]} to the group", flush=True)
