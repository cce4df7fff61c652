import CLinux
import Glibc
import Synchronization
import VexEmbed
import VexIndex
import VexKernels

/// What the collection knows of one file: the signature it was read with (so an unchanged file is
/// not read again), the labels of its vectors, and the one-line status users read.
extension FileRecord {
    /// A file as `st` shows it, holding nothing yet.
    init(_ st: stat) {
        self.init(inode: UInt64(st.st_ino), size: Int64(st.st_size), mtime: nanoseconds(st.st_mtim), ctime: nanoseconds(st.st_ctim),
                  firstLabel: 0, rows: 0, status: "")
    }
}

struct FileRecord: Equatable, Sendable {
    var inode: UInt64
    var size: Int64
    var mtime: Int64
    var ctime: Int64
    var firstLabel: UInt64
    var rows: Int
    var status: String
    /// A text file's passages, as byte ranges (start, end) of the file; empty for vector files.
    var passages: [Range<Int>] = []

    func sameSignature(_ st: stat) -> Bool {
        inode == UInt64(st.st_ino) && size == Int64(st.st_size) && mtime == nanoseconds(st.st_mtim) && ctime == nanoseconds(st.st_ctim)
    }
}

func nanoseconds(_ t: timespec) -> Int64 { Int64(t.tv_sec) * 1_000_000_000 + Int64(t.tv_nsec) }

/// The settings of a collection, kept as attributes of the backing directory, so they belong to the
/// files (the truth), not to the index.
enum DirectorySetting: String {
    case dimension = "user.vexfs.dim"
    case metric = "user.vexfs.metric"
    case embed = "user.vexfs.embed"
    case recall = "user.vexfs.recall"
}

/// A collection setting with its value, checked: the one place a setting's bytes become a value,
/// whether a user sets it or it is read back from the directory.
public enum Setting: Equatable, Sendable {
    case dimension(Int)
    case metric(Metric)
    /// Which files are text to embed: globs on the base name (empty: none).
    case embed([String])
    /// The recall@10 the collection tunes its search breadth to.
    case recall(Double)

    public static let defaultRecall = 0.95

    /// Values are short; longer ones are refused.
    static let maxValueBytes = 64

    /// The setting `attribute` from its value as given (any bytes): EINVAL with the reason when it
    /// is not a setting or not a good value.
    public static func parse(_ attribute: String, _ value: [UInt8]) throws(SemanticError) -> Setting {
        guard let setting = DirectorySetting(rawValue: attribute) else { throw .invalid("\(attribute) cannot be set") }
        guard value.count <= (setting == .embed ? 1024 : maxValueBytes) else { throw .invalid("\(attribute): the value is too long") }
        guard let decoded = String(validating: value, as: UTF8.self) else { throw .invalid("\(attribute): the value is not text") }
        let text = decoded.trimmingCharacters().filter { $0 != "\n" }
        switch setting {
        case .metric:
            guard let metric = Metric(rawValue: text) else { throw .invalid("metric must be l2, cosine or dot") }
            return .metric(metric)
        case .dimension:
            guard let d = Int(text), d > 0, d <= VectorParser.maxDimension else {
                throw .invalid("dim must be a whole number from 1 to \(VectorParser.maxDimension)")
            }
            return .dimension(d)
        case .embed:
            let globs = text.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            guard globs.count <= 64, !globs.contains(where: { $0.contains("/") }) else { throw .invalid("embed is up to 64 globs on file names, separated by spaces") }
            return .embed(globs)
        case .recall:
            guard let r = Double(text), r.isFinite, r > 0, r <= 1 else { throw .invalid("recall must be a number above 0 and at most 1") }
            return .recall(r)
        }
    }

    /// The value as it is stored on the directory.
    public var text: String {
        switch self {
        case .dimension(let d): String(d)
        case .metric(let m): m.rawValue
        case .embed(let globs): globs.joined(separator: " ")
        case .recall(let r): String(r)
        }
    }
}

/// One directory's vectors: its index (persisted under STORE/.vexfs/index/INODE) and the catalog
/// that names what the index holds. Changed by the bridge worker, by a settings change with the
/// bridge settled, and by the embedding thread when a text file's vectors come back (each under
/// `state`'s lock); read by queries, which hold the lock only to look names up, never to search.
///
/// Lock order, outermost first; a thread holding one takes only locks below it:
/// 1. `state`.
/// 2. The index's own (taken inside calls to `PersistentIndex`: its snapshot lock, the adaptive
///    index's absorber, writes and linking locks, the graph's writer, the exact index's rows).
/// 3. Leaves, under which nothing is taken: `attributeCarriers`, `tags`, the bridge's queue lock
///    (`hold`, `post`), the tuner's and linker's queues (`request`), the layer's `collections`,
///    `links`, `answers`, `problems` and `reporter`, the journal's buffer, the metrics.
/// The bridge's worker and builder take `state` holding none of their own; the layer takes
/// `collections` only to look up or register, never around `state`.
final class Collection: @unchecked Sendable {
    /// The directory's inode number: stays the same across renames.
    let key: UInt64
    let layer: SemanticLayer
    let state: Mutex<State>
    /// Bumped on every change; cached answers are valid only for the version they were made at.
    let version = Atomic<UInt64>(0)
    /// Vectors held, for stats that must not wait for a batch being applied.
    let vectorCount = Atomic<Int>(0)
    /// The dimension, for the mount's memory account (read without the lock).
    let knownDimension = Atomic<Int>(0)
    /// Files without a vector file name that carry `user.vexfs.vector`: their writes must reach the
    /// bridge too. Guarded by its own lock so a write never waits for a batch.
    let attributeCarriers = Mutex<Set<FileName>>([])
    /// The backing directory, held (O_PATH) for the collection's life: every file is reached
    /// relative to it, so a rename of the directory, or of one above it, changes nothing here.
    let directory: Int32

    struct State {
        /// For messages and the journal only.
        var path: FileName
        var dimension: Int?
        var metric: Metric = .l2
        var index: PersistentIndex?
        var files: [FileName: FileRecord] = [:]
        var owner: [UInt64: FileName] = [:]
        var nextLabel: UInt64 = 1
        /// Which files are text (`user.vexfs.embed`; nil: the mount's default).
        var embedGlobs: [String]?
        /// Text files waiting for their vectors, by the token of the newest request.
        var embedding: [FileName: UInt64] = [:]
        /// Requests made under the lock, sent after it (sending may wait for room in the queue).
        var outbox: [(FileName, UInt64, [String])] = []
        var recallTarget = Setting.defaultRecall
        /// The count at the last recall measurement asked for: the next is asked at twice it.
        var measuredAt = 0
        /// Catalog entries changed since the last snapshot.
        var unsavedFiles = 0
        /// What opening the index at mount found and did, for the directory's status.
        var recovery = ""
    }

