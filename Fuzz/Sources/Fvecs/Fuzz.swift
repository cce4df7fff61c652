import VexSemantic

/// Any bytes as a .fvecs file: a vector or a one-line reason, never a crash.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    if case .success(let v) = VectorParser.parse(UnsafeRawBufferPointer(start: data, count: size), as: .fvecs) {
        precondition(v.dimension > 0 && v.values.count == v.rows * v.dimension && v.values.allSatisfy(\.isFinite))
    }
    return 0
}
