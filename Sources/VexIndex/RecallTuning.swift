import CKernels
import Synchronization

/// What a recall measurement asked.
public enum RecallSampleKind: UInt8, Sendable {
    /// The graph's own vectors, each asked as if new (`measureRecall`).
    case own = 0
    /// Rows of a batch held out of the graph while it was built (`insertCalibrating`).
    case heldOut = 1
    /// Queries the collection was asked (`calibrate(asked:)`).
    case asked = 2
}

/// What a graph's recall measurement found: the search breadth chosen, the recall@10 it gave on the
/// sample, what the sample was, and the size of the graph when measured. `optimism`: how much the
/// graph's own vectors, asked as if new, overstated held-out recall when last calibrated, at the
/// breadth that passed with no query widened (nil: never calibrated). `reach`: the distance (as users see it) of the walk's 10th
/// answer, at the breadth that passes without walking broader (`widenFrom`), that
/// `HNSWIndex.reachQuantile` of the sample stay within; a query whose 10th answer is farther walks
/// broader (`HNSWIndex.search(widenBeyond:)`; nil: never). `widenFrom`: the breadth such a query
/// walks on from, before doubling (at least `ef`): with a reach, `ef` is the smallest breadth whose
/// recall, those queries widened, passes (`HNSWIndex.chooseBreadths`).
public struct RecallMeasurement: Equatable, Sendable, CustomStringConvertible {
    public let ef: Int
    public let recall: Double
    public let vectors: Int
    public let target: Double
    public let sample: RecallSampleKind
    public let optimism: Double?
    public let reach: Float?
    public let widenFrom: Int
    init(ef: Int, recall: Double, vectors: Int, target: Double, sample: RecallSampleKind, optimism: Double?, reach: Float? = nil,
         widenFrom: Int? = nil) {
        self.ef = ef
        self.recall = recall
        self.vectors = vectors
        self.target = target
        self.sample = sample
        self.optimism = optimism
        self.reach = reach
        self.widenFrom = max(widenFrom ?? ef, ef)
    }

    /// Measured on vectors the graph did not hold when it answered them.
    public var heldOut: Bool { sample != .own }

    /// The snapshot's TUNE section.
    var encoded: [UInt8] {
        var w = ByteWriter()
        w.put(UInt32(ef)); w.put(recall.bitPattern); w.put(UInt64(vectors)); w.put(target.bitPattern)
        w.put(sample.rawValue); w.put((optimism ?? .nan).bitPattern); w.put((reach ?? .nan).bitPattern)
        w.put(UInt32(widenFrom))
        return w.bytes
    }

    /// Read back from a TUNE section; nil when it is not one this version or the two before it
    /// wrote (it is then measured again; an older version's was measured on the graph's own vectors
    /// only). The last version's walks past the reach from its one breadth, as it did; the one
    /// before it has no reach: its queries never walk broader until the next measurement.
    init?(section bytes: [UInt8]?) {
        guard let bytes, [37, 41, 45].contains(bytes.count) else { return nil }
        var r = ByteReader(bytes)
        guard let ef = try? r.get(UInt32.self), let recall = try? r.get(UInt64.self), let vectors = try? r.get(UInt64.self),
              let target = try? r.get(UInt64.self), let held = try? r.get(UInt8.self), let optimism = try? r.get(UInt64.self) else { return nil }
        let (rc, t, o) = (Double(bitPattern: recall), Double(bitPattern: target), Double(bitPattern: optimism))
        let reach = bytes.count >= 41 ? (try? r.get(UInt32.self)).map { Float(bitPattern: $0) } ?? .nan : .nan
        let from = bytes.count >= 45 ? (try? r.get(UInt32.self)) ?? 0 : ef
        guard (1...4096).contains(ef), (ef...4096).contains(from), (0...1).contains(rc), (0...1).contains(t),
              let kind = RecallSampleKind(rawValue: held), o.isNaN || (-1...1).contains(o), reach.isNaN || reach.isFinite,
              let n = Int(exactly: vectors) else { return nil }
        self.init(ef: Int(ef), recall: rc, vectors: n, target: t, sample: kind, optimism: o.isNaN ? nil : o, reach: reach.isNaN ? nil : reach,
                  widenFrom: Int(from))
    }

