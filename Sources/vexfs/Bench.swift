// `vexfs bench kernels`: throughput of every distance kernel on every path this CPU supports, in
// cache (one-to-one) and out of cache (a one-to-N scan over 1,000,000 x 128 float32), beside the
// machine's memory bandwidth measured in the same run. benchmarks/kernels/run.py adds NumPy and
// SimSIMD to the same table.
import ArgumentParser
import Glibc
import VexKernels
import CMemory
import VexMemory

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Micro-benchmarks.", subcommands: [Kernels.self, Pool.self, IndexBench.self])
}

struct Kernels: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Distance kernels: vectors/s and GB/s per kernel, path and dimension.")

    @Flag(help: "One JSON object per line instead of a table.") var json = false
    @Option(help: "Rows in the out-of-cache scan.") var scanRows = 1_000_000
    @Option(help: "Dimensions for the in-cache runs.") var dims: [Int] = [128, 384, 768, 1536]
    @Option(help: "Timed trials per figure; the median is reported.") var trials = 5

    struct Row: Encodable {
        let test: String, kernel: String, path: String, dim: Int
        let vectorsPerSecond: Double, gigabytesPerSecond: Double
    }

    func run() throws {
        var rows: [Row] = []
        // VEXFS_SIMD narrows the run to one path; without it, every path this machine has.
        let paths: [DistanceKernels]
        if getenv("VEXFS_SIMD") != nil {
            do { paths = [try DistanceKernels.forProcess.get()] } catch { throw UserError(error.description) }
        } else {
            paths = DistanceKernels.supportedPaths.map { try! DistanceKernels(path: $0) }
        }
        func emit(_ r: Row) {
            rows.append(r)
            if json {
                print(#"{"test":"\#(r.test)","kernel":"\#(r.kernel)","path":"\#(r.path)","dim":\#(r.dim),"vectors_per_s":\#(r.vectorsPerSecond),"gb_per_s":\#(r.gigabytesPerSecond)}"#)
            } else {
                print(pad(r.test, 9), pad(r.kernel, 9), pad(r.path, 7), "dim", pad(String(r.dim), 5, right: true),
                      pad(String(Int(r.vectorsPerSecond.rounded())), 12, right: true), "vectors/s",
                      pad(String(Double(Int((r.gigabytesPerSecond * 100).rounded())) / 100), 8, right: true), "GB/s")
            }
            fflush(nil)
        }

        // Memory bandwidth: a large copy, counted as bytes copied per second.
        let bytes = scanRows * 128 * 4
        let src = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        let dst = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        defer { src.deallocate(); dst.deallocate() }
        memset(src, 1, bytes)
        memset(dst, 0, bytes)
        let copy = median((0..<trials).map { _ in time { memcpy(dst, src, bytes) } })
        emit(Row(test: "memory", kernel: "memcpy", path: "libc", dim: 0, vectorsPerSecond: 0,
                 gigabytesPerSecond: Double(bytes) / copy / 1e9))

        // Out of cache: one query against every row.
        let base = src.bindMemory(to: Float.self, capacity: scanRows * 128)
        var rng = SystemRandomNumberGenerator()
        for i in 0..<(scanRows * 128) { base[i] = Float.random(in: -1...1, using: &rng) }
        let query = (0..<128).map { _ in Float.random(in: -1...1, using: &rng) }
        let out = UnsafeMutablePointer<Float>.allocate(capacity: scanRows)
        defer { out.deallocate() }
        for k in paths {
            for (name, scan) in [("l2sq_f32", k.l2SquaredScan), ("dot_f32", k.dotScan), ("cos_f32", k.cosineDistanceScan)] {
                let t = median((0..<trials).map { _ in time { scan(query, base, scanRows, 128, 128, out) } })
                emit(Row(test: "scan", kernel: name, path: k.path.rawValue, dim: 128,
                         vectorsPerSecond: Double(scanRows) / t, gigabytesPerSecond: Double(bytes) / t / 1e9))
            }
        }

        // In cache: one query against as many vectors as fit in 256 KiB (at least 64), repeated;
        // both vectors' bytes count. benchmarks/kernels/run.py gives SimSIMD the same shape.
        for dim in dims {
            let count = inCacheRows(dim: dim, elementSize: 4)
            let count8 = inCacheRows(dim: dim, elementSize: 1)
            let a = (0..<dim).map { _ in Float.random(in: -1...1, using: &rng) }
            let b = (0..<max(count, count8) * dim).map { _ in Float.random(in: -1...1, using: &rng) }
            let a8 = a.map { Int8(clamping: Int($0 * 127)) }, b8 = b.map { Int8(clamping: Int($0 * 127)) }
            let calls = max(1, 40_000_000 / (dim * count))
            let calls8 = max(1, 40_000_000 / (dim * count8))
            for k in paths {
                let floats: [(String, FloatKernel)] = [("l2sq_f32", k.l2Squared), ("dot_f32", k.dot), ("cos_f32", k.cosineDistance)]
                for (name, kernel) in floats {
                    let rate = pairsPerSecond(a, b, dim: dim, count: count, calls: calls, trials: trials, kernel: kernel, combine: +)
                    emit(Row(test: "in-cache", kernel: name, path: k.path.rawValue, dim: dim,
                             vectorsPerSecond: rate, gigabytesPerSecond: rate * Double(2 * dim * 4) / 1e9))
                }
                let ints: [(String, Int8Kernel)] = [("l2sq_i8", k.l2SquaredInt8), ("dot_i8", k.dotInt8)]
                for (name, kernel) in ints {
                    let rate = pairsPerSecond(a8, b8, dim: dim, count: count8, calls: calls8, trials: trials, kernel: kernel, combine: &+)
                    emit(Row(test: "in-cache", kernel: name, path: k.path.rawValue, dim: dim,
                             vectorsPerSecond: rate, gigabytesPerSecond: rate * Double(2 * dim) / 1e9))
                }
            }
        }
    }
}

