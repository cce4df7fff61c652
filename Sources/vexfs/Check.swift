// `vexfs check STORE`: what fsck is to a disk, for the state vexfs keeps beside a store's files.
import ArgumentParser
import Glibc
import VexKernels
import VexSemantic
import VexStore

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check every collection's saved index against its files, without mounting.",
        discussion: """
            Prints one line per collection: clean (the next mount reads nothing again), stale (files \
            changed since the snapshot, or there is none: the next mount reads those files again) or \
            damaged (the next mount sets the snapshot aside and rebuilds the collection; a damaged keyword \
            index is set aside by --repair and rebuilt by the next mount). Each keyword index is checked \
            against its collection's files, and the embedding cache row by row. Exits 0 when \
            everything is clean, 1 when anything is stale or damaged, 2 when the store cannot be checked.
            """
    )

    @Argument(help: "The backing directory (not the mountpoint).") var store: String
    @Flag(help: "Move damaged snapshots aside (snapshot.bad) so the next mount rebuilds them; the store must not be mounted.")
    var repair = false
    @Flag(help: "List every finding, not only the first few of each collection.") var verbose = false
    @Option(name: .customLong("state"), help: "A shared mount's private state directory (its -o state=); repeatable. Those in the default place are found.")
    var states: [String] = []

    func run() throws {
        guard let resolved = realpath(store, nil) else { throw UserError("store \(store) does not exist") }
        let root = String(cString: resolved)
        free(resolved)
        var st = stat()
        guard stat(root + "/.vexfs", &st) == 0, st.st_mode & S_IFMT == S_IFDIR else {
            throw UserError("\(root) has no .vexfs: it was never mounted by vexfs (or this is the mountpoint, not the store)")
        }
        guard let format = StoreFormat.read(stateRoot: root + "/.vexfs"), format <= StoreFormat.current else {
            print("\(root): written by a newer vexfs (or its format file is damaged); not checked")
            throw ExitCode(2)
        }
        var lock: Int32 = -1
        if repair {
            do { lock = try MountLock.acquire(storePath: root) } catch .held {
                throw UserError("\(root) is mounted: unmount it before --repair")
            } catch { throw UserError("cannot lock \(root): \(error)") }
        }
        defer { if lock >= 0 { close(lock) } }
        let kernels: DistanceKernels
        do { kernels = try DistanceKernels.forProcess.get() } catch { throw UserError(error.description) }

        let bar = isatty(STDERR_FILENO) == 1
        // A shared store's indexes are in several places: each line then names its index directory.
        let roots = StoreCheck.indexRoots(root: root, states: states)
        let results = StoreCheck.run(root: root, indexRoots: roots, repair: repair, kernels: kernels) { done, total in
            guard bar, total > 0 else { return }
            let width = 30, filled = done * width / total
            let line = "\rchecking [\(String(repeating: "#", count: filled))\(String(repeating: ".", count: width - filled))] \(done)/\(total)"
            let text = line + (done == total ? "\r\u{1B}[K" : "")
            _ = text.withCString { write(STDERR_FILENO, $0, strlen($0)) }
        }
        var counts: [CollectionCheck.Verdict: Int] = [:]
        for r in results {
            counts[r.verdict, default: 0] += 1
            let name = r.path ?? r.indexDirectory
            var line = "\(r.verdict.rawValue)\t\(name)"
            if r.verdict == .clean { line += "\t\(r.vectors) vectors" }
            if roots.count > 1 && r.path != nil { line += "\t\(r.indexDirectory)" }
            if r.repaired { line += "\tset aside: the next mount rebuilds it" }
            print(line)
            let shown = verbose ? r.findings : Array(r.findings.prefix(5))
            for f in shown { print("\t\(f)") }
            if shown.count < r.findings.count { print("\t... and \(r.findings.count - shown.count) more (--verbose lists them)") }
        }
        print("\(results.count) collections: \(counts[.clean] ?? 0) clean, \(counts[.stale] ?? 0) stale, \(counts[.damaged] ?? 0) damaged")
        let cache = StoreCheck.embeddingCache(root: root, repair: repair)
        if let cache {
            if let why = cache.unreadable {
                print("damaged\tembedding cache\t\(why)" + (cache.repaired ? "\tset aside: the next mount starts it again" : ""))
            } else {
                let state = cache.damaged == 0 ? "clean" : "damaged"
                var line = "\(state)\tembedding cache\t\(cache.rows) vectors, \(cache.bytes >> 20) MiB"
                if cache.damaged > 0 {
                    line += cache.repaired ? "; \(cache.damaged) damaged rows dropped" : "; \(cache.damaged) rows fail their check (each a miss, never a wrong vector; --repair drops them)"
                }
                print(line)
            }
        }
        if results.contains(where: { $0.verdict != .clean }) || (cache.map { $0.unreadable != nil || $0.damaged > 0 } ?? false) { throw ExitCode(1) }
    }
}
