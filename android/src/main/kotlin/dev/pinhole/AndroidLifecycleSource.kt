// The Android side of AppLifecycle: Application.ActivityLifecycleCallbacks, translated into
// "an activity started" / "an activity stopped", and the process's importance for where
// the app stands when it begins. Nothing else here: the logic (counting, settling, feeding
// connections) is AppLifecycle.kt's, tested on a host JVM.
//
// No permission and no AndroidX dependency (AndroidX's ProcessLifecycleOwner would do the
// same counting). Compiled by Gradle against the real android.jar; bindings/test.sh
// compiles it against minimal stubs (bindings/kotlin/android-stubs).
package dev.pinhole

import android.app.Activity
import android.app.ActivityManager
import android.app.Application
import android.os.Bundle

/**
 * Reports the app's activities starting and stopping through
 * [Application.registerActivityLifecycleCallbacks]. Use it as
 * `AppLifecycle(AndroidLifecycleSource(application))`, or [AppLifecycle.Companion.of].
 */
class AndroidLifecycleSource(private val application: Application) : LifecycleSource {
    private val lock = Any()
    private var callbacks: Application.ActivityLifecycleCallbacks? = null

    /**
     * Whether the process is in the foreground now (`ActivityManager.getMyMemoryState`):
     * an activity of it is in front or visible.
     */
    override fun isForeground(): Boolean {
        val info = ActivityManager.RunningAppProcessInfo()
        ActivityManager.getMyMemoryState(info)
        return info.importance == ActivityManager.RunningAppProcessInfo.IMPORTANCE_FOREGROUND ||
            info.importance == ActivityManager.RunningAppProcessInfo.IMPORTANCE_VISIBLE
    }

    override fun start(onActivity: (started: Boolean) -> Unit) {
        val cb = object : Application.ActivityLifecycleCallbacks {
            override fun onActivityStarted(activity: Activity) = onActivity(true)

            override fun onActivityStopped(activity: Activity) = onActivity(false)

            override fun onActivityCreated(activity: Activity, savedInstanceState: Bundle?) {}

            override fun onActivityResumed(activity: Activity) {}

            override fun onActivityPaused(activity: Activity) {}

            override fun onActivitySaveInstanceState(activity: Activity, outState: Bundle) {}

            override fun onActivityDestroyed(activity: Activity) {}
        }
        synchronized(lock) {
            check(callbacks == null) { "AndroidLifecycleSource is already started" }
            callbacks = cb
        }
        application.registerActivityLifecycleCallbacks(cb)
    }

    override fun stop() {
        val cb = synchronized(lock) {
            val cb = callbacks
            callbacks = null
            cb
        }
        if (cb != null) application.unregisterActivityLifecycleCallbacks(cb)
    }
}

/**
 * The app's lifecycle (see [AppLifecycle]); create it once, in `Application.onCreate`, and
 * feed it each peer connection: `lifecycle.feed(connection)`.
 */
fun AppLifecycle.Companion.of(application: Application): AppLifecycle =
    AppLifecycle(AndroidLifecycleSource(application))