    public var description: String {
        let r = (recall * 1000).rounded() / 1000
        let asked = switch sample {
        case .own: "on its own vectors"
        case .heldOut: "on held-out vectors"
        case .asked: "on queries asked"
        }
        let from = widenFrom > ef ? ", from ef \(widenFrom)" : ""
        let wider = reach.map { "; broader for queries whose 10th answer is past distance \(($0 * 1000).rounded() / 1000)\(from)" } ?? ""
        return "ef \(ef) (recall@10 \(r) measured \(asked) at \(vectors) vectors, target \(target)\(wider))"
    }
}

/// Per-query recall@10 at one breadth: the mean, and how far below it the recall of queries drawn
/// like the sample may be (`confidence` standard errors of the mean).
struct RecallSample {
    let mean: Double
    let standardError: Double
    init(_ perQuery: [Double]) {
        let n = Double(max(perQuery.count, 1))
        let mean = perQuery.reduce(0, +) / n
        self.mean = mean
        let variance = perQuery.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / max(n - 1, 1)
        standardError = (variance / n).squareRoot()
    }
    /// The recall queries like the sample reach at least, at `confidence` standard errors.
    var lowerBound: Double { mean - RecallSample.confidence * standardError }
    /// Of the samples of several groups of queries (`parts` are index ranges into `perQuery`),
    /// the one whose lower bound is lowest: a breadth that passes it passes them all.
    init(weakestOf perQuery: [Double], parts: [Range<Int>]) {
        let samples = parts.filter { !$0.isEmpty }.map { RecallSample(Array(perQuery[$0])) }
        self = samples.min { $0.lowerBound < $1.lowerBound } ?? RecallSample(perQuery)
    }
    /// Whether a file drifts toward its end: a later group of `perQuery` (held-out rows of the
    /// file's tail) answers worse than the first (rows drawn from all of it) by more than two
    /// standard errors of the difference. Queries past the end of such a file are likely further
    /// along, unlike the tail in a way the reach does not tell: GloVe's 1,000 rarest words asked of
    /// its 200,000 most frequent have 10th neighbours as near as the held-out rows', yet at the
    /// breadth a two-breadth choice gave (ef 88, those past the reach from 108) answered 0.934,
    /// against 0.948 at 108 for all.
    static func drifts(_ perQuery: [Double], parts: [Range<Int>]) -> Bool {
        guard let first = parts.first, !first.isEmpty else { return false }
        let whole = RecallSample(Array(perQuery[first]))
        return parts.dropFirst().contains { part in
            guard !part.isEmpty else { return false }
            let later = RecallSample(Array(perQuery[part]))
            let spread = (whole.standardError * whole.standardError + later.standardError * later.standardError).squareRoot()
            return whole.mean - later.mean > 2 * spread
        }
    }

    /// 1.5 standard errors: with 400 sampled queries (about 0.005 on GloVe-50 at recall 0.95) the
    /// breadth chosen gives held-out recall about 0.008 above the target, and one query in 15 of
    /// such samples falls short of it.
    static let confidence = 1.5
}

extension HNSWIndex {
    /// The breadths tried, in order; between the last that fails and the first that passes, the
    /// smallest passing breadth is then found by halving the interval.
    static let efLadder = [16, 24, 32, 48, 64, 80, 96, 128, 160, 192, 256, 384, 512, 768, 1000]

