// The Android side of NetworkMonitor: ConnectivityManager's default-network callback,
// translated into NetworkSnapshot. Nothing else here: the logic (gateway and local address
// choice, settling, dedup) is NetworkMonitor.kt's, tested on a host JVM.
//
// Needs ACCESS_NETWORK_STATE (in the AAR's manifest). API 24+: registerDefaultNetworkCallback.
// Compiled by Gradle against the real android.jar; bindings/test.sh compiles it against
// minimal stubs of the few classes it uses (bindings/kotlin/android-stubs), which checks the
// Kotlin, not the Android API's signatures.
package dev.pinhole

import android.content.Context
import android.net.ConnectivityManager
import android.net.LinkProperties
import android.net.Network
import android.net.NetworkCapabilities

/**
 * Reports the default network (its LinkProperties: addresses, DNS servers, routes with the
 * default route's gateway; and whether it is a VPN) through
 * [ConnectivityManager.registerDefaultNetworkCallback]. Use it as
 * `NetworkMonitor(AndroidNetworkSource(context))`.
 */
class AndroidNetworkSource(context: Context) : NetworkSource {
    private val connectivity =
        context.getSystemService(Context.CONNECTIVITY_SERVICE) as ConnectivityManager
    private val lock = Any()
    private var callback: ConnectivityManager.NetworkCallback? = null
    private var network: Network? = null
    private var properties: LinkProperties? = null
    private var vpn = false

    override fun start(onChange: (NetworkSnapshot?) -> Unit) {
        val cb = object : ConnectivityManager.NetworkCallback() {
            override fun onAvailable(network: Network) {
                report(onChange) {
                    this@AndroidNetworkSource.network = network
                    properties = connectivity.getLinkProperties(network)
                    vpn = connectivity.getNetworkCapabilities(network)
                        ?.hasTransport(NetworkCapabilities.TRANSPORT_VPN) == true
                }
            }

            override fun onLinkPropertiesChanged(network: Network, linkProperties: LinkProperties) {
                report(onChange) {
                    this@AndroidNetworkSource.network = network
                    properties = linkProperties
                }
            }

            override fun onCapabilitiesChanged(network: Network, networkCapabilities: NetworkCapabilities) {
                report(onChange) {
                    this@AndroidNetworkSource.network = network
                    vpn = networkCapabilities.hasTransport(NetworkCapabilities.TRANSPORT_VPN)
                }
            }

            override fun onLost(network: Network) {
                report(onChange) {
                    if (this@AndroidNetworkSource.network == network) {
                        this@AndroidNetworkSource.network = null
                        properties = null
                        vpn = false
                    }
                }
            }
        }
        synchronized(lock) {
            check(callback == null) { "AndroidNetworkSource is already started" }
            callback = cb
        }
        // The first callback (onAvailable) describes the current default network; with none,
        // nothing comes: report offline until then.
        onChange(null)
        connectivity.registerDefaultNetworkCallback(cb)
    }

    override fun stop() {
        val cb = synchronized(lock) {
            val cb = callback
            callback = null
            network = null
            properties = null
            cb
        }
        if (cb != null) connectivity.unregisterNetworkCallback(cb)
    }

    private inline fun report(onChange: (NetworkSnapshot?) -> Unit, update: () -> Unit) {
        val snapshot = synchronized(lock) {
            if (callback == null) return
            update()
            val n = network ?: return@synchronized null
            snapshot(n, properties, vpn)
        }
        onChange(snapshot)
    }

    private fun snapshot(network: Network, lp: LinkProperties?, vpn: Boolean) = NetworkSnapshot(
        networkId = network.toString(),
        interfaceName = lp?.interfaceName,
        addresses = lp?.linkAddresses.orEmpty().map { InterfaceAddress(it.address, it.prefixLength) },
        dnsServers = lp?.dnsServers.orEmpty(),
        routes = lp?.routes.orEmpty().map {
            NetworkRoute(it.destination.address, it.destination.prefixLength, it.gateway, it.`interface`)
        },
        isVpn = vpn,
    )
}
