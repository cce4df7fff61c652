import Synchronization
import Testing
import VexKernels
import VexTestSupport
@testable import VexIndex

/// Calibration while building: a big batch holds rows out of the graph, asks them as queries the
/// graph has never seen, and searches then use the smallest breadth that reaches the target on them.
@Suite struct CalibrationTests {
    static let kernels = try! DistanceKernels.forProcess.get()
    /// A graph made weak on purpose (few links, a narrow build) over clusters wide enough that the
    /// breadth matters: recall@10 runs from about 0.7 at ef 16 to 0.99 at ef 200.
    static let weak = HNSWParameters(m: 5, efConstruction: 24)
    static let sound = HNSWParameters(m: 8, efConstruction: 64)
    static let dim = 24

    static func data(_ count: Int, seed: UInt64) -> [[Float]] {
        clusteredSet(count: count, dimension: dim, clusters: 12, seed: seed).map { v in v.map { $0 * 0.6 } }
    }

    /// recall@10 of `queries` (never inserted) at the breadth the index chose.
    func heldOutRecall(_ index: AdaptiveIndex, _ table: [UInt64: [Float]], _ queries: [[Float]], ef: Int? = nil) throws -> Double {
        var hits = 0
        for q in queries {
            let got = try index.search(q, k: 10, ef: ef)
            hits += Set(got.map(\.label)).intersection(bruteForce(table, q, .l2, k: 10).map(\.0)).count
        }
        return Double(hits) / Double(queries.count * 10)
    }

    func build(_ rows: [[Float]], target: Double, firstLabel: UInt64 = 0, into index: AdaptiveIndex? = nil,
               parameters: HNSWParameters = weak) throws -> AdaptiveIndex {
        let index = index ?? AdaptiveIndex(dimension: Self.dim, metric: .l2, kind: .hnsw, parameters: parameters, kernels: Self.kernels)
        index.recallTarget = target
        let labels = (0..<UInt64(rows.count)).map { firstLabel + $0 }
        try rows.flatMap { $0 }.withUnsafeBufferPointer { (p) throws(IndexError) in try index.insert(batch: labels, vectors: p, threads: 2) }
        return index
    }

    @Test(arguments: [0.85, 0.95])
    func theFirstAnswerHasTheTargetOnQueriesNeverSeen(_ target: Double) throws {
        let all = Self.data(12_000, seed: 41)
        let rows = Array(all[..<11_000]), queries = Array(all[11_000...])
        // A graph that can reach the target: on the weak one the breadth runs out (ef 1,000) near
        // 0.95, where the rows held out and the queries differ by more than the sample's error.
        let index = try build(rows, target: target, parameters: Self.sound)
        let m = try #require(index.measurement)
        #expect(m.heldOut && m.target == target && m.vectors == rows.count)
        // Every row is in the graph, the held-out ones too, and none waits beside it.
        #expect(index.count == rows.count && index.unabsorbed == 0)
        var table: [UInt64: [Float]] = [:]
        for (i, v) in rows.enumerated() { table[UInt64(i)] = v }
        let recall = try heldOutRecall(index, table, queries)
        // 1,000 queries: a standard error of about 0.005 on top of the sample's own.
        #expect(recall >= target - 0.01 && recall <= target + 0.03, "held-out recall@10 \(recall) at ef \(m.ef), sample \(m.recall)")
        // The held-out rows were asked again once linked, as the graph's own vectors.
        #expect(m.optimism != nil)
    }