    /// The smallest breadth up to `widest` whose recall (`recallAt`) passes `passes`; `widest`
    /// when none does. Recall grows with the breadth, so a halving search between two rungs finds
    /// the smallest to within a few percent.
    static func smallestEf(passing passes: (RecallSample) -> Bool, upTo widest: Int = efLadder[efLadder.count - 1],
                           recallAt: (Int) -> RecallSample) -> (Int, RecallSample) {
        // A breadth below k is k (the walk keeps at least k): 10, the k measured, is the least.
        var below = 9
        for ef in efLadder.filter({ $0 < widest }) + [widest] {
            let r = recallAt(ef)
            guard passes(r) else { below = ef; continue }
            var (high, best) = (ef, r)
            var low = below
            // Within 4% of the smallest: finer steps cost samples' searches, not recall. Below
            // ef 50 to the one: there a step is worth more (clustered 768-d at 0.95 with the reach:
            // 0.973 at ef 12, short of the bar at 10).
            while high - low > max(1, high / 25) {
                let mid = (low + high) / 2
                let m = recallAt(mid)
                if passes(m) { (high, best) = (mid, m) } else { low = mid }
            }
            return (high, best)
        }
        return (widest, recallAt(widest))
    }

    /// What a measurement chose on its sample: the breadth searches walk at, the sample's recall
    /// there (queries past the reach widened), the reach, and the breadth a query past it walks on
    /// from; `plain`: the sample's recall at `from` with none widened.
    struct Breadths {
        let ef: Int
        let sample: RecallSample
        let reach: Float?
        let from: Int
        let plain: RecallSample
    }

    /// Chooses the breadths for a sample. `from` is the smallest breadth whose recall passes with
    /// no query widened (`recallAt(ef, nil)`), and the reach is taken there (`reachAt`). With a
    /// reach, `ef` is the smallest breadth up to `from` whose recall passes with the queries past
    /// the reach walking on from `from` (`recallAt(ef, (reach, from))`): widening them on top of a
    /// breadth that passed already overshot, most on clustered 768-d data, where they are nearly
    /// all of that breadth's misses (0.996 at target 0.95). A query unlike the sample is past the
    /// reach at either breadth and walks on from `from`, as it did with one breadth. `drifting(from)`
    /// true keeps the one breadth: the queries to come are likely unlike the sample in a way the
    /// reach does not tell (`RecallSample.drifts`).
    static func chooseBreadths(passing passes: (RecallSample) -> Bool, recallAt: (Int, (reach: Float, from: Int)?) -> RecallSample,
                               reachAt: (Int) -> Float?, drifting: (Int) -> Bool = { _ in false }) -> Breadths {
        let (from, plain) = smallestEf(passing: passes, recallAt: { recallAt($0, nil) })
        let measured = reachAt(from)
        guard let reach = measured, !drifting(from) else { return Breadths(ef: from, sample: plain, reach: measured, from: from, plain: plain) }
        let (ef, sample) = smallestEf(passing: passes, upTo: from, recallAt: { recallAt($0, (reach, from)) })
        return Breadths(ef: ef, sample: sample, reach: reach, from: from, plain: plain)
    }

    /// The share of a calibration sample whose walk's 10th answer `reach` stays within: one query
    /// in twenty of the sampled kind walks broader than the breadth chosen, and queries unlike the
    /// sample (GloVe-50's rarest words asked of its most frequent: nine in ten beyond it) do.
    static let reachQuantile = 0.95

    /// The distance the walk's 10th answer at breadth `ef` stays within for `reachQuantile` of
    /// `count` prepared query rows (nil: too few answers), searched as `recalls` searches them.
    func reach(_ queries: UnsafePointer<Float>, count n: Int, ef: Int, limit: Int, excluding: [UInt64]? = nil, avoiding: [UInt32]? = nil,
               threads: Int = 1) -> Float? {
        let tenths = measure(queries, count: n, k: HNSWIndex.reachRank, ef: ef, limit: limit, excluding: excluding, avoiding: avoiding,
                             threads: threads) { _, got in
            got.count == HNSWIndex.reachRank ? Double(got[HNSWIndex.reachRank - 1].distance) : .nan
        }.filter { !$0.isNaN }.sorted()
        guard tenths.count >= 20 else { return nil }
        return Float(tenths[min(tenths.count - 1, Int((Double(tenths.count) * HNSWIndex.reachQuantile).rounded(.down)))])
    }

