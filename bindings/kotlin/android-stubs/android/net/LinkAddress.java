package android.net;

import java.net.InetAddress;

public class LinkAddress {
    public InetAddress getAddress() { return null; }
    public int getPrefixLength() { return 0; }
}
