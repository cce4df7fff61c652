// The metrics endpoint's address, checked before the mount so a bad one fails in one line. (What the
// mount tells a service manager, STATUS=, READY=1 and STOPPING=1, and the `/metrics` server itself are
// started in `Mount.run` through Session.run's `served` and `stopping`.)
import Glibc
import Logging
import VexFUSE
import VexOps
import VexSemantic
import VexStore

enum MetricsEndpoint {
    /// Fails early, before the mount, when `address` cannot be listened on (in use, not ours):
    /// the server itself starts only in the daemon, after it detached.
    static func check(_ address: ListenAddress) throws {
        let family = address.host.contains(":") ? AF_INET6 : AF_INET
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw UserError("metrics: cannot make a socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var rc: Int32
        if family == AF_INET6 {
            var a = sockaddr_in6()
            a.sin6_family = sa_family_t(AF_INET6)
            a.sin6_port = in_port_t(UInt16(address.port).bigEndian)
            inet_pton(AF_INET6, address.host, &a.sin6_addr)
            rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }
        } else {
            var a = sockaddr_in()
            a.sin_family = sa_family_t(AF_INET)
            a.sin_port = in_port_t(UInt16(address.port).bigEndian)
            inet_pton(AF_INET, address.host, &a.sin_addr)
            rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        }
        guard rc == 0 else { throw UserError("metrics: cannot listen on \(address): \(String(cString: strerror(errno)))") }
    }
}
