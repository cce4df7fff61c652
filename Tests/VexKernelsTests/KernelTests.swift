import Testing
import VexTestSupport
@testable import VexKernels

/// Double-precision references.
func referenceL2(_ a: ArraySlice<Float>, _ b: ArraySlice<Float>) -> (value: Double, scale: Double) {
    let s = zip(a, b).reduce(0.0) { $0 + (Double($1.0) - Double($1.1)) * (Double($1.0) - Double($1.1)) }
    return (s, s)
}

func referenceDot(_ a: ArraySlice<Float>, _ b: ArraySlice<Float>) -> (value: Double, scale: Double) {
    zip(a, b).reduce((0.0, 0.0)) { ($0.0 + Double($1.0) * Double($1.1), $0.1 + abs(Double($1.0) * Double($1.1))) }
}

func referenceCosine(_ a: ArraySlice<Float>, _ b: ArraySlice<Float>) -> Double {
    let ab = referenceDot(a, b).value, aa = referenceDot(a, a).value, bb = referenceDot(b, b).value
    return aa == 0 || bb == 0 ? 1 : 1 - ab / (aa * bb).squareRoot()
}

/// The stated tolerance: float32 sums may differ from the exact value by 1e-5 of the sum of the
/// magnitudes of their terms (the order of additions differs between paths).
func close(_ got: Float, _ want: Double, scale: Double) -> Bool {
    abs(Double(got) - want) <= 1e-5 * scale + 1e-30
}

@Suite struct KernelTests {
    static let paths = DistanceKernels.supportedPaths

