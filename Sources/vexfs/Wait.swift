// `vexfs wait PATH`: for scripts that copy a corpus in and then ask. Returns once every collection at
// and below PATH has nothing waiting: no file still being read, no text waiting for (or retried
// with) the embedder, no vector waiting to be linked into a graph.
import ArgumentParser
import Glibc

struct Wait: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Wait until the collections at and below PATH have nothing waiting.",
        discussion: """
            Waits for what was written before it started: files being read, texts waiting for the \
            embedder (also while it is unreachable and retried), vectors waiting to be linked into a \
            graph. Shows a progress bar on a terminal, nothing otherwise. Exits 0 when nothing waits, \
            1 when the timeout passes first (saying what still waits), 2 when PATH is not in a vexfs mount.
            """
    )

    @Argument(help: "A directory of a vexfs mount (the mountpoint: the whole mount).") var path: String
    @Option(help: "Give up after this many seconds (default: wait as long as it takes).") var timeout: Double?

    func validate() throws {
        if let timeout, !(timeout >= 0 && timeout.isFinite) { throw ValidationError("--timeout must be 0 or more seconds") }
    }

    func run() throws {
        let dir: String, mount: MountTable.Entry
        do { (dir, mount) = try MountInspection.locate(path) } catch {
            writeError("Error: \(error)\n")
            throw ExitCode(2)
        }
        let start = TerminalProgress.seconds()
        let progress = TerminalProgress()
        defer { progress.finish() }

        // The first pass reads every directory and file; later passes only what still waited.
        var unsettled = MountInspection.tree(dir, mountRoot: mount.mountpoint).map { ($0.absolute, $0.relative) }
        var total = 0
        var pause = 0.05
        while true {
            let reports = unsettled.map { MountInspection.inspect($0.0, as: $0.1) }
            let remaining = reports.filter { !$0.isSettled }
            let files = remaining.reduce(0) { $0 + $1.waitingFiles.count + $1.retryingFiles.count }
            let vectors = remaining.reduce(0) { $0 + $1.vectorsToLink }
            if remaining.isEmpty { return }
            total = max(total, files + vectors)
            var label = [files > 0 ? "\(files) files to index" : nil, vectors > 0 ? "\(vectors) vectors to link" : nil]
                .compactMap { $0 }.joined(separator: ", ")
            if let why = remaining.lazy.flatMap(\.retryingFiles).first?.status { label += " (\(why))" }
            progress.show(label, done: total - (files + vectors), total: total)
            if let timeout, TerminalProgress.seconds() - start >= timeout {
                progress.finish()
                var lines = ["still waiting after \(timeout)s: \(label)"]
                for r in remaining.prefix(10) {
                    if r.vectorsToLink > 0 { lines.append("  \(r.path): \(r.vectorsToLink) vectors waiting to be linked") }
                    for f in (r.waitingFiles + r.retryingFiles).prefix(5) { lines.append("  \(r.path == "." ? "" : r.path + "/")\(f.name): \(f.status)") }
                }
                writeError(lines.joined(separator: "\n") + "\n")
                throw ExitCode(1)
            }
            let paths = Set(remaining.map(\.path))
            unsettled = unsettled.filter { paths.contains($0.1) }
            usleep(useconds_t(pause * 1e6))
            pause = min(1, pause * 2)
        }
    }
}

/// Text on standard error, as it is.
func writeError(_ text: String) { _ = text.withCString { write(STDERR_FILENO, $0, strlen($0)) } }
