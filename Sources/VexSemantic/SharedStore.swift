import CLinux
import CoreMetrics
import Glibc
import Logging
import Synchronization
import VexIndex
import VexStore

/// Many mounts, one store (`-o shared`): the store lives on a distributed filesystem (CephFS) and each
/// machine runs its own vexfs over its own client of it. Each mount keeps its private state (indexes,
/// journal) in STORE/.vexfs/mounts/ID/ and keeps every collection it serves up to date itself; what
/// the mounts share is in STORE/.vexfs/shared/:
/// - `changes/ID.START.log`: each mount appends one line per change made through it (`KEY<TAB>r<TAB>NAME`:
///   the file NAME in the collection whose directory is inode KEY changed; `s`: its settings did),
///   and tails every other mount's log every `tick`, re-reading the files named there. The files stay
///   the truth: a line only says where to look, so a torn, forged or repeated one costs a stat.
///   `g`: the collection's directory was removed; the owner of its lease then removes its published
///   snapshot and its lease file (a line only makes a mount look: the directory must really be gone).
///   The writer holds an exclusive flock on its log for its life, so a log nobody holds is over (its
///   mount unmounted or died); each mount says how far it read every log in `changes/ID.START.read`,
///   and a log that is over goes once every mount whose log is held read it to its end (a mount
///   that starts later reconciles with the files and needs no log; a paused one keeps its place).
/// - `leases/KEY`: one mount at a time owns each collection (an exclusive flock, which the distributed
///   filesystem arbitrates across machines and drops when the owner's process or client dies). The
///   owner publishes its snapshots to `index/KEY/`; a mount opening a collection adopts the published
///   snapshot instead of reading every vector file (it answers from it in place while it copies its
///   vectors: `PersistentIndex.open(adoptingFrom:)`), then reads again only the files that changed.
/// - `leases/scan`: its holder finds files written past vexfs (another machine's `cp` straight onto
///   the distributed filesystem) by walking only the directories whose `ceph.dir.rctime` moved, and
///   logs what it found for the others. Without rctime it re-lists every collection it serves every
///   `rescanSeconds` (the fallback, shown in `.vexfs/stats`).
/// Two threads share the work (`thread`, `keeper`), each with its own state below; `note` (any FUSE
/// thread) only appends.
final class SharedStore: @unchecked Sendable {
    let id: String
    let directory: String
    var changes: String { directory + "/changes" }
    var leases: String { directory + "/leases" }
    var published: String { directory + "/index" }
    let logName: String
    /// This mount's change log, opened for appending; each line is one write(2).
    let log: Int32
    let metrics: SharedMetrics
    static let tick: useconds_t = 200_000
    static let rescanSeconds = 30
    static let maxLine = 4096
    /// Dead change logs are looked for every this many ticks (5 s).
    static let collectRounds = 25

    let stopping = Atomic<Bool>(false)
    /// The tail thread reads the other mounts' logs every tick and does nothing that can take long,
    /// so a change another mount logged is applied within a tick and a pass; the keeper takes
    /// leases, publishes (a copy of a snapshot through the distributed filesystem: gigabytes for a
    /// big collection), finds foreign writes and applies settings and removals, once a second.
    var thread: pthread_t?
    var keeper: pthread_t?
    /// The tail thread's own state: how far it read each log, and what it wrote in its `.read` file.
    var offsets: [String: Int] = [:]
    /// Collections another mount said were removed (`g`) or given new settings (`s`): the tail
    /// thread hears of them, the keeper acts (a rebuild for new settings can take minutes).
    let heard = Mutex<(gone: [UInt64], settings: Set<UInt64>)>(([], []))
    /// The keeper's own state.
    var leaseFiles: [UInt64: Int32] = [:]
    var owned: Set<UInt64> = []
    var scanLease: Int32 = -1
    var holdsScan = false
    /// Directory inode → the rctime last walked at; directories not seen yet count from `since`.
    var rctimes: [UInt64: timespec] = [:]
    var since: timespec
    var lastPublished: [UInt64: (UInt64, Int64)] = [:]
    var lastRescan = 0
    /// The offsets last written to this mount's `.read` file (the tail thread's).
    var cursorWritten: [String: Int] = [:]
    /// Collections whose directories were removed through this mount (any FUSE thread adds, the
    /// keeper takes): their shared files go, by this mount if it owns them, else by the owner.
    let removed = Mutex<[UInt64]>([])