    /// Recall@10 of each of `queries` (prepared rows) at breadth `ef` against `truths`; a node in
    /// `avoiding` is walked around as if not in the graph. `limit`: the nodes the exact answers
    /// were taken over (the walk sees no others). `widening`: a query whose 10th answer is past
    /// the reach walks on from that breadth, as a search at the tuned breadth does.
    func recalls(_ queries: UnsafePointer<Float>, _ truths: [Set<UInt64>], ef: Int, widening: (reach: Float, from: Int)? = nil, limit: Int,
                 excluding: [UInt64]? = nil, avoiding: [UInt32]? = nil, threads: Int = 1) -> [Double] {
        measure(queries, count: truths.count, k: 10, ef: ef, widening: widening, limit: limit, excluding: excluding, avoiding: avoiding,
                threads: threads) { i, got in
            truths[i].isEmpty ? 1 : Double(got.filter { truths[i].contains($0.label) }.count) / Double(truths[i].count)
        }
    }

    /// `score` of each of `count` prepared query rows' answers (`k` at breadth `ef`, widened as
    /// `recalls` says, over the first `limit` nodes, the row's own label and node left out), the
    /// rows searched on `threads` threads.
    private func measure(_ queries: UnsafePointer<Float>, count n: Int, k: Int, ef: Int, widening: (reach: Float, from: Int)? = nil, limit: Int,
                         excluding: [UInt64]?, avoiding: [UInt32]?, threads: Int, score: @escaping @Sendable (Int, [Neighbor]) -> Double) -> [Double] {
        let out = UnsafeMutablePointer<Double>.allocate(capacity: n)
        defer { out.deallocate() }
        let (q, slots) = (UnsafeSendable(queries), UnsafeSendable(out))
        let next = Atomic<Int>(0)
        runParallel(max(1, min(threads, n / 16))) { [self] in
            while true {
                let i = next.add(1, ordering: .relaxed).oldValue
                if i >= n { break }
                let query = UnsafeBufferPointer(start: UnsafePointer(q.pointer) + i * dimension, count: dimension)
                let got = (try? search(query, k: k, ef: ef, filter: SearchFilter(excluding: excluding?[i]), avoiding: avoiding?[i],
                                       nodesBelow: limit, widenBeyond: widening?.reach, widenFrom: widening?.from)) ?? []
                slots.pointer[i] = score(i, got)
            }
        }
        return Array(UnsafeBufferPointer(start: out, count: n))
    }

