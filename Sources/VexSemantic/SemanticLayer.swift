// VexSemantic is what makes the store a vector filesystem (PRODUCT.md §2-§4), with no FUSE in it.
// It owns the collections (one per directory, keyed by the directory's inode number so a rename keeps
// its index), the parsing of vector files, the bridge that carries the filesystem's events to the
// indexes in batches, the answers to the `user.vexfs.*` attributes (queries, settings, status), the
// semantic journal and the reconciliation at mount. It reads STORE only through its own absolute
// paths, never through the mount (the daemon must not call into itself). The files are the truth: a
// collection's index and catalog are rebuilt from them whenever they disagree.
import CoreMetrics
import Glibc
import Synchronization
import VexIndex
import VexKernels

/// A collection's directory as the filesystem layer sees it now.
public struct DirectoryRef: Sendable, Equatable {
    public let key: UInt64
    /// Relative to the store's root; "" for the root.
    public let path: String
    public init(key: UInt64, path: String) {
        self.key = key
        self.path = path
    }
    /// The path of `name` in this directory, relative to the store's root.
    public func child(_ name: String) -> String { path.isEmpty ? name : path + "/" + name }
}

/// A refused request, with the errno the caller answers.
public enum SemanticError: Error, Equatable, CustomStringConvertible {
    case noData
    case invalid(String)
    case busy(String)
    case range

    public var errno: Int32 {
        switch self {
        case .noData: ENODATA
        case .invalid: EINVAL
        case .busy: ENOTEMPTY
        case .range: ERANGE
        }
    }

    public var description: String {
        switch self {
        case .noData: "no such attribute"
        case .invalid(let s), .busy(let s): s
        case .range: "the buffer is too small"
        }
    }
}

public final class SemanticLayer: @unchecked Sendable {
    public static let vectorAttribute = "user.vexfs.vector"
    public static let ownPrefix = "user.vexfs."
    public let storeRoot: String
    let stateRoot: String
    let kernels: DistanceKernels
    let indexKind: IndexKind
    let parameters: HNSWParameters
    /// A collection's log is folded into a snapshot past this many bytes.
    let logBound = 32 << 20
    public let journal: Journal
    private(set) var bridge: Bridge!
    /// Collections by directory inode number.
    private let collections = Mutex<[UInt64: Collection]>([:])
    /// getfattr asks twice (the size, then the value): the second ask is served from here.
    private let answers = Mutex<[AnswerKey: Answer]>([:])
    private let problems = Mutex<[String]>([])
    public let metrics: SemanticMetrics

    struct AnswerKey: Hashable {
        let inode: UInt64
        let attribute: String
    }
    struct Answer {
        let version: UInt64
        let collection: UInt64
        let signature: [Int64]
        let bytes: [UInt8]
    }

    public init(storeRoot: String, kernels: DistanceKernels, indexKind: IndexKind = .automatic(threshold: IndexKind.defaultThreshold),
                parameters: HNSWParameters = HNSWParameters(), metrics: SemanticMetrics = SemanticMetrics()) {
        self.storeRoot = storeRoot
        self.metrics = metrics
        stateRoot = storeRoot + "/.vexfs"
        self.kernels = kernels
        self.indexKind = indexKind
        self.parameters = parameters
        mkdir(stateRoot, 0o700)
        mkdir(stateRoot + "/index", 0o700)
        journal = Journal(directory: stateRoot + "/journal")
        bridge = Bridge(counters: metrics.bridge) { [unowned self] events in self.apply(events) }
    }

    // MARK: mount and unmount

    /// Makes every collection's index agree with STORE: walks the tree, opens each directory that
    /// holds vectors (or had an index), re-reads what changed, and deletes the indexes of directories
    /// that are gone. `progress` hears about long runs.
    public func reconcile(progress: @escaping @Sendable (String) -> Void) -> (collections: Int, changed: Int) {
        reporter.withLock { $0 = Reporter(say: progress) }
        defer { reporter.withLock { $0 = nil } }
        var indexed = Set(listDirectories(stateRoot + "/index").compactMap { UInt64($0) })
        var pending: [String] = [""]
        var opened = 0, changed = 0, directories = 0
        while let rel = pending.popLast() {
            let dir = rel.isEmpty ? storeRoot : storeRoot + "/" + rel
            guard let st = statFile(dir) else { continue }
            directories += 1
            let here = DirectoryRef(key: UInt64(st.st_ino), path: rel)
            let (files, subdirectories) = entries(dir)
            for sub in subdirectories where !(rel.isEmpty && sub == ".vexfs") { pending.append(here.child(sub)) }
            let hadIndex = indexed.remove(here.key) != nil
            let wanted = hadIndex || readSetting(dir, .dimension) != nil
                || files.contains { VectorFormat(fileName: $0) != nil || hasVectorAttribute(dir + "/" + $0) }
            guard wanted else { continue }
            // Opened here, in full, once: `collection(_:)` would open it a second time, deferred.
            let (c, _) = register(here)
            let result = c.open(files: files)
            opened += 1
            changed += result.changed
            log(problems: result.problems)
            progressed("\(directories) directories, \(opened) collections, \(changed) files re-read")
        }
        for stale in indexed { removeTree("\(stateRoot)/index/\(stale)") }
        return (opened, changed)
    }

