import VexSemantic

/// The input callback libFuzzer calls: the bytes of one input.
public typealias FuzzInput = @convention(c) (UnsafePointer<UInt8>, Int) -> Int32

/// Hands a target's process to libFuzzer's driver (its flags, corpus directories and all): SwiftPM
/// starts each executable at `<Target>_main`, which calls this with its own `LLVMFuzzerTestOneInput`.
public func runFuzzer(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?, _ input: FuzzInput) -> Int32 {
    var count = argc
    var vector = argv
    return LLVMFuzzerRunDriver(&count, &vector, input)
}

@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<Int32>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                         _ input: FuzzInput) -> Int32

/// Any bytes as a file of `format`: a well-formed vector or a one-line reason, never a crash.
public func fuzzFormat(_ data: UnsafePointer<UInt8>, _ size: Int, as format: VectorFormat) -> Int32 {
    if case .success(let v) = VectorParser.parse(UnsafeRawBufferPointer(start: data, count: size), as: format) {
        precondition(v.dimension > 0 && v.values.count == v.rows * v.dimension && v.values.allSatisfy(\.isFinite))
    }
    return 0
}
