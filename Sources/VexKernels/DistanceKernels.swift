// VexKernels is the only door to the distance kernels, the hot loop of every vector operation. It
// owns three paths: AVX-512 (with VNNI for int8 where the CPU has it) and AVX2+FMA, both in C under
// CShims/CKernels, and a scalar Swift path for CPUs with neither. The path is chosen once, from what
// the CPU and the OS support, or forced with VEXFS_SIMD=scalar|avx2|avx512 for tests and benchmarks;
// forcing a path the machine lacks is an error, never an illegal-instruction crash. All paths compute
// the same things: squared L2, inner product and cosine distance (1 - cos, and 1 when either vector
// is zero) for float32; squared L2 and inner product for int8, exactly, in Int32. Each comes in a
// one-to-one form and a one-query-against-N-contiguous-vectors form (the flat-scan shape); the int8
// ones also against N rows anywhere in memory (a graph hop's neighbours).
import CKernels
import Glibc

/// Largest dimensions at which the int8 kernels' Int32 sums cannot overflow, for codes in
/// [-127, 127]: a squared difference is at most 254², a product at most 127².
public enum Int8Exactness {
    public static let l2Dimensions = Int(Int32.max) / (254 * 254)
    public static let dotDimensions = Int(Int32.max) / (127 * 127)
}

public enum SIMDPath: String, CaseIterable, Sendable, CustomStringConvertible {
    case scalar, avx2, avx512
    public var description: String { rawValue }
}

public enum KernelError: Error, Equatable, CustomStringConvertible {
    case unknownPath(String)
    case unsupported(SIMDPath)
    public var description: String {
        switch self {
        case .unknownPath(let s): "VEXFS_SIMD=\(s) is not a path: use scalar, avx2 or avx512"
        case .unsupported(let p): "VEXFS_SIMD=\(p) asks for instructions this CPU or OS does not support"
        }
    }
}

public typealias FloatKernel = @convention(c) (UnsafePointer<Float>?, UnsafePointer<Float>?, Int) -> Float
public typealias Int8Kernel = @convention(c) (UnsafePointer<Int8>?, UnsafePointer<Int8>?, Int) -> Int32
/// (query, base, count, dim, stride, out)
public typealias FloatScan = @convention(c) (UnsafePointer<Float>?, UnsafePointer<Float>?, Int, Int, Int, UnsafeMutablePointer<Float>?) -> Void
public typealias Int8Scan = @convention(c) (UnsafePointer<Int8>?, UnsafePointer<Int8>?, Int, Int, Int, UnsafeMutablePointer<Int32>?) -> Void
/// (query, rows, count, dim, out)
public typealias Int8Gather = @convention(c) (UnsafePointer<Int8>?, UnsafePointer<UnsafePointer<Int8>?>?, Int, Int, UnsafeMutablePointer<Int32>?) -> Void
/// (values, count, x): how many values are at most x.
public typealias FloatCount = @convention(c) (UnsafePointer<Float>?, Int, Float) -> Int

/// One set of kernels, all from one path. A value: copy it freely; calls go straight to C (or Swift).
public struct DistanceKernels: Sendable {
    public let path: SIMDPath
    /// True when the int8 kernels use AVX-512 VNNI.
    public let usesVNNI: Bool
    public let l2Squared: FloatKernel
    public let dot: FloatKernel
    public let cosineDistance: FloatKernel
    public let l2SquaredInt8: Int8Kernel
    public let dotInt8: Int8Kernel
    public let l2SquaredScan: FloatScan
    public let dotScan: FloatScan
    public let cosineDistanceScan: FloatScan
    public let l2SquaredInt8Scan: Int8Scan
    public let dotInt8Scan: Int8Scan
    public let l2SquaredInt8Gather: Int8Gather
    public let dotInt8Gather: Int8Gather
    /// How many of the values are at most x: in a sorted array, the index where x goes.
    public let countAtMost: FloatCount

    /// The paths this machine can run, scalar first.
    public static var supportedPaths: [SIMDPath] {
        let f = vx_cpu_features()
        var paths: [SIMDPath] = [.scalar]
        if f & Int32(VX_CPU_AVX2) != 0 { paths.append(.avx2) }
        if f & Int32(VX_CPU_AVX512) != 0 { paths.append(.avx512) }
        return paths
    }

