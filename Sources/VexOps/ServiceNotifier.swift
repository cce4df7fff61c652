// VexOps: what an operator's tools expect of a filesystem daemon, kept apart from the filesystem.
// `ServiceNotifier` tells a service manager (systemd's Type=notify) when the mount is ready and when
// it stops; `MetricsServer` serves the mount's figures to a Prometheus server over HTTP. Neither knows
// what a vexfs mount is: the command line hands them text and a source of text.
import Glibc

/// The sd_notify(3) protocol: one datagram of `KEY=VALUE` lines to the AF_UNIX socket named in
/// `NOTIFY_SOCKET` (a path, or an abstract name written with a leading `@`). Without that variable
/// (not started by a service manager that asked) every send does nothing.
public final class ServiceNotifier: Sendable {
    private let address: [UInt8]

    /// The notifier of this process's service manager, if it asked for notifications.
    public static func fromEnvironment() -> ServiceNotifier? {
        guard let raw = getenv("NOTIFY_SOCKET") else { return nil }
        return ServiceNotifier(socket: String(cString: raw))
    }

    /// Sends to `socket`: an absolute path, or `@name` for an abstract socket. Nil for anything else
    /// (sd_notify ignores relative names too) or a name longer than sun_path.
    public init?(socket: String) {
        var bytes = Array(socket.utf8)
        guard let first = bytes.first, first == UInt8(ascii: "/") || first == UInt8(ascii: "@"), bytes.count > 1 else { return nil }
        if first == UInt8(ascii: "@") { bytes[0] = 0 }
        guard bytes.count <= MemoryLayout.size(ofValue: sockaddr_un().sun_path) else { return nil }
        address = bytes
    }

    /// Sends one message (`READY=1`, `STATUS=...`, several lines at once). Returns false when it
    /// could not be sent; a service manager that stopped listening is no reason to stop serving.
    @discardableResult
    public func send(_ message: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { path in
            for (i, b) in address.enumerated() { path[i] = b }
        }
        // An abstract name is exactly its bytes long; a path ends at its NUL.
        let pathOffset = MemoryLayout<sockaddr_un>.offset(of: \.sun_path)!
        let length = socklen_t(pathOffset + address.count + (address[0] == 0 ? 0 : 1))
        let bytes = Array(message.utf8)
        let sent = withUnsafePointer(to: &addr) { a in
            a.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                bytes.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL), sa, length) }
            }
        }
        return sent == bytes.count
    }

    /// READY=1 with a status line: the mount serves.
    public func ready(status: String) { send("READY=1\nSTATUS=\(oneLine(status))\nMAINPID=\(getpid())") }
    /// STATUS=: what the daemon is doing now (shown by `systemctl status`).
    public func status(_ text: String) { send("STATUS=\(oneLine(text))") }
    /// STOPPING=1: unmounted, persisting indexes before exit.
    public func stopping(status: String) { send("STOPPING=1\nSTATUS=\(oneLine(status))") }

    private func oneLine(_ text: String) -> String { text.split(whereSeparator: \.isNewline).joined(separator: " ") }
}
