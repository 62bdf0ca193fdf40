// The package's Kotlin (android/src/main/kotlin: the Flow adapters and the NetworkMonitor
// logic) on the host JVM, called from Test.kt's main. Loopback only: `pinhole serve` and
// `pinhole serve --turn` started by bindings/test.sh, silent fake gateways (UDP sockets
// of this test on 127.0.0.31-36 port 5351, which never answer), and PeerConnections bound
// to 127.0.0.1 without servers, fed network changes by a NetworkMonitor and keepalive
// policies by an AppLifecycle.
package dev.pinhole

import java.net.DatagramPacket
import java.net.DatagramSocket
import java.net.InetAddress
import java.net.InetSocketAddress
import java.net.SocketTimeoutException
import java.util.concurrent.CopyOnWriteArrayList
import kotlinx.coroutines.delay
import kotlinx.coroutines.flow.filterIsInstance
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.flow.onEach
import kotlinx.coroutines.flow.toList
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import kotlinx.coroutines.withTimeoutOrNull

/** PCP's and NAT-PMP's server port (RFC 6887 §19.1, RFC 6886 §3). */
const val PCP_PORT = 5351

/** A gateway that never answers: a UDP socket on ip:5351. */
fun silentGateway(ip: String): DatagramSocket =
    DatagramSocket(InetSocketAddress(InetAddress.getByName(ip), PCP_PORT)).also { it.soTimeout = 200 }

/** The source address of the next request the fake gateway hears within [millis]. */
fun DatagramSocket.nextRequestFrom(millis: Long = 15_000): String? {
    val deadline = System.nanoTime() + millis * 1_000_000
    val p = DatagramPacket(ByteArray(1100), 1100)
    while (System.nanoTime() < deadline) {
        try {
            receive(p)
            return p.address.hostAddress
        } catch (e: SocketTimeoutException) {
        }
    }
    return null
}

fun portFree(port: Int): Boolean = try {
    DatagramSocket(InetSocketAddress(InetAddress.getByName("127.0.0.1"), port)).close()
    true
} catch (e: java.net.SocketException) {
    false
}

/** Polls [cond] every 20 ms for up to [millis]. */
fun eventually(millis: Long, cond: () -> Boolean): Boolean {
    val deadline = System.nanoTime() + millis * 1_000_000
    while (System.nanoTime() < deadline) {
        if (cond()) return true
        Thread.sleep(20)
    }
    return cond()
}

