import Glibc
import Synchronization
import VexKernels

/// What opening a persisted index found and did.
public struct RecoveryReport: Sendable, CustomStringConvertible {
    public var snapshotLoaded = false
    /// The snapshot loaded is another directory's (`open(adoptingFrom:)`), its vectors read there
    /// until `finishAdopting` has copied and checked them.
    public var adopted = false
    /// Why a snapshot to adopt was not used (`open(adoptingFrom:)`).
    public var notAdopted: PersistenceError?
    /// Problems met and repaired (a damaged snapshot, a changed dimension); the index may then lack
    /// vectors, which the owner's reconciliation with the files restores.
    public var problems: [String] = []
    /// What was wrong with the snapshot, when it was set aside (renamed `snapshot.bad`).
    public var setAside: PersistenceError?
    public var rejected: SnapshotRejection? { setAside?.rejection }

    /// Opened read-only: an unusable snapshot is left where it is, not set aside.
    var leavesSnapshot = false

    mutating func setAside(_ error: PersistenceError) {
        problems.append("\(error); \(leavesSnapshot ? "not used (read-only)" : "set aside")")
        setAside = error
    }

    public var description: String {
        var s = "snapshot \(snapshotLoaded ? "loaded" : "absent")"
        if !problems.isEmpty { s += "; " + problems.joined(separator: "; ") }
        return s
    }
}

/// A collection's index, and all a collection sees of it: search (approximate, and exact among
/// chosen labels), the vectors waiting to be linked into a graph and their linking, recall tuning,
/// snapshots, and the stored vectors. Which index is in use (exact or graph, switched and compacted
/// within) stays behind this door.
///
/// It is kept in a directory as one snapshot, written by `checkpoint()` and read back by `open`.
///
/// There is no log. The files in the store are the truth, and the owner stores with each snapshot
/// (as an attachment) what it needs to tell which files the snapshot holds, as they were; after a
/// crash it reads again only the files that changed since. So recovery costs what changed since the
/// last snapshot, and a change costs no second write of its vectors. When to snapshot is the owner's
/// choice; `unsaved` counts the changes since the last one.
public final class PersistentIndex: VectorIndex, @unchecked Sendable {
    public let directory: String
    let index: AdaptiveIndex
    public let recovery: RecoveryReport
    /// Sections the owner stored beside the index at the last checkpoint (see `checkpoint`).
    public let attachments: [String: [UInt8]]
    public var dimension: Int { index.dimension }
    public var metric: Metric { index.metric }
    public var count: Int { index.count }
    /// See `AdaptiveIndex.roughCount`.
    public var roughCount: Int { index.roughCount }

    /// The vector file of a snapshot adopted from another directory while it is still read there,
    /// and whether `finishAdopting` has yet to run (also for a snapshot without one: its own
    /// snapshot is written here only then).
    private let adoptedVectors: VectorSlab?
    private let adopting: Atomic<Bool>
    public var isAdopting: Bool { adopting.load(ordering: .acquiring) }

    /// Vectors inserted or removed since the last snapshot.
    public var unsaved: Int { changes.load(ordering: .relaxed) }
    private let changes = Atomic<Int>(0)
    /// Held while a snapshot is written or committed: one at a time. Holds the one prepared and
    /// not yet committed.
    let snapshotting = Mutex<SnapshotState>(SnapshotState())
    struct SnapshotState: ~Copyable {
        var prepared: PreparedSnapshot?
        var generation = 0
    }

    private init(directory: String, index: AdaptiveIndex, recovery: RecoveryReport, attachments: [String: [UInt8]],
                 adoptedVectors: VectorSlab? = nil) {
        self.directory = directory
        self.index = index
        self.recovery = recovery
        self.attachments = attachments
        self.adoptedVectors = adoptedVectors
        adopting = Atomic(recovery.adopted)
    }