    @Test(arguments: paths)
    func floatKernelsAgreeWithDoubleReferenceForEveryDimension(_ path: SIMDPath) throws {
        let k = try DistanceKernels(path: path)
        var rng = SplitMix64(state: 42)
        for dim in 1...1100 {
            // One spare element in front, so the vectors start unaligned when offset is 1.
            let a = (0...dim).map { _ in Float.random(in: -1...1, using: &rng) }
            let b = (0...dim).map { _ in Float.random(in: -1...1, using: &rng) }
            for offset in 0...1 {
                let sa = a[offset..<offset + dim], sb = b[offset..<offset + dim]
                a.withUnsafeBufferPointer { pa in
                    b.withUnsafeBufferPointer { pb in
                        let x = pa.baseAddress! + offset, y = pb.baseAddress! + offset
                        let l2 = referenceL2(sa, sb), d = referenceDot(sa, sb)
                        #expect(close(k.l2Squared(x, y, dim), l2.value, scale: l2.scale), "\(path) l2 dim \(dim) offset \(offset)")
                        #expect(close(k.dot(x, y, dim), d.value, scale: d.scale), "\(path) dot dim \(dim) offset \(offset)")
                        #expect(abs(Double(k.cosineDistance(x, y, dim)) - referenceCosine(sa, sb)) <= 1e-5,
                                "\(path) cosine dim \(dim) offset \(offset)")
                    }
                }
            }
        }
    }

    @Test(arguments: paths)
    func int8KernelsAreExactForEveryDimension(_ path: SIMDPath) throws {
        let k = try DistanceKernels(path: path)
        var rng = SplitMix64(state: 7)
        for dim in 1...1100 {
            let a = (0...dim).map { _ in Int8.random(in: .min ... .max, using: &rng) }
            let b = (0...dim).map { _ in Int8.random(in: .min ... .max, using: &rng) }
            for offset in 0...1 {
                let sa = a[offset..<offset + dim], sb = b[offset..<offset + dim]
                let l2 = zip(sa, sb).reduce(Int64(0)) { $0 + (Int64($1.0) - Int64($1.1)) * (Int64($1.0) - Int64($1.1)) }
                let dot = zip(sa, sb).reduce(Int64(0)) { $0 + Int64($1.0) * Int64($1.1) }
                a.withUnsafeBufferPointer { pa in
                    b.withUnsafeBufferPointer { pb in
                        let x = pa.baseAddress! + offset, y = pb.baseAddress! + offset
                        #expect(Int64(k.l2SquaredInt8(x, y, dim)) == l2, "\(path) int8 l2 dim \(dim) offset \(offset)")
                        #expect(Int64(k.dotInt8(x, y, dim)) == dot, "\(path) int8 dot dim \(dim) offset \(offset)")
                    }
                }
            }
        }
    }

    /// Where a distance goes in a search's sorted array: after its equals, at every length, never
    /// reading past it (the values after `n` are smaller, so a count that read them would be too big).
    @Test(arguments: paths)
    func countAtMostIsTheInsertionIndex(_ path: SIMDPath) throws {
        let k = try DistanceKernels(path: path)
        var rng = SplitMix64(state: 12)
        for n in [0, 1, 7, 8, 15, 16, 17, 31, 64, 100, 128, 257] {
            let sorted = (0..<n).map { _ in Float(Int.random(in: 0...40, using: &rng)) }.sorted() + [Float](repeating: -1, count: 16)
            for x in [-2, 0, 0.5, 3, 20, 40, 41] as [Float] {
                let want = sorted[..<n].firstIndex { $0 > x } ?? n
                #expect(k.countAtMost(sorted, n, x) == want, "\(path) n \(n) x \(x)")
            }
        }
    }

    @Test(arguments: paths)
    func int8GatherMatchesOneToOneOnScatteredRows(_ path: SIMDPath) throws {
        let k = try DistanceKernels(path: path)
        var rng = SplitMix64(state: 9)
        for dim in [1, 31, 32, 33, 50, 63, 64, 65, 128, 300, 768] {
            let q = (0..<dim).map { _ in Int8.random(in: -127...127, using: &rng) }
            // Rows at scattered, unaligned places in one buffer, in no particular order.
            let pool = (0..<(dim + 3) * 40).map { _ in Int8.random(in: -127...127, using: &rng) }
            let starts = (0..<32).map { _ in Int.random(in: 0...(pool.count - dim), using: &rng) }
            pool.withUnsafeBufferPointer { p in
                q.withUnsafeBufferPointer { qp in
                    var rows = starts.map { Optional(p.baseAddress! + $0) }
                    for count in [0, 1, 7, 32] {
                        var l2 = [Int32](repeating: -1, count: 32), dot = l2
                        k.l2SquaredInt8Gather(qp.baseAddress, &rows, count, dim, &l2)
                        k.dotInt8Gather(qp.baseAddress, &rows, count, dim, &dot)
                        for i in 0..<count {
                            #expect(l2[i] == k.l2SquaredInt8(qp.baseAddress, rows[i], dim), "\(path) l2 dim \(dim) row \(i)")
                            #expect(dot[i] == k.dotInt8(qp.baseAddress, rows[i], dim), "\(path) dot dim \(dim) row \(i)")
                        }
                        #expect(l2[count...].allSatisfy { $0 == -1 }, "\(path): wrote past count \(count)")
                    }
                }
            }
        }
    }

    @Test(arguments: paths)
    func int8Extremes(_ path: SIMDPath) throws {
        let k = try DistanceKernels(path: path)
        for dim in [1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 1100] {
            let lo = [Int8](repeating: -128, count: dim), hi = [Int8](repeating: 127, count: dim)
            #expect(k.l2SquaredInt8(lo, hi) == Int32(255 * 255 * dim))
            #expect(k.dotInt8(lo, hi) == Int32(-128 * 127 * dim))
            #expect(k.dotInt8(lo, lo) == Int32(128 * 128 * dim))
            #expect(k.dotInt8(hi, hi) == Int32(127 * 127 * dim))
            #expect(k.l2SquaredInt8(lo, lo) == 0)
        }
    }

    @Test(arguments: paths)
    func zerosAndLargeMagnitudes(_ path: SIMDPath) throws {
        let k = try DistanceKernels(path: path)
        for dim in [1, 7, 8, 9, 16, 33, 768, 1100] {
            let zero = [Float](repeating: 0, count: dim)
            let big = (0..<dim).map { Float($0 % 7 + 1) * 1e15 }
            let small = (0..<dim).map { Float($0 % 5) * -3e14 }
            #expect(k.l2Squared(zero, zero) == 0)
            #expect(k.dot(zero, big) == 0)
            #expect(k.cosineDistance(zero, big) == 1)  // undefined angle: the farthest, by convention
            #expect(abs(k.cosineDistance(big, big)) <= 1e-6)
            let l2 = referenceL2(big[...], small[...]), d = referenceDot(big[...], small[...])
            #expect(close(k.l2Squared(big, small), l2.value, scale: l2.scale))
            #expect(close(k.dot(big, small), d.value, scale: d.scale))
        }
    }

    @Test(arguments: paths)
    func scansEqualOneToOneCalls(_ path: SIMDPath) throws {
        let k = try DistanceKernels(path: path)
        var rng = SplitMix64(state: 99)
        for (dim, stride) in [(1, 1), (13, 16), (128, 128), (300, 304), (769, 769)] {
            let count = 37
            let base = (0..<count * stride).map { _ in Float.random(in: -2...2, using: &rng) }
            let q = (0..<dim).map { _ in Float.random(in: -2...2, using: &rng) }
            let base8 = base.map { Int8(clamping: Int($0 * 60)) }, q8 = q.map { Int8(clamping: Int($0 * 60)) }
            var out = [Float](repeating: .nan, count: count), out8 = [Int32](repeating: 0, count: count)
            let scans: [(FloatScan, FloatKernel)] = [(k.l2SquaredScan, k.l2Squared), (k.dotScan, k.dot),
                                                     (k.cosineDistanceScan, k.cosineDistance)]
            for (scan, one) in scans {
                scan(q, base, count, dim, stride, &out)
                for i in 0..<count {
                    let expected = base.withUnsafeBufferPointer { one(q, $0.baseAddress! + i * stride, dim) }
                    #expect(out[i] == expected)
                }
            }
            let scans8: [(Int8Scan, Int8Kernel)] = [(k.l2SquaredInt8Scan, k.l2SquaredInt8), (k.dotInt8Scan, k.dotInt8)]
            for (scan, one) in scans8 {
                scan(q8, base8, count, dim, stride, &out8)
                for i in 0..<count {
                    #expect(out8[i] == base8.withUnsafeBufferPointer { one(q8, $0.baseAddress! + i * stride, dim) })
                }
            }
        }
    }

    /// At the dimensions the index trusts the int8 kernels up to, the worst case still fits in Int32.
    @Test(arguments: paths)
    func int8SumsFitAtTheirExactnessBounds(_ path: SIMDPath) throws {
        let k = try DistanceKernels(path: path)
        let n = Int8Exactness.l2Dimensions
        let high = [Int8](repeating: 127, count: Int8Exactness.dotDimensions), low = [Int8](repeating: -127, count: n)
        #expect(k.l2SquaredInt8(Array(high.prefix(n)), low) == Int32(254 * 254 * n))
        #expect(k.dotInt8(high, high) == Int32(127 * 127 * Int8Exactness.dotDimensions))
    }

    @Test func selectionFollowsTheEnvironment() throws {
        #expect(try DistanceKernels.select(environment: nil).path == DistanceKernels.supportedPaths.last)
        #expect(try DistanceKernels.select(environment: "scalar").path == .scalar)
        #expect(try DistanceKernels.select(environment: "SCALAR").path == .scalar)
        #expect(throws: KernelError.unknownPath("sse9")) { try DistanceKernels.select(environment: "sse9") }
        for path in SIMDPath.allCases where !DistanceKernels.supportedPaths.contains(path) {
            #expect(throws: KernelError.unsupported(path)) { try DistanceKernels(path: path) }
        }
    }
}