fun testFlows(serveUri: String, silentUri: String, turnUri: String, user: String, password: String) {
    println("Flow adapters")

    // Netcheck: progress, then the report; the flow completes.
    val updates = runBlocking {
        withTimeout(30_000) {
            netcheckUpdates(NetcheckConfig(stunServers = listOf(serveUri), timeoutMs = 8000u, noPortmap = true)).toList()
        }
    }
    val done = updates.lastOrNull()
    check(done is NetcheckUpdate.Done && done.report.udp, "netcheck flow ends with the report: $done")
    check(updates.any { it is NetcheckUpdate.Progress && it.progress is NetcheckProgress.ServerReplied },
        "netcheck flow: progress")
    expectThrows<PinholeException.InvalidArgument>("netcheck flow: a bad config fails the flow") {
        runBlocking { netcheckUpdates(NetcheckConfig(stunServers = listOf("bogus"))).toList() }
    }
    // Cancelling the collector closes the task (a closed Kotlin object refuses calls).
    var task: NetcheckTask? = null
    val cancelled = runBlocking {
        withTimeoutOrNull(500) {
            netcheckUpdates(NetcheckConfig(stunServers = listOf(silentUri), timeoutMs = 60000u, noPortmap = true)) {
                task = it
            }.collect {}
        }
    }
    check(cancelled == null && task != null, "netcheck flow cancelled by the timeout")
    expectThrows<IllegalStateException>("netcheck flow cancelled: the task is closed") { task!!.isFinished() }

    // Port mapping with no gateway (127.0.0.9): Unavailable, the flow completes, the
    // mapper is closed.
    var ended: PortMapper? = null
    val events = runBlocking {
        withTimeout(30_000) {
            portMappingEvents(PortMappingConfig(internalPort = 40002u, protocol = TransportProtocol.UDP,
                gateway = "127.0.0.9", localIp = "127.0.0.1", lifetimeSecs = 60u)) { ended = it }.toList()
        }
    }
    check(events.lastOrNull() is PortMappingEvent.Unavailable, "mapping flow ends Unavailable: $events")
    expectThrows<IllegalStateException>("mapping flow completed: the mapper is closed") { ended!!.current() }

    // A mapper at a silent gateway verifying through pinhole serve holds the mapped port;
    // cancelling the collector closes it, and its thread frees the port.
    silentGateway("127.0.0.31").use { gw ->
        val port = DatagramSocket(0, InetAddress.getByName("127.0.0.1")).use { it.localPort }
        var mapper: PortMapper? = null
        val seen = CopyOnWriteArrayList<PortMappingEvent>()
        var heard: String? = null
        runBlocking {
            val job = launch {
                portMappingEvents(PortMappingConfig(internalPort = port.toUShort(), protocol = TransportProtocol.UDP,
                    gateway = "127.0.0.31", localIp = "127.0.0.1", method = MappingMethod.PCP,
                    verifyStun = serveUri)) { mapper = it }.collect { seen.add(it) }
            }
            heard = kotlinx.coroutines.withContext(kotlinx.coroutines.Dispatchers.IO) { gw.nextRequestFrom() }
            check(!portFree(port), "the running mapper holds the mapped port $port")
            job.cancel()
            job.join()
        }
        check(heard == "127.0.0.1", "the mapper asked the silent gateway: $heard")
        check(seen.none { it.isLast }, "the mapper had not ended by itself: $seen")
        expectThrows<IllegalStateException>("mapping flow cancelled: the mapper is closed") { mapper!!.current() }
        check(eventually(5_000) { portFree(port) }, "cancelling the flow ended the mapper: port $port freed")
    }

    // TURN: allocate, permission, data from a peer through the flow; the first() that
    // takes the data cancels the flow, which deallocates: the server frees the relayed port.
    DatagramSocket(0, InetAddress.getByName("127.0.0.1")).use { peer ->
        var allocation: TurnAllocation? = null
        var relayed = ""
        val data = runBlocking {
            withTimeout(20_000) {
                turnUpdates(TurnConfig(uri = turnUri, username = user, password = password)) { allocation = it }
                    .onEach { u ->
                        val e = (u as? TurnUpdate.Event)?.event
                        if (e is TurnEvent.Allocated) {
                            relayed = e.relayed.first()
                            allocation!!.createPermission("127.0.0.1")
                            val bytes = "through the flow".toByteArray()
                            peer.send(DatagramPacket(bytes, bytes.size, socketAddress(relayed)))
                        }
                    }
                    .filterIsInstance<TurnUpdate.Data>()
                    .first()
            }
        }
        check(String(data.data) == "through the flow" && data.peer == "127.0.0.1:${peer.localPort}",
            "TURN flow: data ${String(data.data)} from ${data.peer}")
        expectThrows<IllegalStateException>("TURN flow ended: the allocation is closed") { allocation!!.isClosed() }
        check(relayReleased(relayed), "TURN flow ended: the server freed the relayed port $relayed")
    }
    expectThrows<PinholeException.Authentication>("TURN flow: wrong password fails the flow") {
        runBlocking { withTimeout(20_000) { turnUpdates(TurnConfig(uri = turnUri, username = user, password = "wrong")).toList() } }
    }
}

/** A NetworkSource the test drives. */
class FakeSource : NetworkSource {
    @Volatile var onChange: ((NetworkSnapshot?) -> Unit)? = null
    @Volatile var starts = 0
    @Volatile var stops = 0

    override fun start(onChange: (NetworkSnapshot?) -> Unit) {
        starts++
        this.onChange = onChange
    }

    override fun stop() {
        stops++
        onChange = null
    }

    fun emit(s: NetworkSnapshot?) {
        onChange!!(s)
    }
}

fun ip(text: String): InetAddress = InetAddress.getByName(text)

fun wifi(id: String, gateway: String, local: String, prefix: Int = 24, dns: String = "192.168.1.1") = NetworkSnapshot(
    networkId = id,
    interfaceName = "wlan0",
    addresses = listOf(InterfaceAddress(ip("fe80::5"), 64), InterfaceAddress(ip(local), prefix)),
    dnsServers = listOf(ip(dns)),
    routes = listOf(
        NetworkRoute(ip("0.0.0.0"), 0, ip(gateway), "wlan0"),
        NetworkRoute(ip("192.168.1.0"), 24, null, "wlan0"),
    ),
)