    /// Opens the index in `directory` (created when missing). A snapshot for another dimension or
    /// metric, or a damaged one, is set aside and reported; the index then starts empty.
    ///
    /// `empty`: an index to be built beside the one in use in the same directory (a rebuild): the
    /// snapshot there is neither read nor touched, and no file is removed, until this index's
    /// first checkpoint replaces them.
    ///
    /// `readOnly`: nothing in `directory` is made, set aside or removed (the caller never
    /// snapshots the index either; nor is anything adopted); a snapshot that cannot be used is
    /// only reported.
    ///
    /// `adoptingFrom`: a directory holding a newer snapshot of the same index that another process
    /// wrote (a shared store's publication), read-only here. Its snapshot is read and checked
    /// whole (the graph), but its vector file is read in place, so the index answers as soon as
    /// the graph is in memory; `finishAdopting` then copies the vectors into `directory`, checking
    /// every chunk, and only then is a snapshot written here (`isAdopting` until then). The
    /// snapshot in `directory`, older, is removed. When the adopted one cannot be read (damaged,
    /// or replaced three times while being opened), `directory`'s is opened as usual and the
    /// reason is in the report's problems.
    public static func open(directory: String, dimension: Int, metric: Metric, kind: IndexKind,
                            parameters: HNSWParameters = HNSWParameters(), kernels: DistanceKernels,
                            empty: Bool = false, readOnly: Bool = false,
                            adoptingFrom source: String? = nil) throws(PersistenceError) -> PersistentIndex {
        if !readOnly { try makeDirectories(directory) }
        var report = RecoveryReport()
        report.leavesSnapshot = readOnly
        let storage = VectorStorage.files(directory: directory)
        var index = AdaptiveIndex(dimension: dimension, metric: metric, kind: kind, parameters: parameters, kernels: kernels, storage: storage)
        if empty { return PersistentIndex(directory: directory, index: index, recovery: report, attachments: [:]) }
        let snapshotPath = directory + "/snapshot"
        var attachments: [String: [UInt8]] = [:]
        var adopted: VectorSlab?
        if !readOnly, let source, let (restored, waiting, extra, tuned) = adopt(source, into: directory, dimension: dimension, metric: metric, kernels: kernels,
                                                                    report: &report) {
            index = AdaptiveIndex(restoring: restored, fresh: waiting, tuned: tuned, kind: kind, parameters: parameters, kernels: kernels,
                                  storage: storage)
            attachments = extra
            report.snapshotLoaded = true
            report.adopted = true
            adopted = (restored as? HNSWIndex)?.vectors
            unlink(snapshotPath)
        } else if let (restored, waiting, extra, tuned) = loadSnapshot(snapshotPath, directory: directory, dimension: dimension, metric: metric, kernels: kernels, report: &report) {
            index = AdaptiveIndex(restoring: restored, fresh: waiting, tuned: tuned, kind: kind, parameters: parameters, kernels: kernels,
                                  storage: storage)
            attachments = extra
            report.snapshotLoaded = true
        } else if !readOnly && access(snapshotPath, F_OK) == 0 {
            // Kept for a post-mortem, out of the way of the next snapshot; one at a time.
            if rename(snapshotPath, snapshotPath + ".bad") != 0 { unlink(snapshotPath) }
        }
        if readOnly { return PersistentIndex(directory: directory, index: index, recovery: report, attachments: attachments) }
        // Write-ahead logs of earlier versions: what they hold, the owner reads again from the files.
        for path in try entries(in: directory, prefix: "wal.") { unlink(path) }
        try removeVectorFiles(in: directory, keeping: [(index.active as? HNSWIndex)?.vectors.path])
        return PersistentIndex(directory: directory, index: index, recovery: report, attachments: attachments, adoptedVectors: adopted)
    }

    /// The index of the snapshot in `source`, its vector file read there while copied into
    /// `directory` (see `open`); nil, with the reason in `report`'s problems, when it cannot be used.
    private static func adopt(_ source: String, into directory: String, dimension: Int, metric: Metric, kernels: DistanceKernels,
                              report: inout RecoveryReport) -> ((any VectorIndex), FlatIndex?, [String: [UInt8]], RecallMeasurement?)? {
        let path = source + "/snapshot"
        var last: PersistenceError?
        // The owner renames a new snapshot and new vector files into place while this reads: a vector
        // file gone between reading the snapshot and opening it is met by reading the newer snapshot.
        for _ in 0..<3 {
            do throws(PersistenceError) {
                let sections = try readSnapshot(path: path)
                let (index, waiting, extra) = try restore(sections, path: path, directory: source, copyingTo: directory, dimension: dimension,
                                                          metric: metric, kernels: kernels)
                return (index, waiting, extra, RecallMeasurement(section: sections["TUNE"]))
            } catch {
                last = error
                guard case .io(_, ENOENT) = error else { break }
            }
        }
        if let last {
            report.problems.append("the published snapshot was not used: \(last)")
            report.notAdopted = last
        }
        return nil
    }

