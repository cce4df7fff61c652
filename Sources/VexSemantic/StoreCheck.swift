import CLinux
import Glibc
import VexStore
import VexKeyword
import VexIndex
import VexKernels

// What a collection's saved state says, read without mounting: `vexfs check` compares it with the
// files, and the fuzz targets drive the same readers the mount uses (snapshot, graph, catalog).

/// The format of what vexfs keeps in STORE/.vexfs, as one number in STORE/.vexfs/format. A store
/// from a newer vexfs is refused, never misread; one without the file was written before the number
/// existed, in format 1.
///
/// - 1: snapshots "VEXSNAP1" (sections META, LABL, VECS or HNSW, BLKS, UPPR, VECF, FLAB, FVEC, XCAT),
///   catalog versions 1 and 2.
public enum StoreFormat {
    public static let current = 1

    static func path(_ stateRoot: String) -> String { stateRoot + "/format" }

    /// The store's format; nil when the file says nothing this vexfs can read.
    public static func read(stateRoot: String) -> Int? {
        guard let bytes = try? readFile(path(stateRoot), limit: 64) else {
            return access(path(stateRoot), F_OK) == 0 ? nil : 1
        }
        return Int(String(decoding: bytes.filter { $0 != 0x0A && $0 != 0x20 }, as: UTF8.self))
    }

    /// Refuses a store this vexfs cannot read; writes nothing.
    public static func check(stateRoot: String) throws(StoreFormatError) {
        guard let found = read(stateRoot: stateRoot) else { throw .unreadable(path(stateRoot)) }
        guard found <= current else { throw .newer(found) }
    }

    /// Refuses a store this vexfs cannot read; writes the format into one that has none yet.
    public static func adopt(stateRoot: String) throws(StoreFormatError) {
        try check(stateRoot: stateRoot)
        guard access(path(stateRoot), F_OK) != 0 else { return }
        let tmp = path(stateRoot) + ".tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return }
        let text = "\(current)\n"
        let written = text.withCString { write(fd, $0, strlen($0)) } == text.utf8.count && fsync(fd) == 0
        close(fd)
        if written { rename(tmp, path(stateRoot)) } else { unlink(tmp) }
    }
}

public enum StoreFormatError: Error, CustomStringConvertible {
    case newer(Int)
    case unreadable(String)

    public var description: String {
        switch self {
        case .newer(let n):
            "the store was written by a newer vexfs (store format \(n); this vexfs reads up to \(StoreFormat.current)): use that vexfs or a newer one"
        case .unreadable(let path): "\(path) is not a store format this vexfs knows"
        }
    }
}

/// A collection's snapshot as read back: the index, the vectors waiting beside a graph, and the
/// catalog naming the files they came from.
public struct SavedCollection {
    public let index: any VectorIndex
    public let waiting: (any VectorIndex)?
    public let dimension: Int
    public let metric: Metric
    let files: [FileName: FileRecord]
    public let nextLabel: UInt64

    public var fileCount: Int { files.count }
    public var vectorCount: Int { index.count + (waiting?.count ?? 0) }

    /// Reads a snapshot's bytes as a mount would: every section checked, the index restored (a
    /// graph's vector file from `indexDirectory`, its checksums verified), the catalog decoded and
    /// held against the index. Any damage is the error, with its reason.
    public static func read(snapshot bytes: [UInt8], path: String, indexDirectory: String?, kernels: DistanceKernels,
                            memoryLimit: Int = snapshotMemoryLimit) throws(PersistenceError) -> SavedCollection {
        let sections = try parseSnapshot(bytes, path: path, memoryLimit: memoryLimit)
        let (dimension, metric) = try PersistentIndex.settings(in: sections, path: path)
        let (index, waiting, attachments) = try PersistentIndex.restore(sections, path: path, directory: indexDirectory,
                                                                        dimension: dimension, metric: metric, kernels: kernels)
        let held = index.count + (waiting?.count ?? 0)
        guard let catalog = attachments["CAT"] else {
            throw .corrupt(path: path, reason: "it has no catalog of its files", kind: .catalog)
        }
        let (files, next) = try Catalog.decode(catalog, rows: held)
        // Every label the catalog names is in the index, and the index holds nothing else.
        let named = files.values.reduce(0) { $0 + $1.rows }
        var missing = 0
        for r in files.values where r.rows > 0 {
            for label in r.firstLabel..<(r.firstLabel + UInt64(r.rows)) where !holds(index, waiting, label) { missing += 1 }
        }
        guard missing == 0, named == held else {
            throw .corrupt(path: path, reason: "its catalog names \(named) vectors (\(missing) of them absent) where the index holds \(held)",
                           kind: .catalog)
        }
        return SavedCollection(index: index, waiting: waiting, dimension: dimension, metric: metric, files: files, nextLabel: next)
    }