    /// Makes the shared directories and this mount's new change log, and notes where every other
    /// mount's log ends now: what is logged from here on is applied, what came before is in the
    /// files the mount reconciles with.
    init?(storeRoot: String, id: String, metrics: SharedMetrics) {
        self.id = id
        self.metrics = metrics
        let shared = storeRoot + "/.vexfs/shared", changes = shared + "/changes"
        directory = shared
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        // Ten seconds' grace for clocks that differ between machines: a rescan too many costs a listing.
        since = timespec(tv_sec: now.tv_sec - 10, tv_nsec: 0)
        for dir in [shared, changes, shared + "/leases", shared + "/index"] { mkdir(dir, 0o700) }
        let name = "\(id).\(now.tv_sec)\(String(UInt32.random(in: 0...UInt32.max), radix: 16)).log"
        logName = name
        // This mount's earlier logs are over like any dead mount's: they go once the others read them.
        log = open(changes + "/" + name, O_WRONLY | O_APPEND | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard log >= 0 else { return nil }
        // Held for life: the others take a log nobody holds for over, and remove it once read.
        guard vx_flock(log, LOCK_EX | LOCK_NB) == 0 else {
            Glibc.close(log)
            unlink(changes + "/" + name)
            return nil
        }
        for other in ((try? StatePaths.entries(changes))?.files ?? []) where other != name {
            offsets[other] = Int((try? StatePaths.stat(changes + "/" + other))?.st_size ?? 0)
        }
    }

    deinit {
        Glibc.close(log)
        for fd in leaseFiles.values { Glibc.close(fd) }
        if scanLease >= 0 { Glibc.close(scanLease) }
    }

    /// The file where the mount writing log `name` says how far it read the others' logs.
    static func cursorName(of name: String) -> String { String(name.dropLast(4)) + ".read" }

    /// Writes this mount's offsets into its `.read` file when they moved: under a temporary name,
    /// renamed over the old one, so a reader sees one whole list or the last.
    func writeCursor() {
        guard offsets != cursorWritten else { return }
        let text = Array(offsets.map { "\($0.key)\t\($0.value)\n" }.joined().utf8)
        let path = changes + "/" + SharedStore.cursorName(of: logName), temporary = path + ".tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { return }
        let written = text.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == text.count
        Glibc.close(fd)
        guard written, rename(temporary, path) == 0 else { unlink(temporary); return }
        cursorWritten = offsets
    }

    /// How far the mount writing log `name` read each other log, by its `.read` file; nil without one.
    func cursor(of name: String) -> [String: Int]? {
        guard let bytes = try? readFile(changes + "/" + SharedStore.cursorName(of: name), limit: 1 << 20) else { return nil }
        var out: [String: Int] = [:]
        for line in bytes.split(separator: 0x0A) {
            let fields = line.split(separator: 0x09, omittingEmptySubsequences: false)
            guard fields.count == 2, let offset = Int(String(decoding: fields[1], as: UTF8.self)) else { continue }
            out[String(decoding: fields[0], as: UTF8.self)] = offset
        }
        return out
    }

    /// The length of the whole lines of log `fd` (`size` bytes): where a reader that read all of it
    /// stands. A torn last line (its writer died inside a write) is never read, so it is not waited for.
    static func wholeLines(_ fd: Int32, size: Int) -> Int {
        let tail = min(size, maxLine)
        guard tail > 0 else { return 0 }
        var buffer = [UInt8](repeating: 0, count: tail)
        let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, tail, off_t(size - tail)) }
        guard n == tail else { return size }
        if let last = buffer.lastIndex(of: 0x0A) { return size - tail + last + 1 }
        // No line end in the last maxLine bytes: a reader skips such a run whole.
        return size > maxLine ? size : 0
    }

    enum Change: UInt8 { case file = 0x72, settings = 0x73, gone = 0x67 }  // "r", "s", "g"

    /// Tells the other mounts that `name` in collection `key` changed (or its settings did). `path`,
    /// the directory's path in the store, lets a mount that has not met the collection yet find it.
    func note(_ change: Change, collection key: UInt64, path: FileName?, name: FileName = FileName([])) {
        let place = path.map { $0.isEmpty ? "." : $0.escaped } ?? ""
        let line = Array("\(key)\t".utf8) + [change.rawValue, 0x09] + Array(name.escaped.utf8) + [0x09] + Array(place.utf8) + [0x0A]
        guard line.count <= SharedStore.maxLine else { return }
        if line.withUnsafeBytes({ write(log, $0.baseAddress, $0.count) }) == line.count { metrics.published.increment() }
    }

    /// One line of another mount's log: the collection, what changed, the file, and the directory's
    /// path when the writer gave it; nil when it is not such a line.
    static func parse(_ line: ArraySlice<UInt8>) -> (UInt64, Change, FileName, FileName?)? {
        let fields = line.split(separator: 0x09, maxSplits: 3, omittingEmptySubsequences: false)
        guard fields.count == 4, fields[1].count == 1, let change = Change(rawValue: fields[1].first!),
              let key = UInt64(String(decoding: fields[0], as: UTF8.self)),
              let bytes = FileName.unescape(String(decoding: fields[2], as: UTF8.self)) else { return nil }
        let name = FileName(bytes)
        if change == .file {
            guard isComponent(bytes) else { return nil }
        }
        var path: FileName?
        if fields[3].elementsEqual(".".utf8) {
            path = FileName([])
        } else if !fields[3].isEmpty {
            guard let p = FileName.unescape(String(decoding: fields[3], as: UTF8.self)), p.count <= 4096,
                  p.split(separator: 0x2F, omittingEmptySubsequences: false).allSatisfy({ isComponent(Array($0)) }) else { return nil }
            path = FileName(p)
        }
        return (key, change, name, path)
    }

    /// One name in a directory: not empty, `.` or `..`, no `/` or NUL, at most 255 bytes.
    static func isComponent(_ b: [UInt8]) -> Bool {
        !b.isEmpty && b.count <= 255 && !b.contains(0x2F) && !b.contains(0) && b != [0x2E] && b != [0x2E, 0x2E]
    }
}

