import CKernels
import Synchronization

/// What a graph's self-measurement found: the search breadth chosen, the recall@10 it gave on the
/// sample, and the size of the graph when measured.
public struct RecallMeasurement: Equatable, Sendable, CustomStringConvertible {
    public let ef: Int
    public let recall: Double
    public let vectors: Int
    public let target: Double
    init(ef: Int, recall: Double, vectors: Int, target: Double) {
        self.ef = ef
        self.recall = recall
        self.vectors = vectors
        self.target = target
    }

    /// The snapshot's TUNE section.
    var encoded: [UInt8] {
        var w = ByteWriter()
        w.put(UInt32(ef)); w.put(recall.bitPattern); w.put(UInt64(vectors)); w.put(target.bitPattern)
        return w.bytes
    }

    /// Read back from a TUNE section; nil when it is not one this version wrote (it is then measured again).
    init?(section bytes: [UInt8]?) {
        guard let bytes, bytes.count == 28 else { return nil }
        var r = ByteReader(bytes)
        guard let ef = try? r.get(UInt32.self), let recall = try? r.get(UInt64.self), let vectors = try? r.get(UInt64.self),
              let target = try? r.get(UInt64.self) else { return nil }
        let (rc, t) = (Double(bitPattern: recall), Double(bitPattern: target))
        guard (1...4096).contains(ef), (0...1).contains(rc), (0...1).contains(t), let n = Int(exactly: vectors) else { return nil }
        self.init(ef: Int(ef), recall: rc, vectors: n, target: t)
    }

    public var description: String {
        let r = (recall * 1000).rounded() / 1000
        return "ef \(ef) (recall@10 \(r) measured at \(vectors) vectors, target \(target))"
    }
}

extension HNSWIndex {
    /// The breadths tried, in order; the first that reaches the target is kept.
    static let efLadder = [16, 24, 32, 48, 64, 80, 96, 128, 160, 192, 256, 384, 512, 768, 1000]

    /// Measures recall@10 against the exact answer (a scan of every live vector) on `samples` of the
    /// graph's own vectors, and returns the smallest breadth on the ladder whose recall reaches
    /// `target` plus 0.4 of what remains to 1 (0.97 for 0.95; the largest breadth when none does). Each sample is asked as if it were new: left out of the answer, and the walk never
    /// steps on its node. Its neighbours were still linked knowing it, so the sample stays easier
    /// than a query the graph has never seen, hence the stricter bar. On GloVe-50, merely leaving
    /// the sample out of the answer measured 0.975 at an ef whose recall on held-out words was
    /// 0.937; avoiding its node too measured 0.951 where held-out words got 0.921 (ef 80), and
    /// 0.9825 at ef 256 (held-out: 0.957 at 128, 0.968 at 160). The 0.4 is fitted to that one
    /// data set. Runs beside
    /// searches and the writer: it takes no lock, and reads only nodes published when it starts
    /// (their vectors never change).
    public func measureRecall(target: Double, samples: Int = 200, seed: UInt64 = 0x7e57) -> RecallMeasurement? {
        let limit = published.load(ordering: .acquiring)
        guard limit > 0 else { return nil }
        var random = SplitMixRandom(seed: seed)
        var chosen: [UInt32] = []
        var tries = 0
        while chosen.count < min(samples, count) && tries < samples * 20 {
            tries += 1
            let node = UInt32(random.next() % UInt64(limit))
            if !isDeleted(node) && !chosen.contains(node) { chosen.append(node) }
        }
        guard !chosen.isEmpty else { return nil }
        let k = 10
        let truths = exactNearest(to: chosen, k: k, limit: limit).map { Set($0) }
        // The exact scan read every vector: let the pages go from the resident set (in a file, the
        // kernel keeps them in its cache).
        defer { vectors.releaseAll() }
        let bar = target + (1 - target) * 0.4
        var last: RecallMeasurement?
        for ef in HNSWIndex.efLadder {
            var hits = 0, wanted = 0
            for (i, node) in chosen.enumerated() {
                let query = UnsafeBufferPointer(start: vector(node), count: dimension)
                let got = (try? search(query, k: k, ef: ef, filter: SearchFilter(excluding: label(node)), avoiding: node)) ?? []
                hits += got.filter { truths[i].contains($0.label) }.count
                wanted += truths[i].count
            }
            let recall = wanted == 0 ? 1 : Double(hits) / Double(wanted)
            last = RecallMeasurement(ef: ef, recall: recall, vectors: count, target: target)
            if recall >= bar { break }
        }
        return last
    }

    /// For each of `nodes`, the labels of the `k` live nodes nearest to it, itself left out: one
    /// pass over every node below `limit`, each vector read once for all the queries. A vector file
    /// is read a chunk at a time (pread), so the scan leaves nothing of it resident.
    func exactNearest(to nodes: [UInt32], k: Int, limit: Int) -> [[UInt64]] {
        var best = [TopK](repeating: TopK(k: k), count: nodes.count)
        let queries = UnsafeMutablePointer<Float>.allocate(capacity: nodes.count * dimension)
        defer { queries.deallocate() }
        for (i, node) in nodes.enumerated() {
            if !(vectors.isFile && vectors.read(node, into: queries + i * dimension)) {
                (queries + i * dimension).update(from: vector(node), count: dimension)
            }
        }
        let floats = vectors.stride / 4
        let buffer = UnsafeMutablePointer<Float>.allocate(capacity: HNSWIndex.chunkNodes * floats)
        defer { buffer.deallocate() }
        var first = 0
        while first < limit {
            let count = min(HNSWIndex.chunkNodes, limit - first)
            let fromFile = vectors.isFile && vectors.readRows(first, count, into: buffer)
            for other in UInt32(first)..<UInt32(first + count) where !isDeleted(other) {
                let v = fromFile ? UnsafePointer(buffer + (Int(other) - first) * floats) : UnsafePointer(vector(other))
                for i in 0..<nodes.count where nodes[i] != other {
                    let q = queries + i * dimension
                    let d = metric == .l2 ? kernels.l2Squared(q, v, dimension) : -kernels.dot(q, v, dimension)
                    if d <= best[i].bound { best[i].offer(Neighbor(label: label(other), distance: d)) }
                }
            }
            first += count
        }
        return best.map { $0.sorted().map(\.label) }
    }
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
    /// (GloVe-50 on 2 threads: 26 of 399,000). The writer's job; returns how many it linked.
    @discardableResult
    func reconnect(_ state: inout WriterState) -> Int {
        var linked = 0
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
