// VexSemantic is what makes the store a vector filesystem (PRODUCT.md §2-§4), with no FUSE in it.
// It owns the collections (one per directory, keyed by the directory's inode number so a rename keeps
// its index), the parsing of vector files, the bridge that carries the filesystem's events to the
// indexes in batches, the answers to the `user.vexfs.*` attributes (queries with their options in
// QueryOptions.swift, settings, status), text files sent to VexEmbed and their vectors taken back,
// the semantic journal (and each reader's view of it, JournalView.swift) and the reconciliation at
// mount. It reads STORE only through descriptors (a
// collection holds its directory's; a request lends the file's), never by a path rebuilt from names
// and never through the mount (the daemon must not call into itself); see StoreFiles.swift. The files are the truth: a
// collection's index and catalog are rebuilt from them whenever they disagree.
import CLinux
import CoreMetrics
import Glibc
import Logging
import Synchronization
import VexEmbed
import VexIndex
import VexKernels

/// A collection's directory as the filesystem layer sees it now: its inode number (the key, stable
/// across renames), its path from the store's root (for the journal and messages only: nothing is
/// ever opened by it) and a descriptor of it, valid for the duration of the call.
public struct DirectoryRef: Sendable {
    public let key: UInt64
    /// Relative to the store's root; empty for the root.
    public let path: FileName
    /// An O_PATH (or any) descriptor of the directory, owned by the caller.
    public let fd: Int32
    public init(key: UInt64, path: FileName, fd: Int32) {
        self.key = key
        self.path = path
        self.fd = fd
    }
    /// The path of `name` in this directory, relative to the store's root.
    public func child(_ name: FileName) -> FileName { path.child(name) }
}

/// A file a request is about: where it is and a descriptor of the file itself (O_PATH, owned by the
/// caller, valid for the call). Its contents are read through `fd`, so the answer is about the file
/// the caller holds, even if its name now points elsewhere.
public struct FileRef: Sendable {
    public let dir: DirectoryRef
    public let name: FileName
    public let fd: Int32
    public init(dir: DirectoryRef, name: FileName, fd: Int32) {
        self.dir = dir
        self.name = name
        self.fd = fd
    }
}

/// A refused request, with the errno the caller answers.
public enum SemanticError: Error, Equatable, CustomStringConvertible {
    case noData
    case invalid(String)
    case busy(String)
    case range
    /// The answer is longer than one attribute value can be (read it by pages).
    case tooBig
    /// A question in words, and the embedder cannot turn it into a vector now.
    case embedder(String)

    public var errno: Int32 {
        switch self {
        case .noData: ENODATA
        case .invalid: EINVAL
        case .busy: ENOTEMPTY
        case .range: ERANGE
        case .tooBig: E2BIG
        case .embedder: EHOSTDOWN
        }
    }

    public var description: String {
        switch self {
        case .noData: "no such attribute"
        case .invalid(let s), .busy(let s), .embedder(let s): s
        case .range: "the buffer is too small"
        case .tooBig: "the answer is longer than 64 KiB: read it by pages (knn.K.from.LINE)"
        }
    }
}

public final class SemanticLayer: @unchecked Sendable {
    public static let vectorAttribute = "user.vexfs.vector"
    public static let ownPrefix = "user.vexfs."
    /// Collections at most (each holds two descriptors: its directory and its log).
    public static let maxCollections = 10_000
    /// Query files are read whole for every query: larger ones are refused unread.
    public static let maxQueryBytes = 16 << 20
    public let storeRoot: String
    /// The store's root, held: every collection's directory is reached from it or from the request.
    let rootFD: Int32
    let stateRoot: String
    let kernels: DistanceKernels
    let indexKind: IndexKind
    let parameters: HNSWParameters
    /// A collection's index is snapshotted once the changes since the last snapshot are as many as
    /// it holds, and at least this many (see `Collection.considerCheckpoint`).
    let snapshotMinimum = 4096
    /// Vectors that may wait beside a graph (every query scans them) before the linker links them in
    /// while writes go on: 4 MiB of them (a scan well under a millisecond), at least 2,048. Below
    /// it they are linked in when the bridge is idle.
    func freshBound(dimension: Int) -> Int { max(2048, (4 << 20) / (4 * dimension)) }
    /// A filtered query on a graph scans the vectors that pass instead, when a sample says they are
    /// at most this many (or a twentieth of the collection).
    let exactScanRows: Int
    /// `.npy` and `.fvecs` files at least this big are read a slice at a time (`VectorStream`).
    let streamThreshold: Int
    /// Text files become vectors through this endpoint's queue (nil: no embedder configured).
    let embedQueue: EmbedQueue<Bridge.Key>?
    let embedClient: EmbeddingClient?
    /// Characters a passage holds at most.
    let embedChunk: Int
    /// Numbers each embedding request, so a late answer for an older version of a file is dropped.
    let embedTokens = Atomic<UInt64>(0)
    /// Which files are text when a collection does not say (`user.vexfs.embed`).
    public static let defaultEmbedGlobs = ["*.txt", "*.md"]
    /// Text files larger than this are not embedded; a text query at most this long.
    public static let maxTextBytes = 16 << 20
    public static let maxTextQueryBytes = 64 << 10
    /// One thread measures collections' recall and sets their search breadth.
    let tuner = CollectionWorker { $0.measureRecall(); return false }
    /// One thread links the vectors waiting beside a graph into it past `freshBound`.
    let linker = CollectionWorker { $0.linkWaiting() }
    public let journal: Journal
    private(set) var bridge: Bridge!
    /// Collections by directory inode number.
    private let collections = Mutex<[UInt64: Collection]>([:])
    /// Every indexed name of each file, by inode number: a write through one hard link refreshes all.
    private let links = Mutex<[UInt64: Set<Link>]>([:])
    /// getfattr asks twice (the size, then the value): the second ask is served from here.
    private let answers = Mutex<AnswerCache>(AnswerCache())
    private let problems = Mutex<[String]>([])
    /// Why the last query or option set on a query file (by inode number) was refused.
    private let queryProblems = Mutex<[UInt64: String]>([:])
    public let metrics: SemanticMetrics
    /// Problems, recoveries and progress: the daemon's log (syslog when detached, stderr with -f).
    let logger = Logger(label: "vexfs")

