/// int8 scalar quantization for graph traversal. One scale for every dimension keeps distances
/// proportional: for l2 each dimension is centred on the middle of its range (the offsets cancel in
/// a difference), so the int8 squared distance is the float one times 1/scale² up to rounding; for
/// dot and cosine there is no offset, so the int8 inner product is the float one times 1/scale².
/// Values outside the trained range are clamped: the float re-ranking of the final candidates
/// repairs what clamping costs the traversal.
public struct ScalarQuantizer: Equatable, Sendable {
    var scale: Float
    var offsets: [Float]

    static func train(metric: Metric, dimension: Int, count: Int, vector: (Int) -> UnsafePointer<Float>) -> ScalarQuantizer {
        var low = [Float](repeating: .infinity, count: dimension)
        var high = [Float](repeating: -.infinity, count: dimension)
        for i in 0..<count {
            let v = vector(i)
            for d in 0..<dimension {
                low[d] = min(low[d], v[d])
                high[d] = max(high[d], v[d])
            }
        }
        guard count > 0 else { return ScalarQuantizer(scale: 1, offsets: [Float](repeating: 0, count: dimension)) }
        if metric == .l2 {
            let offsets = (0..<dimension).map { (low[$0] + high[$0]) / 2 }
            let widest = (0..<dimension).map { high[$0] - low[$0] }.max() ?? 0
            return ScalarQuantizer(scale: widest > 0 ? widest / 254 : 1, offsets: offsets)
        }
        let largest = (0..<dimension).map { max(abs(low[$0]), abs(high[$0])) }.max() ?? 0
        return ScalarQuantizer(scale: largest > 0 ? largest / 127 : 1, offsets: [Float](repeating: 0, count: dimension))
    }

    func encode(_ v: UnsafePointer<Float>, into code: UnsafeMutablePointer<Int8>) {
        let inverse = 1 / scale
        for d in 0..<offsets.count {
            let x = ((v[d] - offsets[d]) * inverse).rounded()
            code[d] = Int8(max(-127, min(127, x)))
        }
    }
}
