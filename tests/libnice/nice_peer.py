#!/usr/bin/python3
"""A libnice peer for pinhole's NAT lab: interop with `pinhole connect` and the
connect-time benchmark (tests/tests/lab_libnice.rs).

It is a full peer of `pinhole connect --signal-dir DIR --name ME --peer THEM`: it writes
its description as RFC 8839 lines (`a=ice-ufrag`, `a=ice-pwd`, `a=candidate:...`,
`a=end-of-candidates`, CRLF-terminated) to DIR/ME.sdp and reads the peer's from
DIR/THEM.sdp. Like pinhole, the smaller name controls unless --controlling or
--controlled says otherwise.

libnice (Nice.Agent through Python GI): RFC 5245 compatibility (full ICE, the mode libnice
implements RFC 8445 in), one stream with one UDP component, host and server-reflexive
candidates (--stun) and optionally a TURN/UDP relay (--turn). It writes its description
once gathering is done (no trickle), and takes the peer's once the peer's credentials and
a=end-of-candidates are in (trickled candidates are collected until then).

Data: it sends --send (one datagram, a line) as soon as libnice has a pair to send on
(component CONNECTED or a selected pair), prints every datagram it receives on stdout,
and exits 0 --linger seconds after it has both sent its line and received one.

Events: one JSON object a line on stderr, each with `elapsed_ms` (monotonic, from the
start of this process), named like pinhole connect's --json events:
  remote-description  the peer's credentials, every candidate and a=end-of-candidates
                      are applied (set_remote_candidates); with `unix_ms`, the wall
                      clock then, to line up two processes' clocks
  valid-pair          component state CONNECTED (libnice has a working pair)
  connected           the first new-selected-pair-full (libnice selects a pair when it
                      is nominated); `path-changed` for later ones
  ready               component state READY
  first-data          the first datagram from the peer
  disconnected        component FAILED, or --timeout
Exit status: 0 done, 1 failed or timed out, 2 usage (argparse).

libnice cannot send an empty datagram, so it never sends pinhole's end-of-data mark; a
pinhole peer keeps running until it is stopped.
"""

import argparse
import ctypes
import json
import os
import sys
import time

import gi

gi.require_version("Nice", "0.1")
from gi.repository import GLib, Nice  # noqa: E402

STARTED = time.monotonic()
TYPES = {
    Nice.CandidateType.HOST: "host",
    Nice.CandidateType.SERVER_REFLEXIVE: "srflx",
    Nice.CandidateType.PEER_REFLEXIVE: "prflx",
    Nice.CandidateType.RELAYED: "relay",
}
# How often the peer's file is read. pinhole's own --signal-dir reader polls too.
POLL_MS = 5

# nice_agent_attach_recv takes a C callback, which GI does not bind: call it through
# ctypes with the agent's C pointer.
RECV_FUNC = ctypes.CFUNCTYPE(
    None,
    ctypes.c_void_p,
    ctypes.c_uint,
    ctypes.c_uint,
    ctypes.c_uint,
    ctypes.POINTER(ctypes.c_char),
    ctypes.c_void_p,
)


def c_pointer(obj):
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype = ctypes.c_void_p
    get.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return get(obj.__gpointer__, None)


def event(name, **fields):
    fields = {"event": name, **fields}
    fields["elapsed_ms"] = round((time.monotonic() - STARTED) * 1e3, 3)
    sys.stderr.write(json.dumps(fields) + "\n")
    sys.stderr.flush()


def host_port(text, default_port):
    host, _, port = text.rpartition(":")
    if not host:
        return text, default_port
    return host, int(port)


def candidate_json(c):
    return {
        "type": TYPES.get(c.type, str(c.type)),
        "address": f"{c.addr.dup_string()}:{c.addr.get_port()}",
    }