    struct Link: Hashable {
        let collection: UInt64
        let name: FileName
    }

    struct AnswerKey: Hashable {
        let inode: UInt64
        let attribute: String
        /// Answers depend on who asks (they name only what the asker may read).
        let asker: [UInt32]
    }
    struct Answer {
        let collection: UInt64
        let signature: [Int64]
        let bytes: [UInt8]
    }
    /// Bounded by bytes, since K and names are the caller's to choose.
    struct AnswerCache {
        static let maxBytes = 16 << 20
        var table: [AnswerKey: Answer] = [:]
        var bytes = 0
        mutating func put(_ key: AnswerKey, _ answer: Answer) {
            guard answer.bytes.count <= SemanticLayer.maxAnswerTotal else { return }
            if bytes + answer.bytes.count > AnswerCache.maxBytes || table.count >= 4096 { table.removeAll(); bytes = 0 }
            if let old = table.updateValue(answer, forKey: key) { bytes -= old.bytes.count }
            bytes += answer.bytes.count
        }
    }

    public init(storeRoot: String, kernels: DistanceKernels, indexKind: IndexKind = .automatic(threshold: IndexKind.defaultThreshold),
                parameters: HNSWParameters = HNSWParameters(), metrics: SemanticMetrics = SemanticMetrics(), exactScanRows: Int = 4096,
                embedder: EmbedderConfiguration? = nil, streamThreshold: Int = VectorStream.threshold) {
        self.storeRoot = storeRoot
        self.exactScanRows = exactScanRows
        self.streamThreshold = streamThreshold
        embedChunk = embedder?.chunk ?? 2000
        let client = embedder.map { EmbeddingClient($0) }
        embedClient = client
        // The queue answers back through `embedded`, which needs `self`: a weak box breaks the cycle.
        let back = WeakLayer()
        embedQueue = client.map { c in
            EmbedQueue<Bridge.Key>.start(client: c, metrics: metrics.embed) { key, token, result, retrying in
                back.layer?.existing(key.collection)?.embedded(key.name, token: token, result, retrying: retrying)
            }
        }
        self.metrics = metrics
        rootFD = Glibc.open(storeRoot, vx_O_PATH | O_DIRECTORY | O_CLOEXEC)
        stateRoot = storeRoot + "/.vexfs"
        self.kernels = kernels
        self.indexKind = indexKind
        self.parameters = parameters
        mkdir(stateRoot, 0o700)
        mkdir(stateRoot + "/index", 0o700)
        journal = Journal(directory: stateRoot + "/journal")
        bridge = Bridge(counters: metrics.bridge, idle: { [unowned self] in self.absorbSome() },
                        isLong: { [unowned self] event in self.isLong(event) }) { [unowned self] events in self.apply(events) }
        back.layer = self
    }

    final class WeakLayer: @unchecked Sendable { weak var layer: SemanticLayer? }

    deinit { if rootFD >= 0 { Glibc.close(rootFD) } }

    // MARK: mount and unmount

    /// Makes every collection's index agree with STORE: walks the tree (by descriptors, never into
    /// a symlink), opens each directory that holds vectors (or had an index), re-reads what changed,
    /// and deletes the indexes of directories that are gone. `progress` hears about long runs.
    public func reconcile(progress: @escaping @Sendable (String) -> Void) -> (collections: Int, changed: Int) {
        reporter.withLock { $0 = Reporter(say: progress) }
        defer { reporter.withLock { $0 = nil } }
        var indexed = Set(listDirectories(stateRoot + "/index").compactMap { UInt64($0) })
        guard let top = StoreFiles.holdDirectory(rootFD, ".") else { return (0, 0) }
        var pending: [(FileName, Int32)] = [(FileName([]), top)]
        var opened = 0, changed = 0, directories = 0
        while let (rel, fd) = pending.popLast() {
            defer { Glibc.close(fd) }
            var st = stat()
            guard fstat(fd, &st) == 0 else { continue }
            directories += 1
            let here = DirectoryRef(key: UInt64(st.st_ino), path: rel, fd: fd)
            let (files, subdirectories) = StoreFiles.entries(fd)
            for sub in subdirectories where !(rel.isEmpty && sub == FileName(".vexfs")) {
                if let child = StoreFiles.holdDirectory(fd, sub) { pending.append((rel.child(sub), child)) }
            }
            let hadIndex = indexed.remove(here.key) != nil
            let wanted = hadIndex || readSetting(fd, .dimension) != nil
                || files.contains { $0.vectorFormat != nil || hasVectorAttribute(fd, $0) || mayBeText(here, $0) }
            guard wanted else { continue }
            // Opened here, in full, once: `collection(_:)` would open it a second time, deferred.
            guard let (c, _) = register(here) else { continue }
            let result = c.open(files: files)
            for name in result.toRead { bridge.post(.refresh, collection: c.key, name: name) }
            opened += 1
            changed += result.changed
            log(problems: result.problems)
            progressed("\(directories) directories, \(opened) collections, \(changed) files re-read")
        }
        for stale in indexed { removeTree("\(stateRoot)/index/\(stale)") }
        bridge.nudge()
        return (opened, changed)
    }

