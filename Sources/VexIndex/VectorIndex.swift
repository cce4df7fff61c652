// VexIndex holds the vectors of one collection and answers nearest-neighbour queries over them. It
// knows nothing of files or FUSE: a vector is a label (a stable 64-bit id chosen by the caller) and
// `dimension` floats. Every index speaks `VectorIndex`: insert (which also updates an existing
// label), remove, search for the k nearest. Distances are those users see (PRODUCT.md §3): the
// Euclidean distance for `l2`, 1 - cosine similarity for `cosine`, and 1 - inner product for `dot`;
// nearest first, ties in label order, so an answer is the same every time. The module owns:
// `FlatIndex`, exact, the reference the approximate index is tested against; `HNSWIndex`, the graph
// (int8 traversal, float32 re-ranking, lock-free searches beside one writer); `AdaptiveIndex`, which
// picks one by size and switches or compacts without losing a vector; and `PersistentIndex`, which
// keeps an index in a directory as a checksummed LZ4 snapshot (SnapshotFile.swift); what changed
// since the last snapshot, the owner reads again from its files. All distance arithmetic goes
// through VexKernels.
import VexKernels

public enum Metric: String, CaseIterable, Sendable {
    case l2, cosine, dot
}

public struct Neighbor: Equatable, Sendable, CustomStringConvertible {
    public let label: UInt64
    public let distance: Float
    public init(label: UInt64, distance: Float) {
        self.label = label
        self.distance = distance
    }
    public var description: String { "\(label)\t\(distance)" }
}

public enum IndexError: Error, Equatable, CustomStringConvertible {
    case wrongDimension(expected: Int, got: Int)
    case notFinite(position: Int)
    case badK(Int)
    /// No room for more vectors (the graph's size bound, or the disk).
    case full(String)

    public var description: String {
        switch self {
        case .wrongDimension(let e, let g): "the vector has \(g) numbers, the collection \(e)"
        case .notFinite(let p): "number \(p + 1) is not finite"
        case .badK(let k): "k must be from 1 to 1000, not \(k)"
        case .full(let why): why
        }
    }
}

public protocol VectorIndex: AnyObject, Sendable {
    var dimension: Int { get }
    var metric: Metric { get }
    /// Vectors held (removed ones excluded).
    var count: Int { get }
    /// Adds `vector` under `label`, replacing what the label held before.
    func insert(label: UInt64, vector: UnsafeBufferPointer<Float>) throws(IndexError)
    /// Adds row i of `vectors` under `labels[i]` (a later row wins over an earlier one with the same
    /// label), on up to `threads` threads where the index can build in parallel.
    func insert(batch labels: [UInt64], vectors: UnsafeBufferPointer<Float>, threads: Int) throws(IndexError)
    /// Removes `label`; false when it was not there.
    @discardableResult func remove(label: UInt64) -> Bool
    /// The stored vector of `label` (normalised for cosine); nil when it is not held.
    func vector(of label: UInt64) -> [Float]?
    /// The `k` nearest vectors to `query` that `filter` allows, nearest first. `ef` is the
    /// approximate indexes' search breadth; the exact index ignores it.
    func search(_ query: UnsafeBufferPointer<Float>, k: Int, ef: Int?, filter: SearchFilter) throws(IndexError) -> [Neighbor]
}

/// Which labels a search may return: all but `excluding` (a vector's own label), and of those only
/// what `accept` allows. The predicate is asked inside the search, before k is cut, so a filter
/// that keeps few labels still gets k of them (the walk grows longer instead).
public struct SearchFilter {
    public var excluding: UInt64?
    public var accept: ((UInt64) -> Bool)?

    public init(excluding: UInt64? = nil, accept: ((UInt64) -> Bool)? = nil) {
        self.excluding = excluding
        self.accept = accept
    }

    @inline(__always)
    func allows(_ label: UInt64) -> Bool {
        label != excluding && (accept == nil || accept!(label))
    }
}

