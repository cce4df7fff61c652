// VexSemantic is what makes the store a vector filesystem (PRODUCT.md §2-§4), with no FUSE in it.
// It owns the collections (one per directory, keyed by the directory's inode number so a rename keeps
// its index), the parsing of vector files, the bridge that carries the filesystem's events to the
// indexes in batches, the answers to the `user.vexfs.*` attributes, text files sent to VexEmbed and
// their vectors taken back, the semantic journal and the reconciliation at mount. It reads STORE only
// through descriptors (a collection's directory's, closed while idle and reopened by handle; a
// request lends the file's), never by a path rebuilt from names and never through the mount (the
// daemon must not call into itself). The files are the truth: a collection's index and catalog are
// rebuilt from them whenever they disagree.
//
// Where things are:
// - SemanticLayer.swift (this file): the facade FUSE holds, its state, mount and unmount.
// - SemanticEvents.swift: events in (created, written, renamed, ...) posted to the bridge.
// - SemanticAttributes.swift: computed attributes out (status, dim, settings, query options).
// - QueryEngine.swift: knn answers: scope, vectors of the question, search, paging, the answer cache.
// - CollectionRegistry.swift: the collections by directory inode, and the hard-link table.
// - CollectionDirectories.swift: the collections' directory descriptors, a bounded set.
// - Collection*.swift: one directory's index and catalog (CollectionHost.swift: what it asks of us).
// - Bridge.swift, CollectionWorker.swift: the threads that apply changes, link, tune and snapshot.
// - VectorFormats.swift, VectorStream.swift, QueryOptions.swift, FileName.swift: formats and names.
// - Journal.swift, JournalView.swift: the semantic journal and each reader's view of it.
// - SharedStore.swift: a store shared with mounts on other machines (`-o shared`).
import CLinux
import CoreMetrics
import Glibc
import VexStore
import Logging
import Synchronization
import VexEmbed
import VexIndex
import VexKernels
import VexKeyword

/// The vector layer of one mount: what the FUSE side calls (through the protocols in
/// SemanticService.swift) and the host of every collection.
public final class SemanticLayer: @unchecked Sendable {
    public static let vectorAttribute = "user.vexfs.vector"
    public static let ownPrefix = "user.vexfs."
    /// Query files are read whole for every query: larger ones are refused unread.
    public static let maxQueryBytes = 16 << 20
    /// Which files are text when a collection does not say (`user.vexfs.embed`).
    public static let defaultEmbedGlobs = NameRules.defaultTextGlobs
    /// Text files larger than this are not embedded; a text query at most this long.
    public static let maxTextBytes = 16 << 20
    public static let maxTextQueryBytes = 64 << 10

    public let storeRoot: String
    /// The store's root, held: every collection's directory is reached from it or from the request.
    let rootFD: Int32
    /// The filesystem of the store's root: the only one whose directories become collections.
    let storeDevice: UInt64
    let configuration: CollectionConfiguration
    var stateRoot: String { configuration.stateRoot }
    /// Text files become vectors through this endpoint's queue (nil: no embedder configured).
    let embedQueue: EmbedQueue<Bridge.Key>?
    let embedClient: EmbeddingClient?
    /// The vectors the endpoint gave, passages' and questions' (STORE/.vexfs/embeddings.sqlite).
    let embeddingCache: EmbeddingCache?
    /// Numbers each embedding request, so a late answer for an older version of a file is dropped.
    let embedTokens = Atomic<UInt64>(0)
    /// One thread measures collections' recall and sets their search breadth.
    let tuner = CollectionWorker { $0.measureRecall(); return false }
    /// One thread links the vectors waiting beside a graph into it past `freshBound`.
    let linker = CollectionWorker { $0.linkWaiting() }
    /// On a shared store, one thread copies the vectors of snapshots adopted from other mounts'
    /// publications into this mount's state, checking them, while the collections answer.
    let copier = CollectionWorker { $0.finishAdopting(); return false }
    /// One thread hands text to the embedder's queue, each user's collections in turn.
    let sender = CollectionWorker { $0.sendOutbox() }
    public let journal: Journal
    let bridge: Bridge
    /// Set when `close` begins (see `CollectionHost.isStopping`).
    private let stopping = Atomic<Bool>(false)
    var isStopping: Bool { stopping.load(ordering: .acquiring) }
    let registry = CollectionRegistry()
    /// The collections' directory descriptors: at most `openCollections` open (see `CollectionDirectories`).
    let directories: CollectionDirectories
    /// How many questions a user may have running, and for how long each.
    let budget: QueryBudget
    /// Collections whose directories one user other than root may own.
    let collectionsPerUser: Int
    /// What every index together may hold in memory: half of the machine's.
    let indexMemory: Int
    /// The index memory, and the disk under the state directory, of the collections one user
    /// other than root owns (see `room`).
    let indexBytesPerUser: Int
    let stateBytesPerUser: Int
    /// The journal views readers share (see `journalFile`).
    let journalViews = Mutex<JournalViews>(JournalViews())
    /// getfattr asks twice (the size, then the value): the second ask is served from here.
    let answers = Mutex<AnswerCache>(AnswerCache())
    private let problems = Mutex<[String]>([])
    /// Why the last query or option set on a query file (by inode number) was refused.
    let queryProblems = Mutex<[UInt64: String]>([:])
    public let metrics: SemanticMetrics
    /// Problems, recoveries and progress: the daemon's log (syslog when detached, stderr with -f).
    let logger = Logger(label: "vexfs")
    /// With `-o shared`: the other mounts of the store, what they changed and who owns what.
    let sharing: SharedStore?
    /// `-o ro,norecovery`: the layer reads its state and writes none, and brings nothing up to
    /// date. Collections answer from their snapshots as they were written (a file changed since
    /// is not read again, one without a snapshot holds nothing, each says so in its status); the
    /// journal shows the segments kept and records nothing; no text is embedded, so no keyword
    /// index is opened; no graph is linked, measured or snapshotted. The mount is read-only, so no
    /// change of a file reaches the layer meanwhile.
    public var norecovery: Bool { configuration.norecovery }

