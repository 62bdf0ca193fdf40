package android.net;

public final class NetworkCapabilities {
    public static final int TRANSPORT_VPN = 4;

    public boolean hasTransport(int transportType) { return false; }
}
