// The Kotlin bindings' test on the host JVM (JNA): every exported item, callbacks arriving
// on pinhole's Rust threads, async calls and their cancellation, errors, a netcheck against
// `pinhole serve` on loopback (its URI is args[0]; args[1] is a loopback port where nothing
// answers), port mapping at 127.0.0.9, where no gateway listens (also verified through
// `pinhole serve`), and TURN allocations on
// `pinhole serve --turn` (args[2..5]: its URI, user, password, REST secret) relaying to and
// from a UDP socket of the test's own on 127.0.0.1. The package's Flow adapters and
// NetworkMonitor logic (feeding port mappers and PeerConnections) are tested in
// AdaptersTest.kt, PeerConnection (two of them meeting through `pinhole signal` at
// args[6]) in PeerTest.kt. Prints "N passed, N failed".
package dev.pinhole

import java.net.DatagramPacket
import java.net.DatagramSocket
import java.net.InetAddress
import java.net.InetSocketAddress
import java.net.PortUnreachableException
import java.net.SocketTimeoutException
import java.util.concurrent.CountDownLatch
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit
import java.util.concurrent.atomic.AtomicInteger
import kotlinx.coroutines.TimeoutCancellationException
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout

var passed = 0
var failed = 0

fun check(cond: Boolean, what: String) {
    if (cond) {
        passed++
    } else {
        failed++
        System.err.println("FAIL: $what")
    }
}

inline fun <reified E : Throwable> expectThrows(what: String, block: () -> Unit) {
    try {
        block()
        check(false, "$what: no exception")
    } catch (e: Throwable) {
        check(e is E, "$what: got $e, want ${E::class.simpleName}")
    }
}

val mainThread: Thread = Thread.currentThread()

class CountingLogger : PinholeLogger {
    val records = AtomicInteger()
    override fun log(level: LogLevel, target: String, message: String) {
        if (target.isNotEmpty() && level != LogLevel.OFF) records.incrementAndGet()
    }
}

class Listener : NetcheckListener {
    val done = CountDownLatch(1)
    val progress = mutableListOf<NetcheckProgress>()
    @Volatile var report: NetcheckReport? = null
    @Volatile var error: PinholeException? = null
    @Volatile var onMainThread = false
    private val inCallback = AtomicInteger()
    @Volatile var overlapped = false

    private fun seen() {
        if (Thread.currentThread() == mainThread) onMainThread = true
    }

    override fun onProgress(progress: NetcheckProgress) {
        seen()
        if (inCallback.incrementAndGet() > 1) overlapped = true
        Thread.sleep(5)
        synchronized(this) { this.progress.add(progress) }
        inCallback.decrementAndGet()
    }

    override fun onReport(report: NetcheckReport) {
        seen()
        this.report = report
        done.countDown()
    }

    override fun onError(error: PinholeException) {
        seen()
        this.error = error
        done.countDown()
    }
}

class MappingListener : PortMappingListener {
    val stopped = CountDownLatch(1)
    val events = mutableListOf<PortMappingEvent>()
    @Volatile var onMainThread = false

    override fun onEvent(event: PortMappingEvent) {
        if (Thread.currentThread() == mainThread) onMainThread = true
        synchronized(this) { events.add(event) }
        if (event is PortMappingEvent.Unavailable || event is PortMappingEvent.Released) {
            stopped.countDown()
        }
    }
}

class TurnEvents : TurnListener {
    val events = LinkedBlockingQueue<TurnEvent>()
    val data = LinkedBlockingQueue<Pair<String, ByteArray>>()
    @Volatile var onMainThread = false

    override fun onEvent(event: TurnEvent) {
        if (Thread.currentThread() == mainThread) onMainThread = true
        events.add(event)
    }

    override fun onData(peer: String, data: ByteArray) {
        if (Thread.currentThread() == mainThread) onMainThread = true
        this.data.add(peer to data)
    }

    /** The next event of type T (skipping others, such as Refreshed), within 10 s. */
    inline fun <reified T : TurnEvent> next(): T? {
        val deadline = System.nanoTime() + 10_000_000_000L
        while (true) {
            val left = deadline - System.nanoTime()
            if (left <= 0) return null
            val e = events.poll(left, TimeUnit.NANOSECONDS) ?: return null
            if (e is T) return e
        }
    }
}

fun socketAddress(text: String): InetSocketAddress =
    InetSocketAddress(InetAddress.getByName(text.substringBeforeLast(':')), text.substringAfterLast(':').toInt())