    public init(storeRoot: String, kernels: DistanceKernels, indexKind: IndexKind = .automatic(threshold: IndexKind.defaultThreshold),
                parameters: HNSWParameters = HNSWParameters(), metrics: SemanticMetrics = SemanticMetrics(), exactScanRows: Int = 4096,
                embedder: EmbedderConfiguration? = nil, streamThreshold: Int = VectorStream.threshold,
                maxQueriesPerUser: Int = SemanticOptions.defaultMaxQueriesPerUser, querySeconds: Double = SemanticOptions.defaultQuerySeconds,
                collectionsPerUser: Int = SemanticOptions.defaultCollectionsPerUser, indexMiBPerUser: Int? = nil,
                stateMiBPerUser: Int? = nil, sharedID: String? = nil,
                stateDirectory: String? = nil, flockAcrossMachines: Bool = false, keywords: Bool = true,
                openCollections: Int? = nil, norecovery: Bool = false) {
        self.storeRoot = storeRoot
        self.collectionsPerUser = collectionsPerUser
        indexMemory = Int(sysconf(Int32(_SC_PHYS_PAGES))) * Int(sysconf(Int32(_SC_PAGESIZE))) / 2
        indexBytesPerUser = indexMiBPerUser.map { $0 << 20 } ?? indexMemory / 2
        budget = QueryBudget(perUser: maxQueriesPerUser, seconds: querySeconds)
        // A shared store keeps each mount's own state apart: in `stateDirectory` (see SharedState),
        // else in STORE/.vexfs/mounts/ID, where an earlier vexfs kept it and left what is removed here.
        let inStore = storeRoot + "/.vexfs" + (sharedID.map { "/mounts/" + $0 } ?? "")
        let stateRoot = stateDirectory ?? inStore
        if sharedID != nil {
            mkdir(storeRoot + "/.vexfs/mounts", 0o700)
            mkdir(inStore, 0o700)
            if stateRoot != inStore { for old in ["index", "journal"] { StatePaths.removeTree(inStore + "/" + old) } }
        }
        configuration = CollectionConfiguration(stateRoot: stateRoot, kernels: kernels, indexKind: indexKind, parameters: parameters,
                                                exactScanRows: exactScanRows, streamThreshold: streamThreshold,
                                                embedChunk: embedder?.chunk ?? 2000, keywords: keywords, norecovery: norecovery)
        let client = embedder.map { EmbeddingClient($0) }
        embedClient = client
        if !norecovery { mkdir(stateRoot, 0o700) }
        var fs = statvfs()
        let stateDisk = statvfs(stateRoot, &fs) == 0 ? Int(fs.f_blocks) * Int(fs.f_frsize) : Int.max / 2
        stateBytesPerUser = stateMiBPerUser.map { $0 << 20 } ?? stateDisk / 4
        // Under norecovery neither: the cache is written as it is read, and the queue would embed
        // the files whose vectors never came (bringing them up to date). Questions in words still
        // go to the endpoint.
        let cache = norecovery ? nil : embedder.flatMap { SemanticLayer.embeddingCache(stateRoot, $0) }
        embeddingCache = cache
        // The queue and the bridge call back into `self`: a weak box breaks the cycle.
        let back = WeakLayer()
        embedQueue = norecovery ? nil : client.map { c in
            EmbedQueue<Bridge.Key>.start(client: c, metrics: metrics.embed, memory: cache) { key, token, result, retrying in
                back.layer?.existing(key.collection)?.embedded(key.name, token: token, result, retrying: retrying)
            }
        }
        self.metrics = metrics
        rootFD = Glibc.open(storeRoot, vx_O_PATH | O_DIRECTORY | O_CLOEXEC)
        var rootStat = stat()
        storeDevice = fstat(rootFD, &rootStat) == 0 ? UInt64(rootStat.st_dev) : 0
        directories = CollectionDirectories(root: rootFD, bound: openCollections ?? CollectionDirectories.defaultBound)
        if !norecovery {
            mkdir(stateRoot, 0o700)
            mkdir(stateRoot + "/index", 0o700)
        }
        journal = Journal(directory: stateRoot + "/journal", records: !norecovery)
        sharing = sharedID.flatMap { SharedStore(storeRoot: storeRoot, id: $0, metrics: metrics.shared) }
        metrics.shared.flockAcrossMachines.set(flockAcrossMachines ? 1 : 0)
        bridge = Bridge(counters: metrics.bridge, idle: { norecovery ? false : back.layer?.absorbSome() ?? false },
                        isLong: { event in back.layer?.isLong(event) ?? false },
                        owner: { key in back.layer?.existing(key)?.owner ?? 0 }) { events in back.layer?.apply(events) }
        back.layer = self
        if sharedID != nil && sharing == nil {
            logger.error("shared store: cannot make \(storeRoot)/.vexfs/shared/changes/\(sharedID ?? ""): other mounts will not hear of changes made here")
        }
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
        var indexed = Set(((try? StatePaths.entries(stateRoot + "/index"))?.directories ?? []).compactMap { UInt64($0) })
        guard let top = (try? StoreFiles.holdDirectory(rootFD, ".")) else { return (0, 0) }
        var pending: [(FileName, Int32)] = [(FileName([]), top)]
        var opened = 0, changed = 0, directories = 0
        while let (rel, fd) = pending.popLast() {
            defer { Glibc.close(fd) }
            var st = stat()
            guard fstat(fd, &st) == 0 else { continue }
            directories += 1
            let here = DirectoryRef(key: UInt64(st.st_ino), path: rel, fd: fd)
            let (files, subdirectories) = ((try? StoreFiles.entries(fd)) ?? ([], []))
            for sub in subdirectories where !(rel.isEmpty && sub == FileName(".vexfs")) {
                if let child = (try? StoreFiles.holdDirectory(fd, sub)) { pending.append((rel.child(sub), child)) }
            }
            let hadIndex = indexed.remove(here.key) != nil
            let wanted = hadIndex || Setting.read(.dimension, from: fd) != nil
                || files.contains { name in kind(of: name, in: here) { hasVectorAttribute(fd, name) }.isIndexed }
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
        if !norecovery { for stale in indexed { StatePaths.removeTree("\(stateRoot)/index/\(stale)") } }
        bridge.nudge()
        startSharing()
        return (opened, changed)
    }

    public func beginStopping() { stopping.store(true, ordering: .releasing) }

    /// Applies what is pending, snapshots every index that changed since its last snapshot (with its
    /// catalog), and flushes the journal.
    public func close() {
        beginStopping()
        stopSharing(beforeSnapshots: true)
        bridge.stop()
        // Waiting texts are dropped: their files are asked for again at the next mount.
        embedQueue?.stop()
        sender.stop()
        embedClient?.shutdown()
        tuner.stop()
        linker.stop()
        copier.stop()
        if !norecovery { for c in registry.all { c.close() } }
        stopSharing(beforeSnapshots: false)
        journal.flush()
        journalViews.withLock { views in
            for v in views.views.values { Glibc.close(v.fd) }
            views.views = [:]
        }
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

    /// Whether the store is shared with other mounts (`-o shared`), and this mount's id there.
    public var sharedID: String? { sharing?.id }

    // MARK: the collections' host

    func noteLink(collection: UInt64, name: FileName, from old: UInt64?, to new: UInt64?) {
        registry.noteLink(collection: collection, name: name, from: old, to: new)
    }

    func names(of inode: UInt64, in collection: UInt64) -> [FileName] { registry.names(of: inode, in: collection) }

    func measureRecallSoon(_ collection: Collection) { if !norecovery { tuner.request(collection) } }

    func linkSoon(_ collection: Collection) { if !norecovery { linker.request(collection) } }

    // Only a shared store's mount adopts a published snapshot, and norecovery is never shared.
    func finishAdoptingSoon(_ collection: Collection) { copier.request(collection) }

    func sendSoon(_ collection: Collection) { if !norecovery { sender.request(collection) } }

    func nextEmbedToken() -> UInt64 { embedTokens.add(1, ordering: .relaxed).newValue }

    /// Vectors one file of `dimension` may bring into a collection of `owner`, and the bound that
    /// says so. Every collection's vectors count (the asking one's too, less the `replacing`
    /// vectors of the file's last version) at a graph's in-memory cost per vector (the int8 code
    /// and links of a node, its label, its entries in the maps; the float32 vectors are in a file
    /// the kernel pages), against half of this machine's memory: sparse files must not add up to
    /// more than memory holds. A user other than root also has their own share of that memory and
    /// of the disk under STORE/.vexfs (the float32 file and the snapshot), counted over the
    /// collections whose directories they own, so that nobody can take all of either.
    func room(forDimension dimension: Int, replacing: Int, owner: uid_t) -> IndexRoom {
        let m = configuration.parameters.m
        func inMemory(_ d: Int) -> Int { (d + 63) / 64 * 64 + (8 + 8 * m + 63) / 64 * 64 + 96 }
        func onDisk(_ d: Int) -> Int { 4 * d + inMemory(d) }
        var used = -replacing * inMemory(dimension)
        var usedByOwner = (memory: used, disk: -replacing * onDisk(dimension))
        for c in registry.all {
            let n = c.vectorCount.load(ordering: .relaxed), d = c.knownDimension.load(ordering: .relaxed)
            used += n * inMemory(d)
            if c.owner == owner {
                usedByOwner.memory += n * inMemory(d)
                usedByOwner.disk += n * onDisk(d)
            }
        }
        var room = IndexRoom(rows: min(VectorStream.maxRows, max(0, indexMemory - used) / inMemory(dimension)),
                             limit: "the memory left for indexes")
        guard owner != 0 else { return room }
        let memory = max(0, indexBytesPerUser - usedByOwner.memory) / inMemory(dimension)
        if memory < room.rows { room = IndexRoom(rows: memory, limit: "the index memory left to the directory's owner (max_user_index_mb)") }
        let disk = max(0, stateBytesPerUser - usedByOwner.disk) / onDisk(dimension)
        if disk < room.rows { room = IndexRoom(rows: disk, limit: "the space under .vexfs left to the directory's owner (max_user_state_mb)") }
        return room
    }

    // MARK: stats

    /// Sets the gauges from the state now, without waiting for the bridge or a batch.
    public func refreshGauges() {
        let all = registry.all
        metrics.collections.set(all.count)
        let dirs = directories.counts
        metrics.collectionDirectoriesOpen.set(dirs.open)
        metrics.collectionDirectoriesBound.set(directories.bound)
        metrics.collectionDirectoriesKept.set(dirs.kept)
        metrics.collectionDirectoriesReopened.set(dirs.reopened)
        metrics.vectors.set(all.reduce(0) { $0 + $1.vectorCount.load(ordering: .relaxed) })
        metrics.depth.set(bridge.depth)
        metrics.journalBytes.set(journal.size)
        let outside = stateRoot.hasPrefix(storeRoot + "/") ? 0 : StatePaths.diskUsage(stateRoot)
        metrics.stateBytes.set(Int(StatePaths.diskUsage(storeRoot + "/" + Store.reservedName) + outside))
        // Taken only where no builder holds a collection: a gauge never waits for a batch.
        var measured = Double.nan, target = Setting.defaultRecall, ef = 0
        for c in all {
            guard let found = c.state.withLockIfAvailable({ s in s.index.map { ($0.measurement, s.settings.recall) } }),
                  let (measurement, goal) = found else { continue }
            target = min(target, goal)
            if let m = measurement {
                measured = measured.isNaN ? m.recall : min(measured, m.recall)
                ef = max(ef, m.ef)
            }
        }
        // 0 while nothing is measured: the text format's NaN is not what the exposition would print.
        metrics.recallMeasured.set(measured.isNaN ? 0 : measured)
        metrics.recallTarget.set(target)
        metrics.efInUse.set(ef)
    }
}

extension SemanticLayer: CollectionHost {}
