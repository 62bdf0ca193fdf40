// PeerConnection in Kotlin on the host JVM, called from Test.kt's main: two connections in
// this process meet through a `pinhole signal` room (its URL is Test's args[6]), gather
// from `pinhole serve` and `pinhole serve --turn` (with --allow-loopback-peers), all on
// 127.0.0.1 and bound to it; they connect directly, then (in a second pair) through the
// relay only, exchange data both ways, survive an ICE restart (new descriptions through the
// room, data again) and a network change, go through the keepalive policies (background,
// suspended, foreground: data in each, no restart on the resume), and close, which frees
// their sockets and relays. The events come through the package's Flow adapters
// (Flows.kt): the session's hot flow for the pairs, the cold flow for its cancellation.
package dev.pinhole

import java.net.HttpURLConnection
import java.net.URI
import java.util.concurrent.CopyOnWriteArrayList
import kotlinx.coroutines.CompletableDeferred
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.Job
import kotlinx.coroutines.cancelAndJoin
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.delay
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.isActive
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withContext
import kotlinx.coroutines.withTimeout
import kotlinx.coroutines.withTimeoutOrNull

/** One HTTP/1.1 request to `pinhole signal`: the status and the body. */
fun signalHttp(url: String, method: String, body: String? = null, readTimeoutMs: Int = 10_000): Pair<Int, String> {
    val c = URI(url).toURL().openConnection() as HttpURLConnection
    try {
        c.requestMethod = method
        c.connectTimeout = 5_000
        c.readTimeout = readTimeoutMs
        c.useCaches = false
        if (body != null) {
            val bytes = body.toByteArray()
            c.doOutput = true
            c.setFixedLengthStreamingMode(bytes.size)
            c.outputStream.use { it.write(bytes) }
        } else if (method == "POST") {
            c.doOutput = true
            c.setFixedLengthStreamingMode(0)
            c.outputStream.close()
        }
        val status = c.responseCode
        val stream = if (status >= 400) c.errorStream else c.inputStream
        val text = stream?.use { String(it.readBytes()) } ?: ""
        return status to text
    } finally {
        c.disconnect()
    }
}

/** The JSON strings of a `"messages":[…]` array (the signal server's escapes). */
fun jsonStrings(text: String): List<String> {
    val start = text.indexOf("\"messages\":[")
    if (start < 0) return emptyList()
    val out = mutableListOf<String>()
    var i = start + "\"messages\":[".length
    while (i < text.length && text[i] != ']') {
        if (text[i] != '"') {
            i++
            continue
        }
        i++
        val s = StringBuilder()
        while (i < text.length && text[i] != '"') {
            if (text[i] == '\\' && i + 1 < text.length) {
                i++
                when (text[i]) {
                    'n' -> s.append('\n')
                    'r' -> s.append('\r')
                    't' -> s.append('\t')
                    'u' -> {
                        s.append(text.substring(i + 1, i + 5).toInt(16).toChar())
                        i += 4
                    }
                    else -> s.append(text[i])
                }
            } else {
                s.append(text[i])
            }
            i++
        }
        out.add(s.toString())
        i++
    }
    return out
}

/** A peer's place in a `pinhole signal` room. */
class SignalPeer(private val base: String, private val room: String) {
    val side: String
    private val token: String

    init {
        val (status, body) = signalHttp("$base/v1/rooms/$room/join", "POST")
        require(status == 200) { "join $room: $status $body" }
        side = Regex("\"peer\":\"([ab])\"").find(body)!!.groupValues[1]
        token = Regex("\"token\":\"([0-9a-f]+)\"").find(body)!!.groupValues[1]
    }

    fun post(message: String) {
        val (status, body) = signalHttp("$base/v1/rooms/$room/$side?token=$token", "POST", message)
        check(status == 204) { "post to $room: $status $body" }
    }

    /** The messages from [after] on, waiting up to [waitSecs] for one; and the next `after`. */
    fun fetch(after: Long, waitSecs: Int): Pair<Long, List<String>> {
        val (status, body) = signalHttp("$base/v1/rooms/$room/$side?token=$token&after=$after&wait=$waitSecs", "GET",
            readTimeoutMs = (waitSecs + 10) * 1000)
        check(status == 200) { "fetch from $room: $status $body" }
        val next = Regex("\"next\":(\\d+)").find(body)!!.groupValues[1].toLong()
        return next to jsonStrings(body)
    }
}

