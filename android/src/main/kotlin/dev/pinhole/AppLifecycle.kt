// The app-lifecycle adapter's logic, in plain Kotlin (no Android API): tested on a host JVM
// with a fake LifecycleSource by bindings/test.sh. The Android side is
// AndroidLifecycleSource.kt (Application.ActivityLifecycleCallbacks), a thin translation
// into "an activity started" / "an activity stopped".
//
// Why it exists: a peer connection's keepalives cost battery (each one wakes the radio).
// In the foreground they run as RFC 7675 says (every 4 to 6 s); in the background they only
// keep the path's NAT bindings alive, one per interval adapted to the NATs (see
// KeepalivePolicy). AppLifecycle follows the process (foreground while any activity is
// started) and sets every connection it feeds accordingly.
package dev.pinhole

import java.lang.ref.WeakReference
import java.util.concurrent.CopyOnWriteArrayList
import java.util.concurrent.RejectedExecutionException
import java.util.concurrent.ScheduledFuture
import java.util.concurrent.ScheduledThreadPoolExecutor
import java.util.concurrent.TimeUnit

/**
 * The platform side of [AppLifecycle]: reports activities starting and stopping. Android:
 * [AndroidLifecycleSource].
 */
interface LifecycleSource {
    /** Whether the app is in the foreground now (an activity is started); asked once, first. */
    fun isForeground(): Boolean

    /** Starts reporting: [onActivity] with true when an activity starts, false when one stops. */
    fun start(onActivity: (started: Boolean) -> Unit)

    /** Stops reporting. */
    fun stop()
}

/**
 * Follows the app's process lifecycle and maps it to a [KeepalivePolicy]:
 * [KeepalivePolicy.FOREGROUND] while any activity is started, [KeepalivePolicy.BACKGROUND]
 * otherwise, and feeds it to peer connections ([feed]).
 *
 * Going to the background waits [settleMillis] (700 ms, as AndroidX's
 * `ProcessLifecycleOwner` does) for another activity to start: a rotation or a move between
 * two activities of the app stops one before it starts the other, and is no trip to the
 * background. Coming back is at once (the connection then probes its path, so that a dead
 * one is noticed within seconds).
 *
 * Android gives no callback when it freezes a cached app's process (Android 11+) or Doze
 * defers its network: while frozen nothing is sent at all. An app that knows it is about
 * to stop running for long (and does not keep a foreground service) calls
 * [suspendConnections] (or sets [KeepalivePolicy.SUSPENDED] on a connection itself); the
 * next change this adapter sees sets its own policy again. An app that keeps working in the background
 * (a call in a foreground service) feeds no connection, or sets the policy itself.
 *
 * Create it once per process, on the main thread, before any activity starts
 * (`Application.onCreate`: `AppLifecycle.of(this)` on Android); where it is created
 * later, the source's [LifecycleSource.isForeground] says where the app stands. Calls to
 * [PeerConnection.setKeepalivePolicy] return at once; they are made on this adapter's own
 * thread, in order.
 */
class AppLifecycle(private val source: LifecycleSource, private val settleMillis: Long = 700) : AutoCloseable {
    private val executor = ScheduledThreadPoolExecutor(1) { r ->
        Thread(r, "pinhole-app-lifecycle").apply { isDaemon = true }
    }.apply { removeOnCancelPolicy = true }

    /** Activities started (this adapter's thread only). */
    private var started = 0

    /** A pending move to the background (this adapter's thread only). */
    private var pending: ScheduledFuture<*>? = null
    private val listeners = CopyOnWriteArrayList<Listener>()

    @Volatile
    private var closed = false

    /** The policy the app's state maps to now. */
    @Volatile
    var policy: KeepalivePolicy
        private set

    private class Listener(val onChange: (KeepalivePolicy) -> Boolean)

    init {
        val foreground = source.isForeground()
        started = if (foreground) 1 else 0
        policy = if (foreground) KeepalivePolicy.FOREGROUND else KeepalivePolicy.BACKGROUND
        source.start { s -> post { onActivity(s) } }
    }

    /** Runs [body] on this adapter's thread (nothing once closed). */
    private fun post(body: () -> Unit) {
        if (closed) return
        try {
            executor.execute(body)
        } catch (e: RejectedExecutionException) {
            // Closed meanwhile.
        }
    }

    private fun onActivity(isStart: Boolean) {
        if (isStart) {
            started++
            pending?.cancel(false)
            pending = null
            set(KeepalivePolicy.FOREGROUND)
        } else {
            // A stop with none started: one that started before this adapter knew.
            if (started == 0) return
            started--
            if (started == 0 && pending == null) {
                pending = try {
                    executor.schedule({
                        pending = null
                        if (started == 0) set(KeepalivePolicy.BACKGROUND)
                    }, settleMillis, TimeUnit.MILLISECONDS)
                } catch (e: RejectedExecutionException) {
                    null
                }
            }
        }
    }

    /** A new policy (this adapter's thread): told to every listener, once. */
    private fun set(p: KeepalivePolicy) {
        if (p == policy || closed) return
        policy = p
        for (l in listeners) {
            if (!l.onChange(p)) listeners.remove(l)
        }
    }

    /**
     * The app is about to stop running for long (and keeps no foreground service): every
     * connection fed goes [KeepalivePolicy.SUSPENDED] (no keepalives, no consent deadline)
     * until the app moves again (an activity starts: the foreground, with a probe of the
     * path that restarts ICE if it is gone).
     */
    fun suspendConnections() {
        post {
            pending?.cancel(false)
            pending = null
            set(KeepalivePolicy.SUSPENDED)
        }
    }

    /**
     * Calls [onChange] with the policy now, then on each change, on this adapter's thread,
     * until it returns false or the returned handle is closed.
     */
    fun observe(onChange: (KeepalivePolicy) -> Boolean): AutoCloseable {
        val l = Listener(onChange)
        post {
            if (l.onChange(policy)) listeners.add(l)
        }
        return AutoCloseable {
            listeners.remove(l)
        }
    }

    /**
     * Keeps [connection]'s keepalive policy the app's: set at once to [policy], then at
     * each change, until the returned handle is closed or the connection has ended (its
     * `setKeepalivePolicy` throws `NotAvailable`, or the Kotlin object was closed). The
     * connection is held weakly: a connection dropped without being closed ends its feed
     * too.
     */
    fun feed(connection: PeerConnection): AutoCloseable {
        val ref = WeakReference(connection)
        return observe { p ->
            val c = ref.get() ?: return@observe false
            try {
                c.setKeepalivePolicy(p)
                true
            } catch (e: PinholeException.NotAvailable) {
                false
            } catch (e: IllegalStateException) {
                // The Kotlin object was closed (its handle freed): the connection is gone.
                false
            }
        }
    }

    /**
     * How many connections (and observers) are fed now, once the calls made before are
     * applied (on this adapter's thread; 0 once closed).
     */
    fun fedCount(): Int = try {
        executor.submit<Int> { listeners.size }.get(5, TimeUnit.SECONDS)
    } catch (e: RejectedExecutionException) {
        0
    }

    /** Stops following the lifecycle; feeds end (connections keep their last policy). */
    override fun close() {
        if (closed) return
        closed = true
        source.stop()
        executor.shutdownNow()
        listeners.clear()
    }

    companion object
}
