import Synchronization
import Testing
import VexKernels
import VexTestSupport
@testable import VexIndex

/// `count` vectors around `clusters` random centres, the shape of real embeddings.
func clusteredSet(count: Int, dimension: Int, clusters: Int, seed: UInt64) -> [[Float]] {
    var rng = SplitMix64(state: seed)
    let centres = (0..<clusters).map { _ in (0..<dimension).map { _ in Float.random(in: -1...1, using: &rng) } }
    return (0..<count).map { _ in
        let c = centres[Int.random(in: 0..<clusters, using: &rng)]
        return c.map { $0 + Float.random(in: -0.4...0.4, using: &rng) }
    }
}

@Suite struct HNSWIndexTests {
    static let kernels = try! DistanceKernels.forProcess.get()

    @Test(arguments: Metric.allCases)
    func recallAtTheDefaultEf(_ metric: Metric) throws {
        let dim = 24
        let data = clusteredSet(count: 3000, dimension: dim, clusters: 30, seed: 11)
        let index = HNSWIndex(dimension: dim, metric: metric, kernels: Self.kernels)
        for (i, v) in data.enumerated() { try index.insert(label: UInt64(i), vector: v) }
        let quantized = index.quantized.load(ordering: .relaxed)
        #expect(quantized)  // searches traverse int8 codes
        var table: [UInt64: [Float]] = [:]
        for (i, v) in data.enumerated() { table[UInt64(i)] = v }
        let queries = clusteredSet(count: 100, dimension: dim, clusters: 30, seed: 11 &+ 99)
        var hits = 0
        for q in queries {
            let got = try index.search(q, k: 10)
            let want = bruteForce(table, q, metric, k: 10)
            hits += Set(got.map(\.label)).intersection(want.map(\.0)).count
            // Re-ranked with float32: the distances are the exact ones of the labels returned.
            for n in got {
                let exact = bruteForce([n.label: table[n.label]!], q, metric, k: 1)[0].1
                #expect(abs(Double(n.distance) - exact) < 1e-3)
            }
        }
        let recall = Double(hits) / Double(queries.count * 10)
        #expect(recall >= 0.95, "recall@10 \(recall)")
    }

    /// A search with no filter walks on one sorted array, a filtered one on two heaps: the same walk,
    /// so the same answers (an accept-all filter takes the heaps' path).
    @Test(arguments: [1, 3])
    func theSortedArrayWalksLikeTheHeaps(hopWidth: Int) throws {
        let dim = 24
        let data = clusteredSet(count: 3000, dimension: dim, clusters: 30, seed: 5)
        var parameters = HNSWParameters(m: 8, efConstruction: 64)
        parameters.hopWidth = hopWidth
        let index = HNSWIndex(dimension: dim, metric: .l2, kernels: Self.kernels, parameters: parameters)
        for (i, v) in data.enumerated() { try index.insert(label: UInt64(i), vector: v) }
        for q in clusteredSet(count: 50, dimension: dim, clusters: 30, seed: 6) {
            for ef in [10, 40, 100] {
                let sorted = try q.withUnsafeBufferPointer { p throws(IndexError) in try index.search(p, k: 10, ef: ef, filter: SearchFilter()) }
                let heaps = try q.withUnsafeBufferPointer { p throws(IndexError) in
                    try index.search(p, k: 10, ef: ef, filter: SearchFilter(accept: { _ in true }))
                }
                #expect(sorted.map(\.label) == heaps.map(\.label))
            }
        }
    }

    @Test func deletedLabelsAreNeverReturnedAndTheGraphStaysConnected() throws {
        let dim = 16
        let data = clusteredSet(count: 2000, dimension: dim, clusters: 20, seed: 3)
        let index = HNSWIndex(dimension: dim, metric: .l2, kernels: Self.kernels, parameters: HNSWParameters(m: 8, efConstruction: 64))
        for (i, v) in data.enumerated() { try index.insert(label: UInt64(i), vector: v) }
        var removed = Set<UInt64>()
        for i in stride(from: 0, to: 2000, by: 3) {  // a third, entry point included
            #expect(index.remove(label: UInt64(i)))
            removed.insert(UInt64(i))
        }
        #expect(!index.remove(label: 0))
        #expect(index.count == 2000 - removed.count)
        // Every live vector is still found as its own nearest neighbour: nothing was cut off.
        var found = 0
        for (i, v) in data.enumerated() where !removed.contains(UInt64(i)) {
            let got = try index.search(v, k: 10, ef: 64)
            #expect(got.allSatisfy { !removed.contains($0.label) })
            if got.first?.label == UInt64(i) { found += 1 }
        }
        #expect(Double(found) / Double(2000 - removed.count) >= 0.99)
        let compact = index.compacted()
        #expect(compact.count == index.count && compact.nodeCount == index.count)
    }

