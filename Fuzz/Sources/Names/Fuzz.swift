import FuzzDriver
import VexStore

/// Any bytes as a file name: its escaped form is one field (no TAB, no newline) that unescapes to
/// exactly the name; any bytes as an answer field unescape or are refused, never crash.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let escaped = FileName(bytes).escaped
    precondition(!escaped.utf8.contains(0x09) && !escaped.utf8.contains(0x0A))
    precondition(FileName.unescape(escaped) == bytes)
    _ = FileName.unescape(String(decoding: bytes, as: UTF8.self))
    return 0
}

@_cdecl("Names_main")
public func start(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 { runFuzzer(argc, argv, fuzz) }