    /// Applies what is pending, snapshots every index that changed since its last snapshot (with its
    /// catalog), and flushes the journal.
    public func close() {
        bridge.stop()
        // Waiting texts are dropped: their files are asked for again at the next mount.
        embedQueue?.stop()
        embedClient?.shutdown()
        tuner.stop()
        linker.stop()
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
            r!.say("reconciling: " + what())
        }
    }

    func log(problems new: [String]) {
        guard !new.isEmpty else { return }
        for p in new { logger.warning("\(p)") }
        // Kept for tests and stats, bounded: users can cause problems at will.
        problems.withLock { list in
            list.append(contentsOf: new)
            if list.count > 1000 { list.removeFirst(list.count - 1000) }
        }
    }

    /// Problems met while opening indexes (for tests and stats).
    public var reportedProblems: [String] { problems.withLock { $0 } }

    // MARK: hard links

    /// Called by a collection when it indexes `name` as the file `inode` (nil: no longer).
    func noteLink(collection: UInt64, name: FileName, from old: UInt64?, to new: UInt64?) {
        guard old != new else { return }
        let link = Link(collection: collection, name: name)
        links.withLock { table in
            if let old {
                table[old]?.remove(link)
                if table[old]?.isEmpty == true { table[old] = nil }
            }
            if let new { table[new, default: []].insert(link) }
        }
    }

    /// The names of `inode` indexed in `collection`.
    func names(of inode: UInt64, in collection: UInt64) -> [FileName] {
        links.withLock { $0[inode].map { $0.filter { $0.collection == collection }.map(\.name) } ?? [] }
    }

    // MARK: events from the filesystem

    public func created(_ dir: DirectoryRef, _ name: FileName) {
        journal.record("create", path: dir.child(name).escaped)
    }

    /// A file was closed after writing (or truncated): index what it holds now, under this name and
    /// every other name it is indexed by (hard links), in every collection.
    public func written(_ dir: DirectoryRef, _ name: FileName, inode: UInt64) {
        if name.isQuery { return }
        journal.record("write-close", path: dir.child(name).escaped)
        if name.vectorFormat != nil || existing(dir.key)?.attributeCarriers.withLock({ $0.contains(name) }) == true || mayBeText(dir, name) {
            if let c = collection(dir) { bridge.post(.refresh, collection: c.key, name: name) }
        }
        let others = links.withLock { $0[inode] ?? [] }
        for link in others where !(link.collection == dir.key && link.name == name) {
            bridge.post(.refresh, collection: link.collection, name: link.name)
        }
    }

    /// Whether `name` in `dir` is a text file to embed: an embedder is configured and the name
    /// matches the collection's `user.vexfs.embed` globs (the default ones when it has none).
    func mayBeText(_ dir: DirectoryRef, _ name: FileName) -> Bool {
        guard embedQueue != nil else { return false }
        if let c = existing(dir.key) { return c.state.withLock { c.isText(name, $0) } }
        let globs: [String]? = if case .embed(let g)? = readSetting(dir.fd, .embed) { g } else { nil }
        return SemanticLayer.isTextName(name, globs: globs)
    }

    /// Whether `name` is a text file's name under `globs` (nil: the default ones): never a query
    /// or a vector file.
    static func isTextName(_ name: FileName, globs: [String]?) -> Bool {
        guard !name.isQuery, name.vectorFormat == nil else { return false }
        return name.withCString { n in (globs ?? defaultEmbedGlobs).contains { fnmatch($0, n, FNM_PERIOD) == 0 } }
    }

    /// A new name for an existing file (link(2)): it is a vector wherever its name says so.
    public func linked(_ dir: DirectoryRef, _ name: FileName) {
        journal.record("link", path: dir.child(name).escaped)
        guard !name.isQuery else { return }
        if name.vectorFormat != nil || hasVectorAttribute(dir.fd, name) || mayBeText(dir, name), let c = collection(dir) {
            bridge.post(.refresh, collection: c.key, name: name)
        }
    }

    public func removed(_ dir: DirectoryRef, _ name: FileName) {
        journal.record("unlink", path: dir.child(name).escaped)
        if existing(dir.key) != nil { bridge.post(.remove, collection: dir.key, name: name) }
    }

    /// The attribute `name` of `file` was set or removed (nil: its mode or owner changed): filters
    /// read the file's attributes again and cached answers go, in every collection it is indexed in
    /// (hard links share attributes); `user.vexfs.vector` also re-indexes it.
    public func attributeChanged(_ file: FileRef, name: UnsafePointer<CChar>? = nil) {
        let dir = file.dir
        if let name, strcmp(name, SemanticLayer.vectorAttribute) == 0 {
            journal.record("setxattr", path: dir.child(file.name).escaped, detail: ["name": SemanticLayer.vectorAttribute])
            if let c = collection(dir) { bridge.post(.refresh, collection: c.key, name: file.name) }
        }
        guard let inode = inodeNumber(file.fd) else { return }
        existing(dir.key)?.attributesChanged(of: inode)
        let others = links.withLock { $0[inode] ?? [] }
        for link in others where link.collection != dir.key { existing(link.collection)?.attributesChanged(of: inode) }
    }

    /// A file moved: its vectors leave the old collection and join the new one (the target's old
    /// vectors, if it replaced a file, are replaced). With `exchange`, both names are refreshed.
    public func renamed(from: DirectoryRef, _ fromName: FileName, to: DirectoryRef, _ toName: FileName, exchange: Bool) {
        journal.record("rename", path: from.child(fromName).escaped, to: to.child(toName).escaped)
        if existing(from.key) != nil { bridge.post(exchange ? .refresh : .remove, collection: from.key, name: fromName) }
        if toName.vectorFormat != nil || existing(to.key) != nil || hasVectorAttribute(to.fd, toName) || mayBeText(to, toName),
           let c = collection(to) {
            bridge.post(.refresh, collection: c.key, name: toName)
        }
    }

    /// A directory moved: collections at or under it follow (with `exchange`, those under `new`
    /// move to `old` at the same time). Only their names for messages change: they hold their
    /// directories by descriptor.
    public func directoryMoved(from old: FileName, to new: FileName, exchange: Bool = false) {
        journal.record("rename", path: old.escaped, to: new.escaped)
        func moved(_ path: FileName, _ from: FileName, _ to: FileName) -> FileName? {
            path.relative(to: from).map { FileName(to.bytes + $0) }
        }
        for c in collections.withLock({ Array($0.values) }) {
            c.state.withLock { s in
                if let p = moved(s.path, old, new) { s.path = p } else if exchange, let p = moved(s.path, new, old) { s.path = p }
            }
        }
    }

    /// A directory was removed: its collection and index go with it.
    public func directoryRemoved(key: UInt64, path: FileName) {
        journal.record("unlink", path: path.escaped)
        guard existing(key) != nil else { return }
        bridge.settle(key)
        guard let c = collections.withLock({ $0.removeValue(forKey: key) }) else { return }
        c.forgetAllLinks()
        removeTree(c.indexDirectory)
    }

    private func apply(_ events: [Bridge.Event]) {
        var byCollection: [UInt64: [Bridge.Event]] = [:]
        for e in events { byCollection[e.key.collection, default: []].append(e) }
        for (key, list) in byCollection { existing(key)?.apply(list) }
    }

    /// Links a few of one collection's waiting vectors into its graph (the bridge, when idle); true
    /// while some collection still has some waiting.
    private func absorbSome() -> Bool {
        let all = collections.withLock { Array($0.values) }
        for c in all {
            // A collection the builder holds is passed over, never waited for.
            guard let held = c.state.withLockIfAvailable({ $0.index }), let index = held, index.unabsorbed > 0 else { continue }
            index.absorb(limit: 8)
            return true
        }
        return false
    }

    /// Whether applying `event` reads a file big enough to be streamed: the bridge's builder does it.
    private func isLong(_ event: Bridge.Event) -> Bool {
        guard let c = existing(event.key.collection), let st = StoreFiles.stat(c.directory, event.key.name) else { return false }
        return streamedFormat(event.key.name, st) != nil
    }

    /// The format of `name` (`st`) when it is a vector file big enough to be read through a stream.
    func streamedFormat(_ name: FileName, _ st: stat) -> VectorFormat? {
        guard StoreFiles.isRegular(st), let format = name.vectorFormat,
              VectorStream.streams(format, size: Int(st.st_size), threshold: streamThreshold) else { return nil }
        return format
    }

    /// Vectors one streamed file may bring: what is left of half of this machine's memory, after
    /// every other collection's vectors, at a graph's in-memory cost per vector (the int8 code and
    /// links of a node, its label, its entries in the maps; the float32 vectors are in a file the
    /// kernel pages). A bound on the whole mount, not per file: two sparse files must not add up to
    /// more than memory holds.
    func maxFileVectors(dimension: Int, besides asking: Collection) -> Int {
        let memory = Int(sysconf(Int32(_SC_PHYS_PAGES))) * Int(sysconf(Int32(_SC_PAGESIZE)))
        func perVector(_ d: Int) -> Int { (d + 63) / 64 * 64 + (8 + 8 * parameters.m + 63) / 64 * 64 + 96 }
        var used = 0
        for c in collections.withLock({ Array($0.values) }) where c !== asking {
            used += c.vectorCount.load(ordering: .relaxed) * perVector(c.knownDimension.load(ordering: .relaxed))
        }
        return min(VectorStream.maxRows, max(0, memory / 2 - used) / perVector(dimension))
    }

    func existing(_ key: UInt64) -> Collection? { collections.withLock { $0[key] } }

    /// The collection of `dir`, made (and opened) on first use; nil past `maxCollections`.
    func collection(_ dir: DirectoryRef) -> Collection? {
        guard let (c, isNew) = register(dir) else { return nil }
        if isNew {
            let opened = c.open(deferring: true)
            log(problems: opened.problems)
            for name in opened.toRead { bridge.post(.refresh, collection: c.key, name: name) }
        }
        return c
    }

    /// The collection of `dir`, made (unopened) if there is none yet; true when this call made it.
    private func register(_ dir: DirectoryRef) -> (Collection, Bool)? {
        if let c = existing(dir.key) { return (c, false) }
        guard collections.withLock({ $0.count }) < SemanticLayer.maxCollections else {
            log(problems: ["\(dir.path.isEmpty ? "." : dir.path.escaped): not a collection: there are \(SemanticLayer.maxCollections) already"])
            return nil
        }
        guard let fd = StoreFiles.holdDirectory(dir.fd, ".") else { return nil }
        let fresh = Collection(key: dir.key, path: dir.path, directory: fd, layer: self)
        return collections.withLock { table -> (Collection, Bool) in
            if let c = table[dir.key] { return (c, false) }
            table[dir.key] = fresh
            return (fresh, true)
        }
    }

    /// What a file holds as vectors: the content of a vector or query file (`q.npy.query` says its
    /// format; a bare `q.query` is recognised from its bytes), else its `user.vexfs.vector`; nil when
    /// it has neither. `read` reads the file's bytes within a limit; `attribute` its vector attribute.
    func vectors(name: FileName, read: (Int) -> Result<[UInt8], FormatError>, attribute: () -> [UInt8]?) -> Result<ParsedVectors, FormatError>? {
        let isQuery = name.isQuery
        let format = isQuery ? name.queryFormat : name.vectorFormat
        if format != nil || isQuery {
            switch read(isQuery ? SemanticLayer.maxQueryBytes : VectorParser.maxFileBytes) {
            case .failure(let e): return .failure(e)
            case .success(let bytes): return bytes.withUnsafeBytes { VectorParser.parse($0, as: format ?? VectorFormat.sniff($0)) }
            }
        }
        guard let text = attribute() else { return nil }
        return text.withUnsafeBytes { VectorParser.parse($0, as: .text) }
    }

    /// What `file` holds as vectors, read through its own descriptor.
    func vectors(of file: FileRef) -> Result<ParsedVectors, FormatError>? {
        vectors(name: file.name, read: { StoreFiles.read(opath: file.fd, limit: $0) },
                attribute: { StoreFiles.attribute(opath: file.fd, SemanticLayer.vectorAttribute) })
    }

    // MARK: attributes

    /// Whether a listed attribute name is one of ours that listxattr hides (settings and answers;
    /// `user.vexfs.vector` is a real attribute and is listed).
    public static func hidesFromListing(_ name: UnsafePointer<CChar>) -> Bool {
        strncmp(name, ownPrefix, 11) == 0 && strcmp(name, vectorAttribute) != 0
    }

    /// Whether `name` is ours to answer (all of `user.vexfs.*` but the stored vector).
    public static func owns(_ name: UnsafePointer<CChar>) -> Bool { hidesFromListing(name) }

    /// The value of our attribute `attribute` of `file`, for `requester`.
    public func fileAttribute(_ attribute: String, file: FileRef, requester: Requester = .root) throws(SemanticError) -> [UInt8] {
        let suffix = attribute.dropFirst(SemanticLayer.ownPrefix.count)
        if suffix == "knn" || suffix.hasPrefix("knn.") {
            let (k, from) = try SemanticLayer.knnRequest(suffix.dropFirst(3))
            return try query(file, attribute: "knn.\(k)", k: k, from: from, requester: requester)
        }
        if let option = QueryOptions.Option(rawValue: attribute) {
            guard let value = StoreFiles.attribute(opath: file.fd, option.rawValue, limit: QueryOptions.maxFilterBytes) else { throw .noData }
            return value
        }
        switch suffix {
        case "status":
            bridge.settle(file.dir.key)
            if file.name.isQuery {
                if let inode = inodeNumber(file.fd), let problem = queryProblems.withLock({ $0[inode] }) {
                    return Array("query file: never indexed; last refused: \(problem)".utf8)
                }
                return Array("query file: never indexed".utf8)
            }
            guard let r = existing(file.dir.key)?.record(of: file.name) else {
                if file.name.vectorFormat == nil && !mayBeText(file.dir, file.name) { throw .noData }
                if let st = StoreFiles.stat(file.dir.fd, file.name), !StoreFiles.isRegular(st) {
                    return Array("not indexed: \(StoreFiles.notRegular(st))".utf8)
                }
                return Array("not indexed".utf8)
            }
            return Array(r.status.utf8)
        case "dim":
            guard case .success(let v)? = vectors(of: file) else { throw .noData }
            return Array(String(v.dimension).utf8)
        case "passages":
            bridge.settle(file.dir.key)
            guard let r = existing(file.dir.key)?.record(of: file.name), !r.passages.isEmpty else { throw .noData }
            var out = ""
            for (i, p) in r.passages.enumerated() { out += "\(i)\t\(p.lowerBound)\t\(p.upperBound)\n" }
            return Array(out.utf8)
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
            let stored: Int? = if case .dimension(let d)? = readSetting(dir.fd, .dimension) { d } else { nil }
            guard let d = summary?.dimension ?? stored else { throw .noData }
            return Array(String(d).utf8)
        case "metric": return Array((summary?.metric ?? .l2).rawValue.utf8)
        case "count": return Array(String(summary?.count ?? 0).utf8)
        case "status":
            guard let summary, summary.dimension != nil else { return Array("not a collection yet: no vectors".utf8) }
            var text = "indexed: \(summary.count) vectors"
            if !summary.recovery.isEmpty { text += "; at mount: \(summary.recovery)" }
            return Array(text.utf8)
        case "index": return Array((summary?.index ?? "none (no vectors yet)").utf8)
        case "embed":
            guard embedQueue != nil else { throw .noData }
            return Array((readSetting(dir.fd, .embed) ?? .embed(SemanticLayer.defaultEmbedGlobs)).text.utf8)
        case "recall":
            let stored: Double? = if case .recall(let r)? = readSetting(dir.fd, .recall) { r } else { nil }
            return Array(String(summary?.recall ?? stored ?? Setting.defaultRecall).utf8)
        default: throw .noData
        }
    }

    /// Sets `user.vexfs.dim`, `user.vexfs.metric` or `user.vexfs.recall` on a collection; other names of ours are refused.
    public func setDirectoryAttribute(_ attribute: String, dir: DirectoryRef, value: [UInt8]) throws(SemanticError) {
        let setting = try Setting.parse(attribute, value)
        bridge.settle(dir.key)
        guard let c = collection(dir) else { throw .invalid("there are \(SemanticLayer.maxCollections) collections already") }
        try c.change(setting)
        journal.record("setxattr", path: dir.path.escaped, detail: ["name": attribute, "value": setting.text])
        answers.withLock { $0 = AnswerCache() }
    }

    /// K and, for a page of a long answer, the line it starts at, from what follows `knn`: nothing
    /// (10), `.K`, `.K.from.N` or `.from.N`.
    static func knnRequest(_ rest: Substring) throws(SemanticError) -> (k: Int, from: Int?) {
        var parts = rest.split(separator: ".", omittingEmptySubsequences: false).dropFirst()
        guard rest.isEmpty || rest.first == "." else { throw .noData }
        var k = 10
        if let first = parts.first, first != "from" {
            guard let n = Int(first), (1...1000).contains(n) else { throw .invalid("K must be from 1 to 1000") }
            k = n
            parts = parts.dropFirst()
        }
        guard !parts.isEmpty else { return (k, nil) }
        guard parts.count == 2, parts.first == "from", let from = Int(parts.last!), from >= 0 else {
            throw .invalid("a page of an answer is knn.K.from.LINE")
        }
        return (k, from)
    }

    /// The largest value an extended attribute can have (the kernel's XATTR_SIZE_MAX).
    public static let maxAnswerBytes = 65_536

    /// A collection a query searches, and where it is from the query's directory.
    struct Scoped {
        let collection: Collection
        let prefix: FileName
    }

    /// The collections `options.scope` names for a query in `dir`: the directory's own, and with
    /// `tree` every one below it that `requester` may list and enter all the way down, reached by
    /// descriptors (never a symlink), in path order.
    func scope(_ dir: DirectoryRef, _ options: QueryOptions, requester: Requester) throws(SemanticError) -> [Scoped] {
        var out: [Scoped] = []
        if let c = existing(dir.key) { out.append(Scoped(collection: c, prefix: FileName([]))) }
        guard options.scope == .tree else { return out }
        var pending: [(FileName, Int32)] = []
        func below(_ fd: Int32, _ rel: FileName) {
            for sub in StoreFiles.entries(fd).directories.sorted(by: >) {
                if rel.isEmpty && dir.path.isEmpty && sub == FileName(".vexfs") { continue }
                if let child = StoreFiles.holdDirectory(fd, sub) { pending.append((rel.child(sub), child)) }
            }
        }
        below(dir.fd, FileName([]))
        var visited = 0
        while let (rel, fd) = pending.popLast() {
            defer { Glibc.close(fd) }
            var st = stat()
            guard fstat(fd, &st) == 0, requester.mayRead(st), requester.maySearch(st) else { continue }
            visited += 1
            guard visited <= SemanticLayer.maxTreeDirectories else {
                for (_, other) in pending { Glibc.close(other) }
                throw .invalid("the tree holds more than \(SemanticLayer.maxTreeDirectories) directories")
            }
            if let c = existing(UInt64(st.st_ino)) { out.append(Scoped(collection: c, prefix: rel)) }
            below(fd, rel)
        }
        return out
    }

    /// A query file answers at most this many rows, and an answer (all its pages) is at most this long.
    public static let maxQueryRows = 1024
    public static let maxAnswerTotal = 8 << 20

    /// A tree query walks at most this many directories.
    public static let maxTreeDirectories = 100_000

    private func query(_ file: FileRef, attribute: String, k: Int, from: Int?, requester: Requester) throws(SemanticError) -> [UInt8] {
        var st = stat()
        guard fstat(file.fd, &st) == 0 else { throw .noData }
        let inode = UInt64(st.st_ino)
        do throws(SemanticError) {
            let answer = try answer(file, st, attribute: attribute, k: k, requester: requester)
            queryProblems.withLock { _ = $0.removeValue(forKey: inode) }
            return try SemanticLayer.page(answer, from: from)
        } catch {
            if case .invalid(let why) = error { noteQueryProblem(inode, why) }
            if case .embedder(let why) = error { noteQueryProblem(inode, why) }
            throw error
        }
    }

    /// The whole answer, or, from `from` on, as many whole lines as one attribute value holds.
    /// Without `from`, an answer too long for one value is E2BIG: ask for it by pages.
    static func page(_ answer: [UInt8], from: Int?) throws(SemanticError) -> [UInt8] {
        guard let from else {
            guard answer.count <= maxAnswerBytes else { throw .tooBig }
            return answer
        }
        var line = 0, start = answer.startIndex
        while line < from, start < answer.endIndex {
            start = (answer[start...].firstIndex(of: 0x0A) ?? answer.endIndex) + 1
            line += 1
        }
        guard start < answer.endIndex else { return [] }
        var end = start
        while end < answer.endIndex {
            let next = (answer[end...].firstIndex(of: 0x0A) ?? answer.endIndex - 1) + 1
            if next - start > maxAnswerBytes { break }
            end = next
        }
        guard end > start else { throw .tooBig }
        return Array(answer[start..<end])
    }

    private func answer(_ file: FileRef, _ st: stat, attribute: String, k: Int, requester: Requester) throws(SemanticError) -> [UInt8] {
        var t0 = timespec(), t1 = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t0)
        let options = file.name.isQuery ? try QueryOptions.read(opath: file.fd) : QueryOptions()
        let scoped = try scope(file.dir, options, requester: requester)
        for s in scoped { bridge.settle(s.collection.key) }
        let versions = scoped.map { [Int64(bitPattern: $0.collection.key), Int64(bitPattern: $0.collection.version.load(ordering: .acquiring))] }
        let signature = [Int64(st.st_ino), Int64(st.st_size), nanoseconds(st.st_mtim), nanoseconds(st.st_ctim)] + versions.flatMap { $0 }
        let key = AnswerKey(inode: UInt64(st.st_ino), attribute: attribute,
                            asker: requester.seesEverything ? [] : [requester.uid, requester.gid] + requester.groups)
        if let cached = answers.withLock({ $0.table[key] }), cached.collection == file.dir.key, cached.signature == signature {
            metrics.cached.increment()
            return cached.bytes
        }
        let vectors: ParsedVectors
        if let words = try words(of: file) {
            vectors = words
        } else if case .success(let v)? = self.vectors(of: file) {
            vectors = v
        } else if let stored = existing(file.dir.key)?.storedVectors(of: file.name, inode: UInt64(st.st_ino)) {
            vectors = stored
        } else {
            throw .noData
        }
        guard vectors.rows <= SemanticLayer.maxQueryRows else { throw .invalid("a query file holds at most \(SemanticLayer.maxQueryRows) rows") }
        // Every collection searched must rank by the same distance: the query directory's, else the
        // one all candidates below share.
        let summaries = scoped.map { ($0, $0.collection.summary) }
        var dimension = vectors.dimension
        var metric: Metric? = nil
        if let (own, summary) = summaries.first, own.prefix.isEmpty, let d = summary.dimension {
            dimension = d
            metric = summary.metric
        } else if case .metric(let m)? = readSetting(file.dir.fd, .metric) {
            metric = m
        }
        let candidates = summaries.filter { $0.1.dimension == dimension }.map { ($0.0, $0.1.metric) }
        if metric == nil {
            let metrics = Set(candidates.map(\.1))
            guard metrics.count <= 1 else {
                throw .invalid("the collections below use different metrics: set user.vexfs.metric on the query's directory to choose")
            }
            metric = metrics.first
        }
        let searched = candidates.filter { $0.1 == metric }.map(\.0)
        var out: [UInt8] = []
        for row in 0..<vectors.rows {
            if row > 0 { out.append(0x0A) }
            var hits: [(String, Float)] = []
            for s in searched {
                // The file itself is left out, under every name it has here.
                for h in try s.collection.nearest(vectors.row(row), k: k, excludingFile: UInt64(st.st_ino), requester: requester, options: options) {
                    if let r = options.radius, h.distance > r { continue }
                    let shown = s.prefix.isEmpty ? h.name.escaped : s.prefix.child(h.name).escaped
                    hits.append((h.row.map { "\(shown)#\($0)" } ?? shown, h.distance))
                }
            }
            if searched.count > 1 { hits.sort { $0.1 < $1.1 || ($0.1 == $1.1 && Array($0.0.utf8).lexicographicallyPrecedes(Array($1.0.utf8))) } }
            for (name, d) in hits.prefix(k) { out.append(contentsOf: "\(name)\t\(d)\n".utf8) }
            guard out.count <= SemanticLayer.maxAnswerTotal else { throw .tooBig }
        }
        answers.withLock { $0.put(key, Answer(collection: file.dir.key, signature: signature, bytes: out)) }
        clock_gettime(CLOCK_MONOTONIC, &t1)
        metrics.queries.recordNanoseconds(nanoseconds(t1) - nanoseconds(t0))
        var detail = ["k": String(k)]
        if options.scope == .tree { detail["scope"] = "tree" }
        if vectors.rows > 1 { detail["rows"] = String(vectors.rows) }
        journal.record("query", path: file.dir.child(file.name).escaped, detail: detail)
        return out
    }

    /// A bare `.query` file that holds words rather than numbers, as a vector of the query model;
    /// nil for numbers (or with no embedder). The one FUSE request that waits on the network.
    func words(of file: FileRef) throws(SemanticError) -> ParsedVectors? {
        guard let client = embedClient, file.name.isQuery, file.name.queryFormat == nil,
              case .success(let bytes) = StoreFiles.read(opath: file.fd, limit: SemanticLayer.maxQueryBytes) else { return nil }
        let sniffed = bytes.withUnsafeBytes { VectorFormat.sniff($0) }
        guard sniffed == .raw, !bytes.contains(0), let text = String(validating: bytes, as: UTF8.self),
              text.unicodeScalars.contains(where: { $0.properties.isAlphabetic }) else { return nil }
        guard bytes.count <= SemanticLayer.maxTextQueryBytes else { throw .invalid("a question in words is at most \(SemanticLayer.maxTextQueryBytes) bytes") }
        var t0 = timespec(), t1 = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t0)
        do {
            let v = try client.embed([text.trimmingCharacters()], query: true)[0]
            clock_gettime(CLOCK_MONOTONIC, &t1)
            metrics.embed.note(texts: 1, nanoseconds: nanoseconds(t1) - nanoseconds(t0))
            return ParsedVectors(dimension: v.count, values: v)
        } catch {
            metrics.embed.note(texts: 1, nanoseconds: nil)
            throw .embedder("the question cannot be embedded: \(error)")
        }
    }

    // MARK: query options

    /// Sets a query option on a query file: checked first, so a bad value is EINVAL, is never
    /// stored, and its reason shows in the file's status.
    public func setFileAttribute(_ attribute: String, file: FileRef, value: [UInt8]) throws(SemanticError) {
        let inode = inodeNumber(file.fd) ?? 0
        do throws(SemanticError) {
            guard let option = QueryOptions.Option(rawValue: attribute) else { throw .invalid("\(attribute) cannot be set on a file") }
            guard file.name.isQuery else { throw .invalid("\(attribute) is an option of query files (NAME.query)") }
            var options = QueryOptions()
            try options.set(option, value)
            guard StoreFiles.setAttribute(opath: file.fd, attribute, bytes: value) else {
                throw .invalid("\(attribute) cannot be stored: \(String(cString: strerror(errno)))")
            }
            queryProblems.withLock { _ = $0.removeValue(forKey: inode) }
        } catch {
            noteQueryProblem(inode, error.description)
            throw error
        }
    }

    /// Removes a query option (the default applies again); other names of ours are computed.
    public func removeFileAttribute(_ attribute: String, file: FileRef) throws(SemanticError) {
        guard QueryOptions.Option(rawValue: attribute) != nil, file.name.isQuery else { throw .noData }
        guard StoreFiles.removeAttribute(opath: file.fd, attribute) else { throw .noData }
    }

    private func noteQueryProblem(_ inode: UInt64, _ why: String) {
        queryProblems.withLock { table in
            if table.count >= 4096 { table.removeAll() }  // bounded: anyone can make queries fail
            table[inode] = why
        }
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
    let embed: EmbedMetrics
    /// Snapshots set aside at open, by why (every reason is shown, at zero until it happens).
    private let rejections: [SnapshotRejection: Counter]

    public init(factory: any MetricsFactory = NOOPMetricsHandler.instance) {
        embed = EmbedMetrics(factory: factory)
        queries = CoreMetrics.Timer(label: SemanticMetrics.queryLabel, dimensions: [], factory: factory)
        cached = Counter(label: "vexfs_query_cached_total", dimensions: [], factory: factory)
        bridge = Bridge.Counters(factory: factory)
        collections = Meter(label: "vexfs_collections", dimensions: [], factory: factory)
        vectors = Meter(label: "vexfs_index_vectors", dimensions: [], factory: factory)
        depth = Meter(label: "vexfs_bridge_queue_depth", dimensions: [], factory: factory)
        journalBytes = Meter(label: "vexfs_journal_bytes", dimensions: [], factory: factory)
        rejections = Dictionary(uniqueKeysWithValues: SnapshotRejection.allCases.map {
            ($0, Counter(label: "vexfs_snapshot_rejected_total", dimensions: [("reason", $0.rawValue)], factory: factory))
        })
    }

    func rejected(_ reason: SnapshotRejection) { rejections[reason]?.increment() }
}
