import Glibc
import Synchronization
import VexKernels

/// What opening a persisted index found and did.
public struct RecoveryReport: Sendable, CustomStringConvertible {
    public var snapshotLoaded = false
    public var logRecordsReplayed = 0
    /// Problems met and repaired (a torn log tail, a damaged snapshot, a changed dimension); the
    /// index may then lack vectors, which the owner's reconciliation with the files restores.
    public var problems: [String] = []

    public var description: String {
        var s = "snapshot \(snapshotLoaded ? "loaded" : "absent"), \(logRecordsReplayed) log records replayed"
        if !problems.isEmpty { s += "; " + problems.joined(separator: "; ") }
        return s
    }
}

/// An index kept in a directory: `snapshot` plus the write-ahead logs `wal.N`. Every change goes to
/// the log (group-committed in the background) and to the index in memory; `checkpoint()` writes a
/// snapshot and starts a fresh log, which happens by itself once the log passes `logBound` bytes
/// and at `close()`.
///
/// A snapshot records the first log generation it does not contain. Checkpoint order: flush and
/// close log N, create log N+1, write and rename the snapshot naming N+1, delete logs below N+1. A
/// crash at any point leaves a snapshot and the logs from its generation on, which replay to the
/// same index.
public final class PersistentIndex: VectorIndex, @unchecked Sendable {
    public let directory: String
    public let index: AdaptiveIndex
    public let recovery: RecoveryReport
    /// Sections the owner stored beside the index at the last checkpoint (see `checkpoint`).
    public let attachments: [String: [UInt8]]
    let logBound: Int
    public var dimension: Int { index.dimension }
    public var metric: Metric { index.metric }
    public var count: Int { index.count }

    /// Guards the log and its generation; held by every change, so the log's order is the index's.
    private let writer: Mutex<LogState>
    struct LogState: ~Copyable {
        var log: WriteAheadLog?
        var generation: UInt64
    }

    /// Makes the logs durable; shared by every index of a mount.
    let committer: LogCommitter

    private init(directory: String, index: AdaptiveIndex, log: WriteAheadLog, generation: UInt64, recovery: RecoveryReport,
                 attachments: [String: [UInt8]], logBound: Int, committer: LogCommitter) {
        self.directory = directory
        self.committer = committer
        self.index = index
        self.recovery = recovery
        self.attachments = attachments
        self.logBound = logBound
        writer = Mutex(LogState(log: log, generation: generation))
    }

    deinit { close() }

    /// Opens the index in `directory` (created when missing). A snapshot for another dimension or
    /// metric, or a damaged one, is set aside and reported; the index then starts from the logs
    /// it can still use.
    public static func open(directory: String, dimension: Int, metric: Metric, kind: IndexKind,
                            parameters: HNSWParameters = HNSWParameters(), kernels: DistanceKernels,
                            logBound: Int = 64 << 20, committer: LogCommitter = LogCommitter()) throws(PersistenceError) -> PersistentIndex {
        try makeDirectories(directory)
        var report = RecoveryReport()
        var generation: UInt64 = 0
        var index = AdaptiveIndex(dimension: dimension, metric: metric, kind: kind, parameters: parameters, kernels: kernels)
        let snapshotPath = directory + "/snapshot"
        var attachments: [String: [UInt8]] = [:]
        if let (restored, g, extra) = loadSnapshot(snapshotPath, dimension: dimension, metric: metric, kernels: kernels, report: &report) {
            index = AdaptiveIndex(restoring: restored, kind: kind, parameters: parameters, kernels: kernels)
            generation = g
            attachments = extra
            report.snapshotLoaded = true
        }
        if !report.snapshotLoaded {
            // Logs from before a lost snapshot would replay onto nothing: drop them all.
            if access(snapshotPath, F_OK) == 0 { rename(snapshotPath, snapshotPath + ".bad") }
            if !report.problems.isEmpty {
                for (_, path) in try logs(in: directory) { unlink(path) }
            }
        }
        var last = generation
        for (g, path) in try logs(in: directory) {
            if g < generation { unlink(path); continue }
            let replay = try WriteAheadLog.replay(path: path, dimension: dimension)
            for record in replay.records {
                switch record {
                case .insert(let label, let v): try? index.insert(label: label, vector: v)
                case .remove(let label): index.remove(label: label)
                }
            }
            report.logRecordsReplayed += replay.records.count
            if let cut = replay.cutAt {
                report.problems.append("\(path): \(replay.reason ?? "damaged"); cut at byte \(cut), \(replay.bytesDropped) bytes dropped")
            }
            last = max(last, g)
        }
        let log = try WriteAheadLog(path: logPath(directory, last), committer: committer)
        return PersistentIndex(directory: directory, index: index, log: log, generation: last, recovery: report,
                               attachments: attachments, logBound: logBound, committer: committer)
    }

