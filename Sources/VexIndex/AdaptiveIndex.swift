import Synchronization
import VexKernels

/// Which index a collection uses: chosen by hand, or flat below a size and HNSW above it.
public enum IndexKind: Equatable, Sendable, CustomStringConvertible {
    case flat
    case hnsw
    /// Flat below `threshold` vectors, HNSW from there; back to flat below half of it.
    case automatic(threshold: Int)

    public static let defaultThreshold = 10_000

    public var description: String {
        switch self {
        case .flat: "flat"
        case .hnsw: "hnsw"
        case .automatic(let t): "auto:\(t)"
        }
    }

    /// Parses `flat`, `hnsw`, `auto` or `auto:N`.
    public init?(_ text: String) {
        switch text {
        case "flat": self = .flat
        case "hnsw": self = .hnsw
        case "auto": self = .automatic(threshold: IndexKind.defaultThreshold)
        default:
            guard text.hasPrefix("auto:"), let t = Int(text.dropFirst(5)), t > 0 else { return nil }
            self = .automatic(threshold: t)
        }
    }
}

/// One collection's index: a flat or an HNSW index behind the one protocol, switched (and the graph
/// compacted) by the writer as the collection grows, shrinks and deletes. A switch builds the new
/// index from every vector of the old one and then swaps; searches keep using the old one until the
/// swap, and only fetch the current index under `current`'s lock, never search under it.
public final class AdaptiveIndex: VectorIndex, @unchecked Sendable {
    public let dimension: Int
    public let metric: Metric
    public let kind: IndexKind
    public let parameters: HNSWParameters
    let kernels: DistanceKernels
    /// The index searches use.
    private let current: Mutex<any VectorIndex>
    /// Serialises changes: the graph and the flat index each take one writer at a time.
    let writes = Mutex<Void>(())

    public init(dimension: Int, metric: Metric, kind: IndexKind, parameters: HNSWParameters = HNSWParameters(), kernels: DistanceKernels) {
        self.dimension = dimension
        self.metric = metric
        self.kind = kind
        self.parameters = parameters
        self.kernels = kernels
        let first: any VectorIndex = kind == .hnsw
            ? HNSWIndex(dimension: dimension, metric: metric, kernels: kernels, parameters: parameters)
            : FlatIndex(dimension: dimension, metric: metric, kernels: kernels)
        current = Mutex(first)
    }

    init(restoring index: any VectorIndex, kind: IndexKind, parameters: HNSWParameters, kernels: DistanceKernels) {
        dimension = index.dimension
        metric = index.metric
        self.kind = kind
        self.parameters = parameters
        self.kernels = kernels
        current = Mutex(index)
    }

    /// The index in use now.
    public var active: any VectorIndex { current.withLock { $0 } }

    public var count: Int { active.count }

    /// What `user.vexfs.index` shows: the index in use and its parameters.
    public var summary: String {
        let now = active
        var s = now is HNSWIndex ? "hnsw \(parameters)" : "flat exact"
        if case .automatic(let t) = kind { s += " (auto: hnsw from \(t) vectors)" }
        return s
    }

    public func insert(label: UInt64, vector: UnsafeBufferPointer<Float>) throws(IndexError) {
        try writes.withLock { (_) throws(IndexError) in
            try active.insert(label: label, vector: vector)
            adapt()
        }
    }

    @discardableResult
    public func remove(label: UInt64) -> Bool {
        writes.withLock { _ in
            let removed = active.remove(label: label)
            if removed { adapt() }
            return removed
        }
    }

    public func search(_ query: UnsafeBufferPointer<Float>, k: Int, ef: Int?, filter: SearchFilter) throws(IndexError) -> [Neighbor] {
        try active.search(query, k: k, ef: ef, filter: filter)
    }

    /// Switches or compacts when the collection calls for it; called by the writer.
    private func adapt() {
        let now = active
        if case .automatic(let threshold) = kind {
            if let flat = now as? FlatIndex, flat.count >= threshold {
                swap(to: hnsw(from: flat))
                return
            }
            if let graph = now as? HNSWIndex, graph.count < threshold / 2 {
                let flat = FlatIndex(dimension: dimension, metric: metric, kernels: kernels, capacity: graph.count)
                graph.forEachLive { label, v in try? flat.insert(label: label, vector: UnsafeBufferPointer(start: v, count: dimension)) }
                swap(to: flat)
                return
            }
        }
        // Tombstones cost search time and memory: rebuild once they are a quarter of the graph.
        if let graph = now as? HNSWIndex, graph.nodeCount >= 1024, graph.nodeCount - graph.count > graph.nodeCount / 4 {
            swap(to: graph.compacted())
        }
    }

    private func hnsw(from flat: FlatIndex) -> HNSWIndex {
        var rows: [UnsafePointer<Float>] = []
        flat.forEach { _, v in rows.append(v) }
        let q = ScalarQuantizer.train(metric: metric, dimension: dimension, count: rows.count) { rows[$0] }
        let graph = HNSWIndex(dimension: dimension, metric: metric, kernels: kernels, parameters: parameters, quantizer: q)
        flat.forEach { label, v in try? graph.insert(label: label, vector: UnsafeBufferPointer(start: v, count: dimension)) }
        return graph
    }

    private func swap(to index: any VectorIndex) { current.withLock { $0 = index } }

    /// Every live (label, stored vector).
    public func forEach(_ body: (UInt64, UnsafePointer<Float>) -> Void) {
        let now = active
        if let flat = now as? FlatIndex { flat.forEach(body) } else if let graph = now as? HNSWIndex { graph.forEachLive(body) }
    }

    /// Holds off changes while `body` runs (snapshots).
    func withWritesHeld<R>(_ body: () -> R) -> R { writes.withLock { _ in body() } }
}
