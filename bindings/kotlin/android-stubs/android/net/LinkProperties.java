package android.net;

import java.net.InetAddress;
import java.util.List;

public final class LinkProperties {
    public String getInterfaceName() { return null; }
    public List<LinkAddress> getLinkAddresses() { return null; }
    public List<InetAddress> getDnsServers() { return null; }
    public List<RouteInfo> getRoutes() { return null; }
}