    /// Takes over `directory`, a descriptor of the collection's directory.
    init(key: UInt64, path: FileName, directory: Int32, layer: SemanticLayer) {
        self.key = key
        self.layer = layer
        self.directory = directory
        state = Mutex(State(path: path))
    }

    deinit { Glibc.close(directory) }

    var indexDirectory: String { "\(layer.stateRoot)/index/\(key)" }

    func shown(_ s: borrowing State) -> String { s.path.isEmpty ? "." : s.path.escaped }

    // MARK: opening and reconciling

    /// Reads the settings, opens the persisted index and makes it agree with the files: what changed
    /// while unmounted (or was lost in a crash) is read again, what is gone is removed. With
    /// `deferring`, files to read are returned instead (for the bridge to apply) and nothing is read
    /// here: a collection first met by a FUSE request must not index a directory inside it. Files
    /// big enough to stream are always returned so.
    /// `files` is the directory's listing when the caller has just made it.
    func open(deferring: Bool = false, files listed: [FileName]? = nil) -> (changed: Int, problems: [String], toRead: [FileName]) {
        let result = state.withLock { s in
            let dir = directory
            if case .metric(let m)? = readSetting(dir, .metric) { s.metric = m }
            if case .dimension(let d)? = readSetting(dir, .dimension) { s.dimension = d }
            if case .embed(let globs)? = readSetting(dir, .embed) { s.embedGlobs = globs }
            if case .recall(let r)? = readSetting(dir, .recall) { s.recallTarget = r }
            var problems: [String] = []
            if s.dimension != nil {
                problems += openIndex(&s)
                if let index = s.index, let catalog = index.attachments["CAT"] {
                    do throws(PersistenceError) {
                        (s.files, s.nextLabel) = try Collection.decode(catalog, rows: index.count)
                    } catch {
                        // What the snapshot's labels mean is lost with it: start from an empty
                        // index, which replaces the snapshot at the checkpoint after the files are read.
                        problems.append("\(shown(s)): \(index.directory)/snapshot: \(error); set aside")
                        noteSetAside(error, &s)
                        rename(index.directory + "/snapshot", index.directory + "/snapshot.bad")
                        problems += openIndex(&s, beside: true)
                    }
                    for (name, r) in s.files {
                        if r.rows > 0 { for l in r.firstLabel..<(r.firstLabel + UInt64(r.rows)) { s.owner[l] = name } }
                        layer.noteLink(collection: key, name: name, from: nil, to: r.inode)
                    }
                    let carriers = Set(s.files.keys.filter { $0.vectorFormat == nil })
                    attributeCarriers.withLock { $0 = carriers }
                }
            }
            // The index and the catalog must hold the same labels. They come from one snapshot, so
            // they do, unless the snapshot was set aside or written by an older version (whose log
            // could hold changes the catalog never saw): then the files decide.
            var changed = 0
            if let index = s.index {
                var live = Set<UInt64>()
                index.forEach { label, _ in live.insert(label) }
                for (name, r) in s.files where r.rows > 0 {
                    let labels = r.firstLabel..<(r.firstLabel + UInt64(r.rows))
                    if !labels.allSatisfy({ live.contains($0) }) { forget(name, &s); changed += 1 }
                }
                let unowned = live.filter { s.owner[$0] == nil }
                index.remove(labels: Array(unowned))
                changed += unowned.count
            } else {
                s.files = [:]
            }
            // Every file now: new or changed ones are read, vanished ones removed.
            var seen = Set<FileName>()
            var toRead: [FileName] = []
            for name in listed ?? StoreFiles.entries(dir).files {
                seen.insert(name)
                // A text file whose vectors never came (the endpoint was away) is asked for again.
                if let r = s.files[name], let st = StoreFiles.stat(dir, name), r.sameSignature(st), r.rows > 0 || r.passages.isEmpty { continue }
                if name.vectorFormat != nil || hasVectorAttribute(dir, name) || s.files[name] != nil || isText(name, s) {
                    // A file big enough to stream goes to the bridge's builder even now: the mount
                    // serves meanwhile, and only this collection's queries wait for it.
                    let streamed = !deferring && StoreFiles.stat(dir, name).flatMap { layer.streamedFormat(name, $0) } != nil
                    if deferring || streamed { toRead.append(name) } else { refresh(name, &s) }
                    changed += 1
                    layer.progressed("\(shown(s)): \(changed) files read again")
                }
            }
            for name in Array(s.files.keys) where !seen.contains(name) { forget(name, &s); changed += 1 }
            // A graph measured before the unmount is not measured again until it doubles, as if
            // the mount had never stopped (a new target measures it again).
            if let m = s.index?.measurement, m.target == s.recallTarget { s.measuredAt = max(m.vectors, 1) }
            if changed > 0 && !deferring { checkpoint(&s) }
            if s.recovery.isEmpty, let index = s.index {
                s.recovery = index.recovery.snapshotLoaded ? "snapshot loaded" : "no snapshot; read from the files"
                if index.recovery.snapshotLoaded && changed > 0 { s.recovery += ", \(changed) files read again" }
            }
            published(s)
            considerMeasuring(&s)
            return (changed, problems, toRead)
        }
        sendOutbox()
        return result
    }

    /// Opens the collection's index into `s`; `beside`: a new, empty one, built beside the one in
    /// use (see `rebuildBeside`).
    private func openIndex(_ s: inout State, beside: Bool = false) -> [String] {
        guard let d = s.dimension else { return [] }
        do {
            let index = try PersistentIndex.open(directory: indexDirectory, dimension: d, metric: s.metric, kind: layer.indexKind,
                                                 parameters: layer.parameters, kernels: layer.kernels, empty: beside)
            s.index = index
            if let error = index.recovery.setAside { noteSetAside(error, &s) }
            return index.recovery.problems.map { "\(shown(s)): \($0)" }
        } catch {
            return ["\(shown(s)): the index cannot be opened: \(error)"]
        }
    }

    /// A snapshot set aside at open: counted, and said in the directory's status (without the path).
    private func noteSetAside(_ error: PersistenceError, _ s: inout State) {
        layer.metrics.rejected(error.rejection)
        s.recovery = "snapshot set aside (\(error.rejection.rawValue): \(error.reason)); rebuilt from the files"
    }