    private static func holds(_ index: any VectorIndex, _ waiting: (any VectorIndex)?, _ label: UInt64) -> Bool {
        waiting?.vector(of: label) != nil || index.vector(of: label) != nil
    }
}

/// What `vexfs check` found for one collection's saved state.
public struct CollectionCheck: Sendable {
    public enum Verdict: String, Sendable {
        /// The snapshot reads whole and agrees with every file: the next mount reads nothing again.
        case clean
        /// Whole, but files changed since (the next mount reads those again), or there is none yet.
        case stale
        /// It cannot be used: the next mount sets the snapshot aside and rebuilds the collection (or,
        /// for a damaged keyword index, `--repair` sets it aside and the next mount rebuilds that).
        case damaged
    }
    /// The collection's directory, relative to the store (nil: no directory has that inode now).
    public let path: String?
    public let indexDirectory: String
    public let verdict: Verdict
    public let findings: [String]
    public let vectors: Int
    /// Set when `repair` moved the damaged snapshot aside.
    public let repaired: Bool
}

public enum StoreCheck {
    /// Checks every collection's saved state in the store at `root` against its files, without
    /// mounting. `repair`: a damaged snapshot is renamed `snapshot.bad`, so the next mount rebuilds
    /// it from the files (the store must not be mounted then). `progress(done, total)`.
    /// `indexRoots`: the directories of indexes to check (each holds one directory per collection);
    /// by default the store's own (STORE/.vexfs/index), see `indexRoots(root:states:)` for a shared one.
    public static func run(root: String, indexRoots: [String]? = nil, repair: Bool, kernels: DistanceKernels,
                           progress: (Int, Int) -> Void = { _, _ in }) -> [CollectionCheck] {
        let work = (indexRoots ?? [root + "/.vexfs/index"]).flatMap { r in
            ((try? StatePaths.entries(r))?.directories ?? []).compactMap { UInt64($0) }.sorted().map { (r, $0) }
        }
        let directories = directoriesByInode(root, wanted: Set(work.map(\.1)))
        defer { for d in directories.values { close(d.fd) } }
        var results: [CollectionCheck] = []
        for (i, (r, key)) in work.enumerated() {
            progress(i, work.count)
            results.append(check(key: key, indexDirectory: "\(r)/\(key)", directory: directories[key],
                                 repair: repair, kernels: kernels))
        }
        progress(work.count, work.count)
        return results
    }

    /// Every place a store's indexes are kept on this machine: STORE/.vexfs/index (a mount without
    /// `-o shared`), and for a shared store the published snapshots (STORE/.vexfs/shared/index), the
    /// private state of each of this machine's mounts in the default place (`SharedState.defaultRoot`),
    /// the directories named in `states` (`state=`), and state an earlier vexfs kept in
    /// STORE/.vexfs/mounts/ID/index.
    public static func indexRoots(root: String, states: [String]) -> [String] {
        let state = root + "/.vexfs"
        var roots = [state + "/index", state + "/shared/index"]
        roots += ((try? StatePaths.entries(state + "/mounts"))?.directories ?? []).map { "\(state)/mounts/\($0)/index" }
        if let store = SharedState.readIdentity(state + "/shared/store") {
            let local = "\(SharedState.defaultRoot)/\(store)"
            roots += ((try? StatePaths.entries(local))?.directories ?? []).map { "\(local)/\($0)/index" }
        }
        roots += states.map { $0 + "/index" }
        var seen = Set<String>()
        return roots.filter { (try? StatePaths.stat($0)) != nil && seen.insert($0).inserted }
    }