/** The `IP:port` of a candidate line (`candidate:… ADDRESS PORT typ KIND`). */
fun candidateAddress(candidate: String): String? =
    Regex("""\s(\S+)\s(\d+)\styp\s""").find(candidate)?.groupValues?.let { "${it[1]}:${it[2]}" }

/** The kind of a candidate line (`host`, `srflx`, `relay`...). */
fun candidateKind(candidate: String): String? = Regex("""\styp\s(\w+)""").find(candidate)?.groupValues?.get(1)

/**
 * One side of a pair: its session, the events seen, the room. Signalling messages are
 * `D:` a description (the first, or a restart's: the receiver restarts too and reports
 * `RemoteRestarted`, whose description goes back as `D:`), `C:` a candidate, `E:` end of
 * candidates; one message per post, in order (one poster per side).
 */
class PeerSide(val name: String, val session: PeerConnectionSession, val room: SignalPeer) {
    val events = CopyOnWriteArrayList<PeerConnectionEvent>()
    val data = Channel<ByteArray>(Channel.UNLIMITED)
    private val outbox = Channel<String>(Channel.UNLIMITED)
    val jobs = mutableListOf<Job>()
    val closed = CompletableDeferred<PeerConnectionEvent.Closed?>()
    val pc: PeerConnection get() = session.connection

    fun send(message: String) {
        outbox.trySend(message)
    }

    /** Starts the coroutines: events, the poster, the poller and what it receives. */
    fun start(scope: CoroutineScope) {
        // Events, on the scope's thread (the test's runBlocking thread: one at a time with
        // restart(), so that a restart's description goes out before its candidates).
        jobs += scope.launch {
            try {
                session.events.collect { e ->
                    events.add(e)
                    when (e) {
                        is PeerConnectionEvent.LocalCandidate -> send("C:${e.candidate}")
                        is PeerConnectionEvent.GatheringComplete -> send("E:")
                        is PeerConnectionEvent.RemoteRestarted -> send("D:${e.localDescription}")
                        is PeerConnectionEvent.NetworkChanged -> send("D:${e.localDescription}")
                        is PeerConnectionEvent.Data -> data.trySend(e.data)
                        is PeerConnectionEvent.Closed -> closed.complete(e)
                        else -> {}
                    }
                }
            } finally {
                closed.complete(null)
            }
        }
        jobs += scope.launch(Dispatchers.IO) {
            for (m in outbox) room.post(m)
        }
        val inbox = Channel<String>(Channel.UNLIMITED)
        jobs += scope.launch(Dispatchers.IO) {
            var after = 0L
            while (isActive) {
                val (next, messages) = room.fetch(after, 1)
                after = next
                for (m in messages) inbox.send(m)
            }
        }
        jobs += scope.launch {
            for (m in inbox) {
                val body = m.substring(2)
                try {
                    when (m.take(2)) {
                        "D:" -> pc.setRemoteDescription(body)
                        "C:" -> pc.addRemoteCandidate(body)
                        "E:" -> pc.endOfRemoteCandidates()
                    }
                } catch (e: PinholeException) {
                    check(false, "$name: signalling message ${m.take(40)}: $e")
                }
            }
        }
    }

    /** The SelectedPair events so far. */
    fun pairs(): List<PeerConnectionEvent.SelectedPair> = events.filterIsInstance<PeerConnectionEvent.SelectedPair>()

    suspend fun stop() {
        for (j in jobs) j.cancelAndJoin()
    }
}

/** Sends [bytes] from [from] every 100 ms until [to] receives them (10 s at most). */
suspend fun carries(from: PeerSide, to: PeerSide, bytes: ByteArray): Boolean {
    val sender = CoroutineScope(Dispatchers.Default).launch {
        while (isActive) {
            try {
                from.pc.send(bytes)
            } catch (e: PinholeException) {
                System.err.println("${from.name}: send: $e")
            }
            delay(100)
        }
    }
    try {
        return withTimeoutOrNull(10_000) {
            while (!to.data.receive().contentEquals(bytes)) {
                // another (earlier) datagram
            }
            true
        } ?: false
    } finally {
        sender.cancelAndJoin()
    }
}

suspend fun carries(from: PeerSide, to: PeerSide, text: String): Boolean = carries(from, to, text.toByteArray())

/** Polls [cond] every 20 ms for up to [millis], suspending (the events keep coming). */
suspend fun until(millis: Long, cond: () -> Boolean): Boolean =
    withTimeoutOrNull(millis) {
        while (!cond()) delay(20)
        true
    } ?: cond()