class Peer:
    def __init__(self, args):
        self.args = args
        self.loop = GLib.MainLoop()
        ctx = GLib.MainContext.default()
        flags = Nice.AgentOption.NONE
        if args.nomination == "regular":
            flags |= Nice.AgentOption.REGULAR_NOMINATION
        self.agent = Nice.Agent.new_full(ctx, Nice.Compatibility.RFC5245, flags)
        if args.controlling is None:
            controlling = args.name < args.peer
        else:
            controlling = args.controlling
        a = self.agent
        a.props.controlling_mode = controlling
        a.props.ice_tcp = False
        a.props.ice_udp = True
        if args.stun:
            ip, port = host_port(args.stun, 3478)
            a.props.stun_server = ip
            a.props.stun_server_port = port
        if args.relay_only:
            a.props.force_relay = True
        self.stream = a.add_stream(1)
        if args.turn:
            ip, port = host_port(args.turn, 3478)
            a.set_relay_info(
                self.stream, 1, ip, port, args.user or "", args.password or "",
                Nice.RelayType.UDP,
            )
        self.mine = os.path.join(args.signal_dir, f"{args.name}.sdp")
        self.theirs = os.path.join(args.signal_dir, f"{args.peer}.sdp")
        try:
            os.remove(self.mine)
        except FileNotFoundError:
            pass
        self.seen = 0
        self.remote_ufrag = self.remote_pwd = None
        self.remote_lines = []
        self.described = False
        self.sent = False
        self.received = False
        self.selected = False
        self.exit_code = 1
        self.finishing = False
        a.connect("candidate-gathering-done", self.on_gathering_done)
        a.connect("component-state-changed", self.on_state)
        a.connect("new-selected-pair-full", self.on_selected)
        self.recv_cb = RECV_FUNC(self.on_recv)
        libnice = ctypes.CDLL("libnice.so.10")
        libnice.nice_agent_attach_recv.argtypes = [
            ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, RECV_FUNC,
            ctypes.c_void_p,
        ]
        libnice.nice_agent_attach_recv.restype = ctypes.c_int
        if not libnice.nice_agent_attach_recv(
            c_pointer(a), self.stream, 1, None, self.recv_cb, None
        ):
            raise SystemExit("nice_agent_attach_recv failed")
        event("started", controlling=controlling, nomination=args.nomination,
              libnice_nomination_mode=a.props.nomination_mode.value_nick)

    def run(self):
        if not self.agent.gather_candidates(self.stream):
            event("disconnected", reason="gathering failed to start")
            return 1
        GLib.timeout_add(POLL_MS, self.poll_peer)
        GLib.timeout_add(int(self.args.timeout * 1000), self.on_timeout)
        self.loop.run()
        return self.exit_code

    # Signalling.

    def on_gathering_done(self, agent, stream):
        ok, ufrag, pwd = agent.get_local_credentials(stream)
        lines = [f"a=ice-ufrag:{ufrag}", f"a=ice-pwd:{pwd}"]
        for c in agent.get_local_candidates(stream, 1):
            lines.append(agent.generate_local_candidate_sdp(c))
        lines.append("a=end-of-candidates")
        tmp = self.mine + ".tmp"
        with open(tmp, "w") as f:
            f.write("".join(line + "\r\n" for line in lines))
        os.replace(tmp, self.mine)
        event("local-description", candidates=len(lines) - 3)

    def poll_peer(self):
        if self.described:
            return False
        try:
            with open(self.theirs, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return True
        if len(data) < self.seen:
            self.seen = 0  # the peer started again
            self.remote_lines = []
        end = data.rfind(b"\n") + 1
        if end > self.seen:
            for line in data[self.seen:end].decode("utf-8", "replace").splitlines():
                self.take_line(line.strip())
            self.seen = end
        return not self.described

    def take_line(self, line):
        if line.startswith("a=ice-ufrag:"):
            self.remote_ufrag = line[len("a=ice-ufrag:"):]
        elif line.startswith("a=ice-pwd:"):
            self.remote_pwd = line[len("a=ice-pwd:"):]
        elif line.startswith("a=candidate:"):
            self.remote_lines.append(line)
        elif line == "a=end-of-candidates" and self.remote_ufrag and self.remote_pwd:
            self.apply_remote()

    def apply_remote(self):
        a = self.agent
        a.set_remote_credentials(self.stream, self.remote_ufrag, self.remote_pwd)
        cands = []
        for line in self.remote_lines:
            c = a.parse_remote_candidate_sdp(self.stream, line)
            if c is None:
                event("candidate-ignored", line=line)
            else:
                cands.append(c)
        n = a.set_remote_candidates(self.stream, 1, cands)
        self.described = True
        event("remote-description", unix_ms=round(time.time() * 1e3, 3), candidates=n)

    # ICE and data.

    def on_state(self, agent, stream, component, state):
        if state == Nice.ComponentState.CONNECTED:
            event("valid-pair")
            self.try_send()
        elif state == Nice.ComponentState.READY:
            event("ready")
            self.try_send()
        elif state == Nice.ComponentState.FAILED:
            event("disconnected", reason="component failed")
            self.finish(1)

    def on_selected(self, agent, stream, component, local, remote):
        name = "path-changed" if self.selected else "connected"
        self.selected = True
        event(name, local=candidate_json(local), remote=candidate_json(remote))
        self.try_send()

    def try_send(self):
        if self.sent or self.args.send is None:
            return
        data = self.args.send + "\n"
        # GI passes the str as UTF-8: the length is in bytes.
        size = len(data.encode("utf-8"))
        if self.agent.send(self.stream, 1, size, data) >= 0:
            self.sent = True
            event("sent", bytes=size)
            self.maybe_done()

    def on_recv(self, agent, stream, component, length, buf, user_data):
        data = ctypes.string_at(buf, length)
        if not data:
            event("peer-end")
            return
        if not self.received:
            self.received = True
            event("first-data", bytes=len(data))
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        self.maybe_done()

    def maybe_done(self):
        sent_ok = self.sent or self.args.send is None
        if sent_ok and self.received and self.selected:
            self.finish(0, self.args.linger)

    def on_timeout(self):
        if not self.finishing:
            event("disconnected", reason="no path within --timeout")
            self.finish(1)
        return False

    def finish(self, code, after=0.0):
        if self.finishing:
            return
        self.finishing = True
        self.exit_code = code
        GLib.timeout_add(int(after * 1000), self.loop.quit)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--signal-dir", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--peer", required=True)
    role = p.add_mutually_exclusive_group()
    role.add_argument("--controlling", dest="controlling", action="store_true", default=None)
    role.add_argument("--controlled", dest="controlling", action="store_false")
    p.add_argument("--stun", help="HOST[:PORT] of a STUN server")
    p.add_argument("--turn", help="HOST[:PORT] of a TURN/UDP server")
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--relay-only", action="store_true",
                   help="libnice's force-relay: only relayed candidates")
    p.add_argument("--nomination", choices=["aggressive", "regular"], default="aggressive",
                   help="libnice's nomination mode (nice_agent_new's default: aggressive)")
    p.add_argument("--send", help="one line to send")
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("--linger", type=float, default=1.0,
                   help="seconds to stay once the line went and one came")
    args = p.parse_args()
    if args.name == args.peer:
        p.error("--name and --peer must differ")
    if args.turn and not (args.user and args.password):
        p.error("--turn needs --user and --password")
    sys.exit(Peer(args).run())


if __name__ == "__main__":
    main()
