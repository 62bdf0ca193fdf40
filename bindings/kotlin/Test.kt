// The Kotlin bindings' test on the host JVM (JNA): every exported item, callbacks arriving
// on pinhole's Rust threads, async calls and their cancellation, errors, a netcheck against
// `pinhole serve` on loopback (its URI is args[0]; args[1] is a loopback port where nothing
// answers), and port mapping at 127.0.0.9, where no gateway listens. Prints
// "N passed, N failed".
package dev.pinhole

import java.util.concurrent.CountDownLatch
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

fun checkLoopbackReport(r: NetcheckReport, what: String) {
    check(r.udp, "$what: udp")
    // Loopback has no NAT: everything is endpoint-independent and hairpins.
    check(r.mapping == NatBehaviour.ENDPOINT_INDEPENDENT, "$what: mapping ${r.mapping}")
    check(r.filtering == NatBehaviour.ENDPOINT_INDEPENDENT, "$what: filtering ${r.filtering}")
    check(r.hairpinning == true, "$what: hairpinning")
    check(r.algRewrites == false, "$what: ALG")
    check(r.bindingLifetime == null, "$what: no lifetime measured")
    check(r.rfc5780Server != null, "$what: RFC 5780 server")
    check(r.publicAddresses.isNotEmpty() && r.publicAddresses[0].startsWith("127.0.0.1:"),
        "$what: public ${r.publicAddresses}")
    check(r.servers.size == 1, "$what: one server")
    val s = r.servers[0]
    check(s.label.startsWith("stun:"), "$what: label")
    check(s.rtt != null && !s.rtt!!.isNegative, "$what: rtt")
    check(s.mapped != null && s.otherAddress != null, "$what: mapped and OTHER-ADDRESS")
    println("  $what: mapping ${r.mapping}, filtering ${r.filtering}, public ${r.publicAddresses}, rtt ${s.rtt}")
}

fun main(args: Array<String>) {
    require(args.size == 2) { "usage: Test stun:IP:PORT(pinhole serve) stun:IP:PORT(silent)" }
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
    plain.stop()
    plain.stop() // idempotent
    plain.close()
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
    t2.cancel()
    check(cancelled.done.await(20, TimeUnit.SECONDS), "cancelled listener done")
    check(cancelled.error is PinholeException.Cancelled, "cancelled: ${cancelled.error}")
    t2.close()
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
    runBlocking { mapper.release() }
    check(mapper.isStopped() && mapper.current() == null, "stopped, no mapping")
    mapper.close()

    val ml2 = MappingListener()
    val m2 = mapPort(PortMappingConfig(internalPort = 40001u, protocol = TransportProtocol.TCP,
        gateway = "127.0.0.9", method = MappingMethod.PCP), ml2)
    m2.stop()
    runBlocking { withTimeout(10_000) { m2.release() } }
    check(m2.isStopped(), "released before any answer")
    val last2 = synchronized(ml2) { ml2.events.lastOrNull() }
    check(last2 == PortMappingEvent.Released || last2 is PortMappingEvent.Unavailable, "last event $last2")
    m2.close()

    // Records and enums the lab would produce, built here to check their shape.
    val mapping = PortMapping(MappingMethod.NAT_PMP, TransportProtocol.UDP, "10.0.0.2:40000",
        "203.0.113.7:40000", java.time.Duration.ofSeconds(7200), true)
    val changed = PortMappingEvent.Changed(mapping, mapping.copy(external = "203.0.113.7:40002"))
    check(changed.old != changed.new && changed.new.method == MappingMethod.NAT_PMP, "records")
    check(PortMappingEvent.Mapped(mapping) == PortMappingEvent.Mapped(mapping.copy()), "data class equality")
    check(NatBehaviour.values().size == 4 && MappingMethod.values().size == 3 &&
        LogLevel.values().size == 6, "enums")
    check(BindingLifetime(java.time.Duration.ofSeconds(10), null).lessThan == null, "BindingLifetime")
    check(GatewayProbe(null, null, null, null, null, null, "x").error == "x", "GatewayProbe")

    check(logger.records.get() > 0, "log records arrived: ${logger.records.get()}")
    println("log records received: ${logger.records.get()}")
    setLogger(null, LogLevel.OFF)

    println("$passed passed, $failed failed")
    System.exit(if (failed == 0) 0 else 1)
}