func pad(_ s: String, _ width: Int, right: Bool = false) -> String {
    let fill = String(repeating: " ", count: max(0, width - s.count))
    return right ? fill + s : s + fill
}

/// One query against `count` vectors of `b`, `calls` times over: pairs per second, median of the
/// trials. Results are folded with `combine` and kept, so the work cannot be optimised away.
func pairsPerSecond<T, R: Numeric>(_ a: [T], _ b: [T], dim: Int, count: Int, calls: Int, trials: Int,
                                   kernel: (UnsafePointer<T>?, UnsafePointer<T>?, Int) -> R,
                                   combine: (R, R) -> R) -> Double {
    var sink: R = 0
    let t = a.withUnsafeBufferPointer { pa in
        b.withUnsafeBufferPointer { pb in
            median((0..<trials).map { _ in
                time {
                    for _ in 0..<calls {
                        for i in 0..<count { sink = combine(sink, kernel(pa.baseAddress, pb.baseAddress! + i * dim, dim)) }
                    }
                }
            })
        }
    }
    withUnsafeMutablePointer(to: &sink) { vx_escape($0) }
    return Double(calls * count) / t
}

/// Vectors of `dim` elements that fit in 256 KiB (an L2 cache's share), at least 64.
func inCacheRows(dim: Int, elementSize: Int) -> Int { max(64, 262_144 / (dim * elementSize)) }

/// Seconds taken by `body`, from the monotonic clock.
func time(_ body: () -> Void) -> Double {
    var t0 = timespec(), t1 = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t0)
    body()
    clock_gettime(CLOCK_MONOTONIC, &t1)
    return Double(t1.tv_sec - t0.tv_sec) + Double(t1.tv_nsec - t0.tv_nsec) / 1e9
}

func median(_ xs: [Double]) -> Double {
    let s = xs.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

/// `vexfs bench pool`: acquire+release of one buffer per tier, against malloc+free and
/// posix_memalign(64)+free of the same size, on 1 and 2 threads at once (nanoseconds per pair,
/// median of the trials; each thread runs the same loop).
struct Pool: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Buffer pool against malloc and posix_memalign.")

    @Option(help: "Acquire/release pairs per thread per trial.") var pairs = 5_000_000
    @Option(help: "Timed trials per figure; the median is reported.") var trials = 5

    func run() throws {
        let pool = BufferPool()
        print("| size | threads | pool ns | malloc ns | posix_memalign ns | pool vs malloc | pool vs posix_memalign |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for tier in BufferPool.Tier.allCases {
            let size = tier.size
            for threads in [1, 2] {
                let n = pairs
                let poolNs = measurePairs(threads, n, trials) {
                    for _ in 0..<n {
                        let b = pool.acquire(size)
                        vx_escape(b.pointer)
                        pool.release(b)
                    }
                }
                let mallocNs = measurePairs(threads, n, trials) {
                    for _ in 0..<n {
                        let p = malloc(size)!
                        vx_escape(p)
                        free(p)
                    }
                }
                let alignedNs = measurePairs(threads, n, trials) {
                    for _ in 0..<n {
                        var p: UnsafeMutableRawPointer?
                        _ = posix_memalign(&p, 64, size)
                        vx_escape(p)
                        free(p)
                    }
                }
                func f(_ x: Double) -> String { String(Double(Int(x * 10)) / 10) }
                print("| \(size) | \(threads) | \(f(poolNs)) | \(f(mallocNs)) | \(f(alignedNs)) | \(f(mallocNs / poolNs))x | \(f(alignedNs / poolNs))x |")
            }
        }
    }

    /// Median nanoseconds per pair with `threads` threads each running `body` (n pairs).
    private func measurePairs(_ threads: Int, _ n: Int, _ trials: Int, _ body: @escaping @Sendable () -> Void) -> Double {
        median((0..<trials).map { _ in time { runThreads(threads, body) } * 1e9 / Double(n) })
    }
}

/// Runs `body` on `count` threads at once and waits for them.
func runThreads(_ count: Int, _ body: @escaping @Sendable () -> Void) {
    final class Box: @unchecked Sendable { let f: @Sendable () -> Void; init(_ f: @escaping @Sendable () -> Void) { self.f = f } }
    var ids: [pthread_t] = []
    for _ in 0..<count {
        var t = pthread_t()
        pthread_create(&t, nil, { arg in
            Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue().f()
            return nil
        }, Unmanaged.passRetained(Box(body)).toOpaque())
        ids.append(t)
    }
    for t in ids { pthread_join(t, nil) }
}