    // MARK: applying changes (bridge worker)

    func apply(_ events: [Bridge.Event]) {
        if events.count == 1, let e = events.first, e.op == .refresh, applyStreamed(e.key.name) {
            sendOutbox()
            return
        }
        state.withLock { s in
            for e in events {
                switch e.op {
                case .remove: forget(e.key.name, &s)
                case .refresh: refresh(e.key.name, &s)
                }
            }
            // A writer that never lets the bridge idle would let the vectors waiting beside the
            // graph pile up (every query scans them): past a bound the linker links them in,
            // beside this worker (linking here made every query in the collection wait for it).
            if let index = s.index, index.unabsorbed > layer.freshBound(dimension: index.dimension) { layer.linker.request(self) }
            considerCheckpoint(&s)
            considerMeasuring(&s)
        }
        sendOutbox()
    }

    /// Sends the embedding requests made under the lock; one refused (the endpoint is away and the
    /// queue full) says so in its file's status, and the file is asked for again at its next write
    /// or at the next mount.
    func sendOutbox() {
        let requests = state.withLock { s in
            defer { s.outbox.removeAll() }
            return s.outbox
        }
        guard let queue = layer.embedQueue else { return }
        for (name, token, texts) in requests where !queue.submit(Bridge.Key(collection: key, name: name), token: token, texts: texts) {
            state.withLock { s in
                guard s.embedding[name] == token, var r = s.files[name] else { return }
                r.status = "not indexed: embedder unreachable and \(queue.backlogBound) texts already wait: read again at the next write or mount"
                s.files[name] = r
                s.embedding[name] = nil
            }
        }
    }

    /// Whether `name` is a text file to embed here.
    func isText(_ name: FileName, _ s: borrowing State) -> Bool {
        layer.embedQueue != nil && SemanticLayer.isTextName(name, globs: s.embedGlobs)
    }

    /// A text file as it is now: cut into passages and sent to be embedded (its vectors arrive in
    /// `embedded`); until then it holds none, and its status says so.
    private func readText(_ name: FileName, _ st: stat, _ record: inout FileRecord, _ s: inout State) {
        let text: [UInt8]
        switch StoreFiles.read(directory, name, limit: SemanticLayer.maxTextBytes) {
        case .failure(let e):
            record.status = "not indexed: \(e)"
            return
        case .success(let bytes): text = bytes
        }
        guard String(validating: text, as: UTF8.self) != nil, !text.contains(0) else {
            record.status = "not indexed: not UTF-8 text"
            return
        }
        let ranges = Passages.split(text, limit: layer.embedChunk)
        guard !ranges.isEmpty else {
            record.status = "not indexed: no text"
            return
        }
        record.passages = ranges
        record.status = "not indexed yet: \(ranges.count == 1 ? "1 passage" : "\(ranges.count) passages") waiting for the embedder"
        let token = layer.embedTokens.add(1, ordering: .relaxed).newValue
        s.embedding[name] = token
        s.outbox.append((name, token, ranges.map { String(decoding: text[$0], as: UTF8.self) }))
    }

    /// The vectors (or the failure) of the embedding request `token` for `name`: applied if the
    /// request is still the newest for the file and the file has not changed since it was read.
    func embedded(_ name: FileName, token: UInt64, _ result: Result<[[Float]], EmbedError>, retrying: Bool) {
        state.withLock { s in
            guard s.embedding[name] == token, var record = s.files[name] else { return }
            switch result {
            case .failure(let e):
                record.status = "not indexed: \(e)" + (retrying ? " (retrying)" : "")
                if !retrying { s.embedding[name] = nil }
                s.files[name] = record
                return
            case .success(let vectors):
                s.embedding[name] = nil
                guard let st = StoreFiles.stat(directory, name), record.sameSignature(st) else { return }
                let d = vectors[0].count
                guard let index = index(forDimension: d, &s), vectors.count == record.passages.count else {
                    record.status = "not indexed: the embedder gives \(d) numbers, the collection's dimension is \(s.dimension ?? 0)"
                    s.files[name] = record
                    published(s)
                    return
                }
                record.firstLabel = s.nextLabel
                s.nextLabel += UInt64(vectors.count)
                record.rows = vectors.count
                for (i, v) in vectors.enumerated() {
                    let label = record.firstLabel + UInt64(i)
                    try? index.insert(label: label, vector: v)
                    s.owner[label] = name
                }
                record.status = vectors.count == 1 ? "indexed" : "indexed: \(vectors.count) passages"
                s.files[name] = record
                published(s)
                layer.journal.record("index", path: relative(s, name), detail: ["status": record.status])
                considerCheckpoint(&s)
            }
        }
    }

    /// Links a few of the vectors waiting beside the graph into it (the layer's linker thread);
    /// true while more than the bound still wait. Takes the collection's lock only to find the
    /// index, and passes over a collection the bridge's builder holds (its next batch asks again).
    func linkWaiting() -> Bool {
        guard let found = state.withLockIfAvailable({ $0.index }), let index = found else { return false }
        let bound = layer.freshBound(dimension: index.dimension)
        guard index.unabsorbed > bound else { return false }
        // One at a time, then let others at the index: a link holds the index's writes for about a
        // millisecond, and the bridge worker's inserts, which a query may be waiting for, queue
        // behind it (8 at a time put 114 ms in the written collection's p99).
        let more = index.absorb(limit: 1) > bound
        sched_yield()
        return more
    }

    // MARK: recall target (measured by the layer's tuner thread)

    /// Asks for a recall measurement when the graph is new or has doubled since the last one.
    private func considerMeasuring(_ s: inout State) {
        guard let index = s.index, index.isGraph, s.measuredAt == 0 || index.count >= 2 * s.measuredAt else { return }
        s.measuredAt = max(index.count, 1)
        layer.tuner.request(self)
    }

    /// Measures the index against the recall target and sets its breadth (the tuner's thread).
    func measureRecall() {
        guard let (index, target) = state.withLock({ s in s.index.map { ($0, s.recallTarget) } }) else { return }
        guard let m = index.tune(target: target) else { return }
        version.add(1, ordering: .releasing)
        layer.journal.record("index", path: state.withLock { shown($0) }, detail: ["recall": m.description])
    }

