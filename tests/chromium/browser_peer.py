#!/usr/bin/python3
"""A browser peer for pinhole's NAT lab: headless Chromium's RTCPeerConnection against
`pinhole connect` (tests/tests/lab_chromium.rs).

It is a peer of `pinhole connect --signal-dir DIR --name ME --peer THEM`: it writes its
description to DIR/ME.sdp and reads the peer's RFC 8839 lines from DIR/THEM.sdp. The
browser is driven through the DevTools protocol over a pipe (`--remote-debugging-pipe`:
commands on the browser's fd 3, replies and events on its fd 4, each a JSON object ended
by a NUL byte), so no port is opened and no page is served.

Roles follow WebRTC: the offerer is the controlling agent (RFC 8445 §6.1.1 through JSEP,
RFC 8829 §5.2), so the smaller name offers, as the smaller name controls in pinhole.
- offer: the browser creates a data channel and an offer, gathers (non-trickle: it waits
  for iceGatheringState "complete", bounded), and writes the browser's *whole* SDP,
  followed by a=end-of-candidates, to DIR/ME.sdp: pinhole reads the ICE lines out of a
  browser's SDP as it is. Then it reads pinhole's lines and applies them as the answer.
- answer: it reads pinhole's lines, wraps them into an SDP offer, and writes the browser's
  whole answer the same way.

The SDP that wraps pinhole's lines is one `m=application` data-channel section with a
fingerprint of random bytes and `a=setup:active`: the browser takes the DTLS server role
and waits for a ClientHello that never comes. Nothing tears the transport down then: DTLS
has no deadline for a server that has heard nothing, and ICE consent freshness (RFC 7675)
keeps the pair alive because pinhole answers the browser's consent checks. DTLS itself is
out of scope; the check is ICE.

Events: one JSON object a line on stderr, each with `elapsed_ms` (from this process's
start), named like pinhole connect's: `local-description`, `remote-description`,
`connected` (iceConnectionState connected or completed, with the selected pair from
getStats), `still-connected` (after --linger, the state again and the pair), and
`disconnected`. Exit status: 0 connected and still connected after --linger, 1 not,
2 usage.
"""

import argparse
import json
import os
import secrets
import select
import shutil
import sys
import tempfile
import time

STARTED = time.monotonic()
POLL_S = 0.005
# DevTools commands that wait inside the page get this much beyond their own bound.
SLACK_S = 10.0
# The flags of a quiet headless browser on a closed network: no background connections,
# no component updates, no first-run work (see the machine notes); no sandbox as root.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--mute-audio",
    "--remote-debugging-pipe",
]


def event(name, **fields):
    fields = {"event": name, **fields}
    fields["elapsed_ms"] = round((time.monotonic() - STARTED) * 1e3, 3)
    sys.stderr.write(json.dumps(fields) + "\n")
    sys.stderr.flush()


class BrowserError(Exception):
    pass


class Browser:
    """Chromium with the DevTools protocol on a pipe, and one page attached."""

    def __init__(self, chromium, flags):
        self.profile = tempfile.mkdtemp(prefix="pinhole-chromium-")
        to_browser_r, self.to_browser = os.pipe()
        self.from_browser, from_browser_w = os.pipe()
        self.log = open(os.path.join(self.profile, "chromium.log"), "wb")
        actions = [
            (os.POSIX_SPAWN_DUP2, to_browser_r, 3),
            (os.POSIX_SPAWN_DUP2, from_browser_w, 4),
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, self.log.fileno(), 1),
            (os.POSIX_SPAWN_DUP2, self.log.fileno(), 2),
        ]
        argv = [chromium, *FLAGS, *flags, f"--user-data-dir={self.profile}", "about:blank"]
        self.pid = os.posix_spawn(chromium, argv, os.environ, file_actions=actions)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.buf = b""
        self.next_id = 0
        self.session = None
        target = self.call("Target.createTarget", {"url": "about:blank"}, timeout=30)
        attached = self.call(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        self.session = attached["sessionId"]

    def call(self, method, params=None, timeout=10.0):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self.to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self.buf:
                raw, self.buf = self.buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self.next_id:
                    if "error" in reply:
                        raise BrowserError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"{method}: no reply within {timeout} s")
            ready, _, _ = select.select([self.from_browser], [], [], left)
            if ready:
                chunk = os.read(self.from_browser, 1 << 16)
                if not chunk:
                    raise BrowserError(f"{method}: the browser closed the pipe")
                self.buf += chunk

    def eval(self, expression, timeout=10.0):
        """Evaluates `expression` (a promise is awaited) in the page; its JSON value."""
        r = self.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            timeout=timeout + SLACK_S,
        )
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            text = d.get("exception", {}).get("description") or d.get("text")
            raise BrowserError(f"page: {text}")
        return r.get("result", {}).get("value")

    def close(self):
        try:
            self.call("Browser.close", timeout=5)
        except (BrowserError, OSError):
            pass
        for _ in range(100):
            pid, _ = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.05)
        else:
            os.kill(self.pid, 9)
            os.waitpid(self.pid, 0)
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