/** Whether the server closed the relayed port: ICMP port unreachable on a connected socket. */
fun relayReleased(relayed: String): Boolean {
    DatagramSocket().use { s ->
        s.connect(socketAddress(relayed))
        s.soTimeout = 200
        repeat(25) {
            try {
                s.send(DatagramPacket(byteArrayOf(1), 1))
                s.receive(DatagramPacket(ByteArray(16), 16))
            } catch (e: PortUnreachableException) {
                return true
            } catch (e: SocketTimeoutException) {
            }
        }
    }
    return false
}

fun testTurn(uri: String, user: String, password: String, secret: String) {
    println("TURN allocation on $uri: permission, channel, data both ways, release")
    val l = TurnEvents()
    val alloc = runBlocking {
        withTimeout(20_000) { allocateTurn(TurnConfig(uri = uri, username = user, password = password, lifetimeSecs = 300u), l) }
    }
    val relayed = alloc.relayedAddress()
    check(relayed.startsWith("127.0.0.1:") && alloc.relayedAddresses() == listOf(relayed), "relayed $relayed")
    check(alloc.mappedAddress()?.startsWith("127.0.0.1:") == true, "mapped ${alloc.mappedAddress()}")
    val allocated = l.next<TurnEvent.Allocated>()
    check(allocated != null && allocated.relayed == listOf(relayed) && allocated.lifetimeSecs == 600u,
        "Allocated event $allocated")
    println("  relayed $relayed, mapped ${alloc.mappedAddress()}, lifetime ${allocated?.lifetimeSecs} s")
    check(!alloc.isClosed(), "open")

    DatagramSocket(0, InetAddress.getByName("127.0.0.1")).use { peer ->
        peer.soTimeout = 5000
        val peerAddr = "127.0.0.1:${peer.localPort}"
        val relay = socketAddress(relayed)
        fun peerSend(text: String) = peer.send(DatagramPacket(text.toByteArray(), text.length, relay))
        fun peerReceive(): Pair<String, Any> {
            val p = DatagramPacket(ByteArray(2048), 2048)
            peer.receive(p)
            return String(p.data, 0, p.length) to p.socketAddress
        }

        // Without a permission, sending fails (as an event).
        alloc.send("127.0.0.2:9", byteArrayOf(1))
        val sendFailed = l.next<TurnEvent.SendFailed>()
        check(sendFailed?.peer == "127.0.0.2:9", "SendFailed $sendFailed")

        runBlocking { withTimeout(10_000) { alloc.createPermission("127.0.0.1") } }
        check(l.next<TurnEvent.PermissionCreated>()?.peerIp == "127.0.0.1", "PermissionCreated event")
        peerSend("hello through the relay")
        val d1 = l.data.poll(10, TimeUnit.SECONDS)
        check(d1 != null && d1.first == peerAddr && String(d1.second) == "hello through the relay", "peer -> client: $d1")
        alloc.send(peerAddr, "reply by Send indication".toByteArray())
        check(peerReceive() == ("reply by Send indication" to relay), "client -> peer")

        val channel = runBlocking { withTimeout(10_000) { alloc.bindChannel(peerAddr) } }
        check(channel.toInt() in 0x4000..0x4FFF, "channel $channel")
        check(l.next<TurnEvent.ChannelBound>() == TurnEvent.ChannelBound(peerAddr, channel), "ChannelBound event")
        alloc.send(peerAddr, "over the channel".toByteArray())
        check(peerReceive() == ("over the channel" to relay), "client -> peer over the channel")
        peerSend("back over the channel")
        val d2 = l.data.poll(10, TimeUnit.SECONDS)
        check(d2 != null && d2.first == peerAddr && String(d2.second) == "back over the channel", "peer -> client: $d2")
        println("  channel 0x${channel.toString(16)} to $peerAddr: data both ways")

        expectThrows<PinholeException.InvalidArgument>("bad peer") { alloc.send("nope", byteArrayOf(1)) }
        expectThrows<PinholeException.InvalidArgument>("too much data") { alloc.send(peerAddr, ByteArray(70_000)) }
        expectThrows<PinholeException.InvalidArgument>("bad peer IP") { runBlocking { alloc.createPermission("127.0.0.1:80") } }
        expectThrows<PinholeException.InvalidArgument>("channel without port") { runBlocking { alloc.bindChannel("127.0.0.1") } }

        runBlocking { withTimeout(10_000) { alloc.closeAndWait() } }
        check(alloc.isClosed(), "closed after closeAndWait")
        check(l.next<TurnEvent.Deallocated>() != null, "Deallocated event")
        expectThrows<PinholeException.NotAvailable>("send after closeAndWait") { alloc.send(peerAddr, byteArrayOf(1)) }
        expectThrows<PinholeException.NotAvailable>("permission after closeAndWait") {
            runBlocking { alloc.createPermission("127.0.0.1") }
        }
        check(relayReleased(relayed), "the server freed the relayed port")
    }
    check(!l.onMainThread, "TURN callbacks not on the main thread")
    alloc.close()
    expectThrows<IllegalStateException>("a closed object is gone") { alloc.isClosed() }

    println("TURN: wrong credentials, REST credentials, dropping deallocates")
    expectThrows<PinholeException.Authentication>("wrong password") {
        runBlocking { withTimeout(20_000) { allocateTurn(TurnConfig(uri = uri, username = user, password = "wrong"), TurnEvents()) } }
    }
    expectThrows<PinholeException.Authentication>("wrong secret") {
        runBlocking { withTimeout(20_000) { allocateTurn(TurnConfig(uri = uri, username = user, secret = "wrong"), TurnEvents()) } }
    }
    val rest = runBlocking {
        withTimeout(20_000) { allocateTurn(TurnConfig(uri = uri, username = user, secret = secret, restTtlSecs = 600u), TurnEvents()) }
    }
    val restRelayed = rest.relayedAddress()
    check(restRelayed.startsWith("127.0.0.1:"), "REST relayed $restRelayed")
    println("  REST credentials: relayed $restRelayed")
    rest.close() // drops the Rust object: deallocates in the background
    check(relayReleased(restRelayed), "dropping the allocation freed the relayed port")

    expectThrows<PinholeException.InvalidArgument>("no credentials") {
        runBlocking { allocateTurn(TurnConfig(uri = uri, username = user), TurnEvents()) }
    }
    expectThrows<PinholeException.InvalidArgument>("both credentials") {
        runBlocking { allocateTurn(TurnConfig(uri = uri, username = user, password = "p", secret = "s"), TurnEvents()) }
    }
    expectThrows<PinholeException.InvalidArgument>("bad URI") {
        runBlocking { allocateTurn(TurnConfig(uri = "stun:127.0.0.1", username = user, password = "p"), TurnEvents()) }
    }
    expectThrows<PinholeException.Unsupported>("turns: without TLS") {
        runBlocking { allocateTurn(TurnConfig(uri = "turns:127.0.0.1", username = user, password = "p"), TurnEvents()) }
    }
    check(RelayedFamily.values().size == 3, "RelayedFamily")
}