    /// Applies what is pending, snapshots every index with its catalog, and flushes the journal.
    public func close() {
        bridge.stop()
        for c in collections.withLock({ Array($0.values) }) { c.close() }
        journal.flush()
    }

    /// Says how a long reconciliation is going, at most every two seconds.
    private let reporter = Mutex<Reporter?>(nil)
    struct Reporter {
        let say: @Sendable (String) -> Void
        var last = Int(time(nil))
    }

    func progressed(_ what: @autoclosure () -> String) {
        reporter.withLock { r in
            guard r != nil, Int(time(nil)) - r!.last >= 2 else { return }
            r!.last = Int(time(nil))
            r!.say("vexfs: reconciling: " + what())
        }
    }

    func log(problems new: [String]) {
        guard !new.isEmpty else { return }
        for p in new {
            let line = "vexfs: \(p)\n"
            _ = line.withCString { write(2, $0, strlen($0)) }
        }
        problems.withLock { $0.append(contentsOf: new) }
    }

    /// Problems met while opening indexes (for tests and stats).
    public var reportedProblems: [String] { problems.withLock { $0 } }

    // MARK: events from the filesystem

    public func created(_ dir: DirectoryRef, _ name: String) {
        journal.record("create", path: dir.child(name))
    }

    /// A file was closed after writing (or truncated): index what it holds now.
    public func written(_ dir: DirectoryRef, _ name: String) {
        if name.hasSuffix(".query") { return }
        journal.record("write-close", path: dir.child(name))
        if VectorFormat(fileName: name) != nil || existing(dir.key)?.attributeCarriers.withLock({ $0.contains(name) }) == true {
            bridge.post(.refresh, collection: collection(dir).key, name: name)
        }
    }

    public func removed(_ dir: DirectoryRef, _ name: String) {
        journal.record("unlink", path: dir.child(name))
        if existing(dir.key) != nil { bridge.post(.remove, collection: dir.key, name: name) }
    }

    /// `user.vexfs.vector` was set or removed on a file.
    public func vectorAttributeChanged(_ dir: DirectoryRef, _ name: String) {
        journal.record("setxattr", path: dir.child(name), detail: ["name": SemanticLayer.vectorAttribute])
        bridge.post(.refresh, collection: collection(dir).key, name: name)
    }

    /// A file moved: its vectors leave the old collection and join the new one (the target's old
    /// vectors, if it replaced a file, are replaced). With `exchange`, both names are refreshed.
    public func renamed(from: DirectoryRef, _ fromName: String, to: DirectoryRef, _ toName: String, exchange: Bool) {
        journal.record("rename", path: from.child(fromName), to: to.child(toName))
        if existing(from.key) != nil { bridge.post(exchange ? .refresh : .remove, collection: from.key, name: fromName) }
        if VectorFormat(fileName: toName) != nil || existing(to.key) != nil || hasVectorAttribute(storeRoot + "/" + to.child(toName)) {
            bridge.post(.refresh, collection: collection(to).key, name: toName)
        }
    }

    /// Call before renaming a directory: nothing may still be pending under the old path.
    public func settleAll() { bridge.settleAll() }

    /// A directory moved: collections at or under it follow (with `exchange`, those under `new`
    /// move to `old` at the same time).
    public func directoryMoved(from old: String, to new: String, exchange: Bool = false) {
        journal.record("rename", path: old, to: new)
        func moved(_ path: String, _ from: String, _ to: String) -> String? {
            if path == from { return to }
            return path.hasPrefix(from + "/") ? to + path.dropFirst(from.count) : nil
        }
        for c in collections.withLock({ Array($0.values) }) {
            c.state.withLock { s in
                if let p = moved(s.path, old, new) { s.path = p } else if exchange, let p = moved(s.path, new, old) { s.path = p }
            }
        }
    }

    /// A directory was removed: its collection and index go with it.
    public func directoryRemoved(key: UInt64, path: String) {
        journal.record("unlink", path: path)
        guard existing(key) != nil else { return }
        bridge.settle(key)
        guard let c = collections.withLock({ $0.removeValue(forKey: key) }) else { return }
        c.close()
        removeTree(c.indexDirectory)
    }