/// The sharing figures in `.vexfs/stats`.
public final class SharedMetrics: Sendable {
    let shared: Meter
    let leasesHeld: Meter
    let published: Counter
    let applied: Counter
    let snapshotsPublished: Counter
    let snapshotsLoaded: Counter
    let foreignRescans: Counter
    let takeovers: Counter
    let logsRemoved: Counter
    let logsRead: Meter
    /// How files written past vexfs are found: 1 for the way in use (rctime, or rescan), 0 for the other.
    let detection: [String: Meter]
    /// 1: users' flock(2) through a mount is taken on the backing file, so the distributed filesystem
    /// makes it exclusive across machines; 0: it excludes only users of the same mount (README).
    let flockAcrossMachines: Meter

    init(factory: any MetricsFactory = NOOPMetricsHandler.instance) {
        shared = Meter(label: "vexfs_shared", dimensions: [], factory: factory)
        leasesHeld = Meter(label: "vexfs_shared_leases_held", dimensions: [], factory: factory)
        published = Counter(label: "vexfs_shared_changes_logged_total", dimensions: [], factory: factory)
        applied = Counter(label: "vexfs_shared_changes_applied_total", dimensions: [], factory: factory)
        snapshotsPublished = Counter(label: "vexfs_shared_snapshots_published_total", dimensions: [], factory: factory)
        snapshotsLoaded = Counter(label: "vexfs_shared_snapshots_loaded_total", dimensions: [], factory: factory)
        foreignRescans = Counter(label: "vexfs_shared_foreign_rescans_total", dimensions: [], factory: factory)
        takeovers = Counter(label: "vexfs_shared_leases_taken_total", dimensions: [], factory: factory)
        logsRemoved = Counter(label: "vexfs_shared_change_logs_removed_total", dimensions: [], factory: factory)
        logsRead = Meter(label: "vexfs_shared_change_logs_read", dimensions: [], factory: factory)
        detection = Dictionary(uniqueKeysWithValues: ["rctime", "rescan"].map {
            ($0, Meter(label: "vexfs_shared_foreign_detection", dimensions: [("mode", $0)], factory: factory))
        })
        flockAcrossMachines = Meter(label: "vexfs_shared_flock_across_machines", dimensions: [], factory: factory)
        flockAcrossMachines.set(0)
        shared.set(0)
        leasesHeld.set(0)
        logsRead.set(0)
        for m in detection.values { m.set(0) }
    }
}

// MARK: the sharing threads

extension SemanticLayer {
    /// Starts the thread that tails the other mounts' logs and the keeper, which takes leases,
    /// publishes snapshots and finds foreign writes (after the reconciliation at mount).
    func startSharing() {
        guard let sharing else { return }
        sharing.metrics.shared.set(1)
        var t = pthread_t()
        let rc = pthread_create(&t, nil, { arg in
            Unmanaged<SemanticLayer>.fromOpaque(arg!).takeUnretainedValue().tailLoop()
            return nil
        }, Unmanaged.passUnretained(self).toOpaque())
        if rc == 0 { sharing.thread = t } else { logger.error("shared store: no sharing thread (error \(rc)): other mounts' changes are not applied") }
        var k = pthread_t()
        let rk = pthread_create(&k, nil, { arg in
            Unmanaged<SemanticLayer>.fromOpaque(arg!).takeUnretainedValue().keepLoop()
            return nil
        }, Unmanaged.passUnretained(self).toOpaque())
        if rk == 0 { sharing.keeper = k } else { logger.error("shared store: no keeper thread (error \(rk)): no leases are taken, nothing is published") }
    }

    /// Stops the thread; after the collections' last snapshots, publishes those this mount owns and
    /// gives their leases back.
    func stopSharing(beforeSnapshots: Bool) {
        guard let sharing else { return }
        if beforeSnapshots {
            sharing.stopping.store(true, ordering: .relaxed)
            if let t = sharing.thread { pthread_join(t, nil) }
            if let k = sharing.keeper { pthread_join(k, nil) }
            sharing.thread = nil
            sharing.keeper = nil
            return
        }
        for key in sharing.owned { publish(key) }
        for fd in sharing.leaseFiles.values { Glibc.close(fd) }
        sharing.leaseFiles = [:]
        sharing.owned = []
    }