fun checkLoopbackReport(r: NetcheckReport, what: String) {
    check(r.udp, "$what: udp")
    // Loopback has no NAT: everything is endpoint-independent and hairpins.
    check(r.mapping == NatBehaviour.ENDPOINT_INDEPENDENT, "$what: mapping ${r.mapping}")
    check(r.filtering == NatBehaviour.ENDPOINT_INDEPENDENT, "$what: filtering ${r.filtering}")
    check(r.hairpinning == true, "$what: hairpinning")
    check(r.algRewrites == false, "$what: ALG")
    check(r.portAllocation?.kind == PortAllocationKind.PRESERVING, "$what: port allocation ${r.portAllocation}")
    check(r.bindingLifetime == null, "$what: no lifetime measured")
    check(r.rfc5780Server != null, "$what: RFC 5780 server")
    check(r.publicAddresses.isNotEmpty() && r.publicAddresses[0].startsWith("127.0.0.1:"),
        "$what: public ${r.publicAddresses}")
    check(r.servers.size == 1, "$what: one server")
    val s = r.servers[0]
    check(s.label.startsWith("stun:"), "$what: label")
    check(s.rttUs != null, "$what: rtt")
    check(s.mapped != null && s.otherAddress != null, "$what: mapped and OTHER-ADDRESS")
    println("  $what: mapping ${r.mapping}, filtering ${r.filtering}, public ${r.publicAddresses}, rtt ${s.rttUs} µs")
}