    /// The kernels of `path`, if this machine can run them.
    public init(path: SIMDPath) throws(KernelError) {
        guard DistanceKernels.supportedPaths.contains(path) else { throw .unsupported(path) }
        self.path = path
        switch path {
        case .scalar:
            usesVNNI = false
            l2Squared = Scalar.l2Squared; dot = Scalar.dot; cosineDistance = Scalar.cosineDistance
            l2SquaredInt8 = Scalar.l2SquaredInt8; dotInt8 = Scalar.dotInt8
            l2SquaredScan = Scalar.l2SquaredScan; dotScan = Scalar.dotScan; cosineDistanceScan = Scalar.cosineDistanceScan
            l2SquaredInt8Scan = Scalar.l2SquaredInt8Scan; dotInt8Scan = Scalar.dotInt8Scan
            l2SquaredInt8Gather = Scalar.l2SquaredInt8Gather; dotInt8Gather = Scalar.dotInt8Gather
            countAtMost = Scalar.countAtMost
        case .avx2:
            usesVNNI = false
            l2Squared = vx_l2sq_f32_avx2; dot = vx_dot_f32_avx2; cosineDistance = vx_cos_f32_avx2
            l2SquaredInt8 = vx_l2sq_i8_avx2; dotInt8 = vx_dot_i8_avx2
            l2SquaredScan = vx_l2sq_f32_many_avx2; dotScan = vx_dot_f32_many_avx2; cosineDistanceScan = vx_cos_f32_many_avx2
            l2SquaredInt8Scan = vx_l2sq_i8_many_avx2; dotInt8Scan = vx_dot_i8_many_avx2
            l2SquaredInt8Gather = vx_l2sq_i8_gather_avx2; dotInt8Gather = vx_dot_i8_gather_avx2
            countAtMost = vx_count_le_f32_avx2
        case .avx512:
            l2Squared = vx_l2sq_f32_avx512; dot = vx_dot_f32_avx512; cosineDistance = vx_cos_f32_avx512
            l2SquaredScan = vx_l2sq_f32_many_avx512; dotScan = vx_dot_f32_many_avx512; cosineDistanceScan = vx_cos_f32_many_avx512
            countAtMost = vx_count_le_f32_avx512
            usesVNNI = vx_cpu_features() & Int32(VX_CPU_AVX512_VNNI) != 0
            if usesVNNI {
                l2SquaredInt8 = vx_l2sq_i8_vnni; dotInt8 = vx_dot_i8_vnni
                l2SquaredInt8Scan = vx_l2sq_i8_many_vnni; dotInt8Scan = vx_dot_i8_many_vnni
                l2SquaredInt8Gather = vx_l2sq_i8_gather_vnni; dotInt8Gather = vx_dot_i8_gather_vnni
            } else {
                l2SquaredInt8 = vx_l2sq_i8_avx512; dotInt8 = vx_dot_i8_avx512
                l2SquaredInt8Scan = vx_l2sq_i8_many_avx512; dotInt8Scan = vx_dot_i8_many_avx512
                l2SquaredInt8Gather = vx_l2sq_i8_gather_avx512; dotInt8Gather = vx_dot_i8_gather_avx512
            }
        }
    }

    /// This process's kernels: VEXFS_SIMD's path, or the widest this machine supports; read once.
    public static let forProcess: Result<DistanceKernels, KernelError> = Result {
        () throws(KernelError) -> DistanceKernels in
        try select(environment: getenv("VEXFS_SIMD").map { String(cString: $0) })
    }

    /// The path named by VEXFS_SIMD in `environment`, or the widest this machine supports.
    public static func select(environment value: String?) throws(KernelError) -> DistanceKernels {
        guard let value, !value.isEmpty else { return try DistanceKernels(path: supportedPaths.last!) }
        guard let path = SIMDPath(rawValue: value.lowercased()) else { throw .unknownPath(value) }
        return try DistanceKernels(path: path)
    }
}

extension DistanceKernels {
    // Conveniences for whole arrays (tests, small callers); the hot paths pass pointers.
    public func l2Squared(_ a: [Float], _ b: [Float]) -> Float { pair(a, b) { l2Squared($0, $1, $2) } }
    public func dot(_ a: [Float], _ b: [Float]) -> Float { pair(a, b) { dot($0, $1, $2) } }
    public func cosineDistance(_ a: [Float], _ b: [Float]) -> Float { pair(a, b) { cosineDistance($0, $1, $2) } }
    public func l2SquaredInt8(_ a: [Int8], _ b: [Int8]) -> Int32 { pair(a, b) { l2SquaredInt8($0, $1, $2) } }
    public func dotInt8(_ a: [Int8], _ b: [Int8]) -> Int32 { pair(a, b) { dotInt8($0, $1, $2) } }

    private func pair<T, R>(_ a: [T], _ b: [T], _ k: (UnsafePointer<T>?, UnsafePointer<T>?, Int) -> R) -> R {
        precondition(a.count == b.count, "vectors of different dimensions")
        return a.withUnsafeBufferPointer { pa in b.withUnsafeBufferPointer { pb in k(pa.baseAddress, pb.baseAddress, a.count) } }
    }
}
