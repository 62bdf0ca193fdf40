package android.app;

public class ActivityManager {
    public static class RunningAppProcessInfo {
        public static final int IMPORTANCE_FOREGROUND = 100;
        public static final int IMPORTANCE_VISIBLE = 200;
        public int importance;

        public RunningAppProcessInfo() {}
    }

    public static void getMyMemoryState(RunningAppProcessInfo outState) {}
}
