package android.net;

public class Network {
    public void bindSocket(java.net.DatagramSocket socket) throws java.io.IOException {}
    public void bindSocket(java.io.FileDescriptor fd) throws java.io.IOException {}
}