    @Test func updateReplacesTheVector() throws {
        let index = HNSWIndex(dimension: 2, metric: .l2, kernels: Self.kernels)
        for i in 0..<50 { try index.insert(label: UInt64(i), vector: [Float(i), 0]) }
        try index.insert(label: 7, vector: [100, 100])
        #expect(index.count == 50)
        let near = try index.search([7, 0], k: 3)
        #expect(!near.map(\.label).contains(7))
        #expect(try index.search([100, 100], k: 1)[0] == Neighbor(label: 7, distance: 0))
        #expect(index.vector(of: 7) == [100, 100])
    }

    @Test func searchesRunBesideTheWriter() throws {
        let dim = 16
        let data = clusteredSet(count: 3000, dimension: dim, clusters: 10, seed: 8)
        let index = HNSWIndex(dimension: dim, metric: .cosine, kernels: Self.kernels, parameters: HNSWParameters(m: 8, efConstruction: 40))
        for i in 0..<500 { try index.insert(label: UInt64(i), vector: data[i]) }
        let failures = Atomic<Int>(0)
        let done = Atomic<Bool>(false)
        let writer: @Sendable () -> Void = {
            for i in 500..<3000 {
                try! index.insert(label: UInt64(i), vector: data[i])
                if i % 4 == 0 { index.remove(label: UInt64(i - 400)) }
            }
            done.store(true, ordering: .releasing)
        }
        let reader: @Sendable () -> Void = {
            var n = 0
            while !done.load(ordering: .acquiring) || n < 100 {
                let got = try! index.search(data[n % 3000], k: 10)
                if got.count != Set(got.map(\.label)).count { failures.add(1, ordering: .relaxed) }
                n += 1
            }
        }
        runOnThreads([writer, reader, reader])
        let failed = failures.load(ordering: .relaxed)
        #expect(failed == 0)
        #expect(index.count == 3000 - (500..<3000).filter { $0 % 4 == 0 }.count)
    }

    @Test func adaptiveIndexSwitchesWithoutLosingAVector() throws {
        let dim = 8
        let data = clusteredSet(count: 400, dimension: dim, clusters: 5, seed: 21)
        let index = AdaptiveIndex(dimension: dim, metric: .l2, kind: .automatic(threshold: 200),
                                  parameters: HNSWParameters(m: 8, efConstruction: 64), kernels: Self.kernels)
        for (i, v) in data.enumerated() {
            try index.insert(label: UInt64(i), vector: v)
            #expect(index.active is HNSWIndex == (i + 1 >= 200))
        }
        #expect(index.count == 400)
        for (i, v) in data.enumerated() { #expect(try index.search(v, k: 1, ef: 100)[0].label == UInt64(i)) }
        for i in 0..<350 { index.remove(label: UInt64(i)) }
        #expect(index.active is FlatIndex)
        #expect(index.count == 50)
        for i in 350..<400 { #expect(try index.search(data[i], k: 1)[0].label == UInt64(i)) }
    }

    @Test func theWalkIsOnCodesOnlyWhereTheirSumsAreExact() {
        func walks(_ dim: Int, _ metric: Metric) -> Bool {
            HNSWIndex(dimension: dim, metric: metric, kernels: Self.kernels).walksOnCodes
        }
        #expect(walks(Int8Exactness.l2Dimensions, .l2) && !walks(Int8Exactness.l2Dimensions + 1, .l2))
        #expect(walks(65_536, .cosine) && walks(65_536, .dot) && !walks(65_536, .l2))
    }
}
