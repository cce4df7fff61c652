import VexFUSE

/// Any bytes as `-o` options: applied or refused with a parse error, never a crash.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    var options = MountOptions()
    try? options.apply(String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self))
    return 0
}