    @Test func theLastRowsOfABatchAreAGroupOfTheirOwn() throws {
        // A batch ordered as many files are (GloVe by frequency, records by time): its last rows
        // from clusters twice as wide, which the graph finds harder, and the queries like them.
        var rng = SplitMix64(state: 83)
        let wide = clusteredSet(count: 1400, dimension: Self.dim, clusters: 12, seed: 79).map { v in
            v.map { ($0 + Float.random(in: -0.4...0.4, using: &rng)) * 0.6 }
        }
        let rows = Self.data(10_000, seed: 73) + wide[..<1000], queries = Array(wide[1000...])
        var order = Array(rows.indices)
        order.shuffle(using: &rng)
        let shuffledRows = order.map { rows[$0] }
        let ordered = try build(rows, target: 0.95, parameters: Self.sound)
        let shuffled = try build(shuffledRows, target: 0.95, parameters: Self.sound)
        let (o, s) = (try #require(ordered.measurement), try #require(shuffled.measurement))
        // In order, the last rows held out are the wide ones, and the breadth is chosen for them.
        #expect(o.ef > s.ef, "ef \(o.ef) in order, \(s.ef) shuffled")
        var inOrder: [UInt64: [Float]] = [:], inShuffle: [UInt64: [Float]] = [:]
        for (i, v) in rows.enumerated() { inOrder[UInt64(i)] = v }
        for (i, v) in shuffledRows.enumerated() { inShuffle[UInt64(i)] = v }
        let (ro, rs) = (try heldOutRecall(ordered, inOrder, queries), try heldOutRecall(shuffled, inShuffle, queries))
        // Either way the queries like the last rows get the target: in order from the breadth, and
        // shuffled by walking broader than it (they are past the reach of the rows drawn at random).
        #expect(ro >= 0.94 && rs >= 0.94, "recall@10 of queries like the last rows: \(ro) at ef \(o.ef) in order, \(rs) at ef \(s.ef) shuffled")
    }

    @Test func theBreadthMustPassTheWeakestGroup() {
        let perQuery = [1.0, 1.0, 0.9, 1.0, 0.6, 0.7, 0.8, 0.7]
        let weakest = RecallSample(weakestOf: perQuery, parts: [0..<4, 4..<8, 8..<8])
        #expect(weakest.mean == RecallSample(Array(perQuery[4..<8])).mean)
        #expect(RecallSample(weakestOf: perQuery, parts: [0..<8]).mean == RecallSample(perQuery).mean)
    }

    @Test func aFileDriftsWhenItsTailAnswersWorseThanItsWhole() {
        // 400 rows each: the whole file's at 0.96, the tail's at 0.915, past two standard errors of
        // the difference (about 0.034 here); then the same recall in both groups, give or take one row.
        let whole = (0..<400).map { $0 % 25 == 0 ? 0.0 : 1.0 }, tail = (0..<400).map { $0 % 12 == 0 ? 0.0 : 1.0 }
        let like = (0..<400).map { $0 % 24 == 0 ? 0.0 : 1.0 }
        #expect(RecallSample.drifts(whole + tail, parts: [0..<400, 400..<800]))
        #expect(!RecallSample.drifts(whole + like, parts: [0..<400, 400..<800]))
        // A tail that answers better is no drift; nor is a sample of one group.
        #expect(!RecallSample.drifts(tail + whole, parts: [0..<400, 400..<800]))
        #expect(!RecallSample.drifts(whole + tail, parts: [0..<800]))
    }

    @Test func aHigherTargetChoosesABroaderSearch() throws {
        let rows = Self.data(8000, seed: 43)
        let low = try #require(try build(rows, target: 0.8).measurement)
        let high = try #require(try build(rows, target: 0.97).measurement)
        #expect(low.ef < high.ef && low.recall < high.recall)
        #expect(low.recall >= 0.8 && high.recall >= 0.97)
    }

    @Test func queriesUnlikeTheCalibrationSampleWalkBroader() throws {
        // Queries from clusters twice as wide as the rows': their 10th neighbour is farther than
        // nearly every held-out row's, and the breadth chosen on those rows is too narrow for them.
        var rng = SplitMix64(state: 89)
        let far = clusteredSet(count: 400, dimension: Self.dim, clusters: 12, seed: 79).map { v in
            v.map { ($0 + Float.random(in: -0.5...0.5, using: &rng)) * 0.6 }
        }
        let all = Self.data(11_000, seed: 73)
        let rows = Array(all[..<10_000]), like = Array(all[10_000...])
        let index = try build(rows, target: 0.9, parameters: Self.sound)
        let m = try #require(index.measurement)
        #expect(m.reach != nil, "\(m)")
        var table: [UInt64: [Float]] = [:]
        for (i, v) in rows.enumerated() { table[UInt64(i)] = v }
        // A breadth named by the asker is walked as named; the default one widens past the reach.
        let (farNamed, farDefault) = (try heldOutRecall(index, table, far, ef: m.ef), try heldOutRecall(index, table, far))
        // (Seen: 0.83 against 0.51; they are unlike anything in the graph, and the walk stops once
        // two broader rounds find nothing new, short of the target here.)
        #expect(farDefault > farNamed + 0.2, "far queries: \(farDefault) by default, \(farNamed) at ef \(m.ef)")
        // They walk on from the breadth that passed with none widened, as with that one breadth:
        // the narrower one their like walk at costs them nothing.
        let graph = try #require(index.active as? HNSWIndex)
        var hits = 0
        for q in far {
            let got = try q.withUnsafeBufferPointer { (p) throws(IndexError) in
                try graph.search(p, k: 10, ef: m.widenFrom, filter: SearchFilter(), avoiding: nil, widenBeyond: m.reach)
            }
            hits += Set(got.map(\.label)).intersection(bruteForce(table, q, .l2, k: 10).map(\.0)).count
        }
        let farOne = Double(hits) / Double(far.count * 10)
        #expect(farDefault >= farOne - 0.01, "far queries: \(farDefault) by default (ef \(m.ef)), \(farOne) from ef \(m.widenFrom) alone")
        // Queries like the rows mostly walk once: their recall is the target's, not far above.
        let likeDefault = try heldOutRecall(index, table, like)
        #expect(likeDefault >= 0.9 - 0.015 && likeDefault <= 0.93, "like the rows: \(likeDefault) by default (\(m))")
    }

    @Test func theGraphIsCalibratedAgainOnlyOnceItHasGrownByHalf() throws {
        let rows = Self.data(16_000, seed: 47)
        let index = try build(Array(rows[..<8000]), target: 0.9)
        let first = try #require(index.measurement)
        #expect(first.vectors == 8000)
        _ = try build(Array(rows[8000..<10_000]), target: 0.9, firstLabel: 8000, into: index)
        #expect(index.measurement == first)
        _ = try build(Array(rows[10_000...]), target: 0.9, firstLabel: 10_000, into: index)
        let second = try #require(index.measurement)
        #expect(second.vectors == 16_000 && second.heldOut)
        #expect(index.count == 16_000 && index.unabsorbed == 0)
        // Every row is held under its own label, the held-out ones too.
        for i in stride(from: 0, to: 16_000, by: 7) { #expect(index.vector(of: UInt64(i)) == rows[i]) }
    }

    @Test func aNewTargetCalibratesTheNextBatch() throws {
        let rows = Self.data(12_000, seed: 53)
        let index = try build(Array(rows[..<8000]), target: 0.8)
        let first = try #require(index.measurement)
        _ = try build(Array(rows[8000..<10_000]), target: 0.97, firstLabel: 8000, into: index)
        let second = try #require(index.measurement)
        #expect(second.target == 0.97 && second.ef > first.ef)
    }

    @Test func aBatchRepeatingALabelKeepsItsLastRowThroughCalibration() throws {
        var rows = Self.data(6000, seed: 59)
        var labels = (0..<UInt64(rows.count)).map { $0 }
        // Row 6000 replaces label 17 (its earlier row stays out of the graph).
        rows.append(rows[5999].map { $0 + 0.01 })
        labels.append(17)
        let index = AdaptiveIndex(dimension: Self.dim, metric: .l2, kind: .hnsw, parameters: Self.weak, kernels: Self.kernels)
        try rows.flatMap { $0 }.withUnsafeBufferPointer { (p) throws(IndexError) in try index.insert(batch: labels, vectors: p, threads: 2) }
        #expect(index.measurement?.heldOut == true)
        #expect(index.count == 6000)
        #expect(index.vector(of: 17) == rows[6000])
    }

    @Test func theTunerTakesOffWhatTheGraphsOwnVectorsOverstate() throws {
        let all = Self.data(12_000, seed: 61)
        let rows = Array(all[..<11_000]), queries = Array(all[11_000...])
        let index = try build(rows, target: 0.92)
        let calibrated = try #require(index.measurement)
        let tuned = try #require(index.tune(target: 0.92))
        #expect(!tuned.heldOut && tuned.optimism == calibrated.optimism)
        var table: [UInt64: [Float]] = [:]
        for (i, v) in rows.enumerated() { table[UInt64(i)] = v }
        // At the default breadth, queries past the reach widened as the tuner counted them.
        let recall = try heldOutRecall(index, table, queries)
        #expect(recall >= 0.92 - 0.015 && recall <= 0.92 + 0.035,
                "held-out recall@10 \(recall) at ef \(tuned.ef), from ef \(tuned.widenFrom) past the reach (calibrated \(calibrated.ef))")
    }

    @Test func queriesAskedUnlikeTheVectorsAreCalibratedOnOnceEnoughAreKept() throws {
        // The collection: one half of the clusters, densely; the queries: the other half, which
        // the held-out rows of the build do not represent.
        let rows = Self.data(12_000, seed: 67)
        let index = try build(rows, target: 0.95)
        let built = try #require(index.measurement)
        let far = clusteredSet(count: 1400, dimension: Self.dim, clusters: 12, seed: 71).map { v in v.map { $0 * 0.9 } }
        var table: [UInt64: [Float]] = [:]
        for (i, v) in rows.enumerated() { table[UInt64(i)] = v }
        let later = Array(far[AdaptiveIndex.calibrationSamples...])
        // At the build's breadth, named: a query naming its breadth is not kept.
        let before = try heldOutRecall(index, table, later, ef: built.ef)
        let kept = Mutex(0)
        index.whenQueriesKept { kept.withLock { $0 += 1 } }
        for q in far[..<AdaptiveIndex.calibrationSamples] { _ = try index.search(q, k: 10) }
        #expect(kept.withLock { $0 } == 1)
        // Queries naming their own breadth or a filter are not a sample of the default's.
        _ = try index.search(far[0], k: 10, ef: 30)
        let m = try #require(index.tune(target: 0.95))
        #expect(m.sample == .asked && m.vectors == rows.count)
        // More queries like those asked: the breadth chosen for them finds more of their answers
        // than the one chosen for the collection's own rows.
        let after = try heldOutRecall(index, table, later)
        #expect(m.ef > built.ef && after > before, "recall@10 \(before) at ef \(built.ef), \(after) at ef \(m.ef) (\(m.recall) on those asked)")
        // Another measurement wants the queries' own again: 400 more are kept and it is called again.
        _ = index.tune(target: 0.95)
        for q in far[..<AdaptiveIndex.calibrationSamples] { _ = try index.search(q, k: 10) }
        #expect(kept.withLock { $0 } == 2)
    }

    @Test func theMeasurementSurvivesTheSnapshotSection() throws {
        let m = RecallMeasurement(ef: 97, recall: 0.958, vectors: 200_000, target: 0.95, sample: .heldOut, optimism: 0.021)
        #expect(RecallMeasurement(section: m.encoded) == m)
        let never = RecallMeasurement(ef: 64, recall: 0.97, vectors: 5000, target: 0.9, sample: .own, optimism: nil)
        #expect(RecallMeasurement(section: never.encoded) == never)
        let asked = RecallMeasurement(ef: 120, recall: 0.955, vectors: 9000, target: 0.95, sample: .asked, optimism: -0.002)
        #expect(RecallMeasurement(section: asked.encoded) == asked)
        let reaching = RecallMeasurement(ef: 32, recall: 0.961, vectors: 50_000, target: 0.95, sample: .heldOut, optimism: 0.01, reach: 0.497)
        #expect(RecallMeasurement(section: reaching.encoded) == reaching)
        // Two breadths: queries past the reach walk on from ef 48, the others at 32.
        let two = RecallMeasurement(ef: 32, recall: 0.955, vectors: 50_000, target: 0.95, sample: .heldOut, optimism: 0.01, reach: 0.497,
                                    widenFrom: 48)
        #expect(RecallMeasurement(section: two.encoded) == two && two.widenFrom == 48)
        // The last version's section has one breadth: past the reach its searches widen from it.
        let one = try #require(RecallMeasurement(section: Array(two.encoded.prefix(41))))
        #expect(one.ef == 32 && one.widenFrom == 32 && one.reach == two.reach)
        // The one before it has no reach: its searches never walk broader.
        let noReach = RecallMeasurement(ef: 32, recall: 0.961, vectors: 50_000, target: 0.95, sample: .heldOut, optimism: 0.01)
        #expect(RecallMeasurement(section: Array(reaching.encoded.prefix(37))) == noReach)
        // Widening from a breadth below the one walked first is not a measurement's.
        var narrower = two.encoded
        narrower.replaceSubrange(41..<45, with: withUnsafeBytes(of: UInt32(16).littleEndian) { Array($0) })
        #expect(RecallMeasurement(section: narrower) == nil)
        // Inner products are distances below zero: a reach of -58.1 is a reach (refusing it had a
        // dot collection measured again at every mount, with another sample and other answers).
        let dot = RecallMeasurement(ef: 148, recall: 0.97, vectors: 1350, target: 0.95, sample: .own, optimism: nil, reach: -58.098)
        #expect(RecallMeasurement(section: dot.encoded) == dot)
        var infinite = reaching.encoded
        infinite.replaceSubrange(37..<41, with: withUnsafeBytes(of: Float.infinity.bitPattern.littleEndian) { Array($0) })
        #expect(RecallMeasurement(section: infinite) == nil)
        // An older version's section (measured on the graph's own vectors only) is measured again.
        #expect(RecallMeasurement(section: Array(m.encoded.prefix(28))) == nil)
        var bad = m.encoded
        bad[0] = 0; bad[1] = 0; bad[2] = 0; bad[3] = 0
        #expect(RecallMeasurement(section: bad) == nil)
    }
}
