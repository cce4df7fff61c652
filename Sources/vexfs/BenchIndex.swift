// `vexfs bench index`: builds the flat or HNSW index over a raw float32 file and measures build time,
// memory, recall@10 against a given ground truth, and queries per second on 1..N threads.
// benchmarks/vector/run.py writes the files and runs hnswlib and FAISS on the same data.
import ArgumentParser
import Glibc
import Synchronization
import VexIndex
import VexKernels

struct IndexBench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "index", abstract: "Vector index: build, memory, recall@10, queries/s.")

    @Option(help: "Raw little-endian float32 base vectors.") var base: String
    @Option(help: "Raw float32 query vectors.") var queries: String
    @Option(help: "Ground truth: int32, 10 nearest base rows per query.") var truth: String
    @Option(help: "Dimension.") var dim: Int
    @Option(help: "l2, cosine or dot.") var metric = "l2"
    @Option(help: "hnsw or flat.") var kind = "hnsw"
    @Option var m = 16
    @Option(help: "Candidates a search expands together at level 0 (1 to 4).") var hopWidth = HNSWParameters().hopWidth
    @Option var efConstruction = 200
    @Option(parsing: .upToNextOption, help: "Search breadths.") var ef: [Int] = [16, 32, 64, 128]
    @Option(parsing: .upToNextOption, help: "Thread counts.") var threads: [Int] = [1, 2]
    @Option(help: "Timed passes over the queries; the median is reported.") var passes = 3
    @Flag(help: "Walk the graph on the float32 vectors instead of the int8 codes.") var floatTraversal = false
    @Flag(help: "Build the graph measuring on the float32 vectors instead of the int8 codes.") var floatConstruction = false
    @Option(help: "Threads that build the graph (default: every core).") var buildThreads = availableCores
    @Option(help: "Also measure the graph's own recall the way a collection does, for this target.") var tuneRecall: Double?
    @Option(help: "Build as a collection does, calibrating the breadth on held-out rows for this recall@10 target, and query at the breadth chosen.")
    var target: Double?

    func run() throws {
        guard let metric = Metric(rawValue: metric) else { throw UserError("unknown metric \(metric)") }
        let kernels: DistanceKernels
        do { kernels = try DistanceKernels.forProcess.get() } catch { throw UserError(error.description) }
        let baseData = try readFloats(base), queryData = try readFloats(queries), truthData = try readInt32(truth)
        let n = baseData.count / dim, nq = queryData.count / dim
        guard truthData.count >= nq * 10 else { throw UserError("ground truth too short") }

        let rssBefore = residentBytes()
        let index: any VectorIndex
        var hnsw: HNSWIndex?
        var adaptive: AdaptiveIndex?
        if kind == "flat" {
            index = FlatIndex(dimension: dim, metric: metric, kernels: kernels, capacity: n)
        } else {
            var p = HNSWParameters(m: m, efConstruction: efConstruction)
            p.int8Traversal = !floatTraversal
            p.int8Construction = !floatConstruction
            p.hopWidth = hopWidth
            if let target {
                let a = AdaptiveIndex(dimension: dim, metric: metric, kind: .hnsw, parameters: p, kernels: kernels)
                a.recallTarget = target
                adaptive = a
                hnsw = a.active as? HNSWIndex
                index = a
            } else {
                let h = HNSWIndex(dimension: dim, metric: metric, kernels: kernels, parameters: p)
                hnsw = h
                index = h
            }
        }
        let labels = (0..<n).map { UInt64($0) }
        let build = time {
            baseData.withUnsafeBufferPointer { p in
                try! index.insert(batch: labels, vectors: UnsafeBufferPointer(rebasing: p[0..<(n * dim)]), threads: buildThreads)
            }
        }
        let rss = residentBytes() - rssBefore
        let accounted = hnsw?.memoryBytes ?? (n * ((dim + 15) / 16 * 16) * 4 + n * 8)
        print(#"{"engine":"vexfs","kind":"\#(kind)","n":\#(n),"build_s":\#(build),"build_threads":\#(buildThreads),"rss_bytes":\#(rss),"index_bytes":\#(accounted),"raw_bytes":\#(n * dim * 4),"unreachable":\#(hnsw?.unreachableCount() ?? 0)}"#)
        fflush(nil)
        if let target, let m = adaptive?.measurement {
            print(#"{"engine":"vexfs","target":\#(target),"calibrated_ef":\#(m.ef),"widen_from":\#(m.widenFrom),"reach":\#(m.reach.map { "\($0)" } ?? "null"),"held_out_sample_recall":\#(m.recall),"optimism":\#(m.optimism ?? 0)}"#)
            fflush(nil)
        }
        if let target = tuneRecall, let h = hnsw {
            var m: RecallMeasurement?
            let seconds = time { m = h.measureRecall(target: target) }
            if let m { print(#"{"engine":"vexfs","tune_target":\#(target),"tuned_ef":\#(m.ef),"sample_recall":\#(m.recall),"tune_s":\#(seconds)}"#) }
            fflush(nil)
        }

        // 0: the breadth the index chose itself (exact, or calibrated).
        let breadths = kind == "flat" || target != nil ? [0] : ef
        for e in breadths {
            // Recall, single-threaded.
            var hits = 0
            var answers = [[Neighbor]](repeating: [], count: nq)
            var latencies = [Double](repeating: 0, count: nq)
            queryData.withUnsafeBufferPointer { q in
                for i in 0..<nq {
                    latencies[i] = time {
                        answers[i] = try! index.search(UnsafeBufferPointer(rebasing: q[(i * dim)..<((i + 1) * dim)]), k: 10, ef: e == 0 ? nil : e, excluding: nil)
                    }
                }
            }
            latencies.sort()
            let p50 = latencies[nq / 2] * 1e6, p99 = latencies[min(nq - 1, nq * 99 / 100)] * 1e6
            for i in 0..<nq {
                let want = Set(truthData[(i * 10)..<(i * 10 + 10)].map { UInt64($0) })
                hits += answers[i].filter { want.contains($0.label) }.count
            }
            let recall = Double(hits) / Double(nq * 10)
            for t in threads {
                let qps = median((0..<passes).map { _ in
                    let next = Atomic<Int>(0)
                    let seconds = time {
                        runThreads(t) {
                            queryData.withUnsafeBufferPointer { q in
                                while true {
                                    let i = next.add(1, ordering: .relaxed).oldValue
                                    if i >= nq { break }
                                    _ = try! index.search(UnsafeBufferPointer(rebasing: q[(i * dim)..<((i + 1) * dim)]), k: 10, ef: e == 0 ? nil : e, excluding: nil)
                                }
                            }
                        }
                    }
                    return Double(nq) / seconds
                })
                print(#"{"engine":"vexfs","kind":"\#(kind)\#(floatTraversal ? "-float" : "")","ef":\#(e),"threads":\#(t),"recall":\#(recall),"qps":\#(qps),"p50_us":\#(p50),"p99_us":\#(p99)}"#)
                fflush(nil)
            }
        }
    }
}

private func readFloats(_ path: String) throws -> [Float] {
    let bytes = try readAll(path)
    return bytes.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
}

private func readInt32(_ path: String) throws -> [Int32] {
    let bytes = try readAll(path)
    return bytes.withUnsafeBytes { Array($0.bindMemory(to: Int32.self)) }
}

private func readAll(_ path: String) throws -> [UInt8] {
    guard let f = fopen(path, "rb") else { throw UserError("\(path): \(String(cString: strerror(errno)))") }
    defer { fclose(f) }
    fseek(f, 0, SEEK_END)
    let size = ftell(f)
    fseek(f, 0, SEEK_SET)
    var bytes = [UInt8](repeating: 0, count: size)
    guard fread(&bytes, 1, size, f) == size else { throw UserError("\(path): short read") }
    return bytes
}

/// This process's resident set, from /proc/self/statm.
func residentBytes() -> Int {
    guard let f = fopen("/proc/self/statm", "r") else { return 0 }
    defer { fclose(f) }
    var size = 0, resident = 0
    _ = withUnsafeMutablePointer(to: &size) { s in withUnsafeMutablePointer(to: &resident) { r in
        withVaList([s, r]) { vfscanf(f, "%ld %ld", $0) } } }
    return resident * Int(sysconf(Int32(_SC_PAGESIZE)))
}