    /// The index in the snapshot at `path` and the first log generation it lacks; nil when there is
    /// none or it cannot be used (said in `report`).
    private static func loadSnapshot(_ path: String, dimension: Int, metric: Metric, kernels: DistanceKernels,
                                     report: inout RecoveryReport) -> ((any VectorIndex), UInt64, [String: [UInt8]])? {
        let sections: [String: [UInt8]]
        do { sections = try readSnapshot(path: path) } catch {
            if case .io(_, ENOENT) = error { return nil }
            report.problems.append("\(error); set aside")
            return nil
        }
        do {
            var meta = ByteReader(sections["META"] ?? [])
            let d = Int(try meta.get(UInt32.self)), m = try meta.get(UInt8.self), isGraph = try meta.get(UInt8.self) == 1
            let generation = try meta.get(UInt64.self)
            guard d == dimension, m == metric.code else {
                report.problems.append("the snapshot is for dimension \(d), metric \(Metric(code: m)?.rawValue ?? "?"); set aside")
                return nil
            }
            let restored: any VectorIndex = isGraph
                ? try HNSWIndex.restore(sections, dimension: dimension, metric: metric, kernels: kernels)
                : try FlatIndex.restore(sections, dimension: dimension, metric: metric, kernels: kernels)
            var extra: [String: [UInt8]] = [:]
            for (tag, bytes) in sections where tag.hasPrefix("X") { extra[String(tag.dropFirst())] = bytes }
            return (restored, generation, extra)
        } catch {
            report.problems.append("\(path): its sections do not fit together; set aside")
            return nil
        }
    }

    public func insert(label: UInt64, vector: UnsafeBufferPointer<Float>) throws(IndexError) {
        try writer.withLock { (state) throws(IndexError) in
            try index.insert(label: label, vector: vector)
            state.log?.append(.insert(label: label, vector: Array(vector)))
            if let log = state.log, log.size > logBound { try? checkpoint(&state) }
        }
    }

    public func insert(batch labels: [UInt64], vectors: UnsafeBufferPointer<Float>, threads: Int) throws(IndexError) {
        try writer.withLock { (state) throws(IndexError) in
            try index.insert(batch: labels, vectors: vectors, threads: threads)
            let d = dimension
            for (row, label) in labels.enumerated() {
                state.log?.append(.insert(label: label, vector: Array(vectors[(row * d)..<((row + 1) * d)])))
            }
            if let log = state.log, log.size > logBound { try? checkpoint(&state) }
        }
    }

    @discardableResult
    public func remove(label: UInt64) -> Bool {
        writer.withLock { state in
            guard index.remove(label: label) else { return false }
            state.log?.append(.remove(label: label))
            return true
        }
    }

    public func search(_ query: UnsafeBufferPointer<Float>, k: Int, ef: Int?, filter: SearchFilter) throws(IndexError) -> [Neighbor] {
        try index.search(query, k: k, ef: ef, filter: filter)
    }

    /// Waits until every change so far is in the log on disk.
    public func flush() throws(PersistenceError) {
        if let e = writer.withLock({ $0.log?.flush() }) { throw e }
    }

    /// Bytes in the current log.
    public var logSize: Int { writer.withLock { $0.log?.size ?? 0 } }

    /// Writes a snapshot of the index and starts a new log. `attachments` (tags of up to 3 letters)
    /// are stored with it and come back in `attachments` at the next open: the owner's own state that
    /// must agree with the index.
    public func checkpoint(attachments: [(String, [UInt8])] = []) throws(PersistenceError) {
        try writer.withLock { (state) throws(PersistenceError) in try checkpoint(&state, attachments) }
    }

    private func checkpoint(_ state: inout LogState, _ attachments: [(String, [UInt8])] = []) throws(PersistenceError) {
        guard let old = state.log else { return }
        if let e = old.flush() { throw e }
        old.close()
        let next = state.generation + 1
        state.log = try WriteAheadLog(path: PersistentIndex.logPath(directory, next), committer: committer)
        state.generation = next
        var w = SnapshotWriter(path: directory + "/snapshot")
        let (isGraph, sections) = index.snapshotSections()
        var meta = ByteWriter()
        meta.put(UInt32(dimension)); meta.put(metric.code); meta.put(UInt8(isGraph ? 1 : 0)); meta.put(next)
        w.section("META", meta.bytes)
        for (tag, bytes) in sections { w.section(tag, bytes) }
        for (tag, bytes) in attachments { w.section("X" + tag.prefix(3), bytes) }
        try w.commit()
        for (g, path) in try PersistentIndex.logs(in: directory) where g < next { unlink(path) }
    }

    /// Flushes, snapshots (with `attachments`) and closes the log; the index stays usable for searches.
    public func close(attachments: [(String, [UInt8])] = []) {
        writer.withLock { state in
            try? checkpoint(&state, attachments)
            state.log?.close()
            state.log = nil
        }
    }

    static func logPath(_ directory: String, _ generation: UInt64) -> String { "\(directory)/wal.\(generation)" }

    /// The logs in `directory`, oldest first.
    static func logs(in directory: String) throws(PersistenceError) -> [(UInt64, String)] {
        guard let dir = opendir(directory) else { throw .io(path: directory, errno: errno) }
        defer { closedir(dir) }
        var found: [(UInt64, String)] = []
        while let entry = readdir(dir) {
            // Read in place: a dirent is only as long as its name, shorter than the struct.
            let name = String(cString: UnsafeRawPointer(entry).advanced(by: MemoryLayout<dirent>.offset(of: \dirent.d_name)!)
                .assumingMemoryBound(to: CChar.self))
            if name.hasPrefix("wal."), let g = UInt64(name.dropFirst(4)) { found.append((g, directory + "/" + name)) }
        }
        return found.sorted { $0.0 < $1.0 }
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