PAGE = r"""
window.pinhole = {
  pc: null,
  states: [],
  start(config) {
    const pc = new RTCPeerConnection(config);
    this.pc = pc;
    pc.addEventListener('iceconnectionstatechange',
      () => this.states.push([pc.iceConnectionState, performance.now()]));
    return pc;
  },
  gathered(ms) {
    const pc = this.pc;
    return new Promise(resolve => {
      const check = () => { if (pc.iceGatheringState === 'complete') resolve(true); };
      pc.addEventListener('icegatheringstatechange', check);
      check();
      setTimeout(() => resolve(false), ms);
    });
  },
  connected(ms) {
    const pc = this.pc;
    return new Promise(resolve => {
      const check = () => {
        const s = pc.iceConnectionState;
        if (s === 'connected' || s === 'completed' || s === 'failed' || s === 'closed') resolve(s);
      };
      pc.addEventListener('iceconnectionstatechange', check);
      check();
      setTimeout(() => resolve(pc.iceConnectionState), ms);
    });
  },
  async pair() {
    const stats = await this.pc.getStats();
    let id = null;
    stats.forEach(s => { if (s.type === 'transport' && s.selectedCandidatePairId) id = s.selectedCandidatePairId; });
    if (!id) return null;
    const p = stats.get(id), l = stats.get(p.localCandidateId), r = stats.get(p.remoteCandidateId);
    const c = x => x && { type: x.candidateType, address: `${x.address}:${x.port}`, protocol: x.protocol };
    return { local: c(l), remote: c(r), state: p.state, nominated: p.nominated,
             rtt_ms: p.currentRoundTripTime === undefined ? null : p.currentRoundTripTime * 1e3 };
  },
};
true
"""


def wrap(lines, setup):
    """An SDP with one data-channel section around pinhole's ICE lines."""
    ice = [
        line
        for line in lines
        if line.startswith(("a=ice-ufrag:", "a=ice-pwd:", "a=ice-options:", "a=candidate:"))
        or line == "a=end-of-candidates"
    ]
    session = ["a=ice-lite"] if "a=ice-lite" in lines else []
    fingerprint = ":".join(f"{b:02X}" for b in secrets.token_bytes(32))
    sdp = [
        "v=0",
        f"o=- {secrets.randbelow(1 << 62)} 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        *session,
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 0.0.0.0",
        "a=mid:0",
        *ice,
        f"a=fingerprint:sha-256 {fingerprint}",
        f"a=setup:{setup}",
        "a=sctp-port:5000",
        "a=max-message-size:262144",
    ]
    return "".join(line + "\r\n" for line in sdp)


def read_peer(path, deadline):
    """The peer's lines once its credentials and a=end-of-candidates are in."""
    while time.monotonic() < deadline:
        try:
            with open(path, "rb") as f:
                lines = [l.strip() for l in f.read().decode("utf-8", "replace").splitlines()]
        except FileNotFoundError:
            lines = []
        have = lambda p: any(l.startswith(p) for l in lines)  # noqa: E731
        if have("a=ice-ufrag:") and have("a=ice-pwd:") and "a=end-of-candidates" in lines:
            return lines
        time.sleep(POLL_S)
    return None


def write_mine(path, sdp):
    body = sdp if sdp.endswith("\r\n") else sdp + "\r\n"
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(body + "a=end-of-candidates\r\n")
    os.replace(tmp, path)