/** Waits (bounded) for a SelectedPair event of [side] from the index [from] gives on. */
suspend fun pairFrom(side: PeerSide, millis: Long = 20_000, from: () -> Int?): PeerConnectionEvent.SelectedPair? =
    withTimeoutOrNull(millis) {
        var found: PeerConnectionEvent.SelectedPair? = null
        while (found == null) {
            found = from()?.let { i -> side.events.drop(i).filterIsInstance<PeerConnectionEvent.SelectedPair>().lastOrNull() }
            if (found == null) delay(20)
        }
        found
    }

/** Waits (bounded) for a SelectedPair event beyond the first [seen] on [side]. */
suspend fun selectedAfter(side: PeerSide, seen: Int, millis: Long = 20_000): PeerConnectionEvent.SelectedPair? =
    withTimeoutOrNull(millis) {
        while (side.pairs().size <= seen) delay(20)
        side.pairs().last()
    }

fun peerConfig(stun: String, turnUri: String, user: String, password: String, controlling: Boolean,
    policy: RelayPolicy) = PeerConnectionConfig(
    stunServers = listOf(stun),
    turnServers = listOf(PeerTurnServer(uri = turnUri, username = user, password = password)),
    controlling = controlling,
    portMapping = false,
    relayPolicy = policy,
    bind = "127.0.0.1:0",
    lite = false,
    // This app follows the network itself (networkChanged()); on loopback there is no
    // built-in monitor either way.
    noNetworkMonitor = controlling,
)

/**
 * Two connections through the room, with policies [policyA] and [policyB]; [relayed]: the
 * path expected. (Both relay-only cannot meet on one `pinhole serve --turn`: it refuses to
 * relay to its own relayed addresses, a loop. So the relayed pair is a relay-only side and
 * a direct one, whose pair goes through the relay as seen from both sides.)
 */