    /// For an index opened with `adoptingFrom`: copies the adopted vector file's remaining chunks
    /// into this directory, checking each against the snapshot's checksums (see `VectorSlab.adopting`);
    /// once all are, snapshots may be written here again (the next counts as due: `unsaved` is
    /// raised). False when `giveUp` said so between chunks (the mount is stopping: the rest stays
    /// read in place, and no snapshot is written). A chunk that fails its checksum or cannot be
    /// read throws: answers given so far may have ranked by damaged vectors, and the caller must
    /// rebuild from the truth.
    public func finishAdopting(giveUp: () -> Bool) throws(PersistenceError) -> Bool {
        guard isAdopting else { return true }
        if let adoptedVectors {
            let copied = try adoptedVectors.copyRemaining(giveUp: giveUp)
            if !copied { return false }
        }
        adopting.store(false, ordering: .releasing)
        changes.add(max(1, index.count), ordering: .relaxed)
        return true
    }

    /// The index in the snapshot at `path`; nil when there is none or it cannot be used (said in
    /// `report`).
    private static func loadSnapshot(_ path: String, directory: String, dimension: Int, metric: Metric, kernels: DistanceKernels,
                                     report: inout RecoveryReport) -> ((any VectorIndex), FlatIndex?, [String: [UInt8]], RecallMeasurement?)? {
        let sections: [String: [UInt8]]
        do { sections = try readSnapshot(path: path) } catch {
            if case .io(_, ENOENT) = error { return nil }
            report.setAside(error)
            return nil
        }
        do {
            let (index, waiting, extra) = try restore(sections, path: path, directory: directory, dimension: dimension, metric: metric, kernels: kernels)
            return (index, waiting, extra, RecallMeasurement(section: sections["TUNE"]))
        } catch {
            report.setAside(error)
            return nil
        }
    }

    /// The dimension and metric a snapshot's sections are for.
    public static func settings(in sections: [String: [UInt8]], path: String) throws(PersistenceError) -> (Int, Metric) {
        let (d, m, _) = try meta(sections, path: path)
        guard (1...maxDimension).contains(d), let metric = Metric(code: m) else {
            throw .corrupt(path: path, reason: "it is for dimension \(d), metric code \(m)")
        }
        return (d, metric)
    }

    /// The dimensions a snapshot may be for (a collection's `user.vexfs.dim` allows no more).
    public static let maxDimension = 65_536

    private static func meta(_ sections: [String: [UInt8]], path: String) throws(PersistenceError) -> (Int, UInt8, Bool) {
        var meta = ByteReader(sections["META"] ?? [])
        do {
            return (Int(try meta.get(UInt32.self)), try meta.get(UInt8.self), try meta.get(UInt8.self) == 1)
        } catch { throw .corrupt(path: path, reason: "its sections do not fit together") }
    }

    /// The index, the vectors waiting beside a graph and the owner's attachments in `sections`.
    /// `directory`: where a graph's vector file is (nil: only snapshots that hold their vectors).
    /// `copyingTo`: the graph's vector file is adopted from `directory` into this one (see `open`).
    public static func restore(_ sections: [String: [UInt8]], path: String, directory: String?, copyingTo local: String? = nil,
                               dimension: Int, metric: Metric,
                               kernels: DistanceKernels) throws(PersistenceError) -> ((any VectorIndex), FlatIndex?, [String: [UInt8]]) {
        let unfit = PersistenceError.corrupt(path: path, reason: "its sections do not fit together")
        let (d, m, isGraph) = try meta(sections, path: path)
        guard d == dimension, m == metric.code else {
            throw .corrupt(path: path, reason: "the snapshot is for dimension \(d), metric \(Metric(code: m)?.rawValue ?? "?")", kind: .settings)
        }
        let restored: any VectorIndex
        if isGraph {
            restored = try HNSWIndex.restore(sections, dimension: dimension, metric: metric, kernels: kernels, directory: directory, copyingTo: local)
        } else {
            do { restored = try FlatIndex.restore(sections, dimension: dimension, metric: metric, kernels: kernels) } catch { throw unfit }
        }
        var extra: [String: [UInt8]] = [:]
        for (tag, bytes) in sections where tag.hasPrefix("X") { extra[String(tag.dropFirst())] = bytes }
        // Vectors that waited beside the graph (older snapshots have none).
        var waiting: FlatIndex?
        if let labels = sections["FLAB"], let vectors = sections["FVEC"] {
            do {
                waiting = try FlatIndex.restore(["LABL": labels, "VECS": vectors], dimension: dimension, metric: metric, kernels: kernels)
            } catch { throw unfit }
            // A label in both was being linked when the snapshot was written (an absorb links
            // without holding writers off): the waiting copy is the one a writer last gave.
            waiting!.forEach { label, _ in restored.remove(label: label) }
        }
        return (restored, waiting, extra)
    }

