// The network monitor's logic, in plain Kotlin (no Android API): tested on a host JVM with
// a fake NetworkSource by bindings/test.sh. The Android side is AndroidNetworkSource.kt
// (ConnectivityManager.NetworkCallback), a thin translation into NetworkSnapshot.
//
// Why it exists: Android 10+ apps cannot read /proc/net/route, so pinhole cannot find the
// gateway there by itself; the app learns it from ConnectivityManager (the default route of
// the default network's LinkProperties) and pushes it into pinhole: the port mapper's
// config (gateway, localIp) and PortMapper.networkChanged(NetworkInfo).
package dev.pinhole

import java.net.Inet4Address
import java.net.Inet6Address
import java.net.InetAddress
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.FlowPreview
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.channels.awaitClose
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.buffer
import kotlinx.coroutines.flow.callbackFlow
import kotlinx.coroutines.flow.debounce
import kotlinx.coroutines.flow.distinctUntilChanged
import kotlinx.coroutines.flow.drop
import kotlinx.coroutines.flow.filter
import kotlinx.coroutines.flow.map
import kotlinx.coroutines.flow.takeWhile
import kotlinx.coroutines.withContext

/** An address of an interface, with its prefix length (Android's LinkAddress). */
data class InterfaceAddress(val address: InetAddress, val prefixLength: Int)

/** A route (Android's RouteInfo): destination prefix, gateway (null or unspecified: none). */
data class NetworkRoute(
    val destination: InetAddress,
    val prefixLength: Int,
    val gateway: InetAddress?,
    val interfaceName: String? = null,
) {
    /** Whether this is a default route (0.0.0.0/0 or ::/0). */
    val isDefault: Boolean get() = prefixLength == 0

    /** The gateway, when there is one (not null, not 0.0.0.0 or ::). */
    val nextHop: InetAddress? get() = gateway?.takeIf { !it.isAnyLocalAddress }
}

/**
 * The default network as the platform reports it at one moment (Android: its Network and
 * LinkProperties, and whether NetworkCapabilities says VPN).
 */
data class NetworkSnapshot(
    /** An opaque, stable identity of the network (Android: `Network.toString()`). */
    val networkId: String,
    val interfaceName: String? = null,
    val addresses: List<InterfaceAddress> = emptyList(),
    val dnsServers: List<InetAddress> = emptyList(),
    val routes: List<NetworkRoute> = emptyList(),
    val isVpn: Boolean = false,
)

/**
 * What pinhole needs to know about the default network, derived from a [NetworkSnapshot]
 * by [NetworkFacts.of].
 */
data class NetworkFacts(
    /** The network's identity; null: no default network (offline). */
    val networkId: String?,
    /**
     * The default route's gateway for port mapping: IPv4 when the network has an IPv4
     * default route (NAT-PMP, and PCP and UPnP as home routers deploy them, map IPv4),
     * otherwise IPv6. Null: no default route with a gateway, or a VPN (its gateway is
     * not a NAT of this host's link: port mapping does not apply).
     */
    val gateway: InetAddress?,
    /** This host's address toward [gateway] (same family; in its subnet when one is). */
    val localAddress: InetAddress?,
    /** All the network's addresses. */
    val addresses: List<InetAddress>,
    val dnsServers: List<InetAddress>,
    val isVpn: Boolean,
) {
    /** Whether there is a default network at all. */
    val isOnline: Boolean get() = networkId != null

    /** What [PortMapper.networkChanged] and the configs take. */
    fun toNetworkInfo(): NetworkInfo = NetworkInfo(
        gateway = gateway?.hostAddress?.substringBefore('%'),
        localIp = localAddress?.takeIf { gateway != null }?.hostAddress?.substringBefore('%'),
    )

    /** The identity the port mapper cares about: a change of it moves the mapping. */
    internal val mappingKey: Triple<String?, InetAddress?, InetAddress?> get() = Triple(networkId, gateway, localAddress)

    /**
     * The identity a peer connection cares about: another network, an address gained or
     * lost (a new DHCP lease, an IPv6 address), another gateway (a default route that
     * appears or moves). Not a DNS change, nor the order the platform lists addresses in.
     */
    internal val connectionKey: Triple<String?, Set<InetAddress>, InetAddress?> get() =
        Triple(networkId, addresses.toSet(), gateway)

    companion object {
        /** No default network. */
        val OFFLINE = NetworkFacts(null, null, null, emptyList(), emptyList(), false)

        /** The facts of a snapshot (null: no default network). */
        fun of(s: NetworkSnapshot?): NetworkFacts {
            if (s == null) return OFFLINE
            val addresses = s.addresses.filter { !it.address.isAnyLocalAddress }
            val defaults = s.routes.filter { it.isDefault && it.nextHop != null }
            val route = if (s.isVpn) {
                null
            } else {
                defaults.firstOrNull { it.nextHop is Inet4Address } ?: defaults.firstOrNull { it.nextHop is Inet6Address }
            }
            val gateway = route?.nextHop
            return NetworkFacts(
                networkId = s.networkId,
                gateway = gateway,
                localAddress = gateway?.let { localAddressToward(it, addresses) },
                addresses = addresses.map { it.address },
                dnsServers = s.dnsServers,
                isVpn = s.isVpn,
            )
        }

        /**
         * The address toward [gateway]: of its family, in its subnet when one is; for
         * IPv4 otherwise the first usable one; for IPv6 a global address (a link-local
         * gateway is reached from any address of the link), else a link-local one.
         */
        private fun localAddressToward(gateway: InetAddress, addresses: List<InterfaceAddress>): InetAddress? {
            val family = addresses.filter { it.address.javaClass == gateway.javaClass }
            family.firstOrNull { inSubnet(gateway, it) && !it.address.isLinkLocalAddress }?.let { return it.address }
            return (family.firstOrNull { !it.address.isLinkLocalAddress } ?: family.firstOrNull())?.address
        }

        private fun inSubnet(ip: InetAddress, a: InterfaceAddress): Boolean {
            val x = ip.address
            val y = a.address.address
            if (x.size != y.size || a.prefixLength <= 0 || a.prefixLength > x.size * 8) return false
            for (bit in 0 until a.prefixLength) {
                val mask = 0x80 ushr (bit % 8)
                if ((x[bit / 8].toInt() and mask) != (y[bit / 8].toInt() and mask)) return false
            }
            return true
        }
    }
}