    /// Makes the index agree with the file `name` as it is now.
    private func refresh(_ name: FileName, _ s: inout State) {
        guard !name.isQuery, let st = StoreFiles.stat(directory, name) else {
            forget(name, &s)
            return
        }
        // Unchanged, unless it is a text file whose vectors never came and are not being asked for.
        if let r = s.files[name], r.sameSignature(st), !(r.rows == 0 && !r.passages.isEmpty && s.embedding[name] == nil) { return }
        var record = FileRecord(st)
        if StoreFiles.isRegular(st) && isText(name, s) {
            let old = s.files[name]
            release(old, &s)
            s.embedding[name] = nil
            readText(name, st, &record, &s)
            keep(record, as: name, replacing: old, &s)
            published(s)
            return
        }
        if let format = layer.streamedFormat(name, st) {
            let old = s.files[name]
            stream(name, format, &record, replacing: old, &s)
            keep(record, as: name, replacing: old, &s)
            published(s)
            layer.journal.record("index", path: relative(s, name), detail: ["status": record.status])
            return
        }
        let parsed: Result<ParsedVectors, FormatError>?
        if StoreFiles.isRegular(st) {
            let dir = directory
            parsed = layer.vectors(name: name, read: { StoreFiles.read(dir, name, limit: $0) },
                                   attribute: { StoreFiles.attribute(dir, name, SemanticLayer.vectorAttribute) })
        } else {
            // A symlink, a directory, a device: never read; a vector name says why it is not one.
            parsed = name.vectorFormat != nil ? .failure(FormatError(StoreFiles.notRegular(st))) : nil
        }
        guard let parsed else {
            forget(name, &s)
            return
        }
        let old = s.files[name]
        switch parsed {
        case .failure(let reason):
            record.status = "not indexed: \(reason)"
            release(old, &s)
        case .success(let vectors):
            guard let index = index(forDimension: vectors.dimension, &s) else {
                record.status = "not indexed: \(vectors.dimension) numbers, the collection's dimension is \(s.dimension ?? 0)"
                release(old, &s)
                break
            }
            assignLabels(vectors.rows, to: &record, replacing: old, &s)
            record.rows = vectors.rows
            // A file of many rows (one big .npy) is built on every core.
            let labels = (0..<UInt64(vectors.rows)).map { record.firstLabel + $0 }
            vectors.values.withUnsafeBufferPointer { all in
                try? index.insert(batch: labels, vectors: UnsafeBufferPointer(rebasing: all[0..<(vectors.rows * vectors.dimension)]),
                                  threads: vectors.rows >= 1024 ? availableCores : 1)
            }
            for label in labels { s.owner[label] = name }
            record.status = vectors.rows == 1 ? "indexed" : "indexed: \(vectors.rows) vectors"
        }
        keep(record, as: name, replacing: old, &s)
        if name.vectorFormat == nil { attributeCarriers.withLock { _ = $0.insert(name) } }
        published(s)
        layer.journal.record("index", path: relative(s, name), detail: ["status": record.status])
    }

    /// The index for vectors of `d` numbers: the first vectors a collection meets fix its dimension;
    /// nil when `d` is not the collection's.
    private func index(forDimension d: Int, _ s: inout State) -> PersistentIndex? {
        if s.dimension == nil, d <= VectorParser.maxDimension {
            s.dimension = d
            writeSetting(directory, .dimension(d))
            layer.log(problems: openIndex(&s))
        }
        return d == s.dimension ? s.index : nil
    }

    /// Gives `record` the labels of `rows` vectors: the old file's when it had as many (its vectors
    /// are then replaced in place), else new ones, the old file's released.
    private func assignLabels(_ rows: Int, to record: inout FileRecord, replacing old: FileRecord?, _ s: inout State) {
        if let old, old.rows == rows {
            record.firstLabel = old.firstLabel
        } else {
            release(old, &s)
            record.firstLabel = s.nextLabel
            s.nextLabel += UInt64(rows)
        }
    }

    /// Indexes a file too big to read whole, a slice of rows at a time, each slice built on every
    /// core. A file that turns out bad part of the way through (a number that is not finite, a
    /// record of another dimension) leaves none of its vectors behind.
    private func stream(_ name: FileName, _ format: VectorFormat, _ record: inout FileRecord, replacing old: FileRecord?, _ s: inout State) {
        guard let job = startStream(name, format, &record, replacing: old, &s) else { return }
        endStream(job, failure: feed(job), &record, &s)
    }

    /// A streamed file once its labels are taken: what reading it needs, none of it the state.
    struct StreamJob {
        let name: FileName
        let input: VectorStream
        let index: PersistentIndex
        let firstLabel: UInt64
        let shown: String
    }

    /// Opens the stream, checks it against the collection and memory, and takes its labels (each
    /// owned by `name` from now on); nil, with `record`'s status saying why, when it is not read.
    private func startStream(_ name: FileName, _ format: VectorFormat, _ record: inout FileRecord, replacing old: FileRecord?,
                             _ s: inout State) -> StreamJob? {
        let input: VectorStream
        do { input = try VectorStream(directory, name, format) } catch {
            record.status = "not indexed: \(error)"
            release(old, &s)
            return nil
        }
        guard let index = index(forDimension: input.dimension, &s) else {
            record.status = "not indexed: \(input.dimension) numbers, the collection's dimension is \(s.dimension ?? 0)"
            release(old, &s)
            return nil
        }
        // A sparse file claims millions of rows at no cost to its writer: refuse what memory cannot
        // hold before reading any of it, rather than let the daemon be killed for memory.
        let bound = layer.maxFileVectors(dimension: input.dimension, besides: self)
        guard input.rows <= bound else {
            record.status = "not indexed: \(input.rows) vectors of dimension \(input.dimension); the memory left for indexes holds \(bound) more"
            release(old, &s)
            return nil
        }
        assignLabels(input.rows, to: &record, replacing: old, &s)
        for l in record.firstLabel..<(record.firstLabel + UInt64(input.rows)) { s.owner[l] = name }
        record.rows = input.rows
        return StreamJob(name: name, input: input, index: index, firstLabel: record.firstLabel, shown: shown(s))
    }

    /// Reads and indexes the whole file (no lock of the collection needed); the failure, if any.
    private func feed(_ job: StreamJob) -> String? {
        var slice: [Float] = []
        var done = 0
        while done < job.input.rows {
            let rows = done..<min(job.input.rows, done + job.input.sliceRows)
            do { try job.input.read(rows, into: &slice) } catch { return "\(error)" }
            let labels = rows.map { job.firstLabel + UInt64($0) }
            slice.withUnsafeBufferPointer { try? job.index.insert(batch: labels, vectors: $0, threads: availableCores) }
            done = rows.upperBound
            layer.progressed("\(job.shown)/\(job.name.escaped): \(done) of \(job.input.rows) vectors")
        }
        return nil
    }

