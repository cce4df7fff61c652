import CLinux
import Glibc
import VexStore
import Synchronization
import VexEmbed
import VexIndex
import VexKeyword
import VexKernels

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
///    (`hold`, `post`), the tuner's and linker's queues (`request`), the registry's two tables
///    (collections and links), the directory descriptors' table (`CollectionDirectories`), the
///    layer's `answers`, `problems`, `queryProblems` and `reporter`, the journal's buffer, the metrics.
/// The bridge's worker and builder take `state` holding none of their own; the layer takes the
/// registry's tables only to look up or register, never around `state`. Everything a collection
/// asks of its host (`CollectionHost`) takes only leaves.
final class Collection: @unchecked Sendable {
    /// The directory's inode number: stays the same across renames.
    let key: UInt64
    /// The layer that holds it: the journal, the hard-link table, the memory budget, the workers.
    let host: any CollectionHost
    let configuration: CollectionConfiguration
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
    /// The backing directory: every file is reached relative to its descriptor, so a rename of the
    /// directory, or of one above it, changes nothing here. The descriptor is closed while the
    /// collection is idle and reopened from the directory's handle (see `CollectionDirectories`);
    /// use it only inside `withDirectory`.
    let directory: CollectionDirectories.Slot
    /// Who owned the directory when it became a collection: the count against their bound.
    let owner: uid_t
    /// Set while a snapshot is asked for and not yet begun.
    let snapshotAsked = Atomic<Bool>(false)
    /// The attributes filters have asked of indexed files, by inode number: read from the store
    /// once, forgotten when the file is re-read or an attribute of it is set or removed through the
    /// mount. Bounded: anyone may ask for any attribute name.
    let tags = Mutex<[UInt64: [String: [UInt8]?]]>([:])

    struct State {
        /// For messages and the journal only.
        var path: FileName
        var settings = CollectionSettings()
        var index: PersistentIndex?
        var files: [FileName: FileRecord] = [:]
        var owner: [UInt64: FileName] = [:]
        var nextLabel: UInt64 = 1
        /// Text files waiting for their vectors, by the token of the newest request.
        var embedding: [FileName: UInt64] = [:]
        /// Requests made under the lock, sent after it (sending may wait for room in the queue):
        /// the file, the request's token, the file's owner when read (whose texts the embedding
        /// cache keeps them as) and the passages.
        var outbox: [(name: FileName, token: UInt64, author: uid_t, texts: [String])] = []
        /// The count at the last recall measurement asked for: the next is asked at twice it.
        var measuredAt = 0
        /// Catalog entries changed since the last snapshot.
        var unsavedFiles = 0
        /// What opening the index at mount found and did, for the directory's status.
        var recovery = ""
        /// The text passages by their words (CollectionKeywords.swift); nil until text is met.
        var keywords: KeywordIndex?
    }

    init(key: UInt64, path: FileName, directory: CollectionDirectories.Slot, owner: uid_t = 0, host: any CollectionHost, configuration: CollectionConfiguration) {
        self.key = key
        self.owner = owner
        self.host = host
        self.configuration = configuration
        self.directory = directory
        state = Mutex(State(path: path))
    }

    deinit { directory.release() }

    /// Runs `body` with a descriptor of the directory, open until `body` returns (reopened if it was
    /// closed while idle); nil when the directory cannot be reached: it is gone (the layer then
    /// drops the collection at its next use), or no descriptor is free now. Takes only a leaf lock.
    func withDirectory<R>(_ body: (Int32) -> R) -> R? {
        switch directory.use(body) {
        case .success(let r): return r
        case .failure(let failure):
            let why = failure.isGone ? "it is gone, or another directory is in its place" : String(cString: strerror(failure.errno))
            host.log(problems: ["the directory of collection \(key) cannot be reopened: \(why)"])
            return nil
        }
    }

    var indexDirectory: String { "\(configuration.stateRoot)/index/\(key)" }

    func shown(_ s: borrowing State) -> String { s.path.isEmpty ? "." : s.path.escaped }

    // MARK: opening and reconciling