fun testPeerPair(name: String, signal: String, stun: String, turnUri: String, user: String, password: String,
    policyA: RelayPolicy, policyB: RelayPolicy, relayed: Boolean) {
    println("PeerConnection pair ($name): through $signal, $stun and $turnUri")
    val room = "kotlin-$name-${System.nanoTime()}"
    val t0 = System.nanoTime()
    fun phase(what: String) = println("  [%.1f s] $what".format((System.nanoTime() - t0) / 1e9))
    runBlocking {
        val a = PeerSide("$name a", openPeerConnection(peerConfig(stun, turnUri, user, password, true, policyA)),
            SignalPeer(signal, room))
        val b = PeerSide("$name b", openPeerConnection(peerConfig(stun, turnUri, user, password, false, policyB)),
            SignalPeer(signal, room))
        check(a.room.side == "a" && b.room.side == "b", "$name: room sides ${a.room.side} ${b.room.side}")
        try {
            val done = withTimeoutOrNull(120_000) {
                for (s in listOf(a, b)) {
                    s.start(this@runBlocking)
                    s.send("D:${s.pc.localDescription()}")
                }
                // Connected both ways, on the expected path.
                val pa = selectedAfter(a, 0)
                val pb = selectedAfter(b, 0)
                check(pa != null && pb != null, "$name: both sides selected a pair (${a.events} / ${b.events})")
                if (pa == null || pb == null) return@withTimeoutOrNull false
                println("  a: ${pa.local} <-> ${pa.remote} (relayed ${pa.relayed}, rtt ${pa.rttMs} ms)")
                println("  b: ${pb.local} <-> ${pb.remote} (relayed ${pb.relayed}, rtt ${pb.rttMs} ms)")
                check(pa.relayed == relayed && pb.relayed == relayed, "$name: relayed ${pa.relayed}/${pb.relayed}, want $relayed")
                check(pa.local == pb.remote && pb.local == pa.remote, "$name: the same pair seen from both sides")
                check(listOf(pa, pb).all { it.local.startsWith("127.0.0.1:") && it.remote.startsWith("127.0.0.1:") },
                    "$name: on loopback")
                check(a.pc.selectedPair() == SelectedPair(pa.local, pa.remote, relayed) ||
                    a.pc.selectedPair()?.relayed == relayed, "$name: selectedPair() ${a.pc.selectedPair()}")
                // The path's local address is a candidate of its kind: a relayed address
                // through the relay, the socket's own otherwise.
                val localKinds = a.events.filterIsInstance<PeerConnectionEvent.LocalCandidate>()
                    .filter { candidateAddress(it.candidate) == pa.local }.map { candidateKind(it.candidate) }
                check(localKinds.isNotEmpty() && localKinds.all { it == if (relayed) "relay" else "host" },
                    "$name: a's path starts at a ${if (relayed) "relay" else "host"} candidate: $localKinds")
                check(a.events.any { it is PeerConnectionEvent.GatheringComplete }, "$name: a: GatheringComplete")
                check(a.events.any { it is PeerConnectionEvent.StateChanged && it.state == IceConnectionState.CHECKING },
                    "$name: a: StateChanged(CHECKING)")
                check(until(10_000) {
                    b.events.any {
                        it is PeerConnectionEvent.StateChanged &&
                            (it.state == IceConnectionState.CONNECTED || it.state == IceConnectionState.COMPLETED)
                    }
                }, "$name: b: StateChanged(CONNECTED or COMPLETED)")
                for ((side, policy) in listOf(a to policyA, b to policyB)) {
                    val kinds = side.events.filterIsInstance<PeerConnectionEvent.LocalCandidate>()
                        .map { candidateKind(it.candidate) }.toSet()
                    val want = when (policy) {
                        RelayPolicy.RELAY_ONLY -> setOf("relay")
                        RelayPolicy.NO_RELAY -> setOf("host", "srflx")
                        else -> setOf("host", "srflx", "relay")
                    }
                    check(kinds.isNotEmpty() && want.containsAll(kinds), "${side.name}: $policy: candidates $kinds")
                }

                phase("connected")
                // Data both ways.
                check(carries(a, b, "$name: a to b"), "$name: data a -> b")
                check(carries(b, a, "$name: b to a"), "$name: data b -> a")
                check(carries(a, b, ByteArray(1200) { it.toByte() }), "$name: a 1200-byte datagram a -> b")

                phase("data both ways")
                // A restart: new credentials from a (and then b), new pairs, data again. The
                // pairs counted are those selected after a's restart and after b's
                // RemoteRestarted (events before them settled first).
                delay(300)
                val mark = a.events.size
                val oldDescription = a.pc.localDescription()
                val fresh = a.pc.restart()
                a.send("D:$fresh")
                check(fresh != oldDescription && "a=ice-ufrag:" in fresh, "$name: restart: a new description")
                val ra = pairFrom(a) { mark }
                val rb = pairFrom(b) { b.events.indexOfFirst { it is PeerConnectionEvent.RemoteRestarted }.takeIf { it >= 0 } }
                check(ra != null && rb != null, "$name: restart: both sides selected a pair again ($ra, $rb)")
                check(ra?.relayed == relayed && rb?.relayed == relayed, "$name: restart: relayed ${ra?.relayed}/${rb?.relayed}")
                check(carries(a, b, "$name: a to b after the restart"), "$name: data a -> b after the restart")
                check(carries(b, a, "$name: b to a after the restart"), "$name: data b -> a after the restart")
                println("  restart: ${ra?.local} <-> ${ra?.remote}; data both ways again")
                check(b.events.count { it is PeerConnectionEvent.RemoteRestarted } == 1 &&
                    a.events.none { it is PeerConnectionEvent.RemoteRestarted },
                    "$name: b restarted once, because a did; a did not restart again")

                phase("restarted")
                // The network changed (an app's own monitor): a's new description goes
                // out, b restarts as for a restart, new pairs (relays allocated again), data
                // again. On loopback the built-in monitor does not run: no NetworkChanged.
                delay(300)
                val markNet = a.events.size
                val beforeNet = a.pc.localDescription()
                val changed = a.pc.networkChanged()
                a.send("D:$changed")
                check(changed != beforeNet && "a=ice-ufrag:" in changed && "a=candidate:" !in changed,
                    "$name: network change: a new description, credentials first")
                check(a.pc.localDescription().startsWith(changed.lineSequence().first()),
                    "$name: network change: localDescription() has the new credentials")
                val na = pairFrom(a) { markNet }
                val nb = pairFrom(b) {
                    b.events.withIndex().filter { it.value is PeerConnectionEvent.RemoteRestarted }.drop(1)
                        .firstOrNull()?.index
                }
                check(na != null && nb != null, "$name: network change: both sides selected a pair again ($na, $nb)")
                check(na?.relayed == relayed && nb?.relayed == relayed,
                    "$name: network change: relayed ${na?.relayed}/${nb?.relayed}")
                check(carries(a, b, "$name: a to b after the network change"), "$name: data a -> b after the network change")
                check(carries(b, a, "$name: b to a after the network change"), "$name: data b -> a after the network change")
                println("  network change: ${na?.local} <-> ${na?.remote}; data both ways again")
                check(b.events.count { it is PeerConnectionEvent.RemoteRestarted } == 2 &&
                    a.events.none { it is PeerConnectionEvent.RemoteRestarted } &&
                    (a.events + b.events).none { it is PeerConnectionEvent.NetworkChanged },
                    "$name: network change: b followed once more; a did not restart again; no monitor event")

                phase("network changed")
                // Keepalive policies, as an app's lifecycle sets them: both sides to the
                // background, then suspended, then back to the foreground; each read back at
                // once, data both ways in each. The resume probes the path, which answers:
                // past the 4 s the probe has, no restart (no NetworkChanged, no
                // RemoteRestarted) and the same pair.
                for (s in listOf(a, b)) {
                    check(s.pc.keepalivePolicy() == KeepalivePolicy.FOREGROUND, "${s.name}: foreground by default")
                    check(s.pc.keepaliveIntervalMs() == 25_000u, "${s.name}: the adaptive interval starts at 25 s")
                }
                for (policy in listOf(KeepalivePolicy.BACKGROUND, KeepalivePolicy.SUSPENDED, KeepalivePolicy.FOREGROUND)) {
                    for (s in listOf(a, b)) {
                        s.pc.setKeepalivePolicy(policy)
                        check(s.pc.keepalivePolicy() == policy, "${s.name}: keepalivePolicy() $policy")
                    }
                    check(carries(a, b, "$name: a to b, $policy"), "$name: data a -> b, $policy")
                    check(carries(b, a, "$name: b to a, $policy"), "$name: data b -> a, $policy")
                }
                val keptPairs = a.pairs().size to b.pairs().size
                delay(5_000)
                check((a.events + b.events).none { it is PeerConnectionEvent.NetworkChanged } &&
                    b.events.count { it is PeerConnectionEvent.RemoteRestarted } == 2 &&
                    a.events.none { it is PeerConnectionEvent.RemoteRestarted },
                    "$name: the resumed path answered: no restart")
                check((a.pairs().size to b.pairs().size) == keptPairs, "$name: the same pair after the resume")
                check(carries(a, b, "$name: a to b after the resume"), "$name: data a -> b after the resume")
                check(carries(b, a, "$name: b to a after the resume"), "$name: data b -> a after the resume")
                println("  keepalive: background, suspended, foreground; data both ways in each, no restart")

                phase("keepalive policies")
                // Close: a waits for its end (Closed, then the flow completes and the
                // handle is freed); b closes without waiting. Their sockets (and relays) go.
                val locals = listOfNotNull(na?.local, nb?.local)
                a.pc.closeAndWait()
                phase("a closed and waited")
                val last = withTimeoutOrNull(10_000) { a.closed.await() }
                check(last is PeerConnectionEvent.Closed && last.error == null, "$name: a: Closed without error: $last")
                check(a.events.lastOrNull() is PeerConnectionEvent.Closed, "$name: a: Closed is the last event")
                b.session.close()
                withTimeoutOrNull(10_000) { b.closed.await() }
                check(b.closed.isCompleted, "$name: b: the events flow ended with close()")
                expectThrows<IllegalStateException>("$name: b: a closed connection is gone") { b.pc.isClosed() }
                check(locals.size == 2, "$name: both pairs after the network change")
                for ((l, policy) in locals.zip(listOf(policyA, policyB))) {
                    if (policy == RelayPolicy.RELAY_ONLY) {
                        check(relayReleased(l), "$name: the server freed the relayed $l")
                    } else {
                        check(eventually(5_000) { portFree(l.substringAfterLast(':').toInt()) },
                            "$name: closing freed the socket $l")
                    }
                }
                true
            }
            check(done != null, "$name: within 120 s")
        } finally {
            a.stop()
            b.stop()
            a.session.close()
            b.session.close()
        }
    }
}