    /// Settles `record` after `feed`: indexed, or (failed) none of its vectors left.
    private func endStream(_ job: StreamJob, failure: String?, _ record: inout FileRecord, _ s: inout State) {
        if let failure {
            let labels = Array(job.firstLabel..<(job.firstLabel + UInt64(job.input.rows)))
            job.index.remove(labels: labels)
            for l in labels { s.owner[l] = nil }
            record.rows = 0
            record.status = "not indexed: \(failure)"
        } else {
            record.status = "indexed: \(job.input.rows) vectors"
        }
    }

    /// Applies a refresh of a file read through a stream (the bridge's builder, with this
    /// collection held) without holding the collection's lock while it reads: queries here that
    /// need not wait for the file (read-your-writes waits only for changes made before a query)
    /// answer meanwhile, and see its vectors arrive a slice at a time. False when `name` is not
    /// such a file (then it is applied the usual way).
    private func applyStreamed(_ name: FileName) -> Bool {
        let begun = state.withLock { s -> (job: StreamJob?, record: FileRecord)? in
            guard !name.isQuery, let st = StoreFiles.stat(directory, name), StoreFiles.isRegular(st), !isText(name, s),
                  let format = layer.streamedFormat(name, st) else { return nil }
            if let r = s.files[name], r.sameSignature(st) { return (nil, r) }
            var record = FileRecord(st)
            let old = s.files[name]
            let job = startStream(name, format, &record, replacing: old, &s)
            if let job { record.status = "not indexed yet: reading \(job.input.rows) vectors" }
            keep(record, as: name, replacing: old, &s)
            published(s)
            if job == nil { layer.journal.record("index", path: relative(s, name), detail: ["status": record.status]) }
            return (job, record)
        }
        guard let begun else { return false }
        guard let job = begun.job else { return true }
        let failure = feed(job)
        state.withLock { s in
            var record = begun.record
            endStream(job, failure: failure, &record, &s)
            // Only this thread changes this file's entry while the builder holds the collection.
            s.files[name] = record
            s.unsavedFiles += 1
            published(s)
            layer.journal.record("index", path: relative(s, name), detail: ["status": record.status])
            considerCheckpoint(&s)
            considerMeasuring(&s)
        }
        return true
    }

    /// Puts `record` in the catalog as `name`, where `old` was: the hard-link table follows, and
    /// what filters read of either file is read again.
    private func keep(_ record: FileRecord, as name: FileName, replacing old: FileRecord?, _ s: inout State) {
        layer.noteLink(collection: key, name: name, from: old?.inode, to: record.inode)
        if let old { forgetTags(of: old.inode) }
        forgetTags(of: record.inode)
        s.files[name] = record
        s.unsavedFiles += 1
    }

    /// Removes `name` and its vectors.
    private func forget(_ name: FileName, _ s: inout State) {
        guard let old = s.files.removeValue(forKey: name) else { return }
        s.unsavedFiles += 1
        s.embedding[name] = nil
        layer.noteLink(collection: key, name: name, from: old.inode, to: nil)
        forgetTags(of: old.inode)
        release(old, &s)
        attributeCarriers.withLock { _ = $0.remove(name) }
        published(s)
        if old.rows > 0 { layer.journal.record("index", path: relative(s, name), detail: ["status": "removed"]) }
    }

    /// Makes a change visible to cached answers and stats.
    private func published(_ s: borrowing State) {
        vectorCount.store(s.index?.count ?? 0, ordering: .relaxed)
        knownDimension.store(s.dimension ?? 0, ordering: .relaxed)
        version.add(1, ordering: .releasing)
    }

    private func release(_ record: FileRecord?, _ s: inout State) {
        guard let record, record.rows > 0 else { return }
        let labels = Array(record.firstLabel..<(record.firstLabel + UInt64(record.rows)))
        s.index?.remove(labels: labels)
        for l in labels { s.owner[l] = nil }
    }

    /// Asks for a snapshot once the changes since the last one are as many as the collection holds
    /// (and at least the layer's minimum): growing from nothing to N vectors then writes at most
    /// about 2N in snapshots, and a crash costs reading again what changed since the last one. The
    /// bridge's builder writes it with this collection held, so the bridge worker (and every other
    /// collection) never waits for it; it then makes it durable (the fsyncs) with the collection let
    /// go, so this collection's queries and changes do not wait for the disk either.
    private func considerCheckpoint(_ s: inout State) {
        guard let index = s.index, isDue(index, s), !snapshotAsked.exchange(true, ordering: .relaxed) else { return }
        layer.bridge.hold(key) { [weak self] in
            guard let self else { return nil }
            snapshotAsked.store(false, ordering: .relaxed)
            let taken = state.withLock { s -> (PersistentIndex.PreparedSnapshot, String)? in
                guard let index = s.index, isDue(index, s), let prepared = prepareCheckpoint(&s) else { return nil }
                return (prepared, shown(s))
            }
            guard let (prepared, name) = taken else { return nil }
            let layer = layer
            return {
                do { try prepared.commit() } catch { layer.log(problems: ["\(name): snapshot failed: \(error)"]) }
            }
        }
    }

    private func isDue(_ index: PersistentIndex, _ s: borrowing State) -> Bool {
        max(index.unsaved, s.unsavedFiles) >= max(layer.snapshotMinimum, index.count)
    }

    /// Set while a snapshot is asked for and not yet begun.
    let snapshotAsked = Atomic<Bool>(false)

    /// Writes the index's snapshot with the catalog, which names every file (and its signature) the
    /// snapshot holds: after a crash, `open` reads again exactly the files that differ from it.
    private func checkpoint(_ s: inout State) {
        do { try prepareCheckpoint(&s)?.commit() } catch { layer.log(problems: ["\(shown(s)): snapshot failed: \(error)"]) }
    }

    /// The half of `checkpoint` that must see the index and the catalog agree (see
    /// `PersistentIndex.prepareCheckpoint`).
    private func prepareCheckpoint(_ s: inout State) -> PersistentIndex.PreparedSnapshot? {
        guard let index = s.index else { return nil }
        do {
            let prepared = try index.prepareCheckpoint(attachments: [("CAT", Collection.encode(s.files, nextLabel: s.nextLabel))])
            s.unsavedFiles = 0
            return prepared
        } catch {
            layer.log(problems: ["\(shown(s)): snapshot failed: \(error)"])
            return nil
        }
    }

    /// Snapshots the index with its catalog if either changed since the last snapshot (unmount).
    func close() {
        state.withLock { s in
            if let index = s.index, index.unsaved > 0 || s.unsavedFiles > 0 { checkpoint(&s) }
        }
    }