fun testNetworkMonitor() {
    println("NetworkMonitor logic (fake source)")

    // Gateway and local address choice.
    val dual = NetworkSnapshot(
        networkId = "100",
        addresses = listOf(InterfaceAddress(ip("2001:db8::5"), 64), InterfaceAddress(ip("10.1.0.9"), 16),
            InterfaceAddress(ip("192.168.1.23"), 24), InterfaceAddress(ip("fe80::5"), 64)),
        dnsServers = listOf(ip("192.168.1.1")),
        routes = listOf(NetworkRoute(ip("::"), 0, ip("fe80::1")), NetworkRoute(ip("0.0.0.0"), 0, ip("192.168.1.1"))),
    )
    val f = NetworkFacts.of(dual)
    check(f.gateway == ip("192.168.1.1") && f.localAddress == ip("192.168.1.23"), "IPv4 preferred, in its subnet: $f")
    check(f.toNetworkInfo() == NetworkInfo(gateway = "192.168.1.1", localIp = "192.168.1.23"), "NetworkInfo ${f.toNetworkInfo()}")
    // As Android reports it: a link-local gateway with its scope (the interface).
    val scoped = java.net.Inet6Address.getByAddress(null, ip("fe80::1").address, 1)
    val v6 = NetworkFacts.of(dual.copy(routes = listOf(NetworkRoute(ip("::"), 0, scoped))))
    check(v6.gateway == scoped && v6.localAddress == ip("2001:db8::5"), "IPv6 only: a global address: $v6")
    val v6gw = v6.toNetworkInfo().gateway
    check(v6gw != null && '%' !in v6gw && ip(v6gw) == ip("fe80::1"), "no scope in the gateway text: $v6gw")
    val noRoute = NetworkFacts.of(dual.copy(routes = listOf(NetworkRoute(ip("192.168.1.0"), 24, null))))
    check(noRoute.isOnline && noRoute.gateway == null && noRoute.toNetworkInfo() == NetworkInfo(null, null),
        "no default route: no gateway: $noRoute")
    val direct = NetworkFacts.of(dual.copy(routes = listOf(NetworkRoute(ip("0.0.0.0"), 0, ip("0.0.0.0")))))
    check(direct.gateway == null, "a default route without a gateway (point-to-point): none")
    val vpn = NetworkFacts.of(dual.copy(isVpn = true))
    check(vpn.isVpn && vpn.gateway == null && vpn.addresses.size == 4, "VPN: no port mapping gateway: $vpn")
    check(NetworkFacts.of(null) == NetworkFacts.OFFLINE && !NetworkFacts.OFFLINE.isOnline, "offline")
    check(PortMappingConfig(internalPort = 1u, protocol = TransportProtocol.UDP).on(f).let {
        it.gateway == "192.168.1.1" && it.localIp == "192.168.1.23"
    }, "PortMappingConfig.on(facts)")
    check(NetcheckConfig().on(f).gateway == "192.168.1.1", "NetcheckConfig.on(facts)")

    // Settling and dedup: a burst gives one state, a repeat none; cancelling stops the source.
    val source = FakeSource()
    val monitor = NetworkMonitor(source, settleMillis = 100)
    val seen = CopyOnWriteArrayList<NetworkFacts>()
    val a = wifi("100", "192.168.1.1", "192.168.1.23")
    val b = wifi("101", "10.0.0.1", "10.0.0.7", 8)
    runBlocking {
        val job = launch(kotlinx.coroutines.Dispatchers.Default) { monitor.facts.collect { seen.add(it) } }
        check(eventually(5_000) { source.onChange != null }, "collecting starts the source")
        source.emit(null)
        source.emit(a.copy(routes = emptyList()))
        source.emit(a)
        delay(400)
        source.emit(a)
        delay(400)
        source.emit(b)
        delay(400)
        job.cancel()
        job.join()
    }
    check(seen == listOf(NetworkFacts.of(a), NetworkFacts.of(b)), "one state per settled burst, no repeats: $seen")
    check(source.starts == 1 && source.stops == 1, "the source stopped with the collection (${source.starts}/${source.stops})")

    // feed: only changes that matter to a mapping, after the first state.
    val fed = CopyOnWriteArrayList<NetworkInfo>()
    val source2 = FakeSource()
    runBlocking {
        val job = launch(kotlinx.coroutines.Dispatchers.Default) {
            NetworkMonitor(source2, 50).feed { fed.add(it); fed.size < 2 }
        }
        check(eventually(5_000) { source2.onChange != null }, "feed starts the source")
        source2.emit(a)
        delay(250)
        source2.emit(a.copy(dnsServers = listOf(ip("9.9.9.9"))))
        delay(250)
        source2.emit(a.copy(networkId = "102"))
        delay(250)
        source2.emit(null)
        withTimeout(5_000) { job.join() }
    }
    check(fed == listOf(NetworkInfo("192.168.1.1", "192.168.1.23"), NetworkInfo(null, null)),
        "feed: another network, then offline; not the first state, not a DNS change: $fed")
    check(source2.stops == 1, "feed stopped the source when told to")

    // End to end: the monitor moves a real mapper from one (silent, loopback) gateway to
    // another, from the new local address.
    silentGateway("127.0.0.32").use { g1 ->
        silentGateway("127.0.0.33").use { g2 ->
            val source3 = FakeSource()
            val first = wifi("200", "127.0.0.32", "127.0.0.1", 8)
            val second = wifi("201", "127.0.0.33", "127.0.0.34", 8)
            val cfg = PortMappingConfig(internalPort = 40003u, protocol = TransportProtocol.UDP, lifetimeSecs = 60u,
                method = MappingMethod.PCP).on(NetworkFacts.of(first))
            check(cfg.gateway == "127.0.0.32" && cfg.localIp == "127.0.0.1", "config from the facts: $cfg")
            mapPort(cfg, MappingListener()).use { mapper ->
                check(g1.nextRequestFrom() == "127.0.0.1", "the mapper asks the first gateway")
                runBlocking {
                    val job = launch(kotlinx.coroutines.Dispatchers.Default) { NetworkMonitor(source3, 50).feed(mapper) }
                    check(eventually(5_000) { source3.onChange != null }, "feed(mapper) starts the source")
                    source3.emit(first)
                    delay(200)
                    source3.emit(second)
                    val from = kotlinx.coroutines.withContext(kotlinx.coroutines.Dispatchers.IO) { g2.nextRequestFrom() }
                    check(from == "127.0.0.34", "after the change the mapper asks the new gateway from the new address: $from")
                    job.cancel()
                    job.join()
                }
            }
        }
    }
}

