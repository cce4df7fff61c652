import Glibc
import Synchronization
import VexKernels

/// The exact index: vectors in one contiguous, 64-byte-aligned block, scanned in full by the
/// one-to-N kernel. Searches run in parallel with each other; an insert or remove waits for them.
public final class FlatIndex: VectorIndex, @unchecked Sendable {
    public let dimension: Int
    public let metric: Metric
    private let kernels: DistanceKernels
    /// Rows are `stride` floats apart (dimension rounded up to 16), so every row starts aligned.
    let stride: Int
    // Guarded by `rows` (read for searches, write for changes).
    var storage: UnsafeMutablePointer<Float>
    private var capacity: Int
    var labels: [UInt64] = []
    var slotOfLabel: [UInt64: Int] = [:]
    let rows = ReadWriteLock()

    /// Memory follows the vectors held, never the dimension declared: `capacity` rows are reserved
    /// only up to about 1 MiB, and an empty index holds none (a user may declare 65,536 dimensions
    /// in as many directories as they like).
    public init(dimension: Int, metric: Metric, kernels: DistanceKernels, capacity: Int = 0) {
        precondition(dimension > 0)
        self.dimension = dimension
        self.metric = metric
        self.kernels = kernels
        stride = (dimension + 15) / 16 * 16
        self.capacity = max(0, min(capacity, max(16, (1 << 20) / (stride * 4))))
        storage = FlatIndex.allocate(rows: self.capacity, stride: stride)
    }

    deinit { storage.deallocate() }

    private static func allocate(rows: Int, stride: Int) -> UnsafeMutablePointer<Float> {
        let raw = UnsafeMutableRawPointer.allocate(byteCount: rows * stride * 4, alignment: 64)
        return raw.initializeMemory(as: Float.self, repeating: 0, count: rows * stride)
    }

    public var count: Int { rows.reading { labels.count } }

    public func insert(label: UInt64, vector: UnsafeBufferPointer<Float>) throws(IndexError) {
        try validate(vector, dimension: dimension)
        rows.writing {
            let slot: Int
            if let existing = slotOfLabel[label] {
                slot = existing
            } else {
                if labels.count == capacity { grow() }
                slot = labels.count
                labels.append(label)
                slotOfLabel[label] = slot
            }
            metric.prepare(vector, into: storage + slot * stride, kernels: kernels)
        }
    }

    @discardableResult
    public func remove(label: UInt64) -> Bool {
        rows.writing {
            guard let slot = slotOfLabel.removeValue(forKey: label) else { return false }
            // The last row moves into the hole, so the rows stay dense for the scan.
            let last = labels.count - 1
            if slot != last {
                (storage + slot * stride).update(from: storage + last * stride, count: stride)
                labels[slot] = labels[last]
                slotOfLabel[labels[slot]] = slot
            }
            labels.removeLast()
            return true
        }
    }

    public func search(_ query: UnsafeBufferPointer<Float>, k: Int, ef: Int?, filter: SearchFilter) throws(IndexError) -> [Neighbor] {
        guard (1...1000).contains(k) else { throw .badK(k) }
        try validate(query, dimension: dimension)
        let q = UnsafeMutablePointer<Float>.allocate(capacity: dimension)
        defer { q.deallocate() }
        metric.prepare(query, into: q, kernels: kernels)
        return rows.reading {
            let n = labels.count
            guard n > 0 else { return [] }
            let scores = UnsafeMutablePointer<Float>.allocate(capacity: n)
            defer { scores.deallocate() }
            // l2 ranks by squared distance (smaller is nearer); dot and cosine by inner product
            // (larger is nearer), kept as its negation so that smaller is nearer throughout.
            if metric == .l2 {
                kernels.l2SquaredScan(q, storage, n, dimension, stride, scores)
            } else {
                kernels.dotScan(q, storage, n, dimension, stride, scores)
                for i in 0..<n { scores[i] = -scores[i] }
            }
            var best = TopK(k: k)
            // The filter may cost a syscall: asked only of rows that would enter the answer.
            for i in 0..<n where scores[i] <= best.bound && filter.allows(labels[i]) {
                best.offer(Neighbor(label: labels[i], distance: scores[i]))
            }
            return best.sorted().map { n in
                Neighbor(label: n.label, distance: metric.userDistance(metric == .l2 ? n.distance : -n.distance))
            }
        }
    }

