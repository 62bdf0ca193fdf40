package android.net;

import java.net.InetAddress;

public final class IpPrefix {
    public InetAddress getAddress() { return null; }
    public int getPrefixLength() { return 0; }
}