    public func insert(label: UInt64, vector: UnsafeBufferPointer<Float>) throws(IndexError) {
        try index.insert(label: label, vector: vector)
        changes.add(1, ordering: .relaxed)
    }

    public func insert(batch labels: [UInt64], vectors: UnsafeBufferPointer<Float>, threads: Int) throws(IndexError) {
        try index.insert(batch: labels, vectors: vectors, threads: threads)
        changes.add(labels.count, ordering: .relaxed)
    }

    @discardableResult
    public func remove(label: UInt64) -> Bool {
        guard index.remove(label: label) else { return false }
        changes.add(1, ordering: .relaxed)
        return true
    }

    /// Removes every label in `labels` it holds (a file's rows); returns how many.
    @discardableResult
    public func remove(labels: [UInt64]) -> Int {
        let removed = index.remove(labels: labels)
        changes.add(removed, ordering: .relaxed)
        return removed
    }

    public func search(_ query: UnsafeBufferPointer<Float>, k: Int, ef: Int?, filter: SearchFilter) throws(IndexError) -> [Neighbor] {
        try index.search(query, k: k, ef: ef, filter: filter)
    }

    /// The exact `k` nearest among `labels` (see `AdaptiveIndex.exactSearch`).
    public func exactSearch(_ query: UnsafeBufferPointer<Float>, k: Int, among labels: [UInt64]) throws(IndexError) -> [Neighbor] {
        try index.exactSearch(query, k: k, among: labels)
    }

    /// Whether the graph is in use (then searches are approximate, and filters may scan instead).
    public var isGraph: Bool { index.active is HNSWIndex }
    /// The stored vector of `label` (normalised for cosine).
    public func vector(of label: UInt64) -> [Float]? { index.vector(of: label) }
    /// Every live (label, stored vector).
    public func forEach(_ body: (UInt64, UnsafePointer<Float>) -> Void) { index.forEach(body) }
    /// What `user.vexfs.index` shows.
    public var summary: String { index.summary }

    /// Vectors waiting beside the graph to be linked in.
    public var unabsorbed: Int { index.unabsorbed }
    /// Links up to `limit` waiting vectors; returns how many still wait.
    @discardableResult public func absorb(limit: Int = .max) -> Int { index.absorb(limit: limit) }

    /// Measures the graph against `target` and searches at the breadth found (a background thread's work).
    /// A new measurement counts as a change, so the next snapshot (at the latest, unmount's) keeps it.
    @discardableResult public func tune(target: Double) -> RecallMeasurement? {
        let m = index.tune(target: target)
        if m != nil { changes.add(1, ordering: .relaxed) }
        return m
    }
    /// The last measurement, kept across snapshots.
    public var measurement: RecallMeasurement? { index.measurement }
    /// Has `body` called when enough queries have been asked for a calibration on them (`tune`).
    public func whenQueriesKept(_ body: @escaping @Sendable () -> Void) { index.whenQueriesKept(body) }
    /// The recall@10 big batches calibrate the breadth for as they build (the owner's setting).
    public var recallTarget: Double {
        get { index.recallTarget }
        set { index.recallTarget = newValue }
    }

    /// Writes a snapshot of the index. `attachments` (tags of up to 3 letters) are stored with it and
    /// come back in `attachments` at the next open: the owner's own state that must agree with the
    /// index. The caller holds off its own changes meanwhile, so the two agree.
    public func checkpoint(attachments: [(String, [UInt8])] = []) throws(PersistenceError) {
        try prepareCheckpoint(attachments: attachments).commit()
    }

