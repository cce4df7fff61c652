import CKernels
import Glibc
import Synchronization
import VexKernels

/// The knobs of the graph, named as in the HNSW paper and hnswlib.
public struct HNSWParameters: Equatable, Sendable, CustomStringConvertible {
    /// Links per node above level 0; level 0 has 2 * m.
    public var m: Int
    public var efConstruction: Int
    /// The search breadth when a query names none.
    public var efSearch: Int
    /// Seeds the level draw, so a build is reproducible.
    public var seed: UInt64
    /// Searches walk the graph on int8 codes (then re-rank in float32); off: on the float32 vectors.
    public var int8Traversal = true
    /// Construction measures on the int8 codes too, once they are trained (off: on float32).
    public var int8Construction = true
    /// A search's hop at level 0 expands this many of the nearest candidates together (each still
    /// near enough to be kept), so their neighbours' codes are fetched from memory together.
    public var hopWidth = 3

    public init(m: Int = 16, efConstruction: Int = 200, efSearch: Int = 64, seed: UInt64 = 0x5eed) {
        self.m = m
        self.efConstruction = efConstruction
        self.efSearch = efSearch
        self.seed = seed
    }

    public var description: String { "m=\(m) ef_construction=\(efConstruction) ef_search=\(efSearch)" }
}

/// The approximate index: a hierarchical navigable small-world graph.
///
/// Memory: nodes live in chunks of 4,096 fixed-size blocks that never move, so searches can run
/// while the writer adds chunks. A node's block holds its int8 code (cache-line aligned: what a
/// traversal reads) and then its level-0 header and links: what a hop reads is one stretch of
/// memory. The float32 vectors (read to build before the quantizer is trained, and to re-rank a
/// search's last candidates) live apart, in a `VectorSlab`: in memory, or in a file the kernel
/// pages. Links above level 0 are rare (1 node in m) and live in a small side allocation per node.
///
/// Concurrency: one writer at a time (`writer`), any number of searches, and no lock across a
/// search. The writer publishes a node (block, label, side links) before any link points to it and
/// before `published` counts it; a link list is rewritten id by id and its count stored last, each
/// word whole, so a search reads some mix of old and new ids, all of them real nodes. Searches ignore
/// ids at or past the count they started with.
///
/// Deletes mark the node; searches still walk through it but never return it, and the writer relinks
/// the deleted node's neighbours among themselves so the graph stays connected. `compacted()` builds
/// a clean graph from the live vectors; the owner swaps it in.
public final class HNSWIndex: VectorIndex, @unchecked Sendable {
    public let dimension: Int
    public let metric: Metric
    public let parameters: HNSWParameters
    let kernels: DistanceKernels
    /// Whether searches walk on the int8 codes: asked for, and exact at this dimension (past the
    /// bound where their Int32 sums could overflow, the walk is in float32).
    let walksOnCodes: Bool

    // Block layout, in bytes from the block's start.
    let codeBytes: Int
    let headerOffset: Int   // UInt8 level, UInt8 deleted, 2 spare, then the level-0 count and links
    let blockSize: Int
    /// The float32 vectors, row n for node n.
    let vectors: VectorSlab
    let storage: VectorStorage
    let maxLinks0: Int
    let upperStride: Int     // UInt32s per level above 0: count, then m ids

    static let chunkShift = 12
    static let chunkNodes = 1 << chunkShift
    static let maxChunks = 1 << 16
    /// Chunk memory: blocks, then labels (UInt64), then side-link pointers, then one deleted bit per
    /// node. The bits repeat the block header's flag densely: a search asks it of every node it
    /// keeps, and a whole chunk's bits are 8 lines where the headers are 4,096.
    let chunks: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    let labelsOffset: Int
    let upperOffset: Int
    let deletedOffset: Int
    let chunkBytes: Int

    /// Nodes a search may visit; stored (release) after a node is complete.
    let published = Atomic<Int>(0)
    /// The entry point: (top level + 1) << 32 | node, 0 while empty.
    let entry = Atomic<UInt64>(0)
    let liveCount = Atomic<Int>(0)
    /// Set at the first delete: from then on searches keep deleted nodes out of their count of results.
    let anyDeleted = Atomic<Bool>(false)
    /// The largest label ever placed: a label above it was never in the graph.
    let labelCeiling = Atomic<UInt64>(0)
    /// Set once the quantizer is trained and every published node has its code.
    let quantized = Atomic<Bool>(false)
    /// Written once, before `quantized` is set; read by searches only after they see it set.
    private(set) var quantizer: ScalarQuantizer
    /// How many vectors train the quantizer when none is given.
    let trainingSize = 1024

    /// Guards the writer's state below and every change to the graph.
    let writer = Mutex<WriterState>(WriterState())
    struct WriterState: ~Copyable {
        var nodeOfLabel: [UInt64: UInt32] = [:]
        var deleted = 0
        var chunkCount = 0
        var random = SplitMixRandom(seed: 0)
    }

    private let scratch = Mutex<[SearchScratch]>([])

    /// A new, empty graph. With `.files` storage its vectors go to a new file in that directory;
    /// if the file cannot be made, they stay in memory (an index is rebuilt from the store's files,
    /// so this costs memory, never data).
    public convenience init(dimension: Int, metric: Metric, kernels: DistanceKernels, parameters: HNSWParameters = HNSWParameters(),
                            quantizer: ScalarQuantizer? = nil, storage: VectorStorage = .memory) {
        let slab: VectorSlab
        if case .files(let directory) = storage, let file = try? VectorSlab.newFile(dimension: dimension, in: directory) {
            slab = file
        } else {
            slab = VectorSlab.memory(dimension: dimension)
        }
        self.init(dimension: dimension, metric: metric, kernels: kernels, parameters: parameters, quantizer: quantizer,
                  vectors: slab, storage: storage)
    }

    init(dimension: Int, metric: Metric, kernels: DistanceKernels, parameters: HNSWParameters,
         quantizer: ScalarQuantizer?, vectors: VectorSlab, storage: VectorStorage) {
        precondition(dimension > 0 && parameters.m >= 2 && parameters.efConstruction >= 1)
        self.dimension = dimension
        self.metric = metric
        self.kernels = kernels
        self.parameters = parameters
        walksOnCodes = parameters.int8Traversal
            && dimension <= (metric == .l2 ? Int8Exactness.l2Dimensions : Int8Exactness.dotDimensions)
        maxLinks0 = 2 * parameters.m
        upperStride = 1 + parameters.m
        codeBytes = (dimension + 63) / 64 * 64
        headerOffset = codeBytes
        blockSize = (headerOffset + 8 + 4 * maxLinks0 + 63) / 64 * 64  // whole lines: aligned codes build faster
        self.vectors = vectors
        self.storage = storage
        labelsOffset = HNSWIndex.chunkNodes * blockSize
        upperOffset = labelsOffset + 8 * HNSWIndex.chunkNodes
        deletedOffset = upperOffset + 8 * HNSWIndex.chunkNodes
        chunkBytes = deletedOffset + HNSWIndex.chunkNodes / 8
        chunks = .allocate(capacity: HNSWIndex.maxChunks)
        chunks.initialize(repeating: nil, count: HNSWIndex.maxChunks)
        self.quantizer = quantizer ?? ScalarQuantizer(scale: 1, offsets: [Float](repeating: 0, count: dimension))
        writer.withLock { $0.random = SplitMixRandom(seed: parameters.seed) }
        if quantizer != nil { quantized.store(true, ordering: .releasing) }
    }

    deinit {
        let n = published.load(ordering: .acquiring)
        for node in 0..<n where level(UInt32(node)) > 0 { upperLinks(UInt32(node))?.deallocate() }
        var c = 0
        while c < HNSWIndex.maxChunks, let chunk = chunks[c] { free(chunk); c += 1 }
        chunks.deallocate()
        // A file no snapshot ever named is nobody's; a named one goes at the next snapshot after.
        if let path = vectors.path, !namedBySnapshot.load(ordering: .relaxed) { unlink(path) }
    }

    /// Set once a snapshot names this graph's vector file.
    let namedBySnapshot = Atomic<Bool>(false)

    // MARK: Node access (raw memory; valid for any published node)

    @inline(__always) func block(_ node: UInt32) -> UnsafeMutableRawPointer {
        chunks[Int(node >> UInt32(HNSWIndex.chunkShift))].unsafelyUnwrapped
            + Int(node & UInt32(HNSWIndex.chunkNodes - 1)) * blockSize
    }
    @inline(__always) func code(_ node: UInt32) -> UnsafeMutablePointer<Int8> {
        block(node).assumingMemoryBound(to: Int8.self)
    }
    @inline(__always) func vector(_ node: UInt32) -> UnsafeMutablePointer<Float> { vectors.row(node) }
    @inline(__always) func level(_ node: UInt32) -> Int {
        Int(block(node).load(fromByteOffset: headerOffset, as: UInt8.self))
    }
    @inline(__always) func isDeleted(_ node: UInt32) -> Bool {
        vx_load_u8(deletedByte(node)) & (1 << UInt8(node & 7)) != 0
    }
    @inline(__always) func deletedByte(_ node: UInt32) -> UnsafeMutablePointer<UInt8> {
        (chunkBase(node) + deletedOffset + Int(node & UInt32(HNSWIndex.chunkNodes - 1)) >> 3).assumingMemoryBound(to: UInt8.self)
    }
    /// Marks `node` deleted in its header (what a snapshot keeps) and in the dense bits; the
    /// writer's job, so the byte's other bits cannot change under it.
    func markDeleted(_ node: UInt32) {
        anyDeleted.store(true, ordering: .relaxed)
        vx_store_u8((block(node) + headerOffset + 1).assumingMemoryBound(to: UInt8.self), 1)
        vx_store_u8(deletedByte(node), vx_load_u8(deletedByte(node)) | (1 << UInt8(node & 7)))
    }
    @inline(__always) func chunkBase(_ node: UInt32) -> UnsafeMutableRawPointer {
        chunks[Int(node >> UInt32(HNSWIndex.chunkShift))].unsafelyUnwrapped
    }
    @inline(__always) func label(_ node: UInt32) -> UInt64 {
        (chunkBase(node) + labelsOffset).load(fromByteOffset: Int(node & UInt32(HNSWIndex.chunkNodes - 1)) * 8, as: UInt64.self)
    }
    @inline(__always) func upperLinks(_ node: UInt32) -> UnsafeMutablePointer<UInt32>? {
        (chunkBase(node) + upperOffset).load(fromByteOffset: Int(node & UInt32(HNSWIndex.chunkNodes - 1)) * 8,
                                             as: UnsafeMutablePointer<UInt32>?.self)
    }
    /// The link list of `node` at `level`: its count word, followed by the ids.
    @inline(__always) func links(_ node: UInt32, _ level: Int) -> UnsafeMutablePointer<UInt32> {
        if level == 0 { return (block(node) + headerOffset + 4).assumingMemoryBound(to: UInt32.self) }
        return upperLinks(node).unsafelyUnwrapped + (level - 1) * upperStride
    }
    @inline(__always) func maxLinks(_ level: Int) -> Int { level == 0 ? maxLinks0 : parameters.m }

    public var count: Int { liveCount.load(ordering: .relaxed) }
    /// The search breadth when none is asked for. Inner product is not a distance, and a graph built
    /// on it needs about twice the breadth for the same recall (measured: 0.93 at 64, 0.97 at 128 on
    /// the clustered test set, where l2 and cosine reach 0.99 at 64).
    public var defaultEf: Int { metric == .dot ? 2 * parameters.efSearch : parameters.efSearch }
    /// Nodes in the graph, deleted ones included.
    public var nodeCount: Int { published.load(ordering: .acquiring) }
    public var deletedCount: Int { writer.withLock { $0.deleted } }

    /// Bytes this index holds: chunks, side links, the label map, the quantizer.
    public var memoryBytes: Int {
        writer.withLock { state in
            var bytes = state.chunkCount * chunkBytes + HNSWIndex.maxChunks * 8
            if !vectors.isFile { bytes += vectors.chunks * vectors.chunkBytes }
            let n = published.load(ordering: .acquiring)
            for node in 0..<n { bytes += level(UInt32(node)) * upperStride * 4 }
            // A Swift dictionary keeps a key, a value and a metadata byte per slot, at most 3/4 full.
            bytes += state.nodeOfLabel.capacity * 13
            return bytes + dimension * 4
        }
    }

    // MARK: Writing

    public func insert(label: UInt64, vector v: UnsafeBufferPointer<Float>) throws(IndexError) {
        try validate(v, dimension: dimension)
        defer { vectors.release() }
        try writer.withLock { (state) throws(IndexError) in
            let node = UInt32(published.load(ordering: .relaxed))
            try allocateChunks(through: Int(node), &state)
            if let old = state.nodeOfLabel[label] { delete(old, &state) }
            add(node, label: label, v.baseAddress!, &state)
            state.nodeOfLabel[label] = node
            liveCount.add(1, ordering: .relaxed)
            if !quantized.load(ordering: .relaxed) && Int(node) + 1 >= trainingSize { train() }
        }
    }

    /// A label above every label ever placed was never in the graph: that is answered without the
    /// writer's lock, which a link holds for a millisecond (a writer's insert of a new label into
    /// the index beside the graph went on waiting for it).
    @discardableResult
    public func remove(label: UInt64) -> Bool {
        guard label <= labelCeiling.load(ordering: .acquiring) else { return false }
        return writer.withLock { state in
            guard let node = state.nodeOfLabel.removeValue(forKey: label) else { return false }
            delete(node, &state)
            return true
        }
    }

    /// The live count and those of `labels` the graph holds, read together.
    func count(holding labels: [UInt64]) -> (Int, [UInt64]) {
        writer.withLock { state in (liveCount.load(ordering: .relaxed), labels.filter { state.nodeOfLabel[$0] != nil }) }
    }

    /// Those of `labels` the graph holds.
    func held(_ labels: [UInt64]) -> [UInt64] {
        let ceiling = labelCeiling.load(ordering: .acquiring)
        return writer.withLock { state in labels.filter { $0 <= ceiling && state.nodeOfLabel[$0] != nil } }
    }

    /// Marks the nodes of `labels` deleted without relinking their neighbours, for a graph about to
    /// be rebuilt without them (`AdaptiveIndex.remove(labels:)`); searches still pass through them.
    /// Returns how many it held.
    func tombstone(labels: [UInt64]) -> Int {
        writer.withLock { state in
            var removed = 0
            for label in labels {
                guard let node = state.nodeOfLabel.removeValue(forKey: label) else { continue }
                markDeleted(node)
                liveCount.subtract(1, ordering: .relaxed)
                state.deleted += 1
                removed += 1
            }
            return removed
        }
    }

    /// Marks `node` deleted and relinks its neighbours around it.
    func delete(_ node: UInt32, _ state: inout WriterState) {
        markDeleted(node)
        liveCount.subtract(1, ordering: .relaxed)
        state.deleted += 1
        for l in 0...level(node) {
            let own = links(node, l)
            let ownCount = Int(own[0])
            for j in 0..<ownCount {
                let neighbor = own[1 + j]
                if isDeleted(neighbor) { continue }
                let list = links(neighbor, l)
                let n = Int(list[0])
                guard (0..<n).contains(where: { list[1 + $0] == node }) else { continue }
                var candidates: [(Float, UInt32)] = []
                candidates.reserveCapacity(n + ownCount)
                for i in 0..<n where list[1 + i] != node && !isDeleted(list[1 + i]) {
                    candidates.append((distance(list[1 + i], neighbor), list[1 + i]))
                }
                for i in 0..<ownCount where own[1 + i] != neighbor && !isDeleted(own[1 + i]) {
                    let c = own[1 + i]
                    if !candidates.contains(where: { $0.1 == c }) { candidates.append((distance(c, neighbor), c)) }
                }
                candidates.sort { $0.0 < $1.0 || ($0.0 == $1.0 && $0.1 < $1.1) }
                write(selectNeighbors(candidates, max: maxLinks(l)), to: list)
            }
        }
    }

    /// Creates `node` and links it into the graph.
    private func add(_ node: UInt32, label: UInt64, _ v: UnsafePointer<Float>, _ state: inout WriterState) {
        let level = drawLevel(&state)
        place(node, label: label, v, level: level)
        published.store(Int(node) + 1, ordering: .releasing)
        let top = entry.load(ordering: .relaxed)
        guard top != 0 else {
            entry.store(UInt64(level + 1) << 32 | UInt64(node), ordering: .releasing)
            return
        }
        let s = takeScratch()
        defer { putScratch(s) }
        link(node, level: level, top: top, limit: Int(node), locks: nil, scratch: s)
        if level > Int(top >> 32) - 1 { entry.store(UInt64(level + 1) << 32 | UInt64(node), ordering: .releasing) }
    }

    /// Makes sure the chunks holding nodes up to `last` exist (the writer's job, before any node in
    /// them is written: chunks never move once made), and notes their vectors as written.
    func allocateChunks(through last: Int, _ state: inout WriterState) throws(IndexError) {
        let needed = last >> HNSWIndex.chunkShift
        guard needed < HNSWIndex.maxChunks else { throw .full("the graph holds at most \(HNSWIndex.maxChunks * HNSWIndex.chunkNodes) nodes") }
        while vectors.chunks <= needed {
            do { try vectors.makeChunk(vectors.chunks) } catch { throw .full("no room for the vectors: \(error)") }
        }
        while state.chunkCount <= needed {
            let memory = UnsafeMutableRawPointer(aligned_alloc(64, chunkBytes))!
            memset(memory, 0, chunkBytes)
            chunks[state.chunkCount] = memory
            state.chunkCount += 1
        }
        let first = published.load(ordering: .relaxed) >> HNSWIndex.chunkShift
        vectors.wrote(chunks: min(first, needed)..<(needed + 1))
    }

    func drawLevel(_ state: inout WriterState) -> Int {
        min(Int(-log(state.random.unit()) / log(Double(parameters.m))), 15)
    }

    /// Writes `node`'s block, label and side links; it has no links yet and nothing points to it.
    func place(_ node: UInt32, label: UInt64, _ v: UnsafePointer<Float>, level: Int) {
        let b = block(node)
        metric.prepare(UnsafeBufferPointer(start: v, count: dimension), into: vector(node), kernels: kernels)
        vectors.summed(node)
        if quantized.load(ordering: .relaxed) { quantizer.encode(vector(node), into: code(node)) }
        b.storeBytes(of: UInt8(level), toByteOffset: headerOffset, as: UInt8.self)
        b.storeBytes(of: 0, toByteOffset: headerOffset + 1, as: UInt8.self)
        b.storeBytes(of: 0, toByteOffset: headerOffset + 4, as: UInt32.self)
        let slot = Int(node & UInt32(HNSWIndex.chunkNodes - 1))
        (chunkBase(node) + labelsOffset).storeBytes(of: label, toByteOffset: slot * 8, as: UInt64.self)
        labelCeiling.max(label, ordering: .releasing)
        if level > 0 {
            let upper = UnsafeMutablePointer<UInt32>.allocate(capacity: level * upperStride)
            upper.initialize(repeating: 0, count: level * upperStride)
            (chunkBase(node) + upperOffset).storeBytes(of: upper, toByteOffset: slot * 8, as: UnsafeMutablePointer<UInt32>?.self)
        }
    }

    /// Whether construction measures on the int8 codes: cheaper reads (a code is a quarter of the
    /// vector), and the graph's recall held in the GloVe-50 and clustered benchmarks.
    var buildsOnCodes: Bool { walksOnCodes && parameters.int8Construction && quantized.load(ordering: .acquiring) }

    /// Links the placed `node` (drawn at `level`) into the graph entered at `top`, considering nodes
    /// below `limit`. With `locks`, other threads link other nodes at the same time: every change to
    /// a link list is made under that list's lock.
    func link(_ node: UInt32, level: Int, top: UInt64, limit: Int, locks: LinkLocks?, scratch s: SearchScratch) {
        if buildsOnCodes {
            link(node, level: level, top: top, limit: limit, locks: locks, scratch: s,
                 measure: CodeMeasure(index: self, query: code(node), l2: metric == .l2), onCodes: true)
        } else {
            link(node, level: level, top: top, limit: limit, locks: locks, scratch: s,
                 measure: FloatMeasure(index: self, query: vector(node)), onCodes: false)
        }
    }

    private func link<M: NodeMeasure>(_ node: UInt32, level: Int, top: UInt64, limit: Int, locks: LinkLocks?,
                                      scratch s: SearchScratch, measure: M, onCodes: Bool) {
        let topLevel = Int(top >> 32) - 1
        var current = UInt32(truncatingIfNeeded: top)
        var currentDistance = measure.distance(current)
        if topLevel > level {
            for l in stride(from: topLevel, to: level, by: -1) {
                greedy(&current, &currentDistance, level: l, limit: limit, measure: measure)
            }
        }
        for l in stride(from: min(level, topLevel), through: 0, by: -1) {
            searchLayer(from: current, distance: currentDistance, ef: parameters.efConstruction, level: l,
                        limit: limit, measure: measure, filter: SearchFilter(), scratch: s)
            var found = s.results.drainSorted()
            found.removeAll { $0.1 == node }
            let chosen = selectNeighbors(found, max: parameters.m, onCodes: onCodes)
            locks?.lock(node)
            write(chosen, to: links(node, l))
            locks?.unlock(node)
            for (_, other) in chosen {
                locks?.lock(other)
                connect(other, to: node, level: l, onCodes: onCodes)
                locks?.unlock(other)
            }
            if let nearest = found.first { (currentDistance, current) = nearest }
        }
    }

    /// Adds a link other -> node at `level`, pruning other's list with the heuristic when it is full.
    private func connect(_ other: UInt32, to node: UInt32, level l: Int, onCodes: Bool) {
        let list = links(other, l)
        let n = Int(list[0])
        if n < maxLinks(l) {
            vx_store_u32(list + 1 + n, node)
            vx_store_release_u32(list, UInt32(n + 1))
            return
        }
        var candidates: [(Float, UInt32)] = [(distance(node, other, onCodes: onCodes), node)]
        candidates.reserveCapacity(n + 1)
        for i in 0..<n {
            let id = vx_load_u32(list + 1 + i)
            candidates.append((distance(id, other, onCodes: onCodes), id))
        }
        candidates.sort { $0.0 < $1.0 || ($0.0 == $1.0 && $0.1 < $1.1) }
        write(selectNeighbors(candidates, max: maxLinks(l), onCodes: onCodes), to: list)
    }

    /// Rewrites a link list in place: ids first, the count last.
    private func write(_ chosen: [UInt32], to list: UnsafeMutablePointer<UInt32>) {
        for (i, id) in chosen.enumerated() { vx_store_u32(list + 1 + i, id) }
        vx_store_release_u32(list, UInt32(chosen.count))
    }

    private func write(_ chosen: [(Float, UInt32)], to list: UnsafeMutablePointer<UInt32>) {
        write(chosen.map(\.1), to: list)
    }

    /// The HNSW heuristic: keep a candidate (nearest first) only if it is nearer to the base than to
    /// every neighbour kept so far, which spreads links across directions.
    private func selectNeighbors(_ sorted: [(Float, UInt32)], max: Int, onCodes: Bool = false) -> [(Float, UInt32)] {
        guard sorted.count > max else { return sorted }
        var kept: [(Float, UInt32)] = []
        kept.reserveCapacity(max)
        for candidate in sorted {
            if kept.count == max { break }
            if kept.allSatisfy({ kept in distance(candidate.1, kept.1, onCodes: onCodes) >= candidate.0 }) { kept.append(candidate) }
        }
        return kept
    }

    /// Ranking distance between two stored vectors (squared l2, or negated inner product).
    @inline(__always) func distance(_ a: UInt32, _ b: UInt32) -> Float {
        metric == .l2 ? kernels.l2Squared(vector(a), vector(b), dimension) : -kernels.dot(vector(a), vector(b), dimension)
    }

    /// The same in the units of the int8 codes (scaled by 1/scale², up to rounding), or the float one.
    @inline(__always) func distance(_ a: UInt32, _ b: UInt32, onCodes: Bool) -> Float {
        guard onCodes else { return distance(a, b) }
        return metric == .l2 ? Float(kernels.l2SquaredInt8(code(a), code(b), dimension)) : -Float(kernels.dotInt8(code(a), code(b), dimension))
    }

    /// Trains the quantizer on the first `count` nodes (the published ones by default) and codes
    /// them all; then searches use codes.
    func train(count: Int? = nil) {
        let n = count ?? published.load(ordering: .relaxed)
        quantizer = ScalarQuantizer.train(metric: metric, dimension: dimension, count: n) { UnsafePointer(vector(UInt32($0))) }
        for node in 0..<n { quantizer.encode(vector(UInt32(node)), into: code(UInt32(node))) }
        quantized.store(true, ordering: .releasing)
    }

    // MARK: Searching

    public func search(_ query: UnsafeBufferPointer<Float>, k: Int, ef: Int?, filter: SearchFilter) throws(IndexError) -> [Neighbor] {
        try search(query, k: k, ef: ef, filter: filter, avoiding: nil)
    }

    /// A search that walks as if `avoiding` were not in the graph (recall measurement: a vector of
    /// the graph asked as if it were new), and, with `nodesBelow`, as if only the nodes below it
    /// were: a measurement's exact answers cover the nodes published when it started, and nodes
    /// the writer links meanwhile would otherwise crowd them out of the answers compared (seen:
    /// recall@10 0.6 at ef 1,000 on 1,500 vectors while they were being written).
    func search(_ query: UnsafeBufferPointer<Float>, k: Int, ef: Int?, filter: SearchFilter, avoiding: UInt32?,
                nodesBelow: Int? = nil, widenBeyond reach: Float? = nil, widenFrom from: Int? = nil) throws(IndexError) -> [Neighbor] {
        guard (1...1000).contains(k) else { throw .badK(k) }
        try validate(query, dimension: dimension)
        // The entry is published after its node, so it is below the limit read first, but may not
        // be below `nodesBelow` (the walk then starts from it and leaves it out of the answer).
        let limit = min(published.load(ordering: .acquiring), nodesBelow ?? .max)
        let top = entry.load(ordering: .acquiring)
        guard top != 0, limit > 0 else { return [] }
        let s = takeScratch()
        defer { putScratch(s) }
        metric.prepare(query, into: s.query, kernels: kernels)
        let breadth = max(ef ?? defaultEf, k)
        let found: [Neighbor]
        if walksOnCodes && quantized.load(ordering: .acquiring) {
            quantizer.encode(s.query, into: s.code)
            let measure = CodeMeasure(index: self, query: s.code, l2: metric == .l2)
            if let avoiding {
                found = answer(top: top, ef: breadth, k: k, limit: limit, measure: Avoiding(inner: measure, node: avoiding), filter: filter,
                               reach: reach, from: from ?? breadth, scratch: s)
            } else {
                found = answer(top: top, ef: breadth, k: k, limit: limit, measure: measure, filter: filter, reach: reach, from: from ?? breadth,
                               scratch: s)
            }
        } else {
            let measure = FloatMeasure(index: self, query: s.query)
            if let avoiding {
                found = answer(top: top, ef: breadth, k: k, limit: limit, measure: Avoiding(inner: measure, node: avoiding), filter: filter,
                               reach: reach, from: from ?? breadth, scratch: s)
            } else {
                found = answer(top: top, ef: breadth, k: k, limit: limit, measure: measure, filter: filter, reach: reach, from: from ?? breadth,
                               scratch: s)
            }
        }
        return found.prefix(k).map { Neighbor(label: $0.label, distance: userDistance(ranking: $0.distance)) }
    }

    /// The distance a user is shown for a ranking distance (squared l2, or negated inner product).
    @inline(__always) func userDistance(ranking d: Float) -> Float { metric.userDistance(metric == .l2 ? d : -d) }

    /// The answer's rank whose distance tells a query far from every calibration sample (`reach`).
    static let reachRank = 10
    /// The broadest a widening walk goes.
    static let widestBreadth = 1000

    /// Walks at `ef` and re-ranks; with a `reach`, a query whose `reachRank`th answer is farther
    /// than it walks on, twice as broad each round, until two rounds in a row leave the answer as
    /// it was (or the breadth is `widestBreadth`). `reach` is a high quantile of that distance on
    /// the queries the breadth was calibrated on: a query beyond it is unlike them, and the
    /// breadth says nothing about it (GloVe-50's 2,000 rarest words asked of its 50,000 most
    /// frequent: recall@10 0.68 at the breadth that gives held-out words 0.95). Queries like the
    /// samples walk once, as before. Without filter or deletes a round resumes the walk it widens
    /// (the pool kept, nodes measured stay measured); with them it walks again. A query past the
    /// reach goes on first to `from`, when that is broader than `ef`, and doubles from there: the
    /// rounds of a query unlike the sample are those of the breadth the sample passed at without
    /// widening, however narrow the breadth its like walk at (doubling from the narrower one, it
    /// stopped sooner: GloVe's rarest words lost their band, BENCHMARKS.md).
    private func answer<M: NodeMeasure>(top: UInt64, ef: Int, k: Int, limit: Int, measure: M, filter: SearchFilter, reach: Float?,
                                        from: Int, scratch s: SearchScratch) -> [Neighbor] {
        s.spilling = reach != nil
        defer { s.spilling = false }
        walk(top: top, ef: ef, limit: limit, measure: measure, filter: filter, scratch: s)
        guard let reach else { return rerank(k: k, scratch: s) }
        let want = max(k, HNSWIndex.reachRank)
        var found = rerank(k: want, scratch: s)
        guard found.count >= HNSWIndex.reachRank, userDistance(ranking: found[HNSWIndex.reachRank - 1].distance) > reach else { return found }
        func broaden(to breadth: Int) -> [Neighbor] {
            if s.pooled {
                resumePool(ef: breadth, limit: limit, measure: measure, hopWidth: max(1, min(parameters.hopWidth, SearchScratch.widest)), scratch: s)
            } else {
                walk(top: top, ef: breadth, limit: limit, measure: measure, filter: filter, scratch: s)
            }
            return rerank(k: want, scratch: s)
        }
        var breadth = ef, unchanged = 0
        if from > ef {
            breadth = min(from, HNSWIndex.widestBreadth)
            found = broaden(to: breadth)
        }
        while unchanged < 2 && breadth < HNSWIndex.widestBreadth {
            breadth = min(2 * breadth, HNSWIndex.widestBreadth)
            let wider = broaden(to: breadth)
            unchanged = wider.map(\.label) == found.map(\.label) ? unchanged + 1 : 0
            found = wider
        }
        return found
    }

    /// Re-ranks what the walk left in `scratch.results` with the float vectors: the `k` nearest,
    /// nearest first, in ranking distances. From a big vector file they are read (pread), not
    /// touched through the map: a fault there maps the 16 pages around the row too (the kernel's
    /// fault-around), and searches would soon have the whole file resident.
    private func rerank(k: Int, scratch s: SearchScratch) -> [Neighbor] {
        var best = TopK(k: k)
        let keep = HNSWIndex.rerankLimit(k: k)
        while s.results.count > keep { s.results.pop() }
        let found = s.results
        let fromFile = !vectors.mappedReads
        if !fromFile {
            // Each row is a miss of its own: asked for all at once, they overlap (one after
            // another they were a tenth of a query at ef 128).
            let bytes = dimension * MemoryLayout<Float>.stride
            for i in 0..<found.count {
                let row = UnsafeRawPointer(vector(found.base[i].id))
                var line = 0
                while line < bytes { vx_prefetch(row + line); line += 64 }
                vx_prefetch(row + bytes - 1)
            }
        }
        for i in 0..<found.count {
            let node = found.base[i].id
            let v = fromFile && vectors.read(node, into: s.row) ? UnsafePointer(s.row) : UnsafePointer(vector(node))
            let d = metric == .l2 ? kernels.l2Squared(s.query, v, dimension) : -kernels.dot(s.query, v, dimension)
            if d <= best.bound { best.offer(Neighbor(label: label(node), distance: d)) }
        }
        s.results.count = 0
        return best.sorted()
    }

    /// How many of the walk's nearest are re-ranked in float32: the int8 order is close enough that
    /// the true k nearest are among its first 4k (GloVe-50: recall@10 the same at 2k, 4k and all
    /// ef; each re-ranked row is a random read of the float vectors, 6% of a query at ef 128), and
    /// at least 40: at few dimensions int8 codes tie, and a k of 1 would trust their order.
    @inline(__always) static func rerankLimit(k: Int) -> Int { max(4 * k, 40) }

    private func walk<M: NodeMeasure>(top: UInt64, ef: Int, limit: Int, measure: M, filter: SearchFilter, scratch s: SearchScratch) {
        var current = UInt32(truncatingIfNeeded: top)
        var d = measure.distance(current)
        for l in stride(from: Int(top >> 32) - 1, to: 0, by: -1) {
            greedy(&current, &d, level: l, limit: limit, measure: measure)
        }
        searchLayer(from: current, distance: d, ef: ef, level: 0, limit: limit, measure: measure, filter: filter,
                    hopWidth: max(1, min(parameters.hopWidth, SearchScratch.widest)), scratch: s)
    }

    /// Moves to the nearest neighbour at `level` while that gets nearer.
    @inline(__always)
    func greedy<M: NodeMeasure>(_ current: inout UInt32, _ d: inout Float, level: Int, limit: Int, measure: M) {
        var changed = true
        while changed {
            changed = false
            let list = links(current, level)
            let n = min(Int(vx_load_acquire_u32(list)), maxLinks(level))
            for j in 0..<n {
                let id = vx_load_u32(list + 1 + j)
                if Int(id) >= limit { continue }
                let e = measure.distance(id)
                if e < d { d = e; current = id; changed = true }
            }
        }
    }

    /// The beam search of one level: leaves the `ef` nearest acceptable nodes in `scratch.results`.
    ///
    /// A hop prefetches the next candidates' links while this one's unvisited neighbours are
    /// measured (`measureUnvisited`). It expands up to `hopWidth` candidates at once, all still
    /// within the bound, and measures their neighbours in one kernel call: the misses overlap, and
    /// GloVe-50 answered 6% more queries a second at a slightly higher recall (construction keeps
    /// one). Without a filter or deletes the walk runs on a sorted array (`searchPool`); here, with
    /// them, on two heaps, worked on as locals: through the scratch object every push paid a
    /// dynamic exclusivity check.
    func searchLayer<M: NodeMeasure>(from start: UInt32, distance: Float, ef: Int, level: Int, limit: Int,
                                     measure: M, filter: SearchFilter, hopWidth: Int = 1, scratch s: SearchScratch) {
        if filter.excluding == nil && filter.accept == nil && !anyDeleted.load(ordering: .relaxed) {
            return searchPool(from: start, distance: distance, ef: ef, level: level, limit: limit, measure: measure,
                              hopWidth: hopWidth, scratch: s)
        }
        s.pooled = false
        s.reserve(nodes: max(limit, Int(start) + 1))
        let epoch = s.nextEpoch()
        let tags = s.tags
        let unvisited = s.unvisited, expanding = s.expanding
        var results = s.results, candidates = s.candidates
        results.count = 0
        candidates.count = 0
        defer { s.results = results; s.candidates = candidates }
        tags[Int(start)] = epoch
        var bound = Float.infinity
        let unfiltered = filter.excluding == nil && filter.accept == nil
        if Int(start) < limit && accepts(start, filter, unfiltered) {
            results.push(distance, start)
            bound = distance
        }
        candidates.push(-distance, start)
        while candidates.count > 0 {
            let (negated, c) = candidates.top
            if -negated > bound && results.count >= ef { break }
            candidates.pop()
            expanding[0] = c
            var width = 1
            while width < hopWidth && candidates.count > 0 && (results.count < ef || -candidates.top.0 <= bound) {
                expanding[width] = candidates.top.1
                width += 1
                candidates.pop()
            }
            if level == 0 && candidates.count > 0 {
                vx_prefetch(links(candidates.top.1, 0))
                // The next hop's other candidates are among the heap's first few entries.
                if hopWidth > 1 { for i in 1..<min(candidates.count, 2 * hopWidth - 1) { vx_prefetch(links(candidates.base[i].id, 0)) } }
            }
            let unseen = measureUnvisited(expanding, width, level: level, limit: limit, tags: tags, epoch: epoch,
                                          measure: measure, scratch: s)
            let measured = s.distances
            for j in 0..<unseen {
                let id = unvisited[j]
                let e = measured[j]
                if results.count < ef || e < bound {
                    candidates.push(-e, id)
                    if accepts(id, filter, unfiltered) {
                        results.push(e, id)
                        if results.count > ef { results.pop() }
                    }
                    if results.count > 0 { bound = results.top.0 }
                }
            }
        }
    }

    /// `searchLayer` where every node may be a result (no filter, nothing deleted), on one sorted
    /// array instead of two heaps: the `ef` nearest nodes measured so far, each marked once
    /// expanded (the top bit of its id). The next candidates are its first unexpanded entries,
    /// which is the heaps' order, so the walk is the same; a measured node goes in where a SIMD
    /// count of the nearer ones puts it, with a short move, where the heaps paid a push into each
    /// and pops that branch unpredictably. A node deleted while the walk runs is left out of the
    /// results.
    private func searchPool<M: NodeMeasure>(from start: UInt32, distance: Float, ef: Int, level: Int, limit: Int,
                                            measure: M, hopWidth: Int, scratch s: SearchScratch) {
        s.reserve(nodes: max(limit, Int(start) + 1))
        s.reservePool(ef)
        let epoch = s.nextEpoch()
        s.tags[Int(start)] = epoch
        s.poolDistances[0] = distance
        s.poolIds[0] = start
        s.poolSize = 1
        s.pooled = true
        s.spillCount = 0
        expandPool(ef: ef, level: level, limit: limit, epoch: epoch, measure: measure, hopWidth: hopWidth, scratch: s)
    }

    /// Goes on with the last `searchPool` of level 0 (whose walk kept, with `scratch.spilling`, the
    /// nodes it measured and let go) at a broader `ef`: the nearest of those let go join its pool
    /// again, and its visit marks are kept, so no node is measured twice.
    private func resumePool<M: NodeMeasure>(ef: Int, limit: Int, measure: M, hopWidth: Int, scratch s: SearchScratch) {
        s.reservePool(ef, keeping: s.poolSize)
        var spilled = (0..<s.spillCount).map { (s.spillDistances[$0], s.spillIds[$0]) }
        spilled.sort { $0.0 < $1.0 }
        var pool = (0..<s.poolSize).map { (s.poolDistances[$0], s.poolIds[$0]) }
        let back = min(spilled.count, ef - pool.count)
        pool.append(contentsOf: spilled[..<back])
        pool.sort { $0.0 < $1.0 }
        for (i, (d, id)) in pool.enumerated() { (s.poolDistances[i], s.poolIds[i]) = (d, id) }
        s.poolSize = pool.count
        s.spillCount = 0
        for (d, id) in spilled[back...] { s.spill(d, id) }
        expandPool(ef: ef, level: 0, limit: limit, epoch: s.epoch, measure: measure, hopWidth: hopWidth, scratch: s)
    }

    /// `searchPool`'s walk from the pool as it stands (`scratch.poolSize` entries); leaves the
    /// results in `scratch.results`.
    private func expandPool<M: NodeMeasure>(ef: Int, level: Int, limit: Int, epoch: UInt8, measure: M, hopWidth: Int,
                                            scratch s: SearchScratch) {
        let tags = s.tags, unvisited = s.unvisited, expanding = s.expanding
        let near = s.poolDistances, ids = s.poolIds
        let expanded: UInt32 = 1 << 31
        var size = s.poolSize, cursor = 0
        let spilling = s.spilling
        while true {
            while cursor < size && ids[cursor] & expanded != 0 { cursor += 1 }
            if cursor == size { break }
            var width = 0, j = cursor
            while width < hopWidth && j < size {
                if ids[j] & expanded == 0 {
                    expanding[width] = ids[j]
                    ids[j] |= expanded
                    width += 1
                }
                j += 1
            }
            if level == 0 {
                // The next hop's nodes are the next unexpanded entries, unless this hop finds nearer.
                var ahead = 0
                while j < size && ahead < hopWidth {
                    if ids[j] & expanded == 0 { vx_prefetch(links(ids[j], 0)); ahead += 1 }
                    j += 1
                }
            }
            let unseen = measureUnvisited(expanding, width, level: level, limit: limit, tags: tags, epoch: epoch,
                                          measure: measure, scratch: s)
            let measured = s.distances
            for j in 0..<unseen {
                let e = measured[j]
                if size == ef && e >= near[size - 1] {
                    if spilling { s.spill(e, unvisited[j]) }
                    continue
                }
                // Where it goes, counted in SIMD: a binary search's unpredictable branches were a
                // fifth of a search.
                let at = kernels.countAtMost(near, size, e)
                if spilling && size == ef { s.spill(near[size - 1], ids[size - 1]) }
                let moved = (size == ef ? size - 1 : size) - at
                if moved > 0 {
                    memmove(near + at + 1, near + at, moved * MemoryLayout<Float>.stride)
                    memmove(ids + at + 1, ids + at, moved * MemoryLayout<UInt32>.stride)
                }
                near[at] = e
                ids[at] = unvisited[j]
                if size < ef { size += 1 }
                if at < cursor { cursor = at }
            }
        }
        s.poolSize = size
        // Farthest first is already a max-heap: every push stays where it lands.
        var results = s.results
        results.count = 0
        for i in stride(from: size - 1, through: 0, by: -1) {
            let id = ids[i] & ~expanded
            if !isDeleted(id) && Int(id) < limit { results.push(near[i], id) }
        }
        s.results = results
    }

    /// Marks the not yet visited neighbours of a hop's `width` nodes, prefetches their codes (only
    /// theirs: the visit tags stay in cache, and prefetching visited nodes spent the memory system's
    /// few outstanding misses on nothing) and measures them in one call: their ids are left in
    /// `scratch.unvisited`, their distances in `scratch.distances`. Returns how many.
    @inline(__always)
    private func measureUnvisited<M: NodeMeasure>(_ expanding: UnsafeMutablePointer<UInt32>, _ width: Int, level: Int, limit: Int,
                                                  tags: UnsafeMutablePointer<UInt8>, epoch: UInt8, measure: M,
                                                  scratch s: SearchScratch) -> Int {
        let unvisited = s.unvisited, maxN = maxLinks(level)
        var unseen = 0
        for e in 0..<width {
            let list = links(expanding[e], level)
            let n = min(Int(vx_load_acquire_u32(list)), maxN)
            for j in 0..<n {
                let id = vx_load_u32(list + 1 + j)
                if Int(id) >= limit || tags[Int(id)] == epoch { continue }
                tags[Int(id)] = epoch
                measure.prefetch(id)
                unvisited[unseen] = id
                unseen += 1
            }
        }
        measure.distances(unvisited, unseen, scratch: s)
        return unseen
    }

    /// Whether a node may be in the results: not deleted, and passing the filter (the label, which
    /// lives apart from the node's block, is read only when there is a filter).
    @inline(__always) private func accepts(_ node: UInt32, _ filter: SearchFilter, _ unfiltered: Bool) -> Bool {
        !isDeleted(node) && (unfiltered || filter.allows(label(node)))
    }

    // MARK: Scratch

    func takeScratch() -> SearchScratch {
        scratch.withLock { $0.popLast() } ?? SearchScratch(dimension: dimension, codeBytes: codeBytes, maxLinks: maxLinks0)
    }

    func putScratch(_ s: SearchScratch) { scratch.withLock { $0.append(s) } }

    // MARK: Reading back

    /// The stored vector of `label` (normalised for cosine).
    public func vector(of label: UInt64) -> [Float]? {
        writer.withLock { state in
            guard let node = state.nodeOfLabel[label] else { return nil }
            return Array(UnsafeBufferPointer(start: vector(node), count: dimension))
        }
    }

    /// Every live (label, stored vector), in insertion order.
    public func forEachLive(_ body: (UInt64, UnsafePointer<Float>) -> Void) {
        writer.withLock { _ in
            let n = published.load(ordering: .relaxed)
            for node in 0..<UInt32(n) where !isDeleted(node) { body(label(node), vector(node)) }
        }
    }

    /// A fresh graph of the live vectors, with a quantizer trained on them, built on every core.
    public func compacted() -> HNSWIndex {
        let fresh = HNSWIndex(dimension: dimension, metric: metric, kernels: kernels, parameters: parameters, storage: storage)
        var labels: [UInt64] = []
        var rows: [Float] = []
        forEachLive { label, v in
            labels.append(label)
            rows.append(contentsOf: UnsafeBufferPointer(start: v, count: dimension))
        }
        rows.withUnsafeBufferPointer { try? fresh.insert(batch: labels, vectors: $0, threads: availableCores) }
        return fresh
    }
}

/// How a search measures a node against the query; specialised away in the hot loop.
protocol NodeMeasure {
    func distance(_ node: UInt32) -> Float
    func prefetch(_ node: UInt32)
    /// The distances of `count` nodes into `scratch.distances`.
    func distances(_ nodes: UnsafePointer<UInt32>, _ count: Int, scratch: SearchScratch)
}

struct FloatMeasure: NodeMeasure {
    let index: HNSWIndex
    let query: UnsafePointer<Float>
    @inline(__always) func distance(_ node: UInt32) -> Float {
        index.metric == .l2 ? index.kernels.l2Squared(query, index.vector(node), index.dimension)
            : -index.kernels.dot(query, index.vector(node), index.dimension)
    }
    @inline(__always) func prefetch(_ node: UInt32) { vx_prefetch(index.vector(node)) }
    @inline(__always) func distances(_ nodes: UnsafePointer<UInt32>, _ count: Int, scratch s: SearchScratch) {
        for j in 0..<count { s.distances[j] = distance(nodes[j]) }
    }
}

/// Another measure, with one node infinitely far: the walk never moves to it, so never through
/// its links.
struct Avoiding<Inner: NodeMeasure>: NodeMeasure {
    let inner: Inner
    let node: UInt32
    @inline(__always) func distance(_ id: UInt32) -> Float { id == node ? .infinity : inner.distance(id) }
    @inline(__always) func prefetch(_ id: UInt32) { inner.prefetch(id) }
    @inline(__always) func distances(_ nodes: UnsafePointer<UInt32>, _ count: Int, scratch s: SearchScratch) {
        inner.distances(nodes, count, scratch: s)
        for j in 0..<count where nodes[j] == node { s.distances[j] = .infinity }
    }
}

struct CodeMeasure: NodeMeasure {
    let index: HNSWIndex
    let query: UnsafePointer<Int8>
    let l2: Bool
    @inline(__always) func distance(_ node: UInt32) -> Float {
        l2 ? Float(index.kernels.l2SquaredInt8(query, index.code(node), index.dimension))
            : -Float(index.kernels.dotInt8(query, index.code(node), index.dimension))
    }
    @inline(__always) func prefetch(_ node: UInt32) {
        let p = index.code(node)
        var line = 0
        while line < index.dimension { vx_prefetch(p + line); line += 64 }
    }
    /// One kernel call for a hop's neighbours: no branch between them, so their loads overlap.
    @inline(__always) func distances(_ nodes: UnsafePointer<UInt32>, _ count: Int, scratch s: SearchScratch) {
        for j in 0..<count { s.rows[j] = UnsafePointer(index.code(nodes[j])) }
        if l2 {
            index.kernels.l2SquaredInt8Gather(query, s.rows, count, index.dimension, s.sums)
            for j in 0..<count { s.distances[j] = Float(s.sums[j]) }
        } else {
            index.kernels.dotInt8Gather(query, s.rows, count, index.dimension, s.sums)
            for j in 0..<count { s.distances[j] = -Float(s.sums[j]) }
        }
    }
}

/// A max-heap of (distance, node) in raw memory that grows by doubling; a min-heap is the same with
/// distances negated.
struct NodeHeap {
    struct Entry { var distance: Float; var id: UInt32 }
    var base: UnsafeMutablePointer<Entry>
    var count = 0
    var capacity: Int

    init(capacity: Int) {
        self.capacity = capacity
        base = .allocate(capacity: capacity)
    }

    var top: (Float, UInt32) { (base[0].distance, base[0].id) }

    @inline(__always) mutating func push(_ d: Float, _ id: UInt32) {
        if count == capacity {
            let bigger = UnsafeMutablePointer<Entry>.allocate(capacity: capacity * 2)
            bigger.moveInitialize(from: base, count: count)
            base.deallocate()
            base = bigger
            capacity *= 2
        }
        var i = count
        count += 1
        while i > 0 {
            let parent = (i - 1) >> 1
            if base[parent].distance >= d { break }
            base[i] = base[parent]
            i = parent
        }
        base[i] = Entry(distance: d, id: id)
    }

    @inline(__always) mutating func pop() {
        count -= 1
        guard count > 0 else { return }
        let last = base[count]
        var i = 0
        while true {
            let l = 2 * i + 1
            if l >= count { break }
            var child = l
            if l + 1 < count && base[l + 1].distance > base[l].distance { child = l + 1 }
            if base[child].distance <= last.distance { break }
            base[i] = base[child]
            i = child
        }
        base[i] = last
    }

    /// Empties the heap into (distance, node) pairs, nearest first.
    mutating func drainSorted() -> [(Float, UInt32)] {
        var out = [(Float, UInt32)](repeating: (0, 0), count: count)
        var i = count - 1
        while count > 0 { out[i] = top; pop(); i -= 1 }
        return out
    }
}

/// One search's working memory: visit tags, the two heaps, the prepared query. Pooled per index.
final class SearchScratch: @unchecked Sendable {
    var tags: UnsafeMutablePointer<UInt8>
    var tagCount = 0
    var epoch: UInt8 = 0
    var results = NodeHeap(capacity: 256)
    var candidates = NodeHeap(capacity: 1024)
    /// The sorted array of a search without filter or deletes (`searchPool`): distances, and node
    /// ids with the expanded mark.
    var poolDistances: UnsafeMutablePointer<Float> = .allocate(capacity: 256)
    var poolIds: UnsafeMutablePointer<UInt32> = .allocate(capacity: 256)
    var poolCapacity = 256
    /// The entries of the pool the last `searchPool` left, and whether the last walk was one.
    var poolSize = 0
    var pooled = false
    /// Whether `searchPool` keeps the nodes it measured and let go (`spill`), for a walk that may
    /// go on broader; and those nodes.
    var spilling = false
    var spillDistances: UnsafeMutablePointer<Float> = .allocate(capacity: 1024)
    var spillIds: UnsafeMutablePointer<UInt32> = .allocate(capacity: 1024)
    var spillCount = 0
    var spillCapacity = 1024

    func spill(_ d: Float, _ id: UInt32) {
        if spillCount == spillCapacity {
            spillCapacity *= 2
            SearchScratch.move(&spillDistances, &spillIds, keeping: spillCount, into: spillCapacity)
        }
        spillDistances[spillCount] = d
        spillIds[spillCount] = id
        spillCount += 1
    }
    /// The unvisited neighbours of the nodes a hop expands, and those nodes.
    let unvisited: UnsafeMutablePointer<UInt32>
    let expanding: UnsafeMutablePointer<UInt32>
    /// The most nodes a hop expands.
    static let widest = 4
    let query: UnsafeMutablePointer<Float>
    let code: UnsafeMutablePointer<Int8>
    /// One candidate's float32 vector, read from a vector file to re-rank it.
    let row: UnsafeMutablePointer<Float>
    /// A hop's measurements: the neighbours' codes, their int8 sums, their distances.
    let rows: UnsafeMutablePointer<UnsafePointer<Int8>?>
    let sums: UnsafeMutablePointer<Int32>
    let distances: UnsafeMutablePointer<Float>

    init(dimension: Int, codeBytes: Int, maxLinks: Int) {
        rows = .allocate(capacity: SearchScratch.widest * maxLinks)
        sums = .allocate(capacity: SearchScratch.widest * maxLinks)
        distances = .allocate(capacity: SearchScratch.widest * maxLinks)
        tags = .allocate(capacity: 1)
        unvisited = .allocate(capacity: SearchScratch.widest * maxLinks)
        expanding = .allocate(capacity: SearchScratch.widest)
        query = .allocate(capacity: dimension)
        row = .allocate(capacity: dimension)
        code = .allocate(capacity: codeBytes)
        code.initialize(repeating: 0, count: codeBytes)
    }

    func reserve(nodes: Int) {
        guard nodes > tagCount else { return }
        tags.deallocate()
        tagCount = max(nodes, tagCount * 2, 1024)
        tags = .allocate(capacity: tagCount)
        tags.initialize(repeating: 0, count: tagCount)
        epoch = 0
    }

    /// Room for `entries` in the pool, its first `keeping` kept.
    func reservePool(_ entries: Int, keeping: Int = 0) {
        guard entries > poolCapacity else { return }
        poolCapacity = max(entries, 2 * poolCapacity)
        SearchScratch.move(&poolDistances, &poolIds, keeping: keeping, into: poolCapacity)
    }

    /// Moves a list of (distance, node) pairs, kept as two parallel buffers, into buffers of
    /// `capacity`, its first `keeping` kept.
    private static func move(_ distances: inout UnsafeMutablePointer<Float>, _ ids: inout UnsafeMutablePointer<UInt32>, keeping: Int, into capacity: Int) {
        let (d, i) = (UnsafeMutablePointer<Float>.allocate(capacity: capacity), UnsafeMutablePointer<UInt32>.allocate(capacity: capacity))
        d.update(from: distances, count: keeping)
        i.update(from: ids, count: keeping)
        distances.deallocate()
        ids.deallocate()
        (distances, ids) = (d, i)
    }

    func nextEpoch() -> UInt8 {
        epoch &+= 1
        if epoch == 0 {
            tags.update(repeating: 0, count: tagCount)
            epoch = 1
        }
        return epoch
    }

    deinit {
        tags.deallocate()
        results.base.deallocate()
        candidates.base.deallocate()
        poolDistances.deallocate()
        poolIds.deallocate()
        spillDistances.deallocate()
        spillIds.deallocate()
        query.deallocate()
        code.deallocate()
        row.deallocate()
        unvisited.deallocate()
        expanding.deallocate()
        rows.deallocate()
        sums.deallocate()
        distances.deallocate()
    }
}

/// The level draw's generator (SplitMix64), owned by the writer.
struct SplitMixRandom {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform in (0, 1].
    mutating func unit() -> Double { Double((next() >> 11) + 1) / Double(1 << 53) }
}

extension HNSWIndex {
    /// The snapshot sections: parameters and entry point, the level-0 blocks as they are in memory,
    /// labels, the upper link lists, and the vectors: in memory, their bytes (`VECS`); in a file,
    /// the file's name (`VECF`), which the sink makes durable before the snapshot. Blocks and labels are
    /// written straight from the chunks, never copied whole. A reopened graph is the same graph, bit
    /// for bit.
    func writeSections<S: SectionSink>(_ sink: inout S) throws(PersistenceError) {
        try writer.withLock { (state) throws(PersistenceError) in
            let n = published.load(ordering: .relaxed)
            var meta = ByteWriter()
            for v in [parameters.m, parameters.efConstruction, parameters.efSearch] { meta.put(UInt32(v)) }
            meta.put(parameters.seed)
            meta.put(UInt64(n)); meta.put(entry.load(ordering: .relaxed)); meta.put(UInt64(state.deleted))
            meta.put(state.random.state)
            meta.put(UInt8(quantized.load(ordering: .relaxed) ? 1 : 0))
            meta.put(quantizer.scale)
            for o in quantizer.offsets { meta.put(o) }
            try sink.section("HNSW", meta.bytes)
            var blocks: [UnsafeRawBufferPointer] = [], labels: [UnsafeRawBufferPointer] = []
            var upper = ByteWriter()
            var c = 0
            while c * HNSWIndex.chunkNodes < n {
                let nodes = min(HNSWIndex.chunkNodes, n - c * HNSWIndex.chunkNodes)
                blocks.append(UnsafeRawBufferPointer(start: chunks[c], count: nodes * blockSize))
                labels.append(UnsafeRawBufferPointer(start: chunks[c]! + labelsOffset, count: nodes * 8))
                c += 1
            }
            for node in 0..<UInt32(n) {
                let l = level(node)
                if l > 0 { upper.put(UnsafeRawBufferPointer(start: upperLinks(node), count: l * upperStride * 4)) }
            }
            try sink.section("BLKS", blocks)
            try sink.section("LABL", labels)
            try sink.section("UPPR", upper.bytes)
            if let name = vectors.name {
                try sink.names(vectors)
                namedBySnapshot.store(true, ordering: .relaxed)
                var file = ByteWriter()
                file.put(name)
                let sums = vectors.sums.prefix((n + HNSWIndex.chunkNodes - 1) / HNSWIndex.chunkNodes)
                file.put(UInt32(sums.count))
                for sum in sums { file.put(sum) }
                try sink.section("VECF", file.bytes)
            } else {
                try sink.section("VECS", (0..<UInt32(n)).map { UnsafeRawBufferPointer(start: vector($0), count: 4 * dimension) })
            }
        }
    }

    /// The sections `writeSections` writes, in memory.
    func sections() throws(PersistenceError) -> [(String, [UInt8])] {
        var collector = SectionCollector()
        try writeSections(&collector)
        return collector.sections
    }

    /// The graph of a snapshot's sections; a `VECF` vector file is opened in `directory`, or with
    /// `copyingTo`, read there in place while it is copied into that directory (`VectorSlab.adopting`).
    static func restore(_ s: [String: [UInt8]], dimension: Int, metric: Metric, kernels: DistanceKernels,
                        directory: String?, copyingTo local: String? = nil) throws(PersistenceError) -> HNSWIndex {
        let short = PersistenceError.corrupt(path: directory ?? "snapshot", reason: "the graph's sections do not fit together")
        do {
            return try restore(s, dimension: dimension, metric: metric, kernels: kernels, directory: directory, local: local, short: short)
        } catch let e as PersistenceError {
            throw e
        } catch {
            throw short
        }
    }

    private static func restore(_ s: [String: [UInt8]], dimension: Int, metric: Metric, kernels: DistanceKernels,
                                directory: String?, local: String?, short: PersistenceError) throws -> HNSWIndex {
        guard let m = s["HNSW"], let blocks = s["BLKS"], let labels = s["LABL"], let upper = s["UPPR"] else { throw short }
        var meta = ByteReader(m)
        let p = HNSWParameters(m: Int(try meta.get(UInt32.self)), efConstruction: Int(try meta.get(UInt32.self)),
                               efSearch: Int(try meta.get(UInt32.self)), seed: try meta.get(UInt64.self))
        // Sizes come from the bytes: each is checked before anything is made of it.
        guard let n = Int(exactly: try meta.get(UInt64.self)) else { throw short }
        let top = try meta.get(UInt64.self)
        guard let deleted = Int(exactly: try meta.get(UInt64.self)), deleted <= n else { throw short }
        let randomState = try meta.get(UInt64.self)
        let isQuantized = try meta.get(UInt8.self) == 1
        let scale = try meta.getFloat()
        var offsets = [Float](repeating: 0, count: dimension)
        for i in 0..<dimension { offsets[i] = try meta.getFloat() }
        guard p.m >= 2, p.m <= 256, (1...4096).contains(p.efConstruction), (1...4096).contains(p.efSearch), n >= 0, n < maxChunks * chunkNodes else { throw short }
        let slab: VectorSlab
        let storage: VectorStorage
        if let file = s["VECF"] {
            guard let directory else { throw short }
            var r = ByteReader(file)
            let name = try r.getString()
            // Snapshots before checksums name the file only.
            var sums: [UInt32]? = nil
            if r.remaining > 0 {
                let count = Int(try r.get(UInt32.self))
                guard count <= maxChunks else { throw short }
                sums = try (0..<count).map { _ in try r.get(UInt32.self) }
            }
            if let local {
                guard let sums else { throw PersistenceError.corrupt(path: directory, reason: "its vector file has no checksums to check a copy by") }
                slab = try VectorSlab.adopting(dimension: dimension, source: directory, name: name, into: local, nodes: n, sums: sums)
                storage = .files(directory: local)
            } else {
                slab = try VectorSlab.existing(dimension: dimension, directory: directory, name: name, nodes: n, sums: sums)
                storage = .files(directory: directory)
            }
        } else {
            guard let rows = s["VECS"], rows.count == n * 4 * dimension else { throw short }
            slab = VectorSlab.memory(dimension: dimension)
            for c in 0..<((n + chunkNodes - 1) / chunkNodes) { try slab.makeChunk(c) }
            var r = ByteReader(rows)
            for node in 0..<UInt32(n) { try r.copy(4 * dimension, to: slab.row(node)) }
            storage = .memory
        }
        let index = HNSWIndex(dimension: dimension, metric: metric, kernels: kernels, parameters: p,
                              quantizer: isQuantized ? ScalarQuantizer(scale: scale, offsets: offsets) : nil,
                              vectors: slab, storage: storage)
        index.namedBySnapshot.store(true, ordering: .relaxed)
        guard blocks.count == n * index.blockSize, labels.count == n * 8 else { throw short }
        var b = ByteReader(blocks), l = ByteReader(labels), u = ByteReader(upper)
        // Nodes whose blocks are in place: a damaged snapshot found past them still frees what
        // they hold (deinit frees the upper links of published nodes).
        var placed = 0
        defer { if index.published.load(ordering: .relaxed) == 0 { index.published.store(placed, ordering: .relaxed) } }
        try index.writer.withLock { (state) throws in
            state.random = SplitMixRandom(seed: 0)
            state.random.state = randomState
            state.deleted = deleted
            var live = 0
            for node in 0..<UInt32(n) {
                let chunk = Int(node >> UInt32(chunkShift))
                if chunk == state.chunkCount {
                    let memory = UnsafeMutableRawPointer(aligned_alloc(64, index.chunkBytes))!
                    memset(memory, 0, index.chunkBytes)
                    index.chunks[chunk] = memory
                    state.chunkCount += 1
                }
                try b.copy(index.blockSize, to: index.block(node))
                placed = Int(node) + 1
                let label = try l.get(UInt64.self)
                let slot = Int(node & UInt32(chunkNodes - 1))
                (index.chunks[chunk]! + index.labelsOffset).storeBytes(of: label, toByteOffset: slot * 8, as: UInt64.self)
                index.labelCeiling.max(label, ordering: .relaxed)
                let level = index.level(node)
                guard level <= 15, Int(index.links(node, 0).pointee) <= index.maxLinks0 else { throw short }
                if level > 0 {
                    let links = UnsafeMutablePointer<UInt32>.allocate(capacity: level * index.upperStride)
                    links.initialize(repeating: 0, count: level * index.upperStride)
                    (index.chunks[chunk]! + index.upperOffset).storeBytes(of: links, toByteOffset: slot * 8, as: UnsafeMutablePointer<UInt32>?.self)
                    try u.copy(level * index.upperStride * 4, to: links)
                }
                if index.block(node).load(fromByteOffset: index.headerOffset + 1, as: UInt8.self) != 0 {
                    index.markDeleted(node)
                } else {
                    guard state.nodeOfLabel.updateValue(node, forKey: label) == nil else { throw short }
                    live += 1
                }
            }
            // A damaged link would send a search outside the graph: check every id.
            for node in 0..<UInt32(n) {
                for lv in 0...index.level(node) {
                    let list = index.links(node, lv)
                    guard Int(list[0]) <= index.maxLinks(lv) else { throw short }
                    // A link at a level its target does not reach would be read as that target's
                    // links at that level, which it does not have.
                    for j in 0..<Int(list[0]) where Int(list[1 + j]) >= n || index.level(list[1 + j]) < lv { throw short }
                }
            }
            // The entry is (its level + 1) << 32 | node: a search walks down from that level.
            let entryNode = Int(UInt32(truncatingIfNeeded: top)), entryLevel = Int(top >> 32) - 1
            guard top == 0 || (entryNode < n && entryLevel >= 0 && entryLevel <= index.level(UInt32(entryNode))) else { throw short }
            index.liveCount.store(live, ordering: .relaxed)
            index.published.store(n, ordering: .releasing)
            index.entry.store(top, ordering: .releasing)
        }
        return index
    }
}