fun testPeerConnections(signal: String, stun: String, turnUri: String, user: String, password: String) {
    testPeerBasics(stun, turnUri, user, password)
    testPeerPair("direct", signal, stun, turnUri, user, password, RelayPolicy.ALL, RelayPolicy.ALL, relayed = false)
    testPeerPair("relayed", signal, stun, turnUri, user, password, RelayPolicy.RELAY_ONLY, RelayPolicy.NO_RELAY,
        relayed = true)
}

/** Errors, the session's and the cold flow's ownership of the connection. */
fun testPeerBasics(stun: String, turnUri: String, user: String, password: String) {
    println("PeerConnection")
    expectThrows<PinholeException.InvalidArgument>("PeerConnection: a bad STUN URI") {
        runBlocking {
            openPeerConnection(peerConfig(stun, turnUri, user, password, true, RelayPolicy.ALL)
                .copy(stunServers = listOf("http://127.0.0.1:3478")))
        }
    }
    expectThrows<PinholeException.InvalidArgument>("PeerConnection: a bad bind address") {
        runBlocking {
            openPeerConnection(peerConfig(stun, turnUri, user, password, true, RelayPolicy.ALL).copy(bind = "nope"))
        }
    }
    val s = runBlocking { openPeerConnection(peerConfig(stun, turnUri, user, password, true, RelayPolicy.ALL)) }
    expectThrows<PinholeException.InvalidArgument>("PeerConnection: a bad remote description") {
        s.connection.setRemoteDescription("not a description")
    }
    expectThrows<PinholeException.InvalidArgument>("PeerConnection: a bad candidate") {
        s.connection.addRemoteCandidate("candidate:nope")
    }
    check(s.connection.selectedPair() == null, "PeerConnection: no pair before the peer")
    check(!PeerConnectionConfig(controlling = true, relayPolicy = RelayPolicy.ALL).noNetworkMonitor,
        "PeerConnectionConfig: the built-in network monitor is on by default")
    PeerConnectionConfig(controlling = true, relayPolicy = RelayPolicy.ALL).let {
        check(it.keepalivePolicy == null && it.keepaliveIntervalMs == 0u,
            "PeerConnectionConfig: the foreground, adaptive, by default")
    }
    expectThrows<PinholeException.InvalidArgument>("PeerConnection: a keepalive interval under a second") {
        runBlocking {
            openPeerConnection(peerConfig(stun, turnUri, user, password, true, RelayPolicy.ALL)
                .copy(keepaliveIntervalMs = 999u))
        }
    }
    runBlocking {
        openPeerConnection(peerConfig(stun, turnUri, user, password, true, RelayPolicy.NO_RELAY)
            .copy(keepalivePolicy = KeepalivePolicy.BACKGROUND, keepaliveIntervalMs = 15_000u))
    }.use {
        check(it.connection.keepalivePolicy() == KeepalivePolicy.BACKGROUND, "the config's keepalive policy")
        check(it.connection.keepaliveIntervalMs() == 15_000u, "the config's fixed keepalive interval")
    }
    check(s.connection.localDescription().let { "a=ice-ufrag:" in it && "a=ice-pwd:" in it },
        "local description: ${s.connection.localDescription()}")
    check(!s.connection.isClosed(), "a new connection is open")
    expectThrows<PinholeException.NotAvailable>("send before a pair is selected") { s.connection.send(byteArrayOf(1)) }
    s.close()
    s.close() // idempotent
    expectThrows<IllegalStateException>("a closed session's connection is gone") { s.connection.isClosed() }

    // The cold flow: collecting starts a connection; the first() that takes a candidate
    // cancels the flow, which closes the connection and frees its socket.
    var started: PeerConnection? = null
    val candidate = runBlocking {
        withTimeout(20_000) {
            peerConnectionEvents(peerConfig(stun, turnUri, user, password, true, RelayPolicy.NO_RELAY)) { started = it }
                .first { it is PeerConnectionEvent.LocalCandidate } as PeerConnectionEvent.LocalCandidate
        }
    }
    check(candidateKind(candidate.candidate) == "host", "cold flow: first a host candidate: ${candidate.candidate}")
    expectThrows<IllegalStateException>("cold flow ended: the connection is closed") { started!!.isClosed() }
    val port = candidateAddress(candidate.candidate)?.substringAfterLast(':')?.toInt()
    check(port != null && eventually(5_000) { portFree(port) }, "cold flow ended: its socket $port is freed")
    expectThrows<PinholeException.InvalidArgument>("cold flow: a bad config fails the flow") {
        runBlocking {
            peerConnectionEvents(peerConfig(stun, turnUri, user, password, true, RelayPolicy.ALL)
                .copy(stunServers = listOf("http://127.0.0.1:3478"))).first()
        }
    }
    // Collected once.
    val once = runBlocking { openPeerConnection(peerConfig(stun, turnUri, user, password, true, RelayPolicy.NO_RELAY)) }
    runBlocking {
        withTimeout(10_000) { once.events.first { it is PeerConnectionEvent.LocalCandidate } }
        expectThrows<IllegalStateException>("a session's events are collected once") { runBlocking { once.events.first() } }
    }
    once.close()
}