    func relative(_ s: borrowing State, _ name: FileName) -> String { s.path.child(name).escaped }

    /// Drops this collection's names from the hard-link table (its directory is gone).
    func forgetAllLinks() { state.withLock { dropLinks($0) } }

    private func dropLinks(_ s: borrowing State) {
        for (name, r) in s.files { layer.noteLink(collection: key, name: name, from: r.inode, to: nil) }
    }

    // MARK: settings

    /// Changes the metric (re-indexing every file) or the dimension (only while nothing is indexed).
    func change(_ setting: Setting) throws(SemanticError) {
        defer { sendOutbox() }
        // A change that re-reads every file is made beside the index in use (`rebuildBeside`),
        // even when it looks like no change: one asked before may not have landed yet.
        let rebuilding: (@Sendable (inout State) -> Void)? = try state.withLock { (s) throws(SemanticError) in
            switch setting {
            case .metric(let metric):
                writeSetting(directory, setting)
                return { $0.metric = metric }
            case .embed(let globs):
                writeSetting(directory, setting)
                return { $0.embedGlobs = globs }
            case .recall(let r):
                writeSetting(directory, setting)
                s.recallTarget = r
                s.measuredAt = 0
                considerMeasuring(&s)
                return nil
            case .dimension(let d):
                guard d != s.dimension else { return nil }
                guard s.files.values.allSatisfy({ $0.rows == 0 }) else { throw .busy("the collection holds vectors of dimension \(s.dimension ?? 0)") }
                writeSetting(directory, setting)
                s.dimension = d
                rebuild(&s)
                return nil
            }
        }
        if let rebuilding { rebuildBeside(rebuilding) }
    }

    /// Re-indexes every file under changed settings into a new index built beside the one in use,
    /// and swaps it in; returns once swapped. It runs on the bridge's builder with this collection
    /// held, so its file changes wait (in order) and every other collection goes on; queries here
    /// answer from the old index, with the old settings, until the swap, taking the lock only for
    /// their lookups as always. The new index shares the index directory: its first snapshot
    /// replaces the old one (a crash before that finds a snapshot for other settings, set aside at
    /// the next mount, and reads the files again).
    private func rebuildBeside(_ adjust: @escaping @Sendable (inout State) -> Void) {
        layer.bridge.holdAndWait(key) { [self] in
            let old = state.withLock { $0 }
            var t = old
            adjust(&t)
            guard t.metric != old.metric || t.embedGlobs != old.embedGlobs else { return }
            t.index = nil
            var problems = openIndex(&t, beside: true)
            let names = indexedNames(t)
            t.files = [:]
            t.owner = [:]
            t.embedding = [:]
            t.outbox = []
            for name in names { refresh(name, &t) }
            let prepared = prepareCheckpoint(&t)
            state.withLock { s in
                // What changed here meanwhile that the rebuild did not make: the directory's name,
                // the recall target.
                t.path = s.path
                t.recallTarget = s.recallTarget
                for (name, r) in s.files where t.files[name]?.inode != r.inode {
                    layer.noteLink(collection: key, name: name, from: r.inode, to: t.files[name]?.inode)
                }
                s = t
                published(s)
                s.measuredAt = 0
                considerMeasuring(&s)
            }
            do { try prepared?.commit() } catch { problems.append("\(shown(t)): snapshot failed: \(error)") }
            layer.log(problems: problems)
        }
    }

    /// Every file a re-index reads: those in the catalog, and the text files of the directory.
    private func indexedNames(_ s: borrowing State) -> Set<FileName> {
        Set(s.files.keys).union(StoreFiles.entries(directory).files.filter { isText($0, s) })
    }

    /// Throws the index away and reads every file again (a new dimension, while nothing is indexed).
    private func rebuild(_ s: inout State) {
        s.index = nil
        removeTree(indexDirectory)
        layer.log(problems: openIndex(&s))
        let names = indexedNames(s)
        dropLinks(s)
        s.files = [:]
        s.owner = [:]
        for name in names { refresh(name, &s) }
        checkpoint(&s)
        published(s)
        s.measuredAt = 0
        considerMeasuring(&s)
    }

    // MARK: reading (queries and attributes)

    struct Summary {
        let dimension: Int?
        let metric: Metric
        let count: Int
        let index: String
        let recall: Double
        let recovery: String
    }

    var summary: Summary {
        state.withLock { s in
            Summary(dimension: s.dimension, metric: s.metric, count: s.index?.count ?? 0,
                    index: s.index.map { $0.summary } ?? "none (no vectors yet)", recall: s.recallTarget,
                    recovery: s.recovery)
        }
    }

    func record(of name: FileName) -> FileRecord? { state.withLock { $0.files[name] } }

    /// The vectors the index holds for the text file `name` (the file `inode`), one per passage:
    /// a text file is asked about by what it was embedded as, never by embedding it again.
    func storedVectors(of name: FileName, inode: UInt64) -> ParsedVectors? {
        state.withLock { s in
            guard let r = s.files[name], r.inode == inode, r.rows > 0, !r.passages.isEmpty, let index = s.index, let d = s.dimension else { return nil }
            var values: [Float] = []
            for label in r.firstLabel..<(r.firstLabel + UInt64(r.rows)) {
                guard let v = index.vector(of: label) else { return nil }
                values += v
            }
            return ParsedVectors(dimension: d, values: values)
        }
    }
    var dimension: Int? { state.withLock { $0.dimension } }

    /// One answer of `nearest`: the file, the row within it when it holds several, the distance.
    struct Hit {
        let name: FileName
        let row: Int?
        let distance: Float
    }