    /// The first half of `checkpoint`: writes the snapshot's file (to the page cache), which is all
    /// that must see the index and the attachments agree. The second half, `commit()`, makes it
    /// durable and puts it in place (the fsyncs: the slow part), and needs no hold on the owner's
    /// changes. A newer snapshot prepared before an older one commits commits the older one first,
    /// so snapshots land in order and never share a temporary file.
    public func prepareCheckpoint(attachments: [(String, [UInt8])] = []) throws(PersistenceError) -> PreparedSnapshot {
        // A snapshot naming an adopted vector file before it is all copied would not open after a crash.
        guard !isAdopting else { throw .io(path: directory, errno: EAGAIN) }
        return try snapshotting.withLock { (state) throws(PersistenceError) in
            if let older = state.prepared {
                state.prepared = nil
                try commitHeld(older)
            }
            let counted = changes.load(ordering: .relaxed)
            let w = try SnapshotWriter(path: directory + "/snapshot")
            var sink = w
            let isGraph = try index.writeSnapshot(&sink)
            var meta = ByteWriter()
            meta.put(UInt32(dimension)); meta.put(metric.code); meta.put(UInt8(isGraph ? 1 : 0))
            try sink.section("META", meta.bytes)
            for (tag, bytes) in attachments { try sink.section("X" + tag.prefix(3), bytes) }
            try w.finish()
            state.generation += 1
            let prepared = PreparedSnapshot(index: self, generation: state.generation, writer: w, counted: counted,
                                            graphFile: (index.active as? HNSWIndex)?.vectors.path)
            state.prepared = prepared
            return prepared
        }
    }

    /// A snapshot written by `prepareCheckpoint`, not yet durable. The index keeps it until it is
    /// committed, by its owner or by the next `prepareCheckpoint`.
    public final class PreparedSnapshot: @unchecked Sendable {
        unowned let index: PersistentIndex
        let generation: Int
        let writer: SnapshotWriter
        let counted: Int
        let graphFile: String?

        init(index: PersistentIndex, generation: Int, writer: SnapshotWriter, counted: Int, graphFile: String?) {
            self.index = index
            self.generation = generation
            self.writer = writer
            self.counted = counted
            self.graphFile = graphFile
        }

        /// Makes it durable and puts it in place (a no-op once a newer one has committed it).
        public func commit() throws(PersistenceError) {
            try index.snapshotting.withLock { (state) throws(PersistenceError) in
                guard let mine = state.prepared, mine.generation == generation else { return }
                state.prepared = nil
                try index.commitHeld(mine)
            }
        }
    }

    private func commitHeld(_ p: PreparedSnapshot) throws(PersistenceError) {
        try p.writer.commit()
        changes.subtract(p.counted, ordering: .relaxed)
        // Graphs replaced since (a switch, a compaction) leave vector files no snapshot needs: keep
        // the one this snapshot names and the one in use now.
        try PersistentIndex.removeVectorFiles(in: directory, keeping: [p.graphFile, (index.active as? HNSWIndex)?.vectors.path])
    }

    /// Removes every graph's vector file in `directory` but those `kept`.
    static func removeVectorFiles(in directory: String, keeping kept: [String?]) throws(PersistenceError) {
        for path in try entries(in: directory, prefix: "vectors.") where !kept.contains(path) { unlink(path) }
    }

    /// The files in `directory` whose names start with `prefix`.
    static func entries(in directory: String, prefix: String) throws(PersistenceError) -> [String] {
        guard let dir = opendir(directory) else { throw .io(path: directory, errno: errno) }
        defer { closedir(dir) }
        var found: [String] = []
        while let entry = readdir(dir) {
            // Read in place: a dirent is only as long as its name, shorter than the struct.
            let name = String(cString: UnsafeRawPointer(entry).advanced(by: MemoryLayout<dirent>.offset(of: \dirent.d_name)!)
                .assumingMemoryBound(to: CChar.self))
            if name.hasPrefix(prefix) { found.append(directory + "/" + name) }
        }
        return found
    }

    static func makeDirectories(_ path: String) throws(PersistenceError) {
        var prefix = path.hasPrefix("/") ? "/" : ""
        for part in path.split(separator: "/") {
            prefix += (prefix.isEmpty || prefix == "/" ? "" : "/") + part
            if mkdir(prefix, 0o700) != 0 && errno != EEXIST { throw .io(path: prefix, errno: errno) }
        }
    }
}

extension Metric {
    var code: UInt8 {
        switch self { case .l2: 0; case .cosine: 1; case .dot: 2 }
    }
    init?(code: UInt8) {
        switch code { case 0: self = .l2; case 1: self = .cosine; case 2: self = .dot; default: return nil }
    }
}