    /// Reads the settings, opens the persisted index and makes it agree with the files: what changed
    /// while unmounted (or was lost in a crash) is read again, what is gone is removed. With
    /// `deferring`, files to read are returned instead (for the bridge to apply) and nothing is read
    /// here: a collection first met by a FUSE request must not index a directory inside it. Files
    /// big enough to stream are always returned so.
    /// `files` is the directory's listing when the caller has just made it.
    func open(deferring: Bool = false, files listed: [FileName]? = nil) -> (changed: Int, problems: [String], toRead: [FileName]) {
        // A directory that cannot be reopened changes nothing (why is logged).
        guard let result = withDirectory({ dir in state.withLock { s in
            s.settings = CollectionSettings(reading: dir)
            var problems: [String] = []
            if s.settings.dimension != nil {
                problems += openIndex(&s)
                if let index = s.index, let catalog = index.attachments["CAT"] {
                    do throws(PersistenceError) {
                        (s.files, s.nextLabel) = try Catalog.decode(catalog, rows: index.count)
                    } catch {
                        // What the snapshot's labels mean is lost with it: start from an empty
                        // index, which replaces the snapshot at the checkpoint after the files are read.
                        problems.append("\(shown(s)): \(index.directory)/snapshot: \(error); \(configuration.norecovery ? "not used (norecovery)" : "set aside")")
                        noteSetAside(error, &s)
                        if !configuration.norecovery { rename(index.directory + "/snapshot", index.directory + "/snapshot.bad") }
                        problems += openIndex(&s, beside: true)
                    }
                    for (name, r) in s.files {
                        if r.rows > 0 { for l in r.firstLabel..<(r.firstLabel + UInt64(r.rows)) { s.owner[l] = name } }
                        host.noteLink(collection: key, name: name, from: nil, to: r.inode)
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
            // Every file now: new or changed ones are read, vanished ones removed (under norecovery
            // only counted: the snapshot answers as it was written).
            var seen = Set<FileName>()
            var toRead: [FileName] = []
            var notRead = 0
            for name in listed ?? ((try? StoreFiles.entries(dir)) ?? ([], [])).files {
                seen.insert(name)
                // A text file whose vectors never came (the endpoint was away) is asked for again.
                if let r = s.files[name], let st = (try? StoreFiles.stat(dir, name)), r.sameSignature(st), r.rows > 0 || r.passages.isEmpty { continue }
                if configuration.norecovery {
                    if s.files[name] != nil || rules(s).kind(of: name, carriesVector: { hasVectorAttribute(dir, name) }).isIndexed { notRead += 1 }
                    continue
                }
                if s.files[name] != nil || rules(s).kind(of: name, carriesVector: { hasVectorAttribute(dir, name) }).isIndexed {
                    // A vector file long enough for the builder goes there even now (a megabyte of
                    // numbers of dimension 1 is a graph of 250,000 nodes): the mount serves
                    // meanwhile, and only this collection's queries wait for it.
                    let long = !deferring && (try? StoreFiles.stat(dir, name)).map {
                        StoreFiles.isRegular($0) && name.vectorFormat != nil && Int($0.st_size) >= configuration.longFileBytes
                    } == true
                    if deferring || long { toRead.append(name) } else { refresh(name, &s) }
                    changed += 1
                    host.progressed("\(shown(s)): \(changed) files read again")
                }
            }
            if configuration.norecovery {
                notRead += s.files.keys.filter { !seen.contains($0) }.count
                s.recovery = Collection.unrecovered(snapshot: s.index?.recovery.snapshotLoaded == true, setAside: s.recovery, notRead: notRead)
                published(s)
                return (0, problems, [FileName]())
            }
            for name in Array(s.files.keys) where !seen.contains(name) { forget(name, &s); changed += 1 }
            repairKeywords(&s)
            // A graph measured before the unmount is not measured again until it doubles, as if
            // the mount had never stopped (a new target measures it again).
            if let m = s.index?.measurement, m.target == s.settings.recall { s.measuredAt = max(m.vectors, 1) }
            if changed > 0 && !deferring { checkpoint(&s) }
            if s.recovery.isEmpty, let index = s.index {
                s.recovery = index.recovery.snapshotLoaded ? "snapshot loaded" : "no snapshot; read from the files"
                if index.recovery.adopted { s.recovery += " (another mount's, published: its vectors are read there until copied here and checked)" }
                if let e = index.recovery.notAdopted {
                    s.recovery += "; another mount's published snapshot was not used (\(e.rejection.rawValue): \(e.reason))"
                }
                if index.recovery.snapshotLoaded && changed > 0 { s.recovery += ", \(changed) files read again" }
            }
            published(s)
            considerMeasuring(&s)
            if s.index?.isAdopting == true { host.finishAdoptingSoon(self) }
            return (changed, problems, toRead)
        } }) else { return (0, [], []) }
        sendSoon()
        return result
    }

    /// Opens the collection's index into `s`; `beside`: a new, empty one, built beside the one in
    /// use (see `rebuildBeside`). On a shared store, a snapshot another mount published that is
    /// newer than this mount's own is adopted (`PersistentIndex.open(adoptingFrom:)`), unless
    /// `adopting` is false.
    func openIndex(_ s: inout State, beside: Bool = false, adopting: Bool = true) -> [String] {
        guard let d = s.settings.dimension else { return [] }
        let published = beside || !adopting ? nil : host.publishedSnapshot(key, newerThan: indexDirectory)
        do {
            let index = try PersistentIndex.open(directory: indexDirectory, dimension: d, metric: s.settings.metric, kind: configuration.indexKind,
                                                 parameters: configuration.parameters, kernels: configuration.kernels, empty: beside,
                                                 readOnly: configuration.norecovery, adoptingFrom: published)
            if index.recovery.adopted { host.adoptedPublished() }
            index.recallTarget = s.settings.recall
            // Queries asked at the default breadth are a sample of what is really asked: the tuner
            // calibrates on them once there are enough.
            index.whenQueriesKept { [weak self] in if let self { self.host.measureRecallSoon(self) } }
            s.index = index
            if let error = index.recovery.setAside { noteSetAside(error, &s) }
            return index.recovery.problems.map { "\(shown(s)): \($0)" }
        } catch {
            return ["\(shown(s)): the index cannot be opened: \(error)"]
        }
    }

    /// A snapshot set aside at open: counted, and said in the directory's status (without the path).
    func noteSetAside(_ error: PersistenceError, _ s: inout State) {
        host.metrics.rejected(error.rejection)
        s.recovery = configuration.norecovery ? "snapshot not usable (\(error.rejection.rawValue): \(error.reason))"
            : "snapshot set aside (\(error.rejection.rawValue): \(error.reason)); rebuilt from the files"
    }

    /// The status of a collection opened under norecovery: what it answers from, and how many of
    /// its files it does not know as they are now (new, changed or gone since the snapshot).
    static func unrecovered(snapshot loaded: Bool, setAside: String, notRead: Int) -> String {
        let from = loaded ? "snapshot loaded as written" : setAside.isEmpty ? "no snapshot: nothing indexed" : setAside + ": nothing indexed"
        let files = "\(notRead) file\(notRead == 1 ? "" : "s")"
        let since = notRead == 0 ? "" : loaded ? ", \(files) changed since not read" : ", \(files) not read"
        return "\(from) (norecovery)\(since)"
    }

    // MARK: applying changes (bridge worker)

    func apply(_ events: [Bridge.Event]) {
        if events.count == 1, let e = events.first, e.op == .refresh, applyStreamed(e.key.name) {
            sendSoon()
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
            if let index = s.index, index.unabsorbed > configuration.freshBound(dimension: index.dimension) { host.linkSoon(self) }
            considerCheckpoint(&s)
            considerMeasuring(&s)
        }
        sendSoon()
    }

    /// Makes the index agree with the file `name` as it is now.
    func refresh(_ name: FileName, _ s: inout State) {
        // A directory that cannot be reopened changes nothing: the next mount reads the file again.
        guard let found = withDirectory({ try? StoreFiles.stat($0, name) }) else { return }
        guard !name.isQuery, let st = found else {
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
        if let format = configuration.streamedFormat(name, st) {
            let old = s.files[name]
            guard stream(name, format, &record, replacing: old, &s) else { return }
            keep(record, as: name, replacing: old, &s)
            published(s)
            host.journal.record(.index, s.path.child(name), detail: ["status": record.journalStatus])
            return
        }
        let parsed: Result<ParsedVectors, FormatError>?
        if StoreFiles.isRegular(st) {
            guard let read = withDirectory({ dir in
                VectorParser.vectors(name: name, read: { limit in FormatError.reading { () throws(ReadRefusal) in try StoreFiles.read(dir, name, limit: limit) } },
                                     attribute: { (try? StoreFiles.attribute(dir, name, SemanticLayer.vectorAttribute)) })
            }) else { return }
            parsed = read
        } else {
            // A symlink, a directory, a device: never read; a vector name says why it is not one.
            parsed = name.vectorFormat != nil ? .failure(FormatError(FormatError.notRegular(st.st_mode))) : nil
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
                record.status = "not indexed: \(vectors.dimension) numbers, the collection's dimension is \(s.settings.dimension ?? 0)"
                release(old, &s)
                break
            }
            // Every file counts against the mount's memory, not only streamed ones: a small sparse
            // `.npy` may claim millions of rows.
            let room = host.room(forDimension: vectors.dimension, replacing: old?.rows ?? 0, owner: owner)
            guard vectors.rows <= room.rows else {
                record.status = "not indexed: \(vectors.rows) vectors of dimension \(vectors.dimension); \(room.limit) holds \(room.rows) more"
                release(old, &s)
                break
            }
            assignLabels(vectors.rows, to: &record, replacing: old, &s)
            // A file of many rows (one big .npy) is built on every core, a piece at a time so that
            // a stopping mount need not wait for the rest.
            let labels = (0..<UInt64(vectors.rows)).map { record.firstLabel + $0 }
            let inserted = vectors.values.withUnsafeBufferPointer { all in
                insertInPieces(index, labels: labels, vectors: UnsafeBufferPointer(rebasing: all[0..<(vectors.rows * vectors.dimension)]),
                               mayGiveUp: Int(st.st_size) >= configuration.longFileBytes)
            }
            if case .success(false) = inserted {
                abandon(name, labels: labels, &s)
                return
            }
            if case .failure(let error) = inserted {
                // The graph is full or its vector file cannot grow: none of the file stays, and
                // its status says why (the old vectors under these labels are gone too).
                index.remove(labels: labels)
                for label in labels { s.owner[label] = nil }
                record.status = "not indexed: \(error)"
                break
            }
            record.rows = vectors.rows
            for label in labels { s.owner[label] = name }
            record.status = vectors.rows == 1 ? "indexed" : "indexed: \(vectors.rows) vectors"
        }
        keep(record, as: name, replacing: old, &s)
        if name.vectorFormat == nil { attributeCarriers.withLock { _ = $0.insert(name) } }
        published(s)
        host.journal.record(.index, s.path.child(name), detail: ["status": record.journalStatus])
    }

    /// The index for vectors of `d` numbers: the first vectors a collection meets fix its dimension;
    /// nil when `d` is not the collection's.
    func index(forDimension d: Int, _ s: inout State) -> PersistentIndex? {
        if s.settings.dimension == nil, d <= VectorParser.maxDimension {
            s.settings.dimension = d
            _ = withDirectory { Setting.dimension(d).write(to: $0) }
            host.log(problems: openIndex(&s))
        }
        return d == s.settings.dimension ? s.index : nil
    }

    /// Gives `record` the labels of `rows` vectors: the old file's when it had as many (its vectors
    /// are then replaced in place), else new ones, the old file's released.
    func assignLabels(_ rows: Int, to record: inout FileRecord, replacing old: FileRecord?, _ s: inout State) {
        if let old, old.rows == rows {
            record.firstLabel = old.firstLabel
        } else {
            release(old, &s)
            record.firstLabel = s.nextLabel
            s.nextLabel += UInt64(rows)
        }
    }

    /// Puts `record` in the catalog as `name`, where `old` was: the hard-link table follows, and
    /// what filters read of either file is read again.
    func keep(_ record: FileRecord, as name: FileName, replacing old: FileRecord?, _ s: inout State) {
        host.noteLink(collection: key, name: name, from: old?.inode, to: record.inode)
        if let old { forgetTags(of: old.inode) }
        forgetTags(of: record.inode)
        if record.passages.isEmpty { dropKeywords(name, &s) }
        s.files[name] = record
        s.unsavedFiles += 1
    }

    /// Removes `name` and its vectors.
    func forget(_ name: FileName, _ s: inout State) {
        guard let old = leaveCatalog(name, &s) else { return }
        release(old, &s)
        dropKeywords(name, &s)
        attributeCarriers.withLock { _ = $0.remove(name) }
        published(s)
        if old.rows > 0 { host.journal.record(.index, s.path.child(name), detail: ["status": "removed"]) }
    }

    /// Takes `name` out of the catalog and the tables kept beside it (links, tags, a pending
    /// embedding); its record, if it had one. Its vectors are the caller's to remove.
    private func leaveCatalog(_ name: FileName, _ s: inout State) -> FileRecord? {
        s.embedding[name] = nil
        guard let old = s.files.removeValue(forKey: name) else { return nil }
        s.unsavedFiles += 1
        host.noteLink(collection: key, name: name, from: old.inode, to: nil)
        forgetTags(of: old.inode)
        return old
    }

    /// Makes a change visible to cached answers and stats.
    func published(_ s: borrowing State) {
        vectorCount.store(s.index?.count ?? 0, ordering: .relaxed)
        knownDimension.store(s.settings.dimension ?? 0, ordering: .relaxed)
        version.add(1, ordering: .releasing)
    }

    /// Gives up reading `name` because the mount is stopping: none of the vectors under `labels`
    /// stay, and the file leaves the catalog, so the next mount reads it as a new file.
    func abandon(_ name: FileName, labels: [UInt64], _ s: inout State) {
        s.index?.remove(labels: labels)
        for l in labels { s.owner[l] = nil }
        _ = leaveCatalog(name, &s)
        published(s)
    }

    func release(_ record: FileRecord?, _ s: inout State) {
        guard let record, record.rows > 0 else { return }
        let labels = Array(record.firstLabel..<(record.firstLabel + UInt64(record.rows)))
        s.index?.remove(labels: labels)
        for l in labels { s.owner[l] = nil }
    }

    /// Copies and checks the vectors of a snapshot adopted from another mount's publication, off
    /// every lock (the copier's work; see `PersistentIndex.finishAdopting`), then asks for this
    /// mount's own snapshot. Damaged vectors mean answers may have ranked by them since the mount:
    /// the files decide, and the collection is read again from them on the builder (queries wait
    /// for it), never from a published snapshot.
    func finishAdopting() {
        guard let index = state.withLock({ $0.index }), index.isAdopting else { return }
        do throws(PersistenceError) {
            guard try index.finishAdopting(giveUp: { host.isStopping }) else { return }
            state.withLock { s in
                guard s.index === index else { return }
                s.recovery = "snapshot loaded (another mount's, published; its vectors copied here and checked)"
                considerCheckpoint(&s)
            }
        } catch {
            host.metrics.rejected(error.rejection)
            let why = "the published snapshot's vectors were set aside (\(error.rejection.rawValue): \(error.reason))"
            host.log(problems: ["collection \(key): \(why); rebuilding from the files"])
            host.bridge.hold(key) { [weak self] in
                guard let self else { return nil }
                state.withLock { s in
                    guard s.index === index else { return }
                    rebuild(&s, adopting: false)
                    s.recovery = "\(why); rebuilt from the files"
                }
                return nil
            }
        }
    }

    /// Snapshots the index with its catalog if either changed since the last snapshot (unmount).
    func close() {
        state.withLock { s in
            if let index = s.index, index.unsaved > 0 || s.unsavedFiles > 0 { checkpoint(&s) }
        }
    }

    /// Drops this collection's names from the hard-link table (its directory is gone).
    func forgetAllLinks() { state.withLock { dropLinks($0) } }

    func dropLinks(_ s: borrowing State) {
        for (name, r) in s.files { host.noteLink(collection: key, name: name, from: r.inode, to: nil) }
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
            Summary(dimension: s.settings.dimension, metric: s.settings.metric, count: s.index?.count ?? 0,
                    index: s.index.map { $0.summary } ?? "none (no vectors yet)", recall: s.settings.recall,
                    recovery: s.recovery)
        }
    }

    func record(of name: FileName) -> FileRecord? { state.withLock { $0.files[name] } }

    /// The vectors the index holds for the file `name` (the file `inode`) when it is unchanged since
    /// it was indexed: a text file is asked about by what it was embedded as, never by embedding it
    /// again; a vector file too big to read for a question, by what it was indexed as (normalised,
    /// for cosine), when it has no more rows than a question may and they fit in `maxBytes`.
    func storedVectors(of name: FileName, inode: UInt64, signature st: stat, maxRows: Int, maxBytes: Int) -> ParsedVectors? {
        state.withLock { s in
            guard let r = s.files[name], r.inode == inode, r.rows > 0, r.passages.isEmpty ? r.sameSignature(st) : true,
                  r.rows <= maxRows, let index = s.index, let d = s.settings.dimension, r.rows * d * 4 <= maxBytes else { return nil }
            var values: [Float] = []
            for label in r.firstLabel..<(r.firstLabel + UInt64(r.rows)) {
                guard let v = index.vector(of: label) else { return nil }
                values += v
            }
            return ParsedVectors(dimension: d, values: values)
        }
    }
    var dimension: Int? { state.withLock { $0.settings.dimension } }
}