    /// The k nearest to `query` that `requester` may read (by the mode bits of the file each comes
    /// from, checked now, inside the search, so the caller still gets k of what they may see) and
    /// that pass `options`' conditions, leaving out the vectors of the file `excludingFile` (an
    /// inode number) under every name. A filter that keeps few vectors of a graph is answered by an
    /// exact scan of those it keeps, chosen from a sample of the files; otherwise the graph walk asks
    /// the filter of each node it would take, once per file.
    func nearest(_ query: ArraySlice<Float>, k: Int, excludingFile: UInt64?, requester: Requester = .root,
                 options: QueryOptions = QueryOptions()) throws(SemanticError) -> [Hit] {
        let filtered = !options.conditions.isEmpty
        let (index, excluded, dimension, files) = state.withLock { s -> (PersistentIndex?, Set<UInt64>, Int?, [(FileName, FileRecord)]) in
            var ex = Set<UInt64>()
            if let inode = excludingFile {
                for name in layer.names(of: inode, in: key) {
                    if let r = s.files[name], r.rows > 0, r.inode == inode { ex.formUnion(r.firstLabel..<(r.firstLabel + UInt64(r.rows))) }
                }
            }
            return (s.index, ex, s.dimension, filtered ? s.files.filter { $0.value.rows > 0 }.map { ($0.key, $0.value) } : [])
        }
        guard let index, let dimension else { return [] }
        guard query.count == dimension else { throw .invalid("the query has \(query.count) numbers, the collection's dimension is \(dimension)") }
        let mustCheck = !requester.seesEverything
        let dir = directory
        var admitted: [FileName: Bool] = [:]
        // Whether the file `name` may answer: readable by the requester and passing every condition.
        let admits = { [self] (name: FileName, inode: UInt64) -> Bool in
            if let known = admitted[name] { return known }
            var ok = true
            if mustCheck { ok = StoreFiles.stat(dir, name).map { StoreFiles.isRegular($0) && requester.mayRead($0) } ?? false }
            if ok && filtered { ok = options.admits(name) { key, limit in tag(key, of: name, inode: inode, limit: limit) } }
            admitted[name] = ok
            return ok
        }
        let total = index.count
        let few = max(layer.exactScanRows, total / 20)
        let found: [Neighbor]
        do {
            if filtered && files.count <= Collection.judgedWhole {
                // Every file judged now: the rows that pass are known exactly, as label ranges.
                var ranges: [(UInt64, UInt64)] = []
                var rows = 0
                for (name, r) in files where admits(name, r.inode) {
                    ranges.append((r.firstLabel, r.firstLabel + UInt64(r.rows)))
                    rows += r.rows
                }
                if rows == 0 { return [] }
                ranges.sort { $0.0 < $1.0 }
                if rows <= few, index.isGraph {
                    let labels = ranges.flatMap { $0.0..<$0.1 }.filter { !excluded.contains($0) }
                    found = try query.withUnsafeBufferPointer { q throws(IndexError) in try index.exactSearch(q, k: k, among: labels) }
                } else {
                    let filter = SearchFilter(accept: { label in !excluded.contains(label) && Collection.holds(ranges, label) })
                    found = try query.withUnsafeBufferPointer { q throws(IndexError) in try index.search(q, k: k, ef: options.ef, filter: filter) }
                }
            } else if filtered, index.isGraph, let labels = fewAdmitted(files, total: total, few: few, admits: admits) {
                found = try query.withUnsafeBufferPointer { q throws(IndexError) in
                    try index.exactSearch(q, k: k, among: labels.filter { !excluded.contains($0) })
                }
            } else {
                var filter = SearchFilter()
                if excluded.count == 1 { filter.excluding = excluded.first }
                if excluded.count > 1 || mustCheck || filtered {
                    filter.accept = { [self] label in
                        if excluded.count > 1 && excluded.contains(label) { return false }
                        guard mustCheck || filtered else { return true }
                        guard let (name, inode) = state.withLock({ s in s.owner[label].map { ($0, s.files[$0]?.inode ?? 0) } }) else { return false }
                        return admits(name, inode)
                    }
                }
                found = try query.withUnsafeBufferPointer { q throws(IndexError) in try index.search(q, k: k, ef: options.ef, filter: filter) }
            }
        } catch { throw .invalid(error.description) }
        return state.withLock { s in
            var out: [Hit] = []
            for n in found where out.count < k {
                guard let name = s.owner[n.label], let r = s.files[name] else { continue }
                out.append(Hit(name: name, row: r.rows > 1 ? Int(n.label - r.firstLabel) : nil, distance: n.distance))
            }
            return out
        }
    }

    /// Up to this many files, a filtered query judges every file before it searches; past it, a
    /// sample decides and the walk judges the files it meets.
    static let judgedWhole = 20_000