/** The `a=ice-ufrag` of a description. */
fun iceUfrag(description: String): String? = Regex("""a=ice-ufrag:(\S+)""").find(description)?.groupValues?.get(1)

/**
 * NetworkMonitor.feed(connection, signal) on a real PeerConnection (127.0.0.1, no servers,
 * no built-in monitor): the first state and a DNS change leave it alone; another network,
 * a new address and the network coming back after none each run networkChanged() (new
 * credentials) and signal the new description; the connection's end ends the feed.
 */
fun testNetworkMonitorPeer() {
    println("NetworkMonitor feeding a PeerConnection (fake source, loopback)")
    val config = PeerConnectionConfig(controlling = true, relayPolicy = RelayPolicy.ALL, bind = "127.0.0.1:0",
        noNetworkMonitor = true)
    val home = wifi("300", "192.168.1.1", "192.168.1.23")
    val office = wifi("301", "10.0.0.1", "10.0.0.7", 8)
    val renewed = wifi("301", "10.0.0.1", "10.0.0.8", 8)
    val session = runBlocking { openPeerConnection(config) }
    val pc = session.connection
    val signalled = CopyOnWriteArrayList<String>()
    val source = FakeSource()
    try {
        runBlocking {
            val initial = iceUfrag(pc.localDescription())
            check(initial != null, "the connection has credentials: ${pc.localDescription()}")
            val job = launch(kotlinx.coroutines.Dispatchers.Default) {
                NetworkMonitor(source, 50).feed(pc) { signalled.add(it) }
            }
            check(eventually(5_000) { source.onChange != null }, "feed(connection) starts the source")
            source.emit(home)
            delay(300)
            source.emit(home.copy(dnsServers = listOf(ip("9.9.9.9"))))
            delay(300)
            check(signalled.isEmpty() && iceUfrag(pc.localDescription()) == initial,
                "feed(connection): neither the first state nor a DNS change restarts: $signalled")

            // Another network: networkChanged ran (new credentials), its description signalled.
            source.emit(office)
            check(until(5_000) { signalled.size == 1 }, "feed(connection): another network is signalled: $signalled")
            val moved = signalled.firstOrNull()?.let { iceUfrag(it) }
            check(moved != null && moved != initial && iceUfrag(pc.localDescription()) == moved,
                "another network: new credentials $moved (were $initial), the connection's own")
            check(signalled.firstOrNull()?.contains("a=ice-pwd:") == true, "the signalled description is whole")

            // A new address on the same network (a new DHCP lease).
            source.emit(renewed)
            check(until(5_000) { signalled.size == 2 }, "feed(connection): a new address is signalled: $signalled")
            val renewedUfrag = signalled.getOrNull(1)?.let { iceUfrag(it) }
            check(renewedUfrag != null && renewedUfrag != moved, "a new address: new credentials again")

            // Offline: nothing to restart on; the network coming back (the same one) restarts.
            source.emit(null)
            delay(300)
            check(signalled.size == 2, "feed(connection): offline restarts nothing: $signalled")
            source.emit(renewed)
            check(until(5_000) { signalled.size == 3 }, "feed(connection): back online is signalled: $signalled")
            check(signalled.getOrNull(2)?.let { iceUfrag(it) }.let { it != null && it != renewedUfrag },
                "back online: new credentials")

            // The connection ends (NotAvailable from then on): the next change ends the feed.
            pc.closeAndWait()
            source.emit(home)
            val ended = withTimeoutOrNull(5_000) { job.join() }
            check(ended != null && job.isCompleted && !job.isCancelled,
                "feed(connection) returned by itself once the connection ended")
            check(signalled.size == 3, "nothing signalled for a closed connection: ${signalled.size}")
            check(source.stops == 1, "feed(connection) stopped the source when the connection ended")
            job.cancel() // bounded: a feed that failed to end does not hold the test
        }
    } finally {
        session.close()
    }

    // A closed Kotlin object (its handle freed: session.close()) ends the feed too.
    val session2 = runBlocking { openPeerConnection(config) }
    val source2 = FakeSource()
    val signalled2 = CopyOnWriteArrayList<String>()
    runBlocking {
        val job = launch(kotlinx.coroutines.Dispatchers.Default) {
            NetworkMonitor(source2, 50).feed(session2.connection) { signalled2.add(it) }
        }
        check(eventually(5_000) { source2.onChange != null }, "feed(connection) starts the source (2)")
        source2.emit(home)
        delay(300)
        session2.close()
        source2.emit(office)
        val ended = withTimeoutOrNull(5_000) { job.join() }
        check(ended != null && job.isCompleted && !job.isCancelled && signalled2.isEmpty(),
            "feed(connection) returned by itself once the session was closed: $signalled2")
        job.cancel()
    }
}

