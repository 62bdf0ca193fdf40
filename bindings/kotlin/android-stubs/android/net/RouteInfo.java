package android.net;

import java.net.InetAddress;

public final class RouteInfo {
    public IpPrefix getDestination() { return null; }
    public InetAddress getGateway() { return null; }
    public String getInterface() { return null; }
}
