import Synchronization
import Testing
import VexKernels
import VexTestSupport
@testable import VexIndex


/// The answer computed the long way, in double precision.
func bruteForce(_ data: [UInt64: [Float]], _ q: [Float], _ metric: Metric, k: Int, excluding: UInt64? = nil) -> [(UInt64, Double)] {
    func norm(_ v: [Float]) -> [Double] {
        let d = v.map(Double.init)
        let n = d.reduce(0) { $0 + $1 * $1 }.squareRoot()
        return metric == .cosine && n > 0 ? d.map { $0 / n } : d
    }
    let qd = norm(q)
    let scored = data.filter { $0.key != excluding }.map { (label, v) -> (UInt64, Double) in
        let vd = norm(v)
        switch metric {
        case .l2: return (label, zip(qd, vd).reduce(0) { $0 + ($1.0 - $1.1) * ($1.0 - $1.1) }.squareRoot())
        case .cosine, .dot: return (label, 1 - zip(qd, vd).reduce(0) { $0 + $1.0 * $1.1 })
        }
    }
    return Array(scored.sorted { $0.1 < $1.1 || ($0.1 == $1.1 && $0.0 < $1.0) }.prefix(k))
}

@Suite struct FlatIndexTests {
    static let kernels = try! DistanceKernels.forProcess.get()

    @Test(arguments: Metric.allCases)
    func equalsBruteForce(_ metric: Metric) throws {
        var rng = SplitMix64(state: 5)
        let dim = 37
        let index = FlatIndex(dimension: dim, metric: metric, kernels: Self.kernels, capacity: 16)
        var data: [UInt64: [Float]] = [:]
        for label in 0..<UInt64(2000) {  // grows the block several times
            let v = (0..<dim).map { _ in Float.random(in: -1...1, using: &rng) }
            data[label] = v
            try index.insert(label: label, vector: v)
        }
        for _ in 0..<50 {
            let q = (0..<dim).map { _ in Float.random(in: -1...1, using: &rng) }
            let got = try index.search(q, k: 10)
            let want = bruteForce(data, q, metric, k: 10)
            #expect(got.map(\.label) == want.map(\.0))
            for (g, w) in zip(got, want) { #expect(abs(Double(g.distance) - w.1) < 1e-4) }
        }
    }

    @Test func updateReplacesAndRemoveForgets() throws {
        let index = FlatIndex(dimension: 2, metric: .l2, kernels: Self.kernels)
        try index.insert(label: 1, vector: [0, 0])
        try index.insert(label: 2, vector: [10, 10])
        try index.insert(label: 3, vector: [5, 5])
        try index.insert(label: 2, vector: [1, 0])  // update: same label, new vector
        #expect(index.count == 3)
        #expect(try index.search([0, 0], k: 3).map(\.label) == [1, 2, 3])
        #expect(try index.search([0, 0], k: 3)[1].distance == 1)
        #expect(index.remove(label: 1))
        #expect(!index.remove(label: 1))
        #expect(try index.search([0, 0], k: 10).map(\.label) == [2, 3])
        #expect(index.vector(of: 3) == [5, 5])  // moved into the hole, intact
    }

    @Test func tiesKeepLabelOrderAndSelfIsExcluded() throws {
        let index = FlatIndex(dimension: 1, metric: .l2, kernels: Self.kernels)
        for label in [9, 4, 7, 1] as [UInt64] { try index.insert(label: label, vector: [1]) }
        try index.insert(label: 5, vector: [0])
        #expect(try index.search([0], k: 5, excluding: 5).map(\.label) == [1, 4, 7, 9])
        #expect(try index.search([0], k: 2).map(\.label) == [5, 1])
    }

    @Test func distancesAreTheUsersOnes() throws {
        let l2 = FlatIndex(dimension: 2, metric: .l2, kernels: Self.kernels)
        try l2.insert(label: 1, vector: [3, 4])
        #expect(try l2.search([0, 0], k: 1)[0].distance == 5)  // Euclidean, not squared
        let cosine = FlatIndex(dimension: 2, metric: .cosine, kernels: Self.kernels)
        try cosine.insert(label: 1, vector: [0, 7])
        try cosine.insert(label: 2, vector: [-2, 0])
        let c = try cosine.search([3, 0], k: 2)
        #expect(c.map(\.label) == [1, 2])
        #expect(abs(c[0].distance - 1) < 1e-6 && abs(c[1].distance - 2) < 1e-6)
        let dot = FlatIndex(dimension: 2, metric: .dot, kernels: Self.kernels)
        try dot.insert(label: 1, vector: [0.5, 0])
        #expect(try dot.search([1, 0], k: 1)[0].distance == 0.5)
    }

    @Test func badInputIsAnErrorNotACrash() throws {
        let index = FlatIndex(dimension: 3, metric: .l2, kernels: Self.kernels)
        #expect(throws: IndexError.wrongDimension(expected: 3, got: 2)) { try index.insert(label: 1, vector: [1, 2]) }
        #expect(throws: IndexError.notFinite(position: 1)) { try index.insert(label: 1, vector: [1, .nan, 2]) }
        #expect(throws: IndexError.notFinite(position: 2)) { try index.search([1, 2, .infinity], k: 1) }
        #expect(throws: IndexError.badK(0)) { try index.search([1, 2, 3], k: 0) }
        #expect(throws: IndexError.badK(1001)) { try index.search([1, 2, 3], k: 1001) }
        #expect(try index.search([1, 2, 3], k: 5).isEmpty)
        #expect(index.count == 0)
    }

    @Test func searchesRunBesideAWriter() throws {
        let index = FlatIndex(dimension: 8, metric: .l2, kernels: Self.kernels, capacity: 16)
        for label in 0..<UInt64(100) { try index.insert(label: label, vector: [Float](repeating: Float(label), count: 8)) }
        let wrong = Atomic<Int>(0)
        runOnThreads([
            {  // the writer: adds labels 100..<3000 and removes odd ones, growing the block
                for label in 100..<UInt64(3000) {
                    try? index.insert(label: label, vector: [Float](repeating: Float(label), count: 8))
                    if label % 2 == 1 { index.remove(label: label) }
                }
            },
            {  // a reader: the first 100 labels are never touched, so label 0's neighbours are fixed
                for _ in 0..<2000 {
                    let got = (try? index.search([Float](repeating: 0, count: 8), k: 3).map(\.label)) ?? []
                    if got != [0, 1, 2] { wrong.add(1, ordering: .relaxed) }
                }
            },
        ])
        #expect(wrong.load(ordering: .relaxed) == 0)
        #expect(index.count == 100 + 1450)
    }
}
