import CKernels

/// Neighbour sketches: a product quantizer of 16 centroids in each of a few subspaces, whose 4-bit
/// codes are kept beside each node's level-0 links. A hop scores all of a node's neighbours from
/// that one contiguous read (a 16-entry table per subspace, looked up in SIMD), and measures exactly
/// only the neighbours whose estimate could still enter its results; the others cost no read of
/// their own. The codes are derived data: trained from the stored vectors and rebuilt on reopen.
struct SketchCodebook: Sendable {
    let dimension: Int
    /// Dimensions per subspace (the last subspace may be shorter).
    let width: Int
    let subspaces: Int
    /// `subspaces` rounded up to 4, the SIMD step; the extra ones have zero tables and codes.
    let padded: Int
    /// subspaces x 16 x width, zero past the dimension.
    var centroids: [Float]
    /// The root-mean-square error of an estimate against the exact distance, over near pairs of the
    /// training sample, in the metric's float units.
    var error: Float = 0

    /// At most 32 subspaces of at least 2 dimensions: a sketch of 32 neighbours is then at most 512
    /// bytes, a few lines beside the links.
    init(dimension: Int) {
        self.dimension = dimension
        width = max(2, (dimension + 31) / 32)
        subspaces = (dimension + width - 1) / width
        padded = (subspaces + 3) / 4 * 4
        centroids = [Float](repeating: 0, count: subspaces * 16 * width)
    }

    /// Dimensions of subspace `s`.
    @inline(__always) func span(_ s: Int) -> Range<Int> { s * width..<min((s + 1) * width, dimension) }

    /// k-means (16 centroids, a fixed number of rounds, seeded from evenly spaced rows so a retrain
    /// on the same rows gives the same codebook) in each subspace, on at most 8,192 of `count` rows.
    static func train(dimension: Int, l2: Bool, count: Int, vector: (Int) -> UnsafePointer<Float>) -> SketchCodebook {
        var book = SketchCodebook(dimension: dimension)
        guard count > 0 else { return book }
        let stride = max(1, count / 8192)
        let rows = Swift.stride(from: 0, to: count, by: stride).map(vector)
        let w = book.width
        var point = [Float](repeating: 0, count: w)
        for s in 0..<book.subspaces {
            let dims = book.span(s)
            var centres = [Float](repeating: 0, count: 16 * w)
            for c in 0..<16 {
                let r = rows[c * rows.count / 16]
                for (i, d) in dims.enumerated() { centres[c * w + i] = r[d] }
            }
            var assigned = [Int](repeating: 0, count: rows.count)
            for _ in 0..<12 {
                var sums = [Float](repeating: 0, count: 16 * w), sizes = [Int](repeating: 0, count: 16)
                for (j, r) in rows.enumerated() {
                    for (i, d) in dims.enumerated() { point[i] = r[d] }
                    var best = 0, bestDistance = Float.infinity
                    for c in 0..<16 {
                        var e: Float = 0
                        for i in 0..<dims.count { let x = point[i] - centres[c * w + i]; e += x * x }
                        if e < bestDistance { (best, bestDistance) = (c, e) }
                    }
                    assigned[j] = best
                    sizes[best] += 1
                    for i in 0..<dims.count { sums[best * w + i] += point[i] }
                }
                for c in 0..<16 where sizes[c] > 0 {
                    for i in 0..<dims.count { centres[c * w + i] = sums[c * w + i] / Float(sizes[c]) }
                }
            }
            for i in 0..<16 * w { book.centroids[s * 16 * w + i] = centres[i] }
        }
        book.error = book.measureError(l2: l2, rows: rows)
        return book
    }

    /// One code per subspace, a byte each (0...15); the padding subspaces get 0.
    func encode(_ v: UnsafePointer<Float>, into code: UnsafeMutablePointer<UInt8>) {
        let w = width
        for s in 0..<subspaces {
            let dims = span(s)
            var best = 0, bestDistance = Float.infinity
            for c in 0..<16 {
                var e: Float = 0
                for (i, d) in dims.enumerated() { let x = v[d] - centroids[(s * 16 + c) * w + i]; e += x * x }
                if e < bestDistance { (best, bestDistance) = (c, e) }
            }
            code[s] = UInt8(best)
        }
        for s in subspaces..<padded { code[s] = 0 }
    }

    /// The query's table, each subspace's 16 partial distances (l2, or the negated inner product)
    /// as bytes: entry = (partial - that subspace's least) / step. An estimate is then
    /// `base + step * (sum of a neighbour's entries)`, within `step * subspaces / 2` of the float
    /// sum of partials.
    func table(_ q: UnsafePointer<Float>, l2: Bool, into table: UnsafeMutablePointer<UInt8>,
               partials: UnsafeMutablePointer<Float>) -> (base: Float, step: Float) {
        let w = width
        var base: Float = 0, widest: Float = 0
        for s in 0..<subspaces {
            let dims = span(s)
            var low = Float.infinity, high = -Float.infinity
            for c in 0..<16 {
                var e: Float = 0
                for (i, d) in dims.enumerated() {
                    let x = centroids[(s * 16 + c) * w + i]
                    if l2 { let y = q[d] - x; e += y * y } else { e -= q[d] * x }
                }
                partials[s * 16 + c] = e
                low = min(low, e); high = max(high, e)
            }
            for c in 0..<16 { partials[s * 16 + c] -= low }
            base += low
            widest = max(widest, high - low)
        }
        let step = widest > 0 ? widest / 255 : 1
        for i in 0..<subspaces * 16 { table[i] = UInt8(min(255, (partials[i] / step).rounded())) }
        for i in subspaces * 16..<padded * 16 { table[i] = 0 }
        return (base, step)
    }

    /// Root-mean-square of (estimate - exact) between 32 sample rows and each one's 32 nearest
    /// in the sample: the pairs a search's decisions turn on.
    private func measureError(l2: Bool, rows: [UnsafePointer<Float>]) -> Float {
        guard rows.count > 1 else { return 0 }
        var codes = [UInt8](repeating: 0, count: padded * rows.count)
        codes.withUnsafeMutableBufferPointer { c in
            for (j, r) in rows.enumerated() { encode(r, into: c.baseAddress! + j * padded) }
        }
        var partials = [Float](repeating: 0, count: padded * 16)
        var sum: Double = 0, pairs = 0
        for qi in Swift.stride(from: 0, to: rows.count, by: max(1, rows.count / 32)) {
            let q = rows[qi]
            var exact: [(Float, Int)] = []
            for (j, r) in rows.enumerated() where j != qi {
                var e: Float = 0
                for d in 0..<dimension { if l2 { let y = q[d] - r[d]; e += y * y } else { e -= q[d] * r[d] } }
                exact.append((e, j))
            }
            exact.sort { $0.0 < $1.0 }
            partials.withUnsafeMutableBufferPointer { p in
                for s in 0..<subspaces {
                    let dims = span(s)
                    for c in 0..<16 {
                        var e: Float = 0
                        for (i, d) in dims.enumerated() {
                            let x = centroids[(s * 16 + c) * width + i]
                            if l2 { let y = q[d] - x; e += y * y } else { e -= q[d] * x }
                        }
                        p[s * 16 + c] = e
                    }
                }
            }
            for (e, j) in exact.prefix(32) {
                var estimate: Float = 0
                for s in 0..<subspaces { estimate += partials[s * 16 + Int(codes[j * padded + s])] }
                sum += Double((estimate - e) * (estimate - e))
                pairs += 1
            }
        }
        return pairs > 0 ? Float((sum / Double(pairs)).squareRoot()) : 0
    }
}