    /// Links a batch as `insert(batch:)` does, calibrating the breadth for `target` on the way:
    /// `heldOut` rows of the batch are linked last, after the graph of the others has answered them
    /// as the queries it has never seen that they are, against the exact answer (one scan). The
    /// held-out rows come in `groups` (ranges of `heldOut`); the smallest breadth whose recall
    /// reaches the target with `RecallSample.confidence` to spare in every group is kept. Once
    /// they are linked, the same rows are asked again as the graph's own vectors (as
    /// `measureRecall` asks them); how much more that finds is the measurement's `optimism`, which
    /// later self-measurements take off.
    /// The batch holds no duplicate labels (the caller keeps the last row of each).
    func insertCalibrating(batch labels: [UInt64], vectors rows: UnsafeBufferPointer<Float>, heldOut held: [Int], groups: [Range<Int>]? = nil,
                           threads: Int, target: Double) throws(IndexError) -> RecallMeasurement? {
        let groups = groups ?? [held.indices]
        let isHeld = Set(held)
        var keptLabels: [UInt64] = [], keptRows: [Float] = []
        keptLabels.reserveCapacity(labels.count - held.count)
        keptRows.reserveCapacity((labels.count - held.count) * dimension)
        for i in labels.indices where !isHeld.contains(i) {
            keptLabels.append(labels[i])
            keptRows.append(contentsOf: UnsafeBufferPointer(rebasing: rows[(i * dimension)..<((i + 1) * dimension)]))
        }
        try keptRows.withUnsafeBufferPointer { (p) throws(IndexError) in try insert(batch: keptLabels, vectors: p, threads: threads) }

        let heldLabels = held.map { labels[$0] }
        var heldRows: [Float] = []
        heldRows.reserveCapacity(held.count * dimension)
        for i in held { heldRows.append(contentsOf: UnsafeBufferPointer(rebasing: rows[(i * dimension)..<((i + 1) * dimension)])) }
        // The queries as the walk sees them (cosine: unit length), for the exact scan.
        var prepared = [Float](repeating: 0, count: heldRows.count)
        heldRows.withUnsafeBufferPointer { src in
            prepared.withUnsafeMutableBufferPointer { out in
                for i in held.indices {
                    metric.prepare(UnsafeBufferPointer(rebasing: src[(i * dimension)..<((i + 1) * dimension)]),
                                   into: out.baseAddress! + i * dimension, kernels: kernels)
                }
            }
        }
        let limit = published.load(ordering: .acquiring)
        let nearest = prepared.withUnsafeBufferPointer { exactNearest(queries: $0.baseAddress!, count: held.count, k: 10, limit: limit, threads: threads) }
        defer { vectors.releaseAll() }
        let truths = nearest.map { Set($0.map(\.label)) }
        let chosen = prepared.withUnsafeBufferPointer { q in
            HNSWIndex.chooseBreadths(passing: { $0.lowerBound >= target }, recallAt: { ef, widening in
                RecallSample(weakestOf: recalls(q.baseAddress!, truths, ef: ef, widening: widening, limit: limit, threads: threads), parts: groups)
            }, reachAt: { self.reach(q.baseAddress!, count: held.count, ef: $0, limit: limit, threads: threads) },
               drifting: { RecallSample.drifts(recalls(q.baseAddress!, truths, ef: $0, limit: limit, threads: threads), parts: groups) })
        }
        try heldRows.withUnsafeBufferPointer { (p) throws(IndexError) in try insert(batch: heldLabels, vectors: p, threads: threads) }

        // The same rows as the graph's own vectors: their answers now may hold the other held-out
        // rows too (nearer than the tenth of the scan's), themselves left out.
        var after: [Set<UInt64>] = []
        prepared.withUnsafeBufferPointer { q in
            for i in held.indices {
                var best = TopK(k: 10)
                for n in nearest[i] { best.offer(n) }
                for j in held.indices where j != i {
                    let a = q.baseAddress! + i * dimension, b = q.baseAddress! + j * dimension
                    let d = metric == .l2 ? kernels.l2Squared(a, b, dimension) : -kernels.dot(a, b, dimension)
                    if d <= best.bound { best.offer(Neighbor(label: heldLabels[j], distance: d)) }
                }
                after.append(Set(best.sorted().map(\.label)))
            }
        }
        let nodes = writer.withLock { s in heldLabels.map { s.nodeOfLabel[$0] } }
        guard nodes.allSatisfy({ $0 != nil }) else {
            return RecallMeasurement(ef: chosen.ef, recall: chosen.sample.mean, vectors: count, target: target, sample: .heldOut, optimism: nil,
                                     reach: chosen.reach, widenFrom: chosen.from)
        }
        // A self-measurement asks nodes drawn from the whole graph, like the first group: what it
        // finds there, less the recall the breadth was chosen for, is what it overstates (at the
        // breadth that passes with none widened).
        let own = prepared.withUnsafeBufferPointer { q in
            RecallSample(Array(recalls(q.baseAddress!, after, ef: chosen.from, limit: published.load(ordering: .acquiring), excluding: heldLabels,
                                       avoiding: nodes.map { $0! }, threads: threads)[groups[0]]))
        }
        return RecallMeasurement(ef: chosen.ef, recall: chosen.sample.mean, vectors: count, target: target, sample: .heldOut,
                                 optimism: own.mean - chosen.plain.mean, reach: chosen.reach, widenFrom: chosen.from)
    }