/** A lifecycle source driven by the test: [emit] true for an activity started, false stopped. */
class FakeLifecycle(private val foreground: Boolean = false) : LifecycleSource {
    @Volatile var onActivity: ((Boolean) -> Unit)? = null
    @Volatile var stops = 0

    override fun isForeground() = foreground

    override fun start(onActivity: (started: Boolean) -> Unit) {
        this.onActivity = onActivity
    }

    override fun stop() {
        stops++
        onActivity = null
    }

    fun emit(started: Boolean) {
        onActivity!!(started)
    }
}

/**
 * AppLifecycle's mapping (fake source): foreground while any activity is started, the
 * background once none is, after the settling time (a rotation, or a move between two
 * activities, is no trip to the background); the source's initial state; stops of
 * activities it never saw start ignored. Then feeding real PeerConnections (127.0.0.1, no
 * servers): the policy set at once and at each change; a closed feed, a closed connection
 * and a closed adapter end theirs.
 */
fun testAppLifecycle() {
    println("AppLifecycle logic (fake source) feeding PeerConnections (loopback)")
    val source = FakeLifecycle()
    val life = AppLifecycle(source, settleMillis = 200)
    val seen = CopyOnWriteArrayList<KeepalivePolicy>()
    val observer = life.observe { seen.add(it); true }
    check(eventually(2_000) { seen == listOf(KeepalivePolicy.BACKGROUND) }, "no activity yet: background, told at once: $seen")
    check(life.policy == KeepalivePolicy.BACKGROUND && source.onActivity != null, "the source started")
    source.emit(true)
    check(eventually(2_000) { seen.lastOrNull() == KeepalivePolicy.FOREGROUND }, "an activity started: foreground at once: $seen")
    // A rotation: the activity stops, its new instance starts within the settling time.
    source.emit(false)
    source.emit(true)
    // Two activities: one stopping leaves the app in front.
    source.emit(true)
    source.emit(false)
    Thread.sleep(500)
    check(seen == listOf(KeepalivePolicy.BACKGROUND, KeepalivePolicy.FOREGROUND) &&
        life.policy == KeepalivePolicy.FOREGROUND, "a rotation and a second activity: still foreground: $seen")
    // The last one stops: the background, after the settling time.
    val stopped = System.nanoTime()
    source.emit(false)
    check(eventually(2_000) { seen.size == 3 }, "the last activity stopped: a change: $seen")
    val took = (System.nanoTime() - stopped) / 1_000_000
    check(seen.lastOrNull() == KeepalivePolicy.BACKGROUND && took >= 150, "background after the settling time ($took ms)")
    // A stop it never saw start (an activity started before the adapter): ignored.
    source.emit(false)
    source.emit(true)
    check(eventually(2_000) { seen.size == 4 && seen.last() == KeepalivePolicy.FOREGROUND }, "foreground again: $seen")
    observer.close()
    source.emit(false)
    Thread.sleep(400)
    check(seen.size == 4 && life.policy == KeepalivePolicy.BACKGROUND, "a closed observer hears nothing more: $seen")
    check(life.fedCount() == 0, "the observer is gone")
    life.close()
    check(source.stops == 1 && source.onActivity == null, "close stops the source")
    life.close() // idempotent
    // Created while an activity is already in front.
    val inFront = AppLifecycle(FakeLifecycle(foreground = true), settleMillis = 50)
    check(inFront.policy == KeepalivePolicy.FOREGROUND, "the source's initial state: foreground")
    inFront.close()

    // Feeding connections.
    val config = PeerConnectionConfig(controlling = true, relayPolicy = RelayPolicy.NO_RELAY, bind = "127.0.0.1:0")
    val src = FakeLifecycle(foreground = true)
    val lifecycle = AppLifecycle(src, settleMillis = 50)
    val one = runBlocking { openPeerConnection(config) }
    val two = runBlocking { openPeerConnection(config.copy(keepalivePolicy = KeepalivePolicy.SUSPENDED)) }
    try {
        check(two.connection.keepalivePolicy() == KeepalivePolicy.SUSPENDED, "two starts suspended (its config)")
        val feedOne = lifecycle.feed(one.connection)
        lifecycle.feed(two.connection)
        check(eventually(2_000) {
            one.connection.keepalivePolicy() == KeepalivePolicy.FOREGROUND &&
                two.connection.keepalivePolicy() == KeepalivePolicy.FOREGROUND
        }, "fed: the app's policy at once")
        src.emit(false) // the activity that was in front
        check(eventually(2_000) {
            listOf(one, two).all { it.connection.keepalivePolicy() == KeepalivePolicy.BACKGROUND }
        }, "to the background: both connections follow")
        lifecycle.suspendConnections()
        check(eventually(2_000) {
            lifecycle.policy == KeepalivePolicy.SUSPENDED &&
                listOf(one, two).all { it.connection.keepalivePolicy() == KeepalivePolicy.SUSPENDED }
        }, "suspendConnections: both suspended")
        src.emit(true)
        check(eventually(2_000) {
            listOf(one, two).all { it.connection.keepalivePolicy() == KeepalivePolicy.FOREGROUND }
        }, "back in front: both follow")
        // The app suspends one itself; the next change sets the adapter's policy again.
        two.connection.setKeepalivePolicy(KeepalivePolicy.SUSPENDED)
        feedOne.close()
        src.emit(false)
        check(eventually(2_000) { two.connection.keepalivePolicy() == KeepalivePolicy.BACKGROUND }, "two follows")
        Thread.sleep(200)
        check(one.connection.keepalivePolicy() == KeepalivePolicy.FOREGROUND, "a closed feed sets nothing more")
        check(lifecycle.fedCount() == 1, "one feed left")
        // A closed connection ends its feed at the next change.
        two.close()
        src.emit(true)
        check(eventually(2_000) { lifecycle.fedCount() == 0 }, "a closed connection's feed ended")
        // A closed adapter: its source stopped, it feeds nothing.
        lifecycle.close()
        check(src.onActivity == null && src.stops == 1, "closing the adapter stopped its source")
        one.connection.setKeepalivePolicy(KeepalivePolicy.SUSPENDED)
        lifecycle.feed(one.connection).close()
        Thread.sleep(200)
        check(one.connection.keepalivePolicy() == KeepalivePolicy.SUSPENDED, "a closed adapter feeds nothing")
    } finally {
        lifecycle.close()
        one.close()
        two.close()
    }
}