fun main(args: Array<String>) {
    require(args.size == 7) {
        "usage: Test stun:IP:PORT(pinhole serve) stun:IP:PORT(silent) turn:IP:PORT USER PASSWORD SECRET http://IP:PORT(pinhole signal)"
    }
    val serveUri = args[0]
    val silentUri = args[1]

    println("version ${version()}")
    check(version().matches(Regex("""\d+\.\d+\.\d+.*""")), "version")

    val logger = CountingLogger()
    setLogger(logger, LogLevel.DEBUG)

    println("errors")
    expectThrows<PinholeException.InvalidArgument>("bad URI") {
        runBlocking { netcheck(NetcheckConfig(stunServers = listOf("http://example.org"))) }
    }
    expectThrows<PinholeException.Unsupported>("stuns") {
        runBlocking { netcheck(NetcheckConfig(stunServers = listOf("stuns:127.0.0.1:5349"))) }
    }
    expectThrows<PinholeException.InvalidArgument>("bad gateway") {
        startNetcheck(NetcheckConfig(stunServers = listOf(serveUri), gateway = "nope"), Listener())
    }
    expectThrows<PinholeException.InvalidArgument>("bad server address") { StunServer("localhost", null) }
    expectThrows<PinholeException.InvalidArgument>("port 0") {
        mapPort(PortMappingConfig(internalPort = 0u, protocol = TransportProtocol.UDP, gateway = "127.0.0.9"),
            MappingListener())
    }
    try {
        runBlocking { netcheck(NetcheckConfig(stunServers = listOf("bogus"))) }
    } catch (e: PinholeException) {
        check(e.message!!.contains("bogus"), "error message names the URI: ${e.message}")
    }

    println("netcheck (async) against pinhole serve at $serveUri, gateway probe at 127.0.0.9")
    val r = runBlocking {
        netcheck(NetcheckConfig(stunServers = listOf(serveUri), timeoutMs = 8000u, gateway = "127.0.0.9"))
    }
    checkLoopbackReport(r, "pinhole serve")
    val probe = r.portmap
    check(probe != null && probe.gateway == "127.0.0.9", "gateway probed: $probe")
    check(probe?.pcp != true && probe?.natpmp != true && probe?.upnp != true, "no gateway at 127.0.0.9: $probe")
    println("  gateway probe: $probe")

    println("embedded servers")
    val plain = StunServer("127.0.0.1:0", null)
    check(plain.addresses().size == 1 && plain.uri().startsWith("stun:127.0.0.1:"), "plain server ${plain.addresses()}")
    plain.close()
    plain.close() // idempotent
    val server = StunServer.loopback()
    check(server.addresses().size == 4, "RFC 5780 server has four addresses")

    println("netcheck with a listener against ${server.uri()}")
    val listener = Listener()
    val task = startNetcheck(NetcheckConfig(stunServers = listOf(server.uri()), noPortmap = true), listener)
    check(listener.done.await(60, TimeUnit.SECONDS), "listener done")
    Thread.sleep(100)
    check(task.isFinished(), "task finished")
    check(listener.error == null, "no error: ${listener.error}")
    check(!listener.onMainThread, "callbacks not on the main thread")
    // JNA gives each attachment of the native thread a new Thread object, so thread
    // identity cannot be compared here: check the callbacks never overlapped instead.
    check(!listener.overlapped, "callbacks one at a time")
    val kinds = synchronized(listener) { listener.progress.map { it::class.simpleName }.toSet() }
    check(kinds.containsAll(listOf("ServerReplied", "Mapping", "Filtering", "Hairpinning")), "progress kinds $kinds")
    listener.report?.let { checkLoopbackReport(it, "embedded server"); check(it.portmap == null, "no portmap") }
    task.close()
    server.close()

    println("cancellation")
    val cancelled = Listener()
    val silent = NetcheckConfig(stunServers = listOf(silentUri), timeoutMs = 60000u, noPortmap = true)
    val t2 = startNetcheck(silent, cancelled)
    t2.close() // cancels
    check(cancelled.done.await(20, TimeUnit.SECONDS), "cancelled listener done")
    check(cancelled.error is PinholeException.Cancelled, "cancelled: ${cancelled.error}")
    t2.close() // idempotent
    val started = System.nanoTime()
    try {
        runBlocking { withTimeout(500) { netcheck(silent) } }
        check(false, "withTimeout should cancel the netcheck")
    } catch (e: TimeoutCancellationException) {
        check(System.nanoTime() - started < 10_000_000_000L, "async cancellation is prompt")
    }
    // Dropping a running task's handle cancels it.
    startNetcheck(silent, Listener()).close()

    println("port mapping via 127.0.0.9 (no gateway there)")
    val ml = MappingListener()
    val mapper = mapPort(PortMappingConfig(internalPort = 40000u, protocol = TransportProtocol.UDP,
        gateway = "127.0.0.9", localIp = "127.0.0.1", lifetimeSecs = 60u), ml)
    check(mapper.current() == null, "no mapping yet")
    check(ml.stopped.await(30, TimeUnit.SECONDS), "mapper stopped")
    val last = synchronized(ml) { ml.events.last() }
    check(last is PortMappingEvent.Unavailable, "unavailable: $last")
    check(!ml.onMainThread, "mapping events not on the main thread")
    println("  $last")
    expectThrows<PinholeException.InvalidArgument>("networkChanged: not an IP") {
        mapper.networkChanged(NetworkInfo(gateway = "nope"))
    }
    expectThrows<PinholeException.InvalidArgument>("networkChanged: local address without gateway") {
        mapper.networkChanged(NetworkInfo(localIp = "127.0.0.1"))
    }
    runBlocking { mapper.closeAndWait() }
    check(mapper.isClosed() && mapper.current() == null, "stopped, no mapping")
    expectThrows<PinholeException.NotAvailable>("networkChanged after the end") {
        mapper.networkChanged(NetworkInfo(gateway = "127.0.0.9"))
    }
    mapper.close()

    println("port mapping via 127.0.0.9 verified through $serveUri (no gateway there)")
    for (bad in listOf("http://127.0.0.1:3478", "stun:", "stun:127.0.0.1:99999", "127.0.0.1:3478")) {
        expectThrows<PinholeException.InvalidArgument>("verify_stun $bad") {
            mapPort(PortMappingConfig(internalPort = 40000u, protocol = TransportProtocol.UDP,
                gateway = "127.0.0.9", verifyStun = bad), MappingListener())
        }
    }
    expectThrows<PinholeException.Unsupported>("verify_stun stuns:") {
        mapPort(PortMappingConfig(internalPort = 40000u, protocol = TransportProtocol.UDP,
            gateway = "127.0.0.9", verifyStun = "stuns:127.0.0.1:5349"), MappingListener())
    }
    expectThrows<PinholeException.InvalidArgument>("verify_stun with TCP") {
        mapPort(PortMappingConfig(internalPort = 40000u, protocol = TransportProtocol.TCP,
            gateway = "127.0.0.9", verifyStun = serveUri), MappingListener())
    }
    expectThrows<PinholeException.InvalidArgument>("verify interval over a day") {
        mapPort(PortMappingConfig(internalPort = 40000u, protocol = TransportProtocol.UDP,
            gateway = "127.0.0.9", verifyStun = serveUri, verifyIntervalSecs = 86401u), MappingListener())
    }
    check(PortMappingConfig(internalPort = 1u, protocol = TransportProtocol.UDP).let {
        it.verifyStun == null && it.verifyIntervalSecs == 300u
    }, "verification off by default, interval 300 s")
    // No gateway at 127.0.0.9, so nothing is mapped and nothing can be verified: a
    // well-formed reflector is accepted, resolved, the mapped port bound, and the mapper
    // still ends cleanly.
    val freePort = DatagramSocket(0, InetAddress.getByName("127.0.0.1")).use { it.localPort }
    val mv = MappingListener()
    val verifying = mapPort(PortMappingConfig(internalPort = freePort.toUShort(), protocol = TransportProtocol.UDP,
        gateway = "127.0.0.9", localIp = "127.0.0.1", lifetimeSecs = 60u, verifyStun = serveUri,
        verifyIntervalSecs = 5u), mv)
    check(mv.stopped.await(30, TimeUnit.SECONDS), "verifying mapper stopped")
    val lastV = synchronized(mv) { mv.events.last() }
    check(lastV is PortMappingEvent.Unavailable && !lastV.reason.contains("verify_stun") &&
        !lastV.reason.contains("mapped port"), "verifying: unavailable for want of a gateway: $lastV")
    println("  $lastV")
    runBlocking { withTimeout(10_000) { verifying.closeAndWait() } }
    verifying.close()
    DatagramSocket(0, InetAddress.getByName("127.0.0.1")).use { taken ->
        val mt = MappingListener()
        val m = mapPort(PortMappingConfig(internalPort = taken.localPort.toUShort(), protocol = TransportProtocol.UDP,
            gateway = "127.0.0.9", localIp = "127.0.0.1", verifyStun = serveUri), mt)
        check(mt.stopped.await(30, TimeUnit.SECONDS), "mapper with a taken port stopped")
        val lastT = synchronized(mt) { mt.events.last() }
        check(lastT is PortMappingEvent.Unavailable && lastT.reason.contains("mapped port"), "port taken: $lastT")
        println("  port taken: $lastT")
        m.close()
    }

    val ml2 = MappingListener()
    val m2 = mapPort(PortMappingConfig(internalPort = 40001u, protocol = TransportProtocol.TCP,
        gateway = "127.0.0.9", method = MappingMethod.PCP), ml2)
    runBlocking { withTimeout(10_000) { m2.closeAndWait() } }
    check(m2.isClosed(), "released before any answer")
    val last2 = synchronized(ml2) { ml2.events.lastOrNull() }
    check(last2 == PortMappingEvent.Released || last2 is PortMappingEvent.Unavailable, "last event $last2")
    m2.close()

    // Records and enums the lab would produce, built here to check their shape.
    val mapping = PortMapping(MappingMethod.NAT_PMP, TransportProtocol.UDP, "10.0.0.2:40000",
        "203.0.113.7:40000", 7200u, true)
    val changed = PortMappingEvent.Changed(mapping, mapping.copy(external = "203.0.113.7:40002"))
    check(changed.old != changed.new && changed.new.method == MappingMethod.NAT_PMP, "records")
    check(PortMappingEvent.Mapped(mapping) == PortMappingEvent.Mapped(mapping.copy()), "data class equality")
    // Every event, each handled, with an `else` branch: the event-evolution policy (a new
    // variant is not a breaking change, so matching must never be exhaustive without one).
    val allEvents: List<PortMappingEvent> = listOf(
        PortMappingEvent.Mapped(mapping), PortMappingEvent.Renewed(mapping), changed,
        PortMappingEvent.Lost("x"), PortMappingEvent.Unavailable("x"), PortMappingEvent.Released,
        PortMappingEvent.Verified(mapping), PortMappingEvent.NotForwarding(mapping),
        PortMappingEvent.Unverified("no answer"))
    val names = allEvents.map {
        when (it) {
            is PortMappingEvent.Mapped -> "mapped"
            is PortMappingEvent.Renewed -> "renewed"
            is PortMappingEvent.Changed -> "changed"
            is PortMappingEvent.Lost -> "lost"
            is PortMappingEvent.Unavailable -> "unavailable"
            PortMappingEvent.Released -> "released"
            is PortMappingEvent.Verified -> "verified:${it.mapping.external}"
            is PortMappingEvent.NotForwarding -> "not-forwarding:${it.mapping.external}"
            is PortMappingEvent.Unverified -> "unverified:${it.reason}"
            else -> "unknown"
        }
    }
    check(names.toSet().size == 9 && "unverified:no answer" in names, "events $names")
    check(NatBehaviour.values().size == 4 && MappingMethod.values().size == 3 &&
        LogLevel.values().size == 6, "enums")
    check(BindingLifetime(10_000uL, null).let { it.atLeastMs == 10_000uL && it.lessThanMs == null }, "BindingLifetime")
    // No java.time anywhere in the API (Android API 24 has none): durations are integers.
    check(PortMapping::class.java.declaredFields.none { it.type.name.startsWith("java.time") } &&
        TurnEvent.Allocated::class.java.declaredFields.none { it.type.name.startsWith("java.time") } &&
        NetcheckProgress.ServerReplied::class.java.declaredFields.none { it.type.name.startsWith("java.time") },
        "no java.time.Duration in the records")
    check(GatewayProbe(null, null, null, null, null, null, "x").error == "x", "GatewayProbe")

    testTurn(args[2], args[3], args[4], args[5])
    testFlows(serveUri, silentUri, args[2], args[3], args[4])
    testNetworkMonitor()
    testNetworkMonitorPeer()
    testAppLifecycle()
    testPeerConnections(args[6], serveUri, args[2], args[3], args[4])

    check(logger.records.get() > 0, "log records arrived: ${logger.records.get()}")
    println("log records received: ${logger.records.get()}")
    setLogger(null, LogLevel.OFF)

    println("$passed passed, $failed failed")
    System.exit(if (failed == 0) 0 else 1)
}