    private func apply(_ events: [Bridge.Event]) {
        var byCollection: [UInt64: [Bridge.Event]] = [:]
        for e in events { byCollection[e.key.collection, default: []].append(e) }
        for (key, list) in byCollection { existing(key)?.apply(list) }
    }

    func existing(_ key: UInt64) -> Collection? { collections.withLock { $0[key] } }

    /// The collection of `dir`, made (and opened) on first use.
    func collection(_ dir: DirectoryRef) -> Collection {
        let (c, isNew) = register(dir)
        if isNew {
            let opened = c.open(deferring: true)
            log(problems: opened.problems)
            for name in opened.toRead { bridge.post(.refresh, collection: c.key, name: name) }
        }
        return c
    }

    /// The collection of `dir`, made (unopened) if there is none yet; true when this call made it.
    private func register(_ dir: DirectoryRef) -> (Collection, Bool) {
        if let c = existing(dir.key) { return (c, false) }
        let fresh = Collection(key: dir.key, path: dir.path, layer: self)
        return collections.withLock { table -> (Collection, Bool) in
            if let c = table[dir.key] { return (c, false) }
            table[dir.key] = fresh
            return (fresh, true)
        }
    }

    /// Reads and parses a vector file of STORE, refusing absurd sizes unread.
    func readVectors(_ path: String, format: VectorFormat?, size: Int) -> Result<ParsedVectors, FormatError> {
        guard size <= VectorParser.maxFileBytes else { return .failure(FormatError("absurd size: \(size) bytes")) }
        guard size > 0 else { return .failure(FormatError("empty file")) }
        guard let bytes = try? readFile(path) else { return .failure(FormatError("cannot be read")) }
        return bytes.withUnsafeBytes { VectorParser.parse($0, as: format ?? VectorFormat.sniff($0)) }
    }

    // MARK: attributes

    /// Whether a listed attribute name is one of ours that listxattr hides (settings and answers;
    /// `user.vexfs.vector` is a real attribute and is listed).
    public static func hidesFromListing(_ name: UnsafePointer<CChar>) -> Bool {
        strncmp(name, ownPrefix, 11) == 0 && strcmp(name, vectorAttribute) != 0
    }

    /// Whether `name` is ours to answer (all of `user.vexfs.*` but the stored vector).
    public static func owns(_ name: UnsafePointer<CChar>) -> Bool { hidesFromListing(name) }

    /// The value of our attribute `attribute` of the file `name` in `dir`.
    public func fileAttribute(_ attribute: String, dir: DirectoryRef, name: String, inode: UInt64) throws(SemanticError) -> [UInt8] {
        let suffix = attribute.dropFirst(SemanticLayer.ownPrefix.count)
        switch suffix {
        case "knn":
            return try query(dir: dir, name: name, inode: inode, attribute: attribute, k: 10)
        case _ where suffix.hasPrefix("knn."):
            guard let k = Int(suffix.dropFirst(4)), (1...1000).contains(k) else { throw .invalid("K must be from 1 to 1000") }
            return try query(dir: dir, name: name, inode: inode, attribute: attribute, k: k)
        case "status":
            bridge.settle(dir.key)
            if name.hasSuffix(".query") { return Array("query file: never indexed".utf8) }
            guard let r = existing(dir.key)?.record(of: name) else {
                if VectorFormat(fileName: name) == nil { throw .noData }
                return Array("not indexed".utf8)
            }
            return Array(r.status.utf8)
        case "dim":
            let path = storeRoot + "/" + dir.child(name)
            guard let st = statFile(path), let v = try? queryVector(path, name: name, st) else { throw .noData }
            return Array(String(v.dimension).utf8)
        default:
            throw .noData
        }
    }

    /// The value of our attribute of the collection `dir` itself.
    public func directoryAttribute(_ attribute: String, dir: DirectoryRef) throws(SemanticError) -> [UInt8] {
        bridge.settle(dir.key)
        let summary = existing(dir.key)?.summary
        switch attribute.dropFirst(SemanticLayer.ownPrefix.count) {
        case "dim":
            guard let d = summary?.dimension ?? readSetting(storeRoot + "/" + dir.path, .dimension).flatMap(Int.init) else { throw .noData }
            return Array(String(d).utf8)
        case "metric": return Array((summary?.metric ?? .l2).rawValue.utf8)
        case "count": return Array(String(summary?.count ?? 0).utf8)
        case "index": return Array((summary?.index ?? "none (no vectors yet)").utf8)
        default: throw .noData
        }
    }