    private static func check(key: UInt64, indexDirectory: String, directory: (path: String, fd: Int32)?, repair: Bool,
                              kernels: DistanceKernels) -> CollectionCheck {
        let shown = directory?.path
        let snapshot = indexDirectory + "/snapshot"
        guard let directory else {
            return CollectionCheck(path: nil, indexDirectory: indexDirectory, verdict: .stale,
                                   findings: ["no directory has inode \(key) now: the next mount deletes this index"],
                                   vectors: 0, repaired: false)
        }
        let saved: SavedCollection
        do {
            let bytes = try readFile(snapshot, limit: snapshotMemoryLimit)
            saved = try SavedCollection.read(snapshot: bytes, path: snapshot, indexDirectory: indexDirectory, kernels: kernels)
        } catch {
            if case .io(_, ENOENT) = error {
                return CollectionCheck(path: shown, indexDirectory: indexDirectory, verdict: .stale,
                                       findings: ["no snapshot yet: the next mount reads every file"], vectors: 0, repaired: false)
            }
            var repaired = false
            if repair { repaired = rename(snapshot, snapshot + ".bad") == 0 }
            return CollectionCheck(path: shown, indexDirectory: indexDirectory, verdict: .damaged,
                                   findings: ["\(error.rejection.rawValue): \(error)"], vectors: 0, repaired: repaired)
        }
        var findings: [String] = []
        if case .dimension(let d)? = Setting.read(.dimension, from: directory.fd), d != saved.dimension {
            findings.append("the directory's dimension is \(d), the snapshot's \(saved.dimension)")
        }
        let metric: Metric = if case .metric(let m)? = Setting.read(.metric, from: directory.fd) { m } else { .l2 }
        if metric != saved.metric { findings.append("the directory's metric is \(metric), the snapshot's \(saved.metric)") }
        for (name, record) in saved.files.sorted(by: { $0.key < $1.key }) {
            guard let st = (try? StoreFiles.stat(directory.fd, name)) else { findings.append("\(name.escaped): gone"); continue }
            if !record.sameSignature(st) { findings.append("\(name.escaped): changed") }
        }
        // Text is left out: whether a text file is indexed depends on the mount's embedder.
        let rules = NameRules(textGlobs: nil, embedding: false)
        for name in ((try? StoreFiles.entries(directory.fd)) ?? ([], [])).files where saved.files[name] == nil {
            if rules.kind(of: name, carriesVector: { hasVectorAttribute(directory.fd, name) }).isIndexed {
                findings.append("\(name.escaped): not in the snapshot")
            }
        }
        var verdict: CollectionCheck.Verdict = findings.isEmpty ? .clean : .stale
        var repaired = false
        checkKeywords(indexDirectory + "/keywords.sqlite", saved, repair: repair, &verdict, &findings, &repaired)
        return CollectionCheck(path: shown, indexDirectory: indexDirectory, verdict: verdict,
                               findings: findings, vectors: saved.vectorCount, repaired: repaired)
    }