    /// The logs every tick; this mount's `.read` file once a second, dead logs every 5 s.
    func tailLoop() {
        guard let sharing else { return }
        var round = 0
        while !sharing.stopping.load(ordering: .relaxed) {
            tailChanges()
            if round % 5 == 0 { sharing.writeCursor() }
            if round % SharedStore.collectRounds == 0 { removeDeadLogs() }
            round += 1
            usleep(SharedStore.tick)
        }
    }

    /// Once a second: removals and settings heard of, leases, publication and foreign writes.
    func keepLoop() {
        guard let sharing else { return }
        sweepPublished()
        while !sharing.stopping.load(ordering: .relaxed) {
            for key in sharing.removed.withLock({ r in defer { r = [] }; return r }) {
                if !collectionGone(key) { sharing.note(.gone, collection: key, path: nil) }
            }
            let (gone, settings) = sharing.heard.withLock { h in defer { h = ([], []) }; return h }
            for key in gone { collectionGone(key) }
            for key in settings { existing(key)?.adoptSettings() }
            takeLeases()
            for key in sharing.owned { publish(key) }
            findForeignWrites()
            // A second in ticks, waking to stop.
            for _ in 0..<5 where !sharing.stopping.load(ordering: .relaxed) { usleep(SharedStore.tick) }
        }
    }

