import Glibc
import Testing
import VexOps

/// A datagram socket bound where NOTIFY_SOCKET would name it; `receive` reads one message.
private final class ManagerSocket {
    let fd: Int32
    init(_ name: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(name.utf8)
        if bytes.first == UInt8(ascii: "@") { bytes[0] = 0 }
        withUnsafeMutableBytes(of: &addr.sun_path) { for (i, b) in bytes.enumerated() { $0[i] = b } }
        let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \.sun_path)! + bytes.count + (bytes[0] == 0 ? 0 : 1))
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
        guard rc == 0 else { throw Errno(errno) }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }
    deinit { close(fd) }
    func receive() -> String {
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        return n > 0 ? String(decoding: buffer[0..<n], as: UTF8.self) : ""
    }
}

struct Errno: Error { let code: Int32; init(_ c: Int32) { code = c } }

struct ServiceNotifierTests {
    @Test func sendsToAPathAndToAnAbstractName() throws {
        let path = "/tmp/vexops-notify-\(getpid())"
        unlink(path)
        defer { unlink(path) }
        for name in [path, "@vexops-notify-\(getpid())"] {
            let manager = try ManagerSocket(name)
            let notifier = try #require(ServiceNotifier(socket: name))
            notifier.status("reconciling: 3 directories\nand more")
            #expect(manager.receive() == "STATUS=reconciling: 3 directories and more")
            notifier.ready(status: "serving")
            #expect(manager.receive() == "READY=1\nSTATUS=serving\nMAINPID=\(getpid())")
            notifier.stopping(status: "persisting")
            #expect(manager.receive() == "STOPPING=1\nSTATUS=persisting")
        }
    }

    @Test func ignoresNamesSdNotifyIgnores() {
        #expect(ServiceNotifier(socket: "relative/path") == nil)
        #expect(ServiceNotifier(socket: "@") == nil)
        #expect(ServiceNotifier(socket: "/" + String(repeating: "x", count: 200)) == nil)
    }

    @Test func aManagerThatIsGoneIsNoError() throws {
        let notifier = try #require(ServiceNotifier(socket: "/tmp/vexops-nobody-listens-\(getpid())"))
        #expect(notifier.send("READY=1") == false)
    }
}

struct MetricsServerTests {
    /// One HTTP/1.0 request on a fresh connection; the whole answer.
    private func ask(_ port: Int, _ request: String) -> String {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0 else { return "" }
        _ = request.withCString { write(fd, $0, strlen($0)) }
        var out: [UInt8] = [], buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            out += buffer[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }

    @Test func servesTheExpositionAndNothingElse() throws {
        let server = try MetricsServer(host: "127.0.0.1", port: 0) { "# TYPE x counter\nx 1\n" }
        defer { server.shutdown() }
        let port = try #require(Int(server.boundAddress.split(separator: ":").last!))
        let ok = ask(port, "GET /metrics HTTP/1.0\r\n\r\n")
        #expect(ok.hasPrefix("HTTP/1.0 200 OK\r\n"))
        #expect(ok.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"))
        #expect(ok.hasSuffix("\r\n\r\n# TYPE x counter\nx 1\n"))
        #expect(ask(port, "GET /other HTTP/1.0\r\n\r\n").hasPrefix("HTTP/1.0 404"))
        #expect(ask(port, "DELETE /metrics HTTP/1.0\r\n\r\n").hasPrefix("HTTP/1.0 405"))
        #expect(ask(port, "HEAD /metrics HTTP/1.0\r\n\r\n").hasSuffix("\r\n\r\n"))
    }

    @Test func nothingToServeIs503() throws {
        let server = try MetricsServer(host: "127.0.0.1", port: 0) { nil }
        defer { server.shutdown() }
        let port = try #require(Int(server.boundAddress.split(separator: ":").last!))
        #expect(ask(port, "GET /metrics HTTP/1.0\r\n\r\n").hasPrefix("HTTP/1.0 503"))
    }

    @Test func aBusyPortIsAnError() throws {
        let first = try MetricsServer(host: "127.0.0.1", port: 0) { "" }
        defer { first.shutdown() }
        let port = try #require(Int(first.boundAddress.split(separator: ":").last!))
        #expect(throws: MetricsServer.Failure.self) { try MetricsServer(host: "127.0.0.1", port: port) { "" } }
    }
}