    /// Chooses the breadth for `target` on `count` queries the collection was asked (rows of
    /// `queries`, as asked): the sample that is the queries' own distribution, which the
    /// collection's vectors need not share (GloVe-50's rarest words asked of its most frequent
    /// ones need a broader search than frequent words held out: BENCHMARKS.md). The exact answers
    /// cost one scan.
    public func calibrate(asked queries: UnsafeBufferPointer<Float>, count: Int, target: Double, optimism: Double?,
                          threads: Int = 1) -> RecallMeasurement? {
        let limit = published.load(ordering: .acquiring)
        guard limit > 0, count > 0, queries.count >= count * dimension else { return nil }
        var prepared = [Float](repeating: 0, count: count * dimension)
        prepared.withUnsafeMutableBufferPointer { out in
            for i in 0..<count {
                metric.prepare(UnsafeBufferPointer(rebasing: queries[(i * dimension)..<((i + 1) * dimension)]),
                               into: out.baseAddress! + i * dimension, kernels: kernels)
            }
        }
        let truths = prepared.withUnsafeBufferPointer { exactNearest(queries: $0.baseAddress!, count: count, k: 10, limit: limit, threads: threads) }
            .map { Set($0.map(\.label)) }
        defer { vectors.releaseAll() }
        let chosen = prepared.withUnsafeBufferPointer { q in
            HNSWIndex.chooseBreadths(passing: { $0.lowerBound >= target }, recallAt: { ef, widening in
                RecallSample(recalls(q.baseAddress!, truths, ef: ef, widening: widening, limit: limit, threads: threads))
            }, reachAt: { self.reach(q.baseAddress!, count: count, ef: $0, limit: limit, threads: threads) })
        }
        return RecallMeasurement(ef: chosen.ef, recall: chosen.sample.mean, vectors: self.count, target: target, sample: .asked, optimism: optimism,
                                 reach: chosen.reach, widenFrom: chosen.from)
    }

    /// Measures recall@10 against the exact answer (a scan of every live vector) on `samples` of the
    /// graph's own vectors, and returns the smallest breadth whose recall, less `optimism`, reaches
    /// `target` with `RecallSample.confidence` to spare. Each sample is asked as if it were new: left
    /// out of the answer, and the walk never steps on its node. Its neighbours were still linked
    /// knowing it, so the sample may be easier than a query the graph has never seen: `optimism` is
    /// what calibration on held-out rows found that difference to be (GloVe-50, 200,000 words with
    /// others held out at random: -0.002, none to speak of; the rarest words asked of the frequent
    /// ones are harder, a difference of distribution only the queries asked show). With none
    /// known, the bar is the target plus 0.4 of what remains to 1. Runs beside searches and the writer:
    /// it takes no lock, and reads only nodes published when it starts (their vectors never change),
    /// or the first `nodesBelow` of them.
    public func measureRecall(target: Double, optimism: Double? = nil, samples: Int = 400, seed: UInt64 = 0x7e57,
                              nodesBelow: Int? = nil) -> RecallMeasurement? {
        let limit = min(published.load(ordering: .acquiring), nodesBelow ?? .max)
        guard limit > 0 else { return nil }
        var random = SplitMixRandom(seed: seed)
        var chosen: [UInt32] = []
        var taken = Set<UInt32>()
        var tries = 0
        while chosen.count < min(samples, count) && tries < samples * 20 {
            tries += 1
            let node = UInt32(random.next() % UInt64(limit))
            if !isDeleted(node) && taken.insert(node).inserted { chosen.append(node) }
        }
        guard !chosen.isEmpty else { return nil }
        var queries = [Float](repeating: 0, count: chosen.count * dimension)
        queries.withUnsafeMutableBufferPointer { q in
            for (i, node) in chosen.enumerated() where !(vectors.isFile && vectors.read(node, into: q.baseAddress! + i * dimension)) {
                (q.baseAddress! + i * dimension).update(from: vector(node), count: dimension)
            }
        }
        let labels = chosen.map { label($0) }
        let truths = queries.withUnsafeBufferPointer { q in
            exactNearest(queries: q.baseAddress!, count: chosen.count, k: 10, limit: limit, threads: 1, leavingOut: labels)
        }.map { Set($0.map(\.label)) }
        // The exact scan read every vector: let the pages go from the resident set (in a file, the
        // kernel keeps them in its cache).
        defer { vectors.releaseAll() }
        let breadths = queries.withUnsafeBufferPointer { q in
            HNSWIndex.chooseBreadths(passing: { r in
                if let optimism { return r.lowerBound - optimism >= target }
                return r.mean >= target + (1 - target) * 0.4
            }, recallAt: { ef, widening in
                RecallSample(recalls(q.baseAddress!, truths, ef: ef, widening: widening, limit: limit, excluding: labels, avoiding: chosen))
            }, reachAt: { self.reach(q.baseAddress!, count: chosen.count, ef: $0, limit: limit, excluding: labels, avoiding: chosen) })
        }
        return RecallMeasurement(ef: breadths.ef, recall: breadths.sample.mean - (optimism ?? 0), vectors: count, target: target, sample: .own,
                                 optimism: optimism, reach: breadths.reach, widenFrom: breadths.from)
    }

