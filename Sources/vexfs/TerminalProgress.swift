import Glibc

/// One line of progress on standard error, redrawn in place, for a person at a terminal; nothing at
/// all when standard error is not a terminal (a script's log stays clean). At most ten redraws a
/// second; `finish` clears the line.
/// Used by one thread at a time (a command's, or the one reconciling a store at mount).
final class TerminalProgress: @unchecked Sendable {
    private let enabled = isatty(STDERR_FILENO) == 1
    var isTerminal: Bool { enabled }
    private var lastDraw = 0.0
    private var drawn = false

    /// `done` of `total` (a bar) with `label` after it; total 0 shows the label alone.
    func show(_ label: String, done: Int = 0, total: Int = 0, force: Bool = false) {
        guard enabled else { return }
        let now = TerminalProgress.seconds()
        guard force || now - lastDraw >= 0.1 else { return }
        lastDraw = now
        var line = "\r\u{1B}[K"
        if total > 0 {
            let width = 30, filled = min(width, max(0, done) * width / total)
            line += "[\(String(repeating: "#", count: filled))\(String(repeating: ".", count: width - filled))] \(done)/\(total) "
        }
        line += label
        put(line)
        drawn = true
    }

    func finish() {
        guard enabled, drawn else { return }
        put("\r\u{1B}[K")
        drawn = false
    }

    private func put(_ text: String) { _ = text.withCString { write(STDERR_FILENO, $0, strlen($0)) } }

    static func seconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