    /// The collection's keyword index against its catalog (when it has one: a mount with
    /// `keywords=off` keeps none). Out of date: the next mount reads those files again. Damaged: a
    /// mount would keep an index whose pages are sound but whose FTS5 data is not (it checks only
    /// the pages), so `repair` sets it aside and the next mount rebuilds it from the files.
    private static func checkKeywords(_ path: String, _ saved: SavedCollection, repair: Bool, _ verdict: inout CollectionCheck.Verdict,
                                      _ findings: inout [String], _ repaired: inout Bool) {
        guard access(path, F_OK) == 0 else { return }
        let kept: [[UInt8]: KeywordIndex.Kept]
        do {
            kept = try KeywordIndex.inspect(path: path)
        } catch {
            verdict = .damaged
            findings.append("keywords.sqlite: damaged (\(error)); " + (repair ? "set aside: the next mount rebuilds it from the files"
                                                                              : "--repair sets it aside so the next mount rebuilds it"))
            if repair && rename(path, path + ".bad") == 0 {
                // Its log would be read into the new index of that name.
                unlink(path + "-wal")
                unlink(path + "-shm")
                repaired = true
            }
            return
        }
        var stale: [String] = []
        for (name, record) in saved.files.sorted(by: { $0.key < $1.key }) where !record.passages.isEmpty {
            guard let k = kept[name.bytes] else { stale.append("\(name.escaped): not in the keyword index"); continue }
            if k.signature != Collection.keywordSignature(record) || k.passages != record.passages.count {
                stale.append("\(name.escaped): out of date in the keyword index")
            }
        }
        for name in kept.keys.map(FileName.init).sorted() where saved.files[name].map({ $0.passages.isEmpty }) ?? true {
            stale.append("\(name.escaped): in the keyword index, not a text file of the snapshot")
        }
        if !stale.isEmpty && verdict == .clean { verdict = .stale }
        findings += stale.map { "keywords.sqlite: " + $0 + " (the next mount reads it again)" }
    }

    /// What `vexfs check` found in the store's embedding cache (STORE/.vexfs/embeddings.sqlite).
    public struct CacheCheck: Sendable {
        public let rows: Int
        /// Rows whose check fails: each is a miss (sent again), never a wrong vector.
        public let damaged: Int
        public let bytes: Int
        /// Why the file cannot be read as a cache (a mount sets it aside and starts again); nil when it can.
        public let unreadable: String?
        /// Set when `repair` dropped the damaged rows or set the file aside.
        public let repaired: Bool
    }

    /// The embedding cache of the store at `root`, nil when it has none. `repair`: damaged rows are
    /// dropped, a file that is not a cache is set aside (`embeddings.sqlite.bad`).
    public static func embeddingCache(root: String, repair: Bool) -> CacheCheck? {
        let path = root + "/.vexfs/embeddings.sqlite"
        guard access(path, F_OK) == 0 else { return nil }
        do {
            let r = try EmbeddingCache.inspect(path: path, dropDamaged: repair)
            return CacheCheck(rows: r.rows, damaged: r.damaged, bytes: r.bytes, unreadable: nil, repaired: repair && r.damaged > 0)
        } catch {
            let moved = repair && rename(path, path + ".bad") == 0
            if moved {
                unlink(path + "-wal")
                unlink(path + "-shm")
            }
            return CacheCheck(rows: 0, damaged: 0, bytes: 0, unreadable: error.description, repaired: moved)
        }
    }

    /// The store's directories (but .vexfs) whose inode numbers are `wanted`, held (O_PATH), with
    /// their paths. Symlinks are never followed.
    private static func directoriesByInode(_ root: String, wanted: Set<UInt64>) -> [UInt64: (path: String, fd: Int32)] {
        var found: [UInt64: (path: String, fd: Int32)] = [:]
        let top = open(root, vx_O_PATH | O_DIRECTORY | O_CLOEXEC)
        guard top >= 0 else { return [:] }
        var pending: [(FileName, Int32)] = [(FileName([]), top)]
        while let (rel, fd) = pending.popLast() {
            guard let ino = (try? StoreFiles.inodeNumber(fd)) else { close(fd); continue }
            for sub in ((try? StoreFiles.entries(fd)) ?? ([], [])).directories where !(rel.isEmpty && sub == FileName(".vexfs")) {
                if let child = (try? StoreFiles.holdDirectory(fd, sub)) { pending.append((rel.child(sub), child)) }
            }
            if wanted.contains(ino) && found[ino] == nil { found[ino] = (rel.isEmpty ? "." : rel.escaped, fd) } else { close(fd) }
        }
        return found
    }
}
