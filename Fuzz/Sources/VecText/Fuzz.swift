import VexSemantic

/// Any bytes as a .vec file: a vector or a one-line reason, never a crash.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    if case .success(let v) = VectorParser.parse(UnsafeRawBufferPointer(start: data, count: size), as: .text) {
        precondition(v.dimension > 0 && v.values.count == v.rows * v.dimension && v.values.allSatisfy(\.isFinite))
    }
    return 0
}

/// SwiftPM starts an executable at `VecText_main`: hand over to libFuzzer's driver.
@_cdecl("VecText_main")
public func start(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    var count = argc
    var vector = argv
    return LLVMFuzzerRunDriver(&count, &vector, fuzz)
}

@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<Int32>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> Int32) -> Int32