/**
 * The platform side of [NetworkMonitor]: reports the default network whenever it or its
 * properties change (null: there is none). [start] is called once per collection of
 * [NetworkMonitor.facts], [stop] when it ends. Android: [AndroidNetworkSource].
 */
interface NetworkSource {
    /** Starts reporting; the first report describes the current default network. */
    fun start(onChange: (NetworkSnapshot?) -> Unit)

    /** Stops reporting. */
    fun stop()
}

/**
 * Follows the default network and gives pinhole its facts: the gateway and local address
 * for the port mapper (Android 10+ apps cannot read the routing table), and network
 * changes for [PortMapper.networkChanged] and [PeerConnection.networkChanged] (see the
 * `feed` functions).
 *
 * The platform reports a change as a burst of callbacks (available, capabilities, link
 * properties): [facts] settles them for [settleMillis] and drops repeats.
 */
class NetworkMonitor(private val source: NetworkSource, private val settleMillis: Long = 300) {
    /**
     * The default network's facts: cold (collecting starts the source, cancelling stops
     * it), each distinct state once after [settleMillis] without change.
     */
    @OptIn(FlowPreview::class)
    val facts: Flow<NetworkFacts> =
        callbackFlow {
            source.start { trySend(it) }
            awaitClose { source.stop() }
        }.buffer(Channel.UNLIMITED)
            .map { NetworkFacts.of(it) }
            .debounce(settleMillis)
            .distinctUntilChanged()

    /**
     * Feeds [changed] the network changes that matter to a port mapping (another network,
     * gateway or local address; not a DNS change), after the first state (the one the
     * mapper was started with: see [PortMappingConfig.on]). Suspends until cancelled, or
     * until [changed] returns false.
     */
    suspend fun feed(changed: (NetworkInfo) -> Boolean) {
        facts.distinctUntilChanged { a, b -> a.mappingKey == b.mappingKey }
            .drop(1)
            .takeWhile { changed(it.toNetworkInfo()) }
            .collect {}
    }

    /**
     * Moves [mapper]'s mapping whenever the network changes (see [feed]); returns when the
     * mapper has ended or the caller is cancelled.
     */
    suspend fun feed(mapper: PortMapper) {
        feed { info ->
            try {
                mapper.networkChanged(info)
                true
            } catch (e: PinholeException.NotAvailable) {
                false
            }
        }
    }

    /**
     * Restarts [connection] on each new network and hands the new local description to
     * [signal], to send to the peer (as for [PeerConnection.restart]: the candidates follow
     * as `LocalCandidate` events; the peer restarts too, and its new description comes back
     * as its `RemoteRestarted`). The changes that count: another default network, an
     * address gained or lost, another gateway, and the network coming back after none;
     * not a DNS change, not the first state (the network the connection was made on), and
     * nothing while offline (there is nothing to restart on, nor a way to signal).
     *
     * Create the connection with [PeerConnectionConfig.noNetworkMonitor] set: where
     * pinhole's built-in rtnetlink monitor runs, it would restart the connection a second
     * time for the same change (and report `NetworkChanged`). On Android it often cannot
     * run at all: apps targeting API 30 or later may not bind() a NETLINK_ROUTE socket
     * (Android 11's MAC address restrictions), so pinhole goes without it and this feed is
     * how the connection follows the network.
     *
     * [PeerConnection.networkChanged] is called on [Dispatchers.IO] (it waits for the
     * connection's thread), [signal] in the caller's context, one change at a time. A
     * change that fails for another reason (`Io`: no route yet; `TimedOut`) is skipped:
     * the connection stays on its path, and the next change tries again. Returns when the
     * connection has ended (`NotAvailable`, or a closed Kotlin object) or the caller is
     * cancelled.
     */
    suspend fun feed(connection: PeerConnection, signal: suspend (String) -> Unit) {
        facts.distinctUntilChanged { a, b -> a.connectionKey == b.connectionKey }
            .drop(1)
            .filter { it.isOnline }
            .takeWhile {
                val description = try {
                    withContext(Dispatchers.IO) { connection.networkChanged() }
                } catch (e: PinholeException.NotAvailable) {
                    return@takeWhile false
                } catch (e: IllegalStateException) {
                    // The Kotlin object was closed (its handle freed): the connection is gone.
                    return@takeWhile false
                } catch (e: PinholeException) {
                    null
                }
                if (description != null) signal(description)
                true
            }
            .collect {}
    }
}

/** This config with the gateway and local address of [facts] (for a mapper's start). */
fun PortMappingConfig.on(facts: NetworkFacts): PortMappingConfig {
    val info = facts.toNetworkInfo()
    return copy(gateway = info.gateway, localIp = info.localIp)
}

/** This config with the gateway and local address of [facts] (for the gateway probe). */
fun NetcheckConfig.on(facts: NetworkFacts): NetcheckConfig {
    val info = facts.toNetworkInfo()
    return copy(gateway = info.gateway, localIp = info.localIp)
}
