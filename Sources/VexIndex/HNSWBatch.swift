import Glibc
import Synchronization

/// Per-node link-list locks for a parallel build, striped: node n uses lock n mod `count`. A thread
/// holds at most one at a time (its own list, or one neighbour's while it adds a back link), so
/// there is no order to get wrong and no deadlock.
final class LinkLocks: @unchecked Sendable {
    static let count = 1 << 12
    private let mutexes: UnsafeMutablePointer<pthread_mutex_t>

    init() {
        mutexes = .allocate(capacity: LinkLocks.count)
        for i in 0..<LinkLocks.count { pthread_mutex_init(mutexes + i, nil) }
    }

    deinit {
        for i in 0..<LinkLocks.count { pthread_mutex_destroy(mutexes + i) }
        mutexes.deallocate()
    }

    @inline(__always) func lock(_ node: UInt32) { pthread_mutex_lock(mutexes + Int(node) & (LinkLocks.count - 1)) }
    @inline(__always) func unlock(_ node: UInt32) { pthread_mutex_unlock(mutexes + Int(node) & (LinkLocks.count - 1)) }
}

extension HNSWIndex {
    /// Adds `labels.count` vectors (row i of `vectors` under `labels[i]`; a later row wins over an
    /// earlier one with the same label) using `threads` threads, as hnswlib's parallel `add_items`
    /// does: every node is placed first (so the memory a builder may touch is all there before any
    /// thread starts: no chunk is made while the graph is read), then the threads link nodes taken
    /// in order from a shared counter, each change to a link list under that list's lock.
    ///
    /// The batch holds the writer for its whole length; searches meanwhile see the graph as it was
    /// (they ignore ids at or past the count they started with, and the new entry point is made
    /// public only with the batch), then all of it at once.
    public func insert(batch labels: [UInt64], vectors: UnsafeBufferPointer<Float>, threads: Int) throws(IndexError) {
        try validate(batch: vectors, rows: labels.count, dimension: dimension)
        var lastRow: [UInt64: Int] = [:]
        lastRow.reserveCapacity(labels.count)
        for (row, label) in labels.enumerated() { lastRow[label] = row }
        let rows = (0..<labels.count).filter { lastRow[labels[$0]] == $0 }
        guard !rows.isEmpty else { return }

        defer { self.vectors.release() }
        try writer.withLock { (state) throws(IndexError) in
            let first = published.load(ordering: .relaxed)
            let end = first + rows.count
            try allocateChunks(through: end - 1, &state)
            for row in rows {
                if let old = state.nodeOfLabel[labels[row]] { delete(old, &state) }
            }
            var levels = [Int](repeating: 0, count: rows.count)
            for (i, row) in rows.enumerated() {
                levels[i] = drawLevel(&state)
                place(UInt32(first + i), label: labels[row], vectors.baseAddress! + row * dimension, level: levels[i])
            }
            if !quantized.load(ordering: .relaxed) && end >= trainingSize { train(count: end) }

            let build = BatchBuild(entry: entry.load(ordering: .relaxed), next: first)
            let frozenLevels = levels
            runParallel(max(1, min(threads, rows.count))) { [self] in
                let s = takeScratch()
                defer { putScratch(s) }
                while true {
                    let i = build.next.add(1, ordering: .relaxed).oldValue
                    if i >= end { break }
                    linkInBatch(UInt32(i), level: frozenLevels[i - first], limit: end, build: build, scratch: s)
                }
            }

            for (i, row) in rows.enumerated() { state.nodeOfLabel[labels[row]] = UInt32(first + i) }
            liveCount.add(rows.count, ordering: .relaxed)
            published.store(end, ordering: .releasing)
            entry.store(build.entry.load(ordering: .acquiring), ordering: .releasing)
            // Each time the graph has grown by a quarter (so the passes cost the graph's size once
            // over): no node left out of reach of every search. Searches for them cost no more
            // than linking the batch did, so a batch's time stays proportional to its rows.
            if rows.count * 4 >= end { reconnect(&state, searches: rows.count) }
        }
    }

    /// One node of a parallel build. A node drawn above the current top level holds the entry lock
    /// while it links (as in hnswlib), so the entry point moves up only to a linked node.
    private func linkInBatch(_ node: UInt32, level: Int, limit: Int, build: BatchBuild, scratch s: SearchScratch) {
        var top = build.entry.load(ordering: .acquiring)
        var holdsEntry = false
        if top == 0 || level > Int(top >> 32) - 1 {
            build.entryLock.lock()
            holdsEntry = true
            top = build.entry.load(ordering: .acquiring)
            if top != 0 && level <= Int(top >> 32) - 1 {
                build.entryLock.unlock()
                holdsEntry = false
            }
        }
        if top != 0 { link(node, level: level, top: top, limit: limit, locks: build.locks, scratch: s) }
        if holdsEntry {
            build.entry.store(UInt64(level + 1) << 32 | UInt64(node), ordering: .releasing)
            build.entryLock.unlock()
        }
    }
}

/// The shared state of one parallel build: the next node to link, the entry point the builders
/// use (made public when the batch ends), and the locks.
final class BatchBuild: Sendable {
    let next: Atomic<Int>
    let entry: Atomic<UInt64>
    let entryLock = SystemLock()
    let locks = LinkLocks()

    init(entry: UInt64, next: Int) {
        self.entry = Atomic(entry)
        self.next = Atomic(next)
    }
}

/// A plain mutex, locked and unlocked in different scopes (which `Mutex.withLock` cannot express).
final class SystemLock: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    init() { pthread_mutex_init(mutex, nil) }
    deinit { pthread_mutex_destroy(mutex); mutex.deallocate() }
    func lock() { pthread_mutex_lock(mutex) }
    func unlock() { pthread_mutex_unlock(mutex) }
}

/// Runs `body` on `threads` threads (the caller's among them) and returns when all have finished.
func runParallel(_ threads: Int, _ body: @escaping @Sendable () -> Void) {
    final class Box: @unchecked Sendable {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }
    var started: [pthread_t] = []
    for _ in 1..<max(threads, 1) {
        var t = pthread_t()
        let rc = pthread_create(&t, nil, { arg in
            Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue().body()
            return nil
        }, Unmanaged.passRetained(Box(body)).toOpaque())
        if rc == 0 { started.append(t) }
    }
    body()
    for t in started { pthread_join(t, nil) }
}

/// The cores this process may run on: the default for parallel builds.
public var availableCores: Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }
