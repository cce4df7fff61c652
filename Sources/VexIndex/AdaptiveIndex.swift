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
/// compacted) by the writer as the collection grows, shrinks and deletes.
///
/// While the graph is in use, single inserts land first in `fresh`, a small exact index (a copy,
/// microseconds), and `absorb` moves them into the graph later (the bridge when idle, the linker
/// thread when many wait), linking without holding the writers off: linking a node costs about as
/// much as a hundred queries, and a query must wait for every change before it, so a writer that
/// outpaced the graph used to make every query wait for its backlog. Searches ask both and merge.
/// A switch builds the new index from every vector of the old one and then swaps; searches keep
/// using the old one until the swap, and only fetch the current index under `current`'s lock, never
/// search under it.
public final class AdaptiveIndex: VectorIndex, @unchecked Sendable {
    public let dimension: Int
    public let metric: Metric
    public let kind: IndexKind
    public let parameters: HNSWParameters
    let kernels: DistanceKernels
    /// Where every graph made here keeps its float32 vectors.
    public let storage: VectorStorage
    /// The index searches use.
    private let current: Mutex<any VectorIndex>
    /// Vectors inserted one by one while the graph is in use, not yet linked into it. A label is in
    /// `fresh` or in the graph, never both, except while `absorb` links it (searches ignore the
    /// graph's copy until the absorb settles it, and drop any other duplicate).
    let fresh: FlatIndex
    /// Serialises changes: the graph and the flat index each take one writer at a time.
    let writes = Mutex<Void>(())
    /// One absorb at a time, and no big batch during one; taken before `writes`, never after.
    private let absorber = Mutex<Void>(())
    /// What an absorb links into the graph without `writes` (the labels stay in `fresh` until it
    /// is done), and which of them a writer changed meanwhile: those the graph must not keep.
    private struct Linking {
        var labels: [UInt64] = []
        var changed: Set<UInt64> = []
    }
    private let linking = Mutex<Linking>(Linking())
    /// Runs after an absorb has linked its vectors and before it settles them (tests hold it there).
    var afterLinking: (@Sendable () -> Void)?
    /// The breadth searches use when they name none, chosen by measuring recall (`tune`); kept
    /// across switches and compactions (a rebuilt graph of the same vectors needs the same).
    private let tuned = Mutex<RecallMeasurement?>(nil)
    /// `tuned`'s ef, read by every search without a lock; 0 until measured.
    private let tunedEf = Atomic<Int>(0)
    /// `tuned`'s reach, as its bit pattern (NaN: none): a search at the tuned breadth whose 10th
    /// answer is farther walks broader.
    private let tunedReach = Atomic<UInt32>(Float.nan.bitPattern)
    /// `tuned`'s `widenFrom`: the breadth a search past the reach walks on from.
    private let tunedFrom = Atomic<Int>(0)
    /// The last queries asked at the default breadth, kept while `askedDue` (a calibration on
    /// them is wanted): the sample of the distribution queries really come from.
    private let asked = Mutex<AskedQueries>(AskedQueries())
    struct AskedQueries {
        var rows: [Float] = []
        /// Where the next query goes once `rows` is full (the oldest is replaced).
        var next = 0
        /// Queries kept since the last calibration on them.
        var fresh = 0
    }
    /// 1 while queries are kept for a calibration on them: until the first, and again after any
    /// other measurement of the graph.
    private let askedDue = Atomic<Int>(1)
    /// Called once when enough queries have been kept for a calibration (`whenQueriesKept`).
    private let queriesKept = Mutex<(@Sendable () -> Void)?>(nil)
    /// The recall@10 the breadth is chosen for (`recallTarget`), as its bit pattern.
    private let target = Atomic<UInt64>(AdaptiveIndex.defaultTarget.bitPattern)
    public static let defaultTarget = 0.95

    public init(dimension: Int, metric: Metric, kind: IndexKind, parameters: HNSWParameters = HNSWParameters(), kernels: DistanceKernels,
                storage: VectorStorage = .memory) {
        self.dimension = dimension
        self.metric = metric
        self.kind = kind
        self.parameters = parameters
        self.kernels = kernels
        self.storage = storage
        let first: any VectorIndex = kind == .hnsw
            ? HNSWIndex(dimension: dimension, metric: metric, kernels: kernels, parameters: parameters, storage: storage)
            : FlatIndex(dimension: dimension, metric: metric, kernels: kernels)
        current = Mutex(first)
        fresh = FlatIndex(dimension: dimension, metric: metric, kernels: kernels)
    }

    init(restoring index: any VectorIndex, fresh waiting: FlatIndex?, tuned measured: RecallMeasurement? = nil, kind: IndexKind,
         parameters: HNSWParameters, kernels: DistanceKernels, storage: VectorStorage) {
        dimension = index.dimension
        metric = index.metric
        self.kind = kind
        self.parameters = parameters
        self.kernels = kernels
        self.storage = storage
        current = Mutex(index)
        fresh = waiting ?? FlatIndex(dimension: dimension, metric: metric, kernels: kernels)
        if let m = measured, index is HNSWIndex { use(m) }
    }

    /// The recall@10 searches that name no breadth should reach: big batches calibrate the breadth
    /// for it as they build (`insertCalibrating`), and `tune` measures against it.
    public var recallTarget: Double {
        get { Double(bitPattern: target.load(ordering: .relaxed)) }
        set { target.store(newValue.bitPattern, ordering: .relaxed) }
    }

    /// The index in use now.
    public var active: any VectorIndex { current.withLock { $0 } }

    /// Labels held, each once. While an absorb links labels without `writes`, the graph may hold
    /// copies of them that `fresh` still holds (or that a writer removed meanwhile): as searches do,
    /// the count takes `fresh`'s word for them (summing both, a follower of a shared store linking
    /// what it adopted said it held more vectors than its files do). Under `linking`, which the
    /// absorb holds to name its labels and to let go of them, their copies in `fresh` with them; so
    /// it may wait for the graph to finish linking a few (milliseconds), which `roughCount` never does.
    public var count: Int {
        linking.withLock { l in
            let now = active
            guard !l.labels.isEmpty, let graph = now as? HNSWIndex else { return now.count + fresh.count }
            let (linked, copies) = graph.count(holding: l.labels)
            return linked - copies.count + fresh.count
        }
    }

    /// `count` without waiting for a link in progress (which `count` may, for a few milliseconds):
    /// a vector being linked may be named twice. For sizing a search, never for showing.
    public var roughCount: Int { active.count + fresh.count }

    /// What `user.vexfs.index` shows: the index in use and its parameters.
    public var summary: String {
        let now = active
        var s = now is HNSWIndex ? "hnsw \(parameters)" : "flat exact"
        if case .automatic(let t) = kind { s += " (auto: hnsw from \(t) vectors)" }
        if now is HNSWIndex {
            if let m = measurement { s += "; in use: \(m)" }
            if fresh.count > 0 { s += "; \(fresh.count) vectors waiting to be linked" }
        }
        return s
    }

    public func insert(label: UInt64, vector: UnsafeBufferPointer<Float>) throws(IndexError) {
        try writes.withLock { (_) throws(IndexError) in
            if let graph = active as? HNSWIndex {
                try validate(vector, dimension: dimension)
                try fresh.insert(label: label, vector: vector)
                noteChange(label)
                if graph.remove(label: label) { adapt() }
                return
            }
            fresh.remove(label: label)
            try active.insert(label: label, vector: vector)
            adapt()
        }
    }

    /// A batch at least this big is linked into the graph at once, on every core; a smaller one
    /// waits in `fresh`.
    static let linkedAtOnce = 1024
    /// A graph of fewer nodes is never compacted: its tombstones cost little.
    static let compactionMinimum = 1024

    /// Vectors waiting in `fresh`.
    public var unabsorbed: Int { fresh.count }

    /// Links up to `limit` waiting vectors into the graph; returns how many still wait.
    ///
    /// A few at a time (the linker's way) are linked without `writes`: a link takes about a
    /// millisecond, and the bridge's inserts, which queries wait for, went on meanwhile. They stay
    /// in `fresh` while they are linked, searches ignore them in the graph until then, and one a
    /// writer changed or removed meanwhile is taken out of the graph again.
    @discardableResult
    public func absorb(limit: Int = .max) -> Int {
        absorber.withLock { _ in
            guard limit < AdaptiveIndex.linkedAtOnce else { return writes.withLock { _ in absorbHeld(limit: limit) } }
            let taken: (HNSWIndex, [UInt64], [Float])? = writes.withLock { _ in
                guard let graph = active as? HNSWIndex, fresh.count > 0 else { return nil }
                let (labels, rows) = waiting(limit: limit)
                linking.withLock { $0 = Linking(labels: labels) }
                return (graph, labels, rows)
            }
            guard let (graph, labels, rows) = taken else { return writes.withLock { _ in absorbHeld(limit: limit) } }
            rows.withUnsafeBufferPointer { p in try? graph.insert(batch: labels, vectors: p, threads: 1) }
            afterLinking?()
            return writes.withLock { _ in
                let changed = linking.withLock { $0.changed }
                let stillInUse = active as? HNSWIndex === graph
                if stillInUse { for label in labels where changed.contains(label) { graph.remove(label: label) } }
                // Searches see the graph's copies again before `fresh` lets go of them (one step
                // for `count`, which must not see them in both).
                linking.withLock { l in
                    l = Linking()
                    if stillInUse { for label in labels where !changed.contains(label) { fresh.remove(label: label) } }
                }
                adapt()
                return fresh.count
            }
        }
    }

    /// Notes, for an absorb linking without `writes`, that a writer changed `label`.
    private func noteChange(_ label: UInt64) {
        linking.withLock { l in if l.labels.contains(label) { l.changed.insert(label) } }
    }

    /// Up to `limit` of the vectors in `fresh`, copied out (the caller holds `writes`).
    private func waiting(limit: Int) -> ([UInt64], [Float]) {
        var labels: [UInt64] = []
        var rows: [Float] = []
        fresh.forEach { label, v in
            guard labels.count < limit else { return }
            labels.append(label)
            rows.append(contentsOf: UnsafeBufferPointer(start: v, count: dimension))
        }
        return (labels, rows)
    }

    private func absorbHeld(limit: Int = .max) -> Int {
        guard fresh.count > 0 else { return 0 }
        let (labels, rows) = waiting(limit: limit)
        if let graph = active as? HNSWIndex {
            // Inserted first, then taken out of `fresh`: a search in between finds it twice, never
            // not at all (`count` too, here only: an absorb of a thousand or more at once, which
            // vexfs's own, a few at a time, never are).
            rows.withUnsafeBufferPointer { p in
                try? graph.insert(batch: labels, vectors: p, threads: labels.count >= AdaptiveIndex.linkedAtOnce ? availableCores : 1)
            }
            for label in labels { fresh.remove(label: label) }
        } else {
            // Rows a switch to the exact index left waiting: copied in one quick step under
            // `linking`, so that `count` never finds them in both.
            linking.withLock { _ in
                rows.withUnsafeBufferPointer { p in try? active.insert(batch: labels, vectors: p, threads: 1) }
                for label in labels { fresh.remove(label: label) }
            }
        }
        adapt()
        return fresh.count
    }

    /// The snapshot of the index in use and of the vectors waiting beside it (`FLAB`, `FVEC`: never
    /// linked in first, which under a steady writer could be tens of thousands of graph insertions
    /// while the collection is held). One writer: nothing changes while it is written.
    /// Writes the snapshot sections of the index in use into `sink`; true if it is the graph.
    func writeSnapshot<S: SectionSink>(_ sink: inout S) throws(PersistenceError) -> Bool {
        try writes.withLock { (_) throws(PersistenceError) in
            let now = active
            for (tag, bytes) in fresh.sections() { try sink.section("F" + tag.prefix(3), bytes) }
            if let graph = now as? HNSWIndex {
                try graph.writeSections(&sink)
                // The breadth searches use now: the next mount answers with it from the start.
                if let m = measurement { try sink.section("TUNE", m.encoded) }
                return true
            }
            for (tag, bytes) in (now as! FlatIndex).sections() { try sink.section(tag, bytes) }
            return false
        }
    }

    /// A batch that takes a flat index past its threshold builds the graph from both at once, in
    /// parallel, instead of inserting into the flat index and then re-inserting one by one.
    public func insert(batch labels: [UInt64], vectors: UnsafeBufferPointer<Float>, threads: Int) throws(IndexError) {
        try absorber.withLock { (_) throws(IndexError) in try insertHeld(batch: labels, vectors: vectors, threads: threads) }
    }

    private func insertHeld(batch labels: [UInt64], vectors: UnsafeBufferPointer<Float>, threads: Int) throws(IndexError) {
        try writes.withLock { (_) throws(IndexError) in
            // Rows replacing rows the graph holds (a file rewritten in place) go out first, in bulk:
            // replaced one by one, each was relinked out of a graph about to be compacted.
            if labels.count >= AdaptiveIndex.linkedAtOnce, active is HNSWIndex, removeHeld(labels) > 0 { adapt() }
            if case .automatic(let threshold) = kind, let flat = active as? FlatIndex, flat.count + labels.count >= threshold {
                var allLabels: [UInt64] = []
                var all: [Float] = []
                allLabels.reserveCapacity(flat.count + labels.count)
                all.reserveCapacity((flat.count + labels.count) * dimension)
                flat.forEach { label, v in
                    allLabels.append(label)
                    all.append(contentsOf: UnsafeBufferPointer(start: v, count: dimension))
                }
                allLabels.append(contentsOf: labels)
                all.append(contentsOf: vectors)
                let graph = HNSWIndex(dimension: dimension, metric: metric, kernels: kernels, parameters: parameters, storage: storage)
                try all.withUnsafeBufferPointer { (p) throws(IndexError) in try link(allLabels, p, into: graph, threads: threads, published: false) }
                swap(to: graph)
            } else if let graph = active as? HNSWIndex, labels.count < AdaptiveIndex.linkedAtOnce {
                // A small file's rows wait beside the graph like single inserts: linked here, they
                // made every query behind them in the bridge wait for graph insertions.
                try validate(batch: vectors, rows: labels.count, dimension: dimension)
                for (i, label) in labels.enumerated() {
                    try fresh.insert(label: label, vector: UnsafeBufferPointer(rebasing: vectors[(i * dimension)..<((i + 1) * dimension)]))
                    graph.remove(label: label)
                }
            } else {
                for label in labels { fresh.remove(label: label) }
                if let graph = active as? HNSWIndex {
                    try link(labels, vectors, into: graph, threads: threads, published: true)
                } else {
                    try active.insert(batch: labels, vectors: vectors, threads: threads)
                }
            }
            adapt()
        }
    }

    @discardableResult
    public func remove(label: UInt64) -> Bool {
        writes.withLock { _ in
            noteChange(label)
            if fresh.remove(label: label) { return true }
            let removed = active.remove(label: label)
            if removed { adapt() }
            return removed
        }
    }

    /// Removes every label in `labels` it holds; returns how many. Removals that will have the graph
    /// compacted (a quarter of it deleted) mark its nodes without relinking their neighbours, which
    /// the rebuild right after leaves behind anyway: relinking a 40,000-row file overwritten in its
    /// graph, node by node, took minutes where reading it took three seconds.
    @discardableResult
    public func remove(labels: [UInt64]) -> Int {
        writes.withLock { _ in
            let removed = removeHeld(labels)
            if removed > 0 { adapt() }
            return removed
        }
    }

    /// `remove(labels:)` with `writes` held, before `adapt()`.
    private func removeHeld(_ labels: [UInt64]) -> Int {
        var removed = 0
        var inActive: [UInt64] = []
        for label in labels {
            noteChange(label)
            if fresh.remove(label: label) { removed += 1 } else { inActive.append(label) }
        }
        if let graph = active as? HNSWIndex {
            let held = graph.held(inActive)
            if graph.nodeCount >= AdaptiveIndex.compactionMinimum, graph.nodeCount - graph.count + held.count > graph.nodeCount / 4 {
                return removed + graph.tombstone(labels: held)
            }
            inActive = held
        }
        for label in inActive where active.remove(label: label) { removed += 1 }
        return removed
    }

    public func search(_ query: UnsafeBufferPointer<Float>, k: Int, ef: Int?, filter: SearchFilter) throws(IndexError) -> [Neighbor] {
        // `fresh` first: `absorb` puts a vector in the graph before it takes it out of `fresh`, so
        // one missing from `fresh` here is in the graph searched next. (The other way round, a
        // vector absorbed between the two searches was in neither.)
        let waiting = fresh.count > 0 ? try fresh.search(query, k: k, ef: nil, filter: filter) : []
        // Read after `fresh`: a vector an absorb is linking was in `fresh` just now, as it is
        // (or gone, if a writer removed it), and its copy in the graph may be older.
        let beingLinked = linking.withLock { $0.labels }
        let measured = tunedEf.load(ordering: .relaxed)
        if ef == nil && filter.excluding == nil && filter.accept == nil && measured > 0 && askedDue.load(ordering: .relaxed) == 1 {
            keepAsked(query)
        }
        let now = active, wanted = min(k + beingLinked.count, 1000)
        var found: [Neighbor]
        // At the measured breadth, a query unlike those it was measured on walks broader.
        let reach = Float(bitPattern: tunedReach.load(ordering: .relaxed))
        if ef == nil && measured > 0 && !reach.isNaN, let graph = now as? HNSWIndex {
            found = try graph.search(query, k: wanted, ef: measured, filter: filter, avoiding: nil, widenBeyond: reach,
                                     widenFrom: tunedFrom.load(ordering: .relaxed))
        } else {
            found = try now.search(query, k: wanted, ef: ef ?? (measured > 0 ? measured : nil), filter: filter)
        }
        if !beingLinked.isEmpty { found.removeAll { beingLinked.contains($0.label) } }
        if found.count > k { found.removeLast(found.count - k) }
        guard !waiting.isEmpty else { return found }
        var best = TopK(k: k)
        var seen = Set<UInt64>()
        for n in (waiting + found).sorted(by: { TopK.worse($1, $0) }) where seen.insert(n.label).inserted {
            best.offer(n)
        }
        return best.sorted()
    }

    /// The last recall measurement, if the graph has been measured.
    public var measurement: RecallMeasurement? { tuned.withLock { $0 } }

    /// Measures the graph in use against `target` and makes the breadth found the default; nil
    /// (and nothing changed) while the index is the exact one. Takes no lock of the index: the
    /// writer and searches go on meanwhile. Meant for a background thread.
    /// The graph's own vectors overstate the recall of new queries; the last calibration's
    /// `optimism` says by how much, and is taken off (with none, a fixed margin is added).
    /// With enough queries kept since the last measurement, it calibrates on them instead.
    @discardableResult
    public func tune(target: Double) -> RecallMeasurement? {
        guard let graph = active as? HNSWIndex else { return nil }
        let previous = measurement
        let kept = asked.withLock { a -> [Float]? in
            guard a.fresh >= AdaptiveIndex.calibrationSamples else { return nil }
            a.fresh = 0
            return a.rows
        }
        if let kept, let m = kept.withUnsafeBufferPointer({ graph.calibrate(asked: $0, count: kept.count / dimension, target: target, optimism: previous?.optimism) }) {
            keep(m)
            return m
        }
        guard let m = graph.measureRecall(target: target, optimism: previous?.optimism) else { return nil }
        keep(m)
        return m
    }

    /// Searches at the default breadth walk as `m` chose from now on.
    private func use(_ m: RecallMeasurement) {
        tuned.withLock { $0 = m }
        tunedEf.store(m.ef, ordering: .relaxed)
        tunedReach.store((m.reach ?? .nan).bitPattern, ordering: .relaxed)
        tunedFrom.store(m.widenFrom, ordering: .relaxed)
    }

    private func keep(_ m: RecallMeasurement) {
        use(m)
        // Any measurement but one on queries asked wants the queries' own next (they may differ
        // from the collection's vectors).
        if m.sample != .asked { askedDue.store(1, ordering: .relaxed) }
    }

    /// Keeps a copy of a query asked at the default breadth of the graph; calls `whenQueriesKept`
    /// once enough are new for a calibration.
    private func keepAsked(_ query: UnsafeBufferPointer<Float>) {
        let enough = asked.withLock { a -> Bool in
            let room = AdaptiveIndex.calibrationSamples * dimension
            if a.rows.count < room {
                a.rows.append(contentsOf: query)
            } else {
                (a.rows.withUnsafeMutableBufferPointer { $0.baseAddress! } + a.next * dimension).update(from: query.baseAddress!, count: dimension)
                a.next = (a.next + 1) % AdaptiveIndex.calibrationSamples
            }
            a.fresh += 1
            return a.fresh >= AdaptiveIndex.calibrationSamples
        }
        if enough, askedDue.compareExchange(expected: 1, desired: 0, ordering: .relaxed).exchanged { queriesKept.withLock { $0 }?() }
    }

    /// Has `body` called, once each time, when enough queries have been kept for a calibration on
    /// them (the owner then asks its background thread for `tune`).
    public func whenQueriesKept(_ body: @escaping @Sendable () -> Void) { queriesKept.withLock { $0 = body } }

    // MARK: calibration while building

    /// Held-out rows per group of a calibration (two groups while building), and queries asked
    /// kept for one: the exact answers cost a scan of the graph per 400 queries (on 200,000 GloVe
    /// words a second, a few percent of the build), and their recall's standard error near 0.95 is
    /// about 0.005.
    static let calibrationSamples = 400
    /// A graph smaller than this is not calibrated: at the default breadth it answers almost
    /// exactly, and too few rows are left to hold out.
    static let calibrationMinimum = 2048

    /// Whether a graph about to hold `n` vectors should be calibrated by the batch building it:
    /// never calibrated for this target, last measured on its own vectors only, or grown by half
    /// since (the growth is geometric, so the scans cost about three times the last one).
    private func calibrationDue(graphOf n: Int, target: Double) -> Bool {
        guard n >= AdaptiveIndex.calibrationMinimum else { return false }
        guard let m = measurement else { return true }
        return m.target != target || !m.heldOut || 2 * n >= 3 * m.vectors
    }

    /// Links a batch into `graph`, calibrating its breadth on held-out rows of the batch when due
    /// (`HNSWIndex.insertCalibrating`). `published`: searches use `graph` already, so the held-out
    /// rows wait in `fresh` (searched exactly) until they are linked; the caller holds `writes`.
    private func link(_ labels: [UInt64], _ vectors: UnsafeBufferPointer<Float>, into graph: HNSWIndex, threads: Int,
                      published: Bool) throws(IndexError) {
        let goal = recallTarget
        let held = min(2 * AdaptiveIndex.calibrationSamples, labels.count / 4)
        guard held >= 64, calibrationDue(graphOf: graph.count + labels.count, target: goal) else {
            try graph.insert(batch: labels, vectors: vectors, threads: threads)
            return
        }
        try validate(batch: vectors, rows: labels.count, dimension: dimension)
        // The last row of each label, as a batch insert keeps.
        var lastRow: [UInt64: Int] = [:]
        lastRow.reserveCapacity(labels.count)
        for (row, label) in labels.enumerated() { lastRow[label] = row }
        let rows = labels.indices.filter { lastRow[labels[$0]] == $0 }
        var unique: [UInt64] = [], values: [Float] = []
        if rows.count < labels.count {
            unique = rows.map { labels[$0] }
            values.reserveCapacity(rows.count * dimension)
            for r in rows { values.append(contentsOf: UnsafeBufferPointer(rebasing: vectors[(r * dimension)..<((r + 1) * dimension)])) }
        }
        let batchLabels = rows.count < labels.count ? unique : labels
        // Two groups, each of which must reach the target: rows drawn from the whole batch, and
        // its last rows. A file's order often means something (a vocabulary by frequency, records
        // by time), and its tail is then the part least like its head: GloVe-50's 200,000 most
        // frequent words held out at random reach 0.95 at ef 64, its last 400 at ef 96, and the
        // 1,000 rarest words of the vocabulary, never in the file, need about 110 (BENCHMARKS.md).
        // In a file in no order the tail is one more random sample.
        let perGroup = min(held, batchLabels.count / 4) / 2
        guard perGroup >= 32 else {
            try graph.insert(batch: labels, vectors: vectors, threads: threads)
            return
        }
        let tail = (batchLabels.count - perGroup)..<batchLabels.count
        var random = SplitMixRandom(seed: UInt64(graph.count + batchLabels.count) ^ 0xca1b)
        var chosen = Set<Int>()
        while chosen.count < perGroup { chosen.insert(Int(random.next() % UInt64(tail.lowerBound))) }
        let heldOut = chosen.sorted() + Array(tail)
        let groups = [0..<perGroup, perGroup..<(2 * perGroup)]
        let measured: RecallMeasurement?
        let body = { (p: UnsafeBufferPointer<Float>) throws(IndexError) -> RecallMeasurement? in
            if published {
                for i in heldOut { try self.fresh.insert(label: batchLabels[i], vector: UnsafeBufferPointer(rebasing: p[(i * self.dimension)..<((i + 1) * self.dimension)])) }
            }
            let m = try graph.insertCalibrating(batch: batchLabels, vectors: p, heldOut: heldOut, groups: groups, threads: threads, target: goal)
            // Linked now: searches find them in the graph (and drop the duplicate) before `fresh`
            // lets go of them.
            if published { for i in heldOut { self.fresh.remove(label: batchLabels[i]) } }
            return m
        }
        if rows.count < labels.count {
            measured = try values.withUnsafeBufferPointer { (p) throws(IndexError) in try body(p) }
        } else {
            measured = try body(vectors)
        }
        if let measured { keep(measured) }
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
        if let graph = now as? HNSWIndex, graph.nodeCount >= AdaptiveIndex.compactionMinimum, graph.nodeCount - graph.count > graph.nodeCount / 4 {
            swap(to: graph.compacted())
        }
    }

    /// The graph of the flat index's vectors, built on every core.
    private func hnsw(from flat: FlatIndex) -> HNSWIndex {
        var labels: [UInt64] = []
        var rows: [Float] = []
        labels.reserveCapacity(flat.count)
        rows.reserveCapacity(flat.count * dimension)
        flat.forEach { label, v in
            labels.append(label)
            rows.append(contentsOf: UnsafeBufferPointer(start: v, count: dimension))
        }
        let graph = HNSWIndex(dimension: dimension, metric: metric, kernels: kernels, parameters: parameters, storage: storage)
        // A few hundred nodes linked at once on several threads pick their links among nodes
        // not yet linked, and a node can end up out of reach (seen: one in 200, at m=8).
        let threads = labels.count >= AdaptiveIndex.linkedAtOnce ? availableCores : 1
        rows.withUnsafeBufferPointer { try? link(labels, $0, into: graph, threads: threads, published: false) }
        return graph
    }

    private func swap(to index: any VectorIndex) { current.withLock { $0 = index } }

    /// Every live (label, stored vector).
    public func forEach(_ body: (UInt64, UnsafePointer<Float>) -> Void) {
        let now = active
        if let flat = now as? FlatIndex { flat.forEach(body) } else if let graph = now as? HNSWIndex { graph.forEachLive(body) }
        fresh.forEach(body)
    }
}
