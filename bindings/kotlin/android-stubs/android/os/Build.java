package android.os;

public class Build {
    public static class VERSION {
        // Not a compile-time constant (as in android.jar): read on the device, never inlined.
        public static final int SDK_INT = Integer.getInteger("stub.sdk", 0);
    }

    public static class VERSION_CODES {
        public static final int UPSIDE_DOWN_CAKE = 34;
    }
}