def run(args, browser):
    deadline = time.monotonic() + args.timeout
    servers = []
    if args.stun:
        servers.append({"urls": f"stun:{args.stun}"})
    if args.turn:
        servers.append(
            {"urls": f"turn:{args.turn}?transport=udp", "username": args.user,
             "credential": args.password}
        )
    config = {"iceServers": servers, "iceTransportPolicy": "relay" if args.relay_only else "all"}
    browser.eval(PAGE)
    browser.eval(f"pinhole.start({json.dumps(config)}), true")
    offers = args.name < args.peer
    mine = os.path.join(args.signal_dir, f"{args.name}.sdp")
    theirs = os.path.join(args.signal_dir, f"{args.peer}.sdp")
    gather_ms = int(args.gather_timeout * 1e3)
    if offers:
        sdp = browser.eval(
            "(async () => { const pc = pinhole.pc; pc.createDataChannel('pinhole');"
            " await pc.setLocalDescription(await pc.createOffer());"
            f" const done = await pinhole.gathered({gather_ms});"
            " return [done, pc.localDescription.sdp]; })()",
            timeout=args.gather_timeout,
        )
        write_mine(mine, sdp[1])
        event("local-description", role="offer", gathering_complete=sdp[0],
              candidates=sdp[1].count("a=candidate:"))
        lines = read_peer(theirs, deadline)
        if lines is None:
            event("disconnected", reason="no description from the peer within --timeout")
            return 1
        answer = wrap(lines, "active")
        browser.eval(
            f"pinhole.pc.setRemoteDescription({{type: 'answer', sdp: {json.dumps(answer)}}})"
            ".then(() => true)"
        )
    else:
        lines = read_peer(theirs, deadline)
        if lines is None:
            event("disconnected", reason="no description from the peer within --timeout")
            return 1
        offer = wrap(lines, "active")
        sdp = browser.eval(
            "(async () => { const pc = pinhole.pc;"
            f" await pc.setRemoteDescription({{type: 'offer', sdp: {json.dumps(offer)}}});"
            " await pc.setLocalDescription(await pc.createAnswer());"
            f" const done = await pinhole.gathered({gather_ms});"
            " return [done, pc.localDescription.sdp]; })()",
            timeout=args.gather_timeout,
        )
        write_mine(mine, sdp[1])
        event("local-description", role="answer", gathering_complete=sdp[0],
              candidates=sdp[1].count("a=candidate:"))
    event("remote-description", unix_ms=round(time.time() * 1e3, 3),
          candidates=sum(1 for l in lines if l.startswith("a=candidate:")))
    left_ms = max(0, int((deadline - time.monotonic()) * 1e3))
    state = browser.eval(f"pinhole.connected({left_ms})", timeout=left_ms / 1e3)
    if state not in ("connected", "completed"):
        event("disconnected", reason=f"iceConnectionState {state}",
              states=browser.eval("pinhole.states"))
        return 1
    event("connected", state=state, pair=browser.eval("pinhole.pair()"))
    # The transport must stay up: consent checks keep going both ways, and DTLS waits.
    time.sleep(args.linger)
    state = browser.eval("pinhole.pc.iceConnectionState")
    if state not in ("connected", "completed"):
        event("disconnected", reason=f"iceConnectionState {state} after --linger",
              states=browser.eval("pinhole.states"))
        return 1
    event("still-connected", state=state, pair=browser.eval("pinhole.pair()"),
          states=browser.eval("pinhole.states"))
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--signal-dir", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--peer", required=True)
    p.add_argument("--stun", help="HOST:PORT of a STUN server")
    p.add_argument("--turn", help="HOST:PORT of a TURN/UDP server")
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--relay-only", action="store_true", help="iceTransportPolicy relay")
    p.add_argument("--no-mdns", action="store_true",
                   help="host candidates as addresses, not <uuid>.local names")
    p.add_argument("--loopback", action="store_true",
                   help="allow loopback candidates (tests on one host)")
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("--gather-timeout", type=float, default=10.0)
    p.add_argument("--linger", type=float, default=3.0,
                   help="seconds connected before checking the state again")
    args = p.parse_args()
    if args.name == args.peer:
        p.error("--name and --peer must differ")
    if args.turn and not (args.user and args.password):
        p.error("--turn needs --user and --password")
    flags = []
    if args.no_mdns:
        flags.append("--disable-features=WebRtcHideLocalIpsWithMdns")
    if args.loopback:
        flags.append("--allow-loopback-in-peer-connection")
    try:
        os.remove(os.path.join(args.signal_dir, f"{args.name}.sdp"))
    except FileNotFoundError:
        pass
    event("started", offers=args.name < args.peer)
    try:
        browser = Browser(args.chromium, flags)
    except (BrowserError, OSError) as e:
        event("disconnected", reason=f"starting the browser: {e}")
        sys.exit(1)
    try:
        code = run(args, browser)
    except (BrowserError, OSError) as e:
        event("disconnected", reason=str(e))
        code = 1
    finally:
        browser.close()
    sys.exit(code)


if __name__ == "__main__":
    main()
