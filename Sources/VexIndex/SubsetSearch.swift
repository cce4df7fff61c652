import VexKernels

extension AdaptiveIndex {
    /// The exact `k` nearest to `query` among `labels` (labels not held are skipped), nearest
    /// first, ties by label, in the same distances as `search`. For a filter that keeps few vectors
    /// a scan of those is both exact and cheaper than a graph walk that must pass by the rest.
    public func exactSearch(_ query: UnsafeBufferPointer<Float>, k: Int, among labels: [UInt64]) throws(IndexError) -> [Neighbor] {
        guard (1...1000).contains(k) else { throw .badK(k) }
        try validate(query, dimension: dimension)
        let q = UnsafeMutablePointer<Float>.allocate(capacity: dimension)
        defer { q.deallocate() }
        metric.prepare(query, into: q, kernels: kernels)
        var best = TopK(k: k)
        for label in labels {
            guard let v = vector(of: label) else { continue }
            let raw = v.withUnsafeBufferPointer { v in
                metric == .l2 ? kernels.l2Squared(q, v.baseAddress!, dimension) : -kernels.dot(q, v.baseAddress!, dimension)
            }
            if raw <= best.bound { best.offer(Neighbor(label: label, distance: raw)) }
        }
        return best.sorted().map { n in
            Neighbor(label: n.label, distance: metric.userDistance(metric == .l2 ? n.distance : -n.distance))
        }
    }
}

extension AdaptiveIndex {
    /// The stored vector of `label` (normalised for cosine), from whichever index holds it (single
    /// inserts wait in `fresh` until they are linked into the graph).
    public func vector(of label: UInt64) -> [Float]? {
        if let v = fresh.vector(of: label) { return v }
        let now = active
        if let flat = now as? FlatIndex { return flat.vector(of: label) }
        if let graph = now as? HNSWIndex { return graph.vector(of: label) }
        return nil
    }
}
