package android.system;

public final class SystemCleaner {
    public static java.lang.ref.Cleaner cleaner() { return null; }
}