extension VectorIndex {
    /// One row at a time: the indexes that cannot build in parallel.
    public func insert(batch labels: [UInt64], vectors: UnsafeBufferPointer<Float>, threads: Int) throws(IndexError) {
        guard vectors.count == labels.count * dimension else { throw .wrongDimension(expected: dimension, got: vectors.count / max(labels.count, 1)) }
        for (row, label) in labels.enumerated() {
            try insert(label: label, vector: UnsafeBufferPointer(rebasing: vectors[(row * dimension)..<((row + 1) * dimension)]))
        }
    }

    public func search(_ query: UnsafeBufferPointer<Float>, k: Int, ef: Int?, excluding: UInt64?) throws(IndexError) -> [Neighbor] {
        try search(query, k: k, ef: ef, filter: SearchFilter(excluding: excluding))
    }

    public func insert(label: UInt64, vector: [Float]) throws(IndexError) {
        try vector.withUnsafeBufferPointer { (p) throws(IndexError) in try insert(label: label, vector: p) }
    }

    public func search(_ query: [Float], k: Int, ef: Int? = nil, excluding: UInt64? = nil) throws(IndexError) -> [Neighbor] {
        try query.withUnsafeBufferPointer { (p) throws(IndexError) in try search(p, k: k, ef: ef, excluding: excluding) }
    }
}

/// Checks a vector before it reaches an index: the right length, every number finite.
func validate(_ v: UnsafeBufferPointer<Float>, dimension: Int) throws(IndexError) {
    guard v.count == dimension else { throw .wrongDimension(expected: dimension, got: v.count) }
    for (i, x) in v.enumerated() where !x.isFinite { throw .notFinite(position: i) }
}

/// Checks a batch (`rows` vectors laid end to end) before any of it reaches an index.
func validate(batch vectors: UnsafeBufferPointer<Float>, rows: Int, dimension: Int) throws(IndexError) {
    guard vectors.count == rows * dimension else {
        throw .wrongDimension(expected: dimension, got: rows == 0 ? vectors.count : vectors.count / rows)
    }
    for row in 0..<rows { try validate(UnsafeBufferPointer(rebasing: vectors[(row * dimension)..<((row + 1) * dimension)]), dimension: dimension) }
}

extension Metric {
    /// What the metric stores: cosine keeps unit vectors, so it can rank by inner product.
    func prepare(_ v: UnsafeBufferPointer<Float>, into out: UnsafeMutablePointer<Float>, kernels: DistanceKernels) {
        out.update(from: v.baseAddress!, count: v.count)
        guard self == .cosine else { return }
        let norm = kernels.dot(out, out, v.count).squareRoot()
        if norm > 0 { for i in 0..<v.count { out[i] /= norm } }
    }

    /// The kernel's raw score, turned into the distance users see.
    func userDistance(_ raw: Float) -> Float {
        switch self {
        case .l2: max(raw, 0).squareRoot()
        case .cosine, .dot: 1 - raw
        }
    }
}

/// Keeps the k best candidates seen so far: a max-heap on (distance, label), so the worst is on top.
struct TopK {
    private(set) var items: [Neighbor] = []
    let k: Int

    init(k: Int) {
        self.k = k
        items.reserveCapacity(k)
    }

    @inline(__always)
    static func worse(_ a: Neighbor, _ b: Neighbor) -> Bool {
        a.distance > b.distance || (a.distance == b.distance && a.label > b.label)
    }

    /// The distance a candidate must beat once the heap is full.
    var bound: Float { items.count < k ? .infinity : items[0].distance }

    mutating func offer(_ n: Neighbor) {
        if items.count < k {
            items.append(n)
            var i = items.count - 1
            while i > 0 {
                let parent = (i - 1) / 2
                guard TopK.worse(items[i], items[parent]) else { break }
                items.swapAt(i, parent)
                i = parent
            }
        } else if TopK.worse(items[0], n) {
            items[0] = n
            var i = 0
            while true {
                let l = 2 * i + 1, r = l + 1
                var top = i
                if l < items.count && TopK.worse(items[l], items[top]) { top = l }
                if r < items.count && TopK.worse(items[r], items[top]) { top = r }
                if top == i { break }
                items.swapAt(i, top)
                i = top
            }
        }
    }

    /// Nearest first, ties by label.
    func sorted() -> [Neighbor] { items.sorted { TopK.worse($1, $0) } }
}