    /// Doubles the block; called with the write lock held.
    private func grow() { reserve(max(capacity * 2, 4)) }

    /// Makes room for `rows` rows (never fewer than held); called with the write lock held.
    fileprivate func reserve(_ rows: Int) {
        guard rows > capacity else { return }
        let bigger = FlatIndex.allocate(rows: rows, stride: stride)
        bigger.update(from: storage, count: labels.count * stride)
        storage.deallocate()
        storage = bigger
        capacity = rows
    }

    /// The stored vector of `label` (normalised for cosine), for tests and snapshots.
    public func vector(of label: UInt64) -> [Float]? {
        rows.reading {
            guard let slot = slotOfLabel[label] else { return nil }
            return Array(UnsafeBufferPointer(start: storage + slot * stride, count: dimension))
        }
    }
}

/// A pthread readers-writer lock; what it guards is named where it is used.
final class ReadWriteLock: @unchecked Sendable {
    private let lock = UnsafeMutablePointer<pthread_rwlock_t>.allocate(capacity: 1)

    init() { pthread_rwlock_init(lock, nil) }

    deinit {
        pthread_rwlock_destroy(lock)
        lock.deallocate()
    }

    func reading<R>(_ body: () throws -> R) rethrows -> R {
        pthread_rwlock_rdlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body()
    }

    func writing<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        pthread_rwlock_wrlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body()
    }
}


extension FlatIndex {
    /// The snapshot sections: labels, and the stored rows (already normalised for cosine).
    func sections() -> [(String, [UInt8])] {
        rows.reading {
            var labelBytes = ByteWriter(), vectorBytes = ByteWriter()
            for (slot, label) in labels.enumerated() {
                labelBytes.put(label)
                vectorBytes.put(UnsafeRawBufferPointer(start: storage + slot * stride, count: dimension * 4))
            }
            return [("LABL", labelBytes.bytes), ("VECS", vectorBytes.bytes)]
        }
    }

    /// Rebuilds from `sections()`, row for row, without preparing the vectors again. The room made is
    /// the rows the sections hold, whatever `init` would reserve; the sizes are those of the bytes
    /// read, so a damaged snapshot is an error, never an allocation it names.
    static func restore(_ s: [String: [UInt8]], dimension: Int, metric: Metric, kernels: DistanceKernels) throws(ByteReader.Short) -> FlatIndex {
        guard let l = s["LABL"], let v = s["VECS"], l.count % 8 == 0 else { throw ByteReader.Short() }
        let n = l.count / 8
        let (rowBytes, o1) = dimension.multipliedReportingOverflow(by: 4)
        let (total, o2) = n.multipliedReportingOverflow(by: rowBytes)
        guard !o1, !o2, v.count == total else { throw ByteReader.Short() }
        let index = FlatIndex(dimension: dimension, metric: metric, kernels: kernels)
        var labels = ByteReader(l), vectors = ByteReader(v)
        try index.rows.writing { () throws(ByteReader.Short) in
            index.reserve(n)
            for slot in 0..<n {
                let label = try labels.get(UInt64.self)
                // A label twice would leave a row no remove can reach.
                guard index.slotOfLabel[label] == nil else { throw ByteReader.Short() }
                try vectors.copy(dimension * 4, to: index.storage + slot * index.stride)
                index.labels.append(label)
                index.slotOfLabel[label] = slot
            }
        }
        return index
    }

    /// Every (label, stored vector), in slot order.
    public func forEach(_ body: (UInt64, UnsafePointer<Float>) -> Void) {
        rows.reading { for (slot, label) in labels.enumerated() { body(label, storage + slot * stride) } }
    }
}
