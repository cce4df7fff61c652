// `vexfs bench kernels`: throughput of every distance kernel on every path this CPU supports, in
// cache (one-to-one) and out of cache (a one-to-N scan over 1,000,000 x 128 float32), beside the
// machine's memory bandwidth measured in the same run. benchmarks/kernels/run.py adds NumPy and
// SimSIMD to the same table.
import ArgumentParser
import Glibc
import VexKernels

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Micro-benchmarks.", subcommands: [Kernels.self])
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
        let paths = DistanceKernels.supportedPaths.map { try! DistanceKernels(path: $0) }
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

        // In cache: 64 vectors against one query, repeated; both vectors' bytes count.
        for dim in dims {
            let count = 64
            let a = (0..<dim).map { _ in Float.random(in: -1...1, using: &rng) }
            let b = (0..<count * dim).map { _ in Float.random(in: -1...1, using: &rng) }
            let a8 = a.map { Int8(clamping: Int($0 * 127)) }, b8 = b.map { Int8(clamping: Int($0 * 127)) }
            let calls = max(1, 40_000_000 / (dim * count))
            for k in paths {
                let floats: [(String, FloatKernel)] = [("l2sq_f32", k.l2Squared), ("dot_f32", k.dot), ("cos_f32", k.cosineDistance)]
                for (name, kernel) in floats {
                    var sink: Float = 0
                    let t = a.withUnsafeBufferPointer { pa in
                        b.withUnsafeBufferPointer { pb in
                            median((0..<trials).map { _ in
                                time {
                                    for _ in 0..<calls {
                                        for i in 0..<count { sink += kernel(pa.baseAddress, pb.baseAddress! + i * dim, dim) }
                                    }
                                }
                            })
                        }
                    }
                    keep(sink)
                    let pairs = Double(calls * count)
                    emit(Row(test: "in-cache", kernel: name, path: k.path.rawValue, dim: dim,
                             vectorsPerSecond: pairs / t, gigabytesPerSecond: pairs * Double(2 * dim * 4) / t / 1e9))
                }
                let ints: [(String, Int8Kernel)] = [("l2sq_i8", k.l2SquaredInt8), ("dot_i8", k.dotInt8)]
                for (name, kernel) in ints {
                    var sink: Int32 = 0
                    let t = a8.withUnsafeBufferPointer { pa in
                        b8.withUnsafeBufferPointer { pb in
                            median((0..<trials).map { _ in
                                time {
                                    for _ in 0..<calls {
                                        for i in 0..<count { sink &+= kernel(pa.baseAddress, pb.baseAddress! + i * dim, dim) }
                                    }
                                }
                            })
                        }
                    }
                    keep(Float(sink))
                    let pairs = Double(calls * count)
                    emit(Row(test: "in-cache", kernel: name, path: k.path.rawValue, dim: dim,
                             vectorsPerSecond: pairs / t, gigabytesPerSecond: pairs * Double(2 * dim) / t / 1e9))
                }
            }
        }
    }
}

func pad(_ s: String, _ width: Int, right: Bool = false) -> String {
    let fill = String(repeating: " ", count: max(0, width - s.count))
    return right ? fill + s : s + fill
}

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

/// Keeps a result alive so the optimiser cannot drop the work that made it.
@inline(never) func keep(_ x: Float) {
    if x.isNaN && x.sign == .minus && x.significandBitPattern == 1 { print("") }
}
