/// The portable path: plain loops, one element a step, in the order a reader would write them. The
/// compiler keeps float reductions in order (no reassociation), so these stay scalar: they are the
/// fallback and the baseline the vector paths are measured against.
enum Scalar {
    static let l2Squared: FloatKernel = { a, b, n in
        var s: Float = 0
        for i in 0..<n { let d = a![i] - b![i]; s += d * d }
        return s
    }

    static let dot: FloatKernel = { a, b, n in
        var s: Float = 0
        for i in 0..<n { s += a![i] * b![i] }
        return s
    }

    static let cosineDistance: FloatKernel = { a, b, n in
        var ab: Float = 0, aa: Float = 0, bb: Float = 0
        for i in 0..<n {
            ab += a![i] * b![i]
            aa += a![i] * a![i]
            bb += b![i] * b![i]
        }
        if aa == 0 || bb == 0 { return 1 }
        // In double: the product of two float32 squared norms overflows for large vectors.
        return Float(1 - Double(ab) / (Double(aa) * Double(bb)).squareRoot())
    }

    static let l2SquaredInt8: Int8Kernel = { a, b, n in
        var s: Int32 = 0
        for i in 0..<n { let d = Int32(a![i]) - Int32(b![i]); s &+= d * d }
        return s
    }

    static let dotInt8: Int8Kernel = { a, b, n in
        var s: Int32 = 0
        for i in 0..<n { s &+= Int32(a![i]) * Int32(b![i]) }
        return s
    }

    static let l2SquaredScan: FloatScan = { q, base, count, dim, stride, out in
        for i in 0..<count { out![i] = l2Squared(q, base! + i * stride, dim) }
    }
    static let dotScan: FloatScan = { q, base, count, dim, stride, out in
        for i in 0..<count { out![i] = dot(q, base! + i * stride, dim) }
    }
    static let cosineDistanceScan: FloatScan = { q, base, count, dim, stride, out in
        for i in 0..<count { out![i] = cosineDistance(q, base! + i * stride, dim) }
    }
    static let l2SquaredInt8Scan: Int8Scan = { q, base, count, dim, stride, out in
        for i in 0..<count { out![i] = l2SquaredInt8(q, base! + i * stride, dim) }
    }
    static let dotInt8Scan: Int8Scan = { q, base, count, dim, stride, out in
        for i in 0..<count { out![i] = dotInt8(q, base! + i * stride, dim) }
    }

    static let l2SquaredInt8Gather: Int8Gather = { q, rows, count, dim, out in
        for i in 0..<count { out![i] = l2SquaredInt8(q, rows![i], dim) }
    }

    static let dotInt8Gather: Int8Gather = { q, rows, count, dim, out in
        for i in 0..<count { out![i] = dotInt8(q, rows![i], dim) }
    }

    static let countAtMost: FloatCount = { v, n, x in
        var c = 0
        for i in 0..<n where v![i] <= x { c += 1 }
        return c
    }
}