    /// Sets `user.vexfs.dim` or `user.vexfs.metric` on a collection; other names of ours are refused.
    public func setDirectoryAttribute(_ attribute: String, dir: DirectoryRef, value: [UInt8]) throws(SemanticError) {
        let text = String(decoding: value, as: UTF8.self).trimmingCharacters().filter { $0 != "\n" }
        guard let setting = DirectorySetting(rawValue: attribute) else { throw .invalid("\(attribute) cannot be set") }
        bridge.settle(dir.key)
        try collection(dir).change(setting, to: text)
        journal.record("setxattr", path: dir.path, detail: ["name": attribute, "value": text])
        answers.withLock { $0.removeAll() }
    }

    /// What a file holds as vectors: the content of a vector or query file (`q.npy.query` says its
    /// format; a bare `q.query` is recognised from its bytes), else its `user.vexfs.vector`; nil when
    /// it has neither.
    func vectors(at path: String, name: String, size: Int) -> Result<ParsedVectors, FormatError>? {
        if let format = VectorFormat(fileName: name) { return readVectors(path, format: format, size: size) }
        if name.hasSuffix(".query") {
            return readVectors(path, format: VectorFormat(fileName: String(name.dropLast(6))), size: size)
        }
        guard let text = readAttribute(path, SemanticLayer.vectorAttribute) else { return nil }
        return text.withUnsafeBytes { VectorParser.parse($0, as: .text) }
    }

    /// A file's own vector, for queries; `st` is the file's lstat, already taken by the caller.
    func queryVector(_ path: String, name: String, _ st: stat) throws(SemanticError) -> ParsedVectors {
        guard case .success(let v) = vectors(at: path, name: name, size: Int(st.st_size)) else { throw .noData }
        return v
    }

    private func query(dir: DirectoryRef, name: String, inode: UInt64, attribute: String, k: Int) throws(SemanticError) -> [UInt8] {
        var t0 = timespec(), t1 = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t0)
        bridge.settle(dir.key)
        let c = existing(dir.key)
        let version = c?.version.load(ordering: .acquiring) ?? 0
        let path = storeRoot + "/" + dir.child(name)
        guard let st = statFile(path) else { throw .noData }
        let signature = [Int64(st.st_ino), Int64(st.st_size), nanoseconds(st.st_mtim), nanoseconds(st.st_ctim)]
        let key = AnswerKey(inode: inode, attribute: attribute)
        if let cached = answers.withLock({ $0[key] }), cached.version == version, cached.collection == dir.key, cached.signature == signature {
            metrics.cached.increment()
            return cached.bytes
        }
        let vector = try queryVector(path, name: name, st)
        var out: [UInt8] = []
        if let c {
            for (n, d) in try c.nearest(vector.row(0), k: k, excluding: name) {
                out.append(contentsOf: "\(n)\t\(d)\n".utf8)
            }
        }
        answers.withLock { table in
            if table.count > 4096 { table.removeAll() }
            table[key] = Answer(version: version, collection: dir.key, signature: signature, bytes: out)
        }
        clock_gettime(CLOCK_MONOTONIC, &t1)
        metrics.queries.recordNanoseconds(nanoseconds(t1) - nanoseconds(t0))
        journal.record("query", path: dir.child(name), detail: ["k": String(k)])
        return out
    }

    // MARK: stats

    /// Sets the gauges from the state now, without waiting for the bridge or a batch.
    public func refreshGauges() {
        let all = collections.withLock { Array($0.values) }
        metrics.collections.set(all.count)
        metrics.vectors.set(all.reduce(0) { $0 + $1.vectorCount.load(ordering: .relaxed) })
        metrics.depth.set(bridge.depth)
        metrics.journalBytes.set(journal.size)
    }
}

/// The vector layer's figures, made through swift-metrics with whatever factory the owner gives
/// (the mount's is a Prometheus registry that `.vexfs/stats` emits; tests use the no-op one).
/// Gauges are set when the stats are read, never on the request path.
public final class SemanticMetrics: Sendable {
    public static let queryLabel = "vexfs_query_seconds"
    public static let batchLabel = "vexfs_bridge_batch_size"
    let queries: CoreMetrics.Timer
    let cached: Counter
    let bridge: Bridge.Counters
    let collections: Meter
    let vectors: Meter
    let depth: Meter
    let journalBytes: Meter

    public init(factory: any MetricsFactory = NOOPMetricsHandler.instance) {
        queries = CoreMetrics.Timer(label: SemanticMetrics.queryLabel, dimensions: [], factory: factory)
        cached = Counter(label: "vexfs_query_cached_total", dimensions: [], factory: factory)
        bridge = Bridge.Counters(factory: factory)
        collections = Meter(label: "vexfs_collections", dimensions: [], factory: factory)
        vectors = Meter(label: "vexfs_index_vectors", dimensions: [], factory: factory)
        depth = Meter(label: "vexfs_bridge_queue_depth", dimensions: [], factory: factory)
        journalBytes = Meter(label: "vexfs_journal_bytes", dimensions: [], factory: factory)
    }
}