    /// For each of `count` prepared query rows, the `k` live nodes nearest to it (by label, with
    /// the kernel's distance), any label in `leavingOut[i]` left out of query i's: one pass over
    /// every node below `limit`, on up to `threads` threads each taking a share of the queries. A
    /// vector file is read a chunk at a time (pread), so the scan leaves nothing of it resident.
    func exactNearest(queries: UnsafePointer<Float>, count: Int, k: Int, limit: Int, threads: Int, leavingOut: [UInt64]? = nil) -> [[Neighbor]] {
        // Each thread writes only its own queries' slots.
        let slots = UnsafeMutablePointer<[Neighbor]>.allocate(capacity: count)
        slots.initialize(repeating: [], count: count)
        defer { slots.deinitialize(count: count); slots.deallocate() }
        let results = UnsafeSendable(slots)
        let share = max(1, (count + max(threads, 1) - 1) / max(threads, 1))
        let next = Atomic<Int>(0)
        let q = UnsafeSendable(queries)
        runParallel(max(1, min(threads, (count + share - 1) / share))) { [self] in
            while true {
                let first = next.add(share, ordering: .relaxed).oldValue
                if first >= count { break }
                let part = first..<min(count, first + share)
                let found = scan(q.pointer + first * dimension, part.count, k: k, limit: limit, leavingOut: leavingOut.map { Array($0[part]) })
                for (i, f) in zip(part, found) { results.pointer[i] = f }
            }
        }
        return Array(UnsafeBufferPointer(start: slots, count: count))
    }

    /// `exactNearest` for one share of the queries, on the caller's thread.
    private func scan(_ queries: UnsafePointer<Float>, _ n: Int, k: Int, limit: Int, leavingOut: [UInt64]?) -> [[Neighbor]] {
        var best = [TopK](repeating: TopK(k: k), count: n)
        let floats = vectors.stride / 4
        let buffer = UnsafeMutablePointer<Float>.allocate(capacity: HNSWIndex.chunkNodes * floats)
        defer { buffer.deallocate() }
        var first = 0
        while first < limit {
            let rows = min(HNSWIndex.chunkNodes, limit - first)
            let fromFile = vectors.isFile && vectors.readRows(first, rows, into: buffer)
            for other in UInt32(first)..<UInt32(first + rows) where !isDeleted(other) {
                let v = fromFile ? UnsafePointer(buffer + (Int(other) - first) * floats) : UnsafePointer(vector(other))
                let l = label(other)
                for i in 0..<n where leavingOut?[i] != l {
                    let q = queries + i * dimension
                    let d = metric == .l2 ? kernels.l2Squared(q, v, dimension) : -kernels.dot(q, v, dimension)
                    if d <= best[i].bound { best[i].offer(Neighbor(label: l, distance: d)) }
                }
            }
            first += rows
        }
        return best.map { $0.sorted() }
    }
}