    /// Applies what the other mounts logged since the last tick.
    func tailChanges() {
        guard let sharing else { return }
        let names = ((try? StatePaths.entries(sharing.changes))?.files ?? []).filter { $0 != sharing.logName && $0.hasSuffix(".log") }
        for gone in sharing.offsets.keys where !names.contains(gone) { sharing.offsets[gone] = nil }
        for name in names {
            let fd = Glibc.open(sharing.changes + "/" + name, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { continue }
            defer { Glibc.close(fd) }
            var st = stat()
            guard fstat(fd, &st) == 0 else { continue }
            // A log not seen before started after this mount did: all of it is new.
            var offset = sharing.offsets[name] ?? 0
            if Int(st.st_size) < offset { offset = 0 }
            while offset < Int(st.st_size) {
                var buffer = [UInt8](repeating: 0, count: min(1 << 20, Int(st.st_size) - offset))
                let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(offset)) }
                guard n > 0 else { break }
                // Whole lines only: a line being appended is read at the next tick.
                guard let end = buffer[..<n].lastIndex(of: 0x0A) else {
                    // A line longer than any vexfs writes: skipped whole.
                    if n >= SharedStore.maxLine { offset += n; continue }
                    break
                }
                for line in buffer[...end].split(separator: 0x0A) {
                    guard let (key, change, file, path) = SharedStore.parse(line) else { continue }
                    if change == .gone {
                        sharing.heard.withLock { $0.gone.append(key) }
                        sharing.metrics.applied.increment()
                        continue
                    }
                    guard existing(key) ?? path.flatMap({ discover(key, at: $0) }) != nil else { continue }
                    switch change {
                    case .file: bridge.post(.refresh, collection: key, name: file)
                    case .settings: sharing.heard.withLock { _ = $0.settings.insert(key) }
                    case .gone: break
                    }
                    sharing.metrics.applied.increment()
                }
                offset += end + 1
            }
            sharing.offsets[name] = offset
        }
        sharing.metrics.logsRead.set(names.count)
    }

    /// Removes the change logs that are over (no mount holds their lock: it unmounted or died) once
    /// every mount whose log is held has read them to their end, by their `.read` files (this mount
    /// by its own offsets). A mount paused in the middle (SIGSTOP, a stalled thread) still holds its
    /// log, so what it has not read stays; one with no `.read` file yet holds everything back.
    /// A lock taken here for a moment makes a log look held to the others: they just wait a round.
    func removeDeadLogs() {
        guard let sharing else { return }
        let files = (try? StatePaths.entries(sharing.changes))?.files ?? []
        var held: [String] = [], over: [(name: String, fd: Int32, end: Int)] = []
        defer { for log in over { Glibc.close(log.fd) } }
        for name in files where name.hasSuffix(".log") && name != sharing.logName {
            let fd = Glibc.open(sharing.changes + "/" + name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
            guard fd >= 0 else { continue }
            var st = stat()
            if vx_flock(fd, LOCK_EX | LOCK_NB) == 0, fstat(fd, &st) == 0 {
                over.append((name, fd, SharedStore.wholeLines(fd, size: Int(st.st_size))))
            } else {
                Glibc.close(fd)
                held.append(name)
            }
        }
        // A `.read` file (or its temporary) whose log is gone was left by a removal or a mount cut short.
        let logs = Set(files.filter { $0.hasSuffix(".log") })
        for name in files {
            let base = name.hasSuffix(".read") ? name.dropLast(5) : name.hasSuffix(".read.tmp") ? name.dropLast(9) : nil
            if let base, !logs.contains(String(base) + ".log") { unlink(sharing.changes + "/" + name) }
        }
        guard !over.isEmpty else { return }
        let cursors = held.map { sharing.cursor(of: $0) }
        for log in over where (sharing.offsets[log.name] ?? -1) >= log.end
            && cursors.allSatisfy({ ($0?[log.name] ?? -1) >= log.end }) {
            guard unlink(sharing.changes + "/" + log.name) == 0 else { continue }
            let cursor = sharing.changes + "/" + SharedStore.cursorName(of: log.name)
            unlink(cursor)
            unlink(cursor + ".tmp")
            sharing.metrics.logsRemoved.increment()
            logger.info("shared store: removed the change log \(log.name): its mount is gone and every running mount read it")
        }
    }

    /// The collection whose directory is at `path` in the store, made (and opened) here, when that
    /// directory is still the one another mount logged (inode `key`): reached by descriptors from the
    /// root, never through a symlink.
    func discover(_ key: UInt64, at path: FileName) -> Collection? {
        guard var fd = (try? StoreFiles.holdDirectory(rootFD, ".")) else { return nil }
        defer { Glibc.close(fd) }
        for (i, part) in path.bytes.split(separator: 0x2F).enumerated() {
            let component = FileName(Array(part))
            if i == 0 && component == FileName(".vexfs") { return nil }
            guard let next = (try? StoreFiles.holdDirectory(fd, component)) else { return nil }
            Glibc.close(fd)
            fd = next
        }
        var st = stat()
        guard fstat(fd, &st) == 0, UInt64(st.st_ino) == key else { return nil }
        return collection(DirectoryRef(key: key, path: path, fd: fd))
    }

    /// Tries for the lease of every collection this mount serves and does not own (the owner's
    /// death frees it), and of the scan.
    func takeLeases() {
        guard let sharing else { return }
        // A collection whose directory another mount removed goes here too (no line need say so).
        for c in registry.all where c.directory.isUnlinked { collectionGone(c.key) }
        let all = registry.all
        let keys = Set(all.map(\.key))
        for (key, fd) in sharing.leaseFiles where !keys.contains(key) {
            Glibc.close(fd)
            sharing.leaseFiles[key] = nil
            sharing.owned.remove(key)
        }
        func tryLock(_ name: String, _ fd: inout Int32) -> Bool {
            // A lease file removed with its collection is let go of: locking it would own nothing.
            var st = stat()
            if fd >= 0 && fstat(fd, &st) == 0 && st.st_nlink == 0 { Glibc.close(fd); fd = -1 }
            if fd < 0 { fd = Glibc.open(sharing.leases + "/" + name, O_RDWR | O_CREAT | O_CLOEXEC, 0o600) }
            guard fd >= 0, vx_flock(fd, LOCK_EX | LOCK_NB) == 0 else { return false }
            // Who owns it, for people: the lock itself is the truth.
            let text = Array("\(sharing.id)\n".utf8)
            _ = ftruncate(fd, 0)
            _ = text.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
            sharing.metrics.takeovers.increment()
            return true
        }
        for c in all where !sharing.owned.contains(c.key) {
            var fd = sharing.leaseFiles[c.key] ?? -1
            let took = tryLock(String(c.key), &fd)
            sharing.leaseFiles[c.key] = fd >= 0 ? fd : nil
            if took {
                sharing.owned.insert(c.key)
                // What the last owner published may be newer than what this mount has: the files decide.
                bridge.nudge()
            }
        }
        if !sharing.holdsScan { sharing.holdsScan = tryLock("scan", &sharing.scanLease) }
        sharing.metrics.leasesHeld.set(sharing.owned.count)
    }

    /// Collection `key`'s directory is gone (removed through this mount, or another said so): this
    /// mount's collection of it goes when its directory really is unlinked, and when this mount holds
    /// (or can take) its lease, the published snapshot and the lease file go too; false when another
    /// mount holds the lease (that mount removes them when it hears of it).
    @discardableResult func collectionGone(_ key: UInt64) -> Bool {
        guard let sharing else { return true }
        if let c = existing(key) {
            // Another mount's word is only a hint: the directory decides.
            guard c.directory.isUnlinked else { return true }
            bridge.settle(key)
            if let c = registry.remove(key) {
                c.forgetAllLinks()
                StatePaths.removeTree(c.indexDirectory)
            }
        }
        var fd = sharing.leaseFiles[key] ?? -1
        if fd < 0 { fd = Glibc.open("\(sharing.leases)/\(key)", O_RDWR | O_CLOEXEC | O_NOFOLLOW) }
        guard fd >= 0 else {
            // No lease file, so no owner: what was published (if anything) is nobody's.
            StatePaths.removeTree("\(sharing.published)/\(key)")
            return true
        }
        defer {
            Glibc.close(fd)
            sharing.leaseFiles[key] = nil
            sharing.owned.remove(key)
            sharing.lastPublished[key] = nil
        }
        guard sharing.owned.contains(key) || vx_flock(fd, LOCK_EX | LOCK_NB) == 0 else { return false }
        // Removed while locked: a mount that opened the file before tries its lock on a name gone.
        StatePaths.removeTree("\(sharing.published)/\(key)")
        unlink("\(sharing.leases)/\(key)")
        return true
    }

    /// After the reconciliation at mount this mount serves every collection of the store: a published
    /// snapshot of one it does not serve belongs to a directory removed when its removal could not be
    /// passed on (the remover unmounted first, or the owner was gone), and goes unless a mount holds
    /// its lease (that mount serves it, so it is not gone).
    func sweepPublished() {
        guard let sharing else { return }
        let known = Set(registry.all.map(\.key))
        for name in ((try? StatePaths.entries(sharing.published))?.directories ?? []) {
            guard let key = UInt64(name), !known.contains(key) else { continue }
            collectionGone(key)
        }
    }

    /// Copies this mount's latest snapshot of collection `key` to STORE/.vexfs/shared/index/KEY when
    /// it changed since the last publication: the snapshot under a temporary name, the vector files
    /// (their new bytes only), the snapshot renamed over the old one, then vector files nothing names.
    func publish(_ key: UInt64) {
        guard let sharing, let c = existing(key) else { return }
        let source = c.indexDirectory, target = "\(sharing.published)/\(key)"
        guard let st = try? StatePaths.stat(source + "/snapshot") else { return }
        let stamp = (UInt64(st.st_ino), nanoseconds(st.st_mtim))
        if let last = sharing.lastPublished[key], last == stamp { return }
        if let there = try? StatePaths.stat(target + "/snapshot"), there.st_size == st.st_size,
           nanoseconds(there.st_mtim) == nanoseconds(st.st_mtim) {
            sharing.lastPublished[key] = stamp
            return
        }
        mkdir(target, 0o700)
        // The snapshot is read first: the vector files it names exist by then, and their rows it
        // counts are written, so the copies taken after it hold every row it needs. Whole copies:
        // rows land inside chunks the file already holds, so a copy of its new bytes alone misses some.
        let temporary = "\(target)/.snapshot.\(sharing.id)"
        guard SharedCopy.copy(source + "/snapshot", to: temporary) else { unlink(temporary); return }
        let vectors = ((try? StatePaths.entries(source))?.files ?? []).filter { $0.hasPrefix("vectors.") }
        for name in vectors where !SharedCopy.copy(source + "/" + name, to: target + "/" + name + ".tmp")
            || rename(target + "/" + name + ".tmp", target + "/" + name) != 0 {
            unlink(temporary)
            return
        }
        guard rename(temporary, target + "/snapshot") == 0 else { unlink(temporary); return }
        for name in ((try? StatePaths.entries(target))?.files ?? []) where name.hasPrefix("vectors.") && !vectors.contains(name) {
            unlink(target + "/" + name)
        }
        sharing.lastPublished[key] = stamp
        sharing.metrics.snapshotsPublished.increment()
    }

    /// Before a collection's index is opened: the directory of the snapshot another mount published
    /// for it, when that is newer than this mount's own; the index then adopts it (read in place,
    /// copied here in the background: `PersistentIndex.open(adoptingFrom:)`).
    func publishedSnapshot(_ key: UInt64, newerThan directory: String) -> String? {
        guard let sharing, let theirs = try? StatePaths.stat("\(sharing.published)/\(key)/snapshot") else { return nil }
        if let mine = try? StatePaths.stat(directory + "/snapshot"), nanoseconds(mine.st_mtim) >= nanoseconds(theirs.st_mtim) { return nil }
        return "\(sharing.published)/\(key)"
    }

    func adoptedPublished() { sharing?.metrics.snapshotsLoaded.increment() }

    /// Finds files written past vexfs, while this mount holds the scan lease: by rctime where the
    /// filesystem keeps it, else by listing every collection every `rescanSeconds`.
    func findForeignWrites() {
        guard let sharing, sharing.holdsScan else { return }
        var rootTime = timespec()
        let hasRctime = Self.rctime(rootFD, into: &rootTime)
        sharing.metrics.detection["rctime"]?.set(hasRctime ? 1 : 0)
        sharing.metrics.detection["rescan"]?.set(hasRctime ? 0 : 1)
        guard hasRctime else {
            let now = Int(time(nil))
            guard now - sharing.lastRescan >= SharedStore.rescanSeconds else { return }
            sharing.lastRescan = now
            for c in registry.all { rescan(c) }
            return
        }
        guard let top = Self.openDirectory(rootFD, ".") else { return }
        walk(top, atRoot: true)
    }

    /// Descends into `fd` (closed here) when its rctime moved since the last walk.
    private func walk(_ fd: Int32, atRoot: Bool) {
        guard let sharing else { Glibc.close(fd); return }
        defer { Glibc.close(fd) }
        var st = stat(), now = timespec()
        guard fstat(fd, &st) == 0, Self.rctime(fd, into: &now) else { return }
        let key = UInt64(st.st_ino)
        let last = sharing.rctimes[key] ?? sharing.since
        guard (now.tv_sec, now.tv_nsec) > (last.tv_sec, last.tv_nsec) else { return }
        // A collection busy with a long build is listed at a later walk: its rctime is not taken yet.
        let busy = existing(key).map { !rescan($0) } ?? false
        if !busy { sharing.rctimes[key] = now }
        for sub in ((try? StoreFiles.entries(fd))?.directories ?? []) where !(atRoot && sub == FileName(".vexfs")) {
            if let child = sub.withCString({ Self.openDirectory(fd, $0) }) { walk(child, atRoot: false) }
        }
    }

    /// Lists collection `c` and re-reads what differs from its catalog, logging it for the others;
    /// false when a long build holds the collection (the keeper never waits for one).
    @discardableResult func rescan(_ c: Collection) -> Bool {
        guard let sharing else { return true }
        guard let changed = c.foreignChanges() else { return false }
        guard !changed.isEmpty else { return true }
        sharing.metrics.foreignRescans.increment()
        for name in changed {
            bridge.post(.refresh, collection: c.key, name: name)
            sharing.note(.file, collection: c.key, path: c.state.withLock { $0.path }, name: name)
        }
        return true
    }

    static func openDirectory(_ dir: Int32, _ name: UnsafePointer<CChar>) -> Int32? {
        let fd = openat(dir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        return fd >= 0 ? fd : nil
    }

    /// CephFS's recursive change time of a directory ("SECONDS.NANOSECONDS"); false where there is none.
    static func rctime(_ fd: Int32, into t: inout timespec) -> Bool {
        var buffer = [CChar](repeating: 0, count: 64)
        let n = buffer.withUnsafeMutableBufferPointer { vx_getxattr(fd, "ceph.dir.rctime", $0.baseAddress, 63) }
        guard n > 0 else { return false }
        let text = String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let parts = text.split(separator: ".", maxSplits: 1)
        guard let s = Int(parts.first ?? ""), s >= 0 else { return false }
        t = timespec(tv_sec: s, tv_nsec: parts.count > 1 ? Int(parts[1].prefix(9)) ?? 0 : 0)
        return true
    }

    /// Tells the other mounts of a change made through this one (nothing without `-o shared`).
    func noteShared(_ change: SharedStore.Change, in dir: DirectoryRef, name: FileName = FileName([])) {
        sharing?.note(change, collection: dir.key, path: dir.path, name: name)
    }

    /// The same, for a collection known by its key alone (another name of a hard-linked file).
    func noteShared(_ change: SharedStore.Change, collection key: UInt64, name: FileName) {
        sharing?.note(change, collection: key, path: nil, name: name)
    }
}

extension Collection {
    /// The files of the directory that differ from the catalog (changed, new and indexable, gone);
    /// nil while a long build holds the collection, or while its directory cannot be reopened.
    func foreignChanges() -> [FileName]? { withDirectory { foreignChanges(in: $0) } ?? nil }

    private func foreignChanges(in directory: Int32) -> [FileName]? {
        let listed = ((try? StoreFiles.entries(directory)) ?? ([], [])).files
        return state.withLockIfAvailable { s in
            var out: [FileName] = []
            for name in listed where !name.isQuery {
                if let r = s.files[name] {
                    if let st = (try? StoreFiles.stat(directory, name)), r.sameSignature(st) { continue }
                    out.append(name)
                } else if rules(s).kind(of: name, carriesVector: { hasVectorAttribute(directory, name) }).isIndexed {
                    out.append(name)
                }
            }
            let present = Set(listed)
            for name in s.files.keys where !present.contains(name) { out.append(name) }
            return out
        }
    }

    /// Takes the settings another mount gave the directory: a new metric or text globs re-index
    /// beside the index in use, a new dimension (only while nothing is indexed) rebuilds, a recall
    /// target is taken as it is.
    func adoptSettings() {
        guard let now = withDirectory({ CollectionSettings(reading: $0) }) else { return }
        let rebuilding: (@Sendable (inout State) -> Void)? = state.withLock { s in
            if now.recall != s.settings.recall {
                s.settings.recall = now.recall
                s.measuredAt = 0
                considerMeasuring(&s)
            }
            if now.dimension != s.settings.dimension, s.files.values.allSatisfy({ $0.rows == 0 }) {
                s.settings.dimension = now.dimension
                rebuild(&s)
                return nil
            }
            guard now.metric != s.settings.metric || now.embedGlobs != s.settings.embedGlobs else { return nil }
            let metric = now.metric, globs = now.embedGlobs
            return { $0.settings.metric = metric; $0.settings.embedGlobs = globs }
        }
        if let rebuilding { rebuildBeside(rebuilding) }
        sendSoon()
    }
}

/// Copies between state files of the shared store.
enum SharedCopy {
    /// Makes `path` and its missing parents (state directories: 0700); false on failure.
    static func makeDirectories(_ path: String) -> Bool {
        var prefix = ""
        for part in path.split(separator: "/") {
            prefix += "/" + part
            if mkdir(prefix, 0o700) != 0 && errno != EEXIST { return false }
        }
        return true
    }

    /// Copies `source` to `target` (replaced); false on any failure.
    static func copy(_ source: String, to target: String) -> Bool {
        let from = open(source, O_RDONLY | O_CLOEXEC)
        guard from >= 0 else { return false }
        defer { close(from) }
        let to = open(target, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard to >= 0 else { return false }
        defer { close(to) }
        var a = stat()
        guard fstat(from, &a) == 0 else { return false }
        var offset = 0
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while offset < Int(a.st_size) {
            let n = buffer.withUnsafeMutableBytes { pread(from, $0.baseAddress, $0.count, off_t(offset)) }
            guard n > 0 else { return n == 0 }
            guard buffer.withUnsafeBytes({ pwrite(to, $0.baseAddress, n, off_t(offset)) }) == n else { return false }
            offset += n
        }
        // The copy carries the original's times: a mount compares them to tell whose snapshot is newer.
        var times = [a.st_atim, a.st_mtim]
        _ = futimens(to, &times)
        return fsync(to) == 0
    }
}


/// Where a mount of a shared store keeps its private state (its indexes, its journal): on a local
/// disk, so that building, snapshots and loading another mount's published snapshot touch the
/// distributed filesystem once (the published copy), not for every page. It is derived data like
/// all state: lost, the mount loads the published snapshots again and reads the files that differ.
public enum SharedState {
    /// Without `-o state=DIR`: ROOT/STORE-ID/ID.
    public static let defaultRoot = "/var/lib/vexfs"

    public enum Failure: Error, CustomStringConvertible {
        case system(String, Int32)
        case otherStore(String, String)
        case held(String)

        public var description: String {
            switch self {
            case let .system(path, e): "\(path): \(String(cString: strerror(e)))"
            case let .otherStore(path, id): "\(path) holds the state of another store (\(id)): give each store its own state= directory"
            case let .held(path): "\(path) is in use by another vexfs on this machine"
            }
        }
    }

    /// The store's identity, made once by the first shared mount: STORE/.vexfs/shared/store holds 32
    /// hex digits. Two machines making it at once both link their own into place; one link wins and
    /// both read the winner's.
    public static func storeIdentity(storeRoot: String) throws(Failure) -> String {
        let shared = storeRoot + "/.vexfs/shared", path = shared + "/store"
        if let id = readIdentity(path) { return id }
        if mkdir(shared, 0o700) != 0 && errno != EEXIST { throw .system(shared, errno) }
        var bytes = [UInt8](repeating: 0, count: 16)
        for i in bytes.indices { bytes[i] = UInt8.random(in: 0...255) }
        let id = bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
        let temporary = "\(path).\(getpid()).\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .system(temporary, errno) }
        let text = Array((id + "\n").utf8)
        let written = text.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == text.count && fsync(fd) == 0
        close(fd)
        defer { unlink(temporary) }
        guard written else { throw .system(temporary, errno) }
        if link(temporary, path) != 0 && errno != EEXIST { throw .system(path, errno) }
        guard let found = readIdentity(path) else { throw .system(path, EINVAL) }
        return found
    }

    static func readIdentity(_ path: String) -> String? {
        guard let bytes = try? readFile(path, limit: 64) else { return nil }
        let text = String(decoding: bytes.filter { $0 != 0x0A }, as: UTF8.self)
        return text.utf8.count == 32 && text.utf8.allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }) ? text : nil
    }

    /// Makes (0700, parents too) and locks the private state directory of mount `id` of the store:
    /// `given`, or the default. The directory names its store in `DIR/store`; one of another store's
    /// is refused (it may be someone's mistake in `state=`: nothing in it is deleted). The lock
    /// (`DIR/lock`, an exclusive flock) keeps a second daemon on this machine away; its descriptor is
    /// returned, to be held until the process ends.
    public static func prepare(storeRoot: String, id: String, given: String?) throws(Failure) -> (path: String, lock: Int32) {
        let store = try storeIdentity(storeRoot: storeRoot)
        let path = given ?? "\(defaultRoot)/\(store)/\(id)"
        guard SharedCopy.makeDirectories(path) else { throw .system(path, errno) }
        let lock = open(path + "/lock", O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard lock >= 0 else { throw .system(path + "/lock", errno) }
        guard vx_flock(lock, LOCK_EX | LOCK_NB) == 0 else {
            let e = errno
            close(lock)
            throw e == EWOULDBLOCK ? .held(path) : .system(path + "/lock", e)
        }
        let mark = path + "/store"
        if let there = readIdentity(mark) {
            guard there == store else { close(lock); throw .otherStore(path, there) }
        } else {
            let fd = open(mark, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o600)
            let text = Array((store + "\n").utf8)
            let written = fd >= 0 && text.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == text.count && fsync(fd) == 0
            if fd >= 0 { close(fd) }
            guard written else { close(lock); throw .system(mark, errno) }
        }
        return (path, lock)
    }
}