    /// Whether `label` falls in one of `ranges` (sorted, half-open, disjoint).
    static func holds(_ ranges: [(UInt64, UInt64)], _ label: UInt64) -> Bool {
        var lo = 0, hi = ranges.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if ranges[mid].1 <= label { lo = mid + 1 } else { hi = mid }
        }
        return lo < ranges.count && ranges[lo].0 <= label
    }

    /// The labels of the files that pass `admits` when a sample says they are few (at most
    /// `few` vectors); nil when the graph walk is the better way.
    private func fewAdmitted(_ files: [(FileName, FileRecord)], total: Int, few: Int, admits: (FileName, UInt64) -> Bool) -> [UInt64]? {
        guard !files.isEmpty else { return [] }
        let step = max(1, files.count / 64)
        var sampledRows = 0, admittedRows = 0
        for i in stride(from: 0, to: files.count, by: step) {
            sampledRows += files[i].1.rows
            if admits(files[i].0, files[i].1.inode) { admittedRows += files[i].1.rows }
        }
        guard sampledRows > 0, Double(admittedRows) / Double(sampledRows) * Double(total) <= Double(few) else { return nil }
        var labels: [UInt64] = []
        for (name, r) in files where admits(name, r.inode) {
            labels.append(contentsOf: r.firstLabel..<(r.firstLabel + UInt64(r.rows)))
            // The sample was wrong: the walk is cheaper than a long scan.
            if labels.count > 4 * few { return nil }
        }
        return labels
    }

    // MARK: attributes for filters

    /// The attributes filters have asked of indexed files, by inode number: read from the store
    /// once, forgotten when the file is re-read or an attribute of it is set or removed through the
    /// mount. Bounded: anyone may ask for any attribute name.
    let tags = Mutex<[UInt64: [String: [UInt8]?]]>([:])
    static let maxTags = 1 << 20

    /// The attribute `key` of the file `name` (inode `inode`) if it holds at most `limit` bytes.
    func tag(_ key: String, of name: FileName, inode: UInt64, limit: Int) -> [UInt8]? {
        if let known = tags.withLock({ $0[inode]?[key] }) {
            return known.flatMap { $0.count <= limit ? $0 : nil }
        }
        // Values longer than a filter can hold never match one: not kept.
        let value = StoreFiles.attribute(directory, name, key, limit: QueryOptions.maxFilterBytes)
        tags.withLock { table in
            if table.count >= Collection.maxTags { table.removeAll() }
            table[inode, default: [:]][key] = .some(value)
        }
        return value.flatMap { $0.count <= limit ? $0 : nil }
    }

    /// An attribute of the file `inode` changed: what filters read of it is read again.
    func forgetTags(of inode: UInt64) { tags.withLock { _ = $0.removeValue(forKey: inode) } }

    /// The same, from outside the bridge: cached answers (which filters may have shaped) go too.
    func attributesChanged(of inode: UInt64) {
        forgetTags(of: inode)
        version.add(1, ordering: .releasing)
    }

    // MARK: catalog encoding

    static func encode(_ files: [FileName: FileRecord], nextLabel: UInt64) -> [UInt8] {
        var w = ByteWriter()
        w.put(UInt32(2)); w.put(nextLabel); w.put(UInt64(files.count))
        for (name, r) in files.sorted(by: { $0.key < $1.key }) {
            w.put(UInt32(name.bytes.count)); w.bytes.append(contentsOf: name.bytes); w.put(r.inode); w.put(r.size); w.put(r.mtime); w.put(r.ctime)
            w.put(r.firstLabel); w.put(UInt64(r.rows)); w.put(r.status)
            w.put(UInt32(r.passages.count))
            for p in r.passages { w.put(UInt64(p.lowerBound)); w.put(UInt64(p.upperBound)) }
        }
        return w.bytes
    }

    /// The catalog `encode` wrote, checked as a whole: names one component each, label ranges that
    /// overlap nothing and lie below the next label, no more rows than the index holds (`rows`), and
    /// passages in order. A catalog that fails any of it is damage (`.catalog`), or from a newer
    /// vexfs (`.version`): the collection is then rebuilt from its files.
    public static func decode(_ bytes: [UInt8], rows limit: Int) throws(PersistenceError) -> ([FileName: FileRecord], UInt64) {
        func damaged(_ why: String) -> PersistenceError { .corrupt(path: "catalog", reason: why, kind: .catalog) }
        var r = ByteReader(bytes)
        do {
            let version = try r.get(UInt32.self)
            guard version == 1 || version == 2 else {
                throw PersistenceError.corrupt(path: "catalog", reason: "format \(version) is newer than this vexfs reads (2)", kind: .version)
            }
            let next = try r.get(UInt64.self), count = try r.get(UInt64.self)
            // Each entry takes at least 56 bytes: a count the bytes cannot hold is damage.
            guard count <= UInt64(r.remaining / 56) else { throw damaged("it names \(count) files in \(bytes.count) bytes") }
            var files: [FileName: FileRecord] = [:]
            var ranges: [(UInt64, UInt64)] = []
            var total = 0
            for _ in 0..<count {
                let name = FileName(try r.getBytes())
                guard name.isComponent else { throw damaged("an entry is not a file name") }
                let inode = try r.get(UInt64.self), size = try r.get(Int64.self), mtime = try r.get(Int64.self), ctime = try r.get(Int64.self)
                let first = try r.get(UInt64.self), rows = try r.get(UInt64.self)
                let status = try r.getString()
                guard rows == 0 || (rows <= UInt64(limit - total) && first >= 1 && first <= next && rows <= next - first) else {
                    throw damaged("\(name.escaped): \(rows) rows from label \(first) do not fit an index of \(limit) below label \(next)")
                }
                total += Int(rows)
                if rows > 0 { ranges.append((first, first + rows)) }
                var record = FileRecord(inode: inode, size: size, mtime: mtime, ctime: ctime, firstLabel: first, rows: Int(rows), status: status)
                if version == 2 {
                    let n = try r.get(UInt32.self)
                    guard Int(n) <= r.remaining / 16 else { throw damaged("\(name.escaped): \(n) passages in \(r.remaining) bytes") }
                    var last = 0
                    for _ in 0..<n {
                        let start = try r.get(UInt64.self), end = try r.get(UInt64.self)
                        guard start >= UInt64(last), start <= end, end <= UInt64(Int64.max) else { throw damaged("\(name.escaped): passages out of order") }
                        record.passages.append(Int(start)..<Int(end))
                        last = Int(end)
                    }
                }
                guard files.updateValue(record, forKey: name) == nil else { throw damaged("\(name.escaped) is named twice") }
            }
            guard r.remaining == 0 else { throw damaged("\(r.remaining) bytes follow its last entry") }
            ranges.sort { $0.0 < $1.0 }
            for (a, b) in zip(ranges, ranges.dropFirst()) where a.1 > b.0 { throw damaged("two files hold label \(b.0)") }
            return (files, next)
        } catch let e as PersistenceError {
            throw e
        } catch {
            throw damaged("it ends inside an entry")
        }
    }
}

// MARK: backing-file helpers (absolute paths in STORE; never the mount)

func statFile(_ path: String) -> stat? {
    var st = stat()
    return lstat(path, &st) == 0 ? st : nil
}

func hasVectorAttribute(_ dir: Int32, _ name: FileName) -> Bool {
    StoreFiles.attribute(dir, name, SemanticLayer.vectorAttribute) != nil
}

/// The setting kept on the directory `dir`; nil when it has none, or none that parses.
func readSetting(_ dir: Int32, _ setting: DirectorySetting) -> Setting? {
    StoreFiles.attribute(opath: dir, setting.rawValue, limit: Setting.maxValueBytes).flatMap { try? Setting.parse(setting.rawValue, $0) }
}

func writeSetting(_ dir: Int32, _ setting: Setting) {
    let attribute: DirectorySetting = switch setting {
    case .dimension: .dimension
    case .metric: .metric
    case .embed: .embed
    case .recall: .recall
    }
    StoreFiles.setAttribute(opath: dir, attribute.rawValue, setting.text)
}

// The state directory (STORE/.vexfs, root's alone) is the only place read by path.

/// The regular files and the sub-directories of the state directory `dir`, by name.
func entries(_ dir: String) -> (files: [String], directories: [String]) {
    let fd = open(dir, vx_O_PATH | O_DIRECTORY | O_CLOEXEC)
    guard fd >= 0 else { return ([], []) }
    defer { close(fd) }
    let (files, directories) = StoreFiles.entries(fd)
    return (files.map(\.text), directories.map(\.text))
}

func listFiles(_ dir: String) -> [String] { entries(dir).files }
func listDirectories(_ dir: String) -> [String] { entries(dir).directories }

/// Deletes `path` and everything under it (an index directory: plain files, no links to follow).
func removeTree(_ path: String) {
    guard let st = statFile(path) else { return }
    if st.st_mode & S_IFMT == S_IFDIR {
        for name in listFiles(path) { unlink(path + "/" + name) }
        for name in listDirectories(path) { removeTree(path + "/" + name) }
        rmdir(path)
    } else {
        unlink(path)
    }
}