/// A pointer handed to the threads of `runParallel`, which all end before its memory does.
struct UnsafeSendable<Pointee>: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<Pointee>
    init(_ pointer: UnsafeMutablePointer<Pointee>) { self.pointer = pointer }
    init(_ pointer: UnsafePointer<Pointee>) { self.pointer = UnsafeMutablePointer(mutating: pointer) }
}

extension HNSWIndex {
    /// Which nodes a walk of level 0 from the entry point reaches (a breadth-first pass over every
    /// link, about a tenth of a second per million nodes).
    func reached() -> [Bool] {
        let n = published.load(ordering: .acquiring)
        let top = entry.load(ordering: .acquiring)
        var seen = [Bool](repeating: false, count: n)
        guard n > 0, top != 0 else { return seen }
        var queue = [UInt32(truncatingIfNeeded: top)]
        seen[Int(queue[0])] = true
        var head = 0
        while head < queue.count {
            let list = links(queue[head], 0)
            head += 1
            for j in 0..<min(Int(list[0]), maxLinks0) {
                let id = Int(list[1 + j])
                if id < n && !seen[id] { seen[id] = true; queue.append(UInt32(id)) }
            }
        }
        return seen
    }

    /// Live nodes no walk from the entry point reaches (`seen` is `reached()`).
    func unreachable(_ seen: [Bool]) -> [Int] { seen.indices.filter { !seen[$0] && !isDeleted(UInt32($0)) } }

    /// How many live nodes no walk from the entry point reaches: no search can return them.
    public func unreachableCount() -> Int { unreachable(reached()).count }

    /// Links every live node no walk reaches from the nearest node that is reached: into a free
    /// slot of its list, or in place of the link whose target has the most other links to it. The
    /// heuristic's pruning, more so with several threads linking at once, leaves a few such nodes
    /// (GloVe-50 on 2 threads: 26 of 399,000). The writer's job; returns how many it linked. At most
    /// `searches` nodes are looked for: each costs a search as deep as an insert's, and data made to
    /// leave most nodes out of reach (vectors of dimension 1: a line the pruning cuts into pieces)
    /// would otherwise cost a search per node of the graph in one batch, which a stop waits for.
    @discardableResult
    func reconnect(_ state: inout WriterState, searches: Int = .max) -> Int {
        var linked = 0, searched = 0
        for _ in 0..<3 {
            let n = published.load(ordering: .relaxed)
            let reach = reached()
            let lost = unreachable(reach)
            if lost.isEmpty { break }
            var inDegree = [Int32](repeating: 0, count: n)
            for node in 0..<UInt32(n) {
                let list = links(node, 0)
                for j in 0..<min(Int(list[0]), maxLinks0) { inDegree[Int(list[1 + j])] += 1 }
            }
            for u in lost {
                guard searched < searches else { return linked }
                searched += 1
                let query = UnsafeBufferPointer(start: UnsafePointer(vector(UInt32(u))), count: dimension)
                guard let near = try? search(query, k: 8, ef: parameters.efConstruction, filter: SearchFilter()) else { continue }
                for neighbor in near {
                    guard let r = state.nodeOfLabel[neighbor.label], Int(r) != u, reach[Int(r)] else { continue }
                    let list = links(r, 0)
                    let count = Int(list[0])
                    if count < maxLinks0 {
                        vx_store_u32(list + 1 + count, UInt32(u))
                        vx_store_release_u32(list, UInt32(count + 1))
                    } else {
                        var slot = -1, most: Int32 = 1
                        for j in 0..<count where inDegree[Int(list[1 + j])] > most { (slot, most) = (j, inDegree[Int(list[1 + j])]) }
                        guard slot >= 0 else { continue }
                        inDegree[Int(list[1 + slot])] -= 1
                        vx_store_u32(list + 1 + slot, UInt32(u))
                    }
                    inDegree[u] += 1
                    linked += 1
                    break
                }
            }
        }
        return linked
    }
}
