import Glibc
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

/// Codes kept beside the links: the same graph and the same answers as without, copies that always
/// match the neighbour in their slot, and a snapshot that brings them back.
@Suite struct NeighbourCodesTests {
    static let kernels = try! DistanceKernels.forProcess.get()

    func graph(_ besideLinks: Bool, _ data: [[Float]]) throws -> HNSWIndex {
        var p = HNSWParameters(m: 8, efConstruction: 64)
        p.neighbourCodes = besideLinks
        let index = HNSWIndex(dimension: data[0].count, metric: .cosine, kernels: Self.kernels, parameters: p)
        for (i, v) in data.enumerated() { try index.insert(label: UInt64(i), vector: v) }
        return index
    }

    /// Every slot's copy is the code of the node its link names.
    func copiesMatch(_ index: HNSWIndex) -> Bool {
        for node in 0..<UInt32(index.nodeCount) {
            let list = index.links(node, 0)
            for j in 0..<Int(list[0]) where memcmp(index.neighbourCode(node, j), index.code(list[1 + j]), index.codeBytes) != 0 {
                return false
            }
        }
        return true
    }

    @Test func theSameGraphAndAnswersAsWithoutThem() throws {
        let data = clusteredSet(count: 2500, dimension: 20, clusters: 25, seed: 61)
        let plain = try graph(false, data), beside = try graph(true, data)
        #expect(beside.neighbourCodesOffset != 0 && plain.neighbourCodesOffset == 0)
        #expect(copiesMatch(beside))
        for node in 0..<UInt32(plain.nodeCount) {
            let a = plain.links(node, 0), b = beside.links(node, 0)
            #expect(Array(UnsafeBufferPointer(start: a, count: Int(a[0]) + 1)) == Array(UnsafeBufferPointer(start: b, count: Int(b[0]) + 1)))
        }
        for q in clusteredSet(count: 50, dimension: 20, clusters: 25, seed: 62) {
            #expect(try plain.search(q, k: 10) == beside.search(q, k: 10))
        }
    }

    @Test func copiesFollowDeletesReplacementsAndARestore() throws {
        let data = clusteredSet(count: 2000, dimension: 12, clusters: 20, seed: 63)
        let index = try graph(true, Array(data[..<1500]))
        for i in stride(from: 0, to: 1500, by: 4) { index.remove(label: UInt64(i)) }
        for i in 1500..<2000 { try index.insert(label: UInt64(i % 700), vector: data[i]) }  // replacements
        #expect(copiesMatch(index))
        let sections = Dictionary(uniqueKeysWithValues: try index.sections())
        let back = try HNSWIndex.restore(sections, dimension: 12, metric: .cosine, kernels: Self.kernels, directory: nil)
        #expect(back.neighbourCodesOffset != 0 && copiesMatch(back))
        for q in data.prefix(30) { #expect(try back.search(q, k: 5) == index.search(q, k: 5)) }
    }

    /// Codes are copied once the quantizer is trained: the copies of every link made before it are
    /// filled in then.
    @Test func linksMadeBeforeTrainingGetTheirCopies() throws {
        let data = clusteredSet(count: 600, dimension: 8, clusters: 6, seed: 64)
        var p = HNSWParameters(m: 6, efConstruction: 40)
        p.neighbourCodes = true
        let index = HNSWIndex(dimension: 8, metric: .l2, kernels: Self.kernels, parameters: p)
        for (i, v) in data.prefix(500).enumerated() { try index.insert(label: UInt64(i), vector: v) }
        let trained = index.quantized.load(ordering: .relaxed)
        #expect(!trained)
        index.writer.withLock { _ in index.train() }
        #expect(copiesMatch(index))
        for (i, v) in data.suffix(100).enumerated() { try index.insert(label: UInt64(500 + i), vector: v) }
        #expect(copiesMatch(index))
    }
}
