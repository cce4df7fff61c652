import FuzzDriver
import VexSemantic

/// Any bytes as the catalog stored in a snapshot (its XCAT section): decoded or refused as damage,
/// never a crash. One that decodes fits an index of exactly the vectors it names, and not one fewer.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let decoded = try? decodeCatalog(bytes, rows: Int.max) else { return 0 }
    precondition(decoded.files >= 0 && decoded.rows >= 0)
    precondition((try? decodeCatalog(bytes, rows: decoded.rows))?.files == decoded.files)
    if decoded.rows > 0 { precondition((try? decodeCatalog(bytes, rows: decoded.rows - 1)) == nil) }
    return 0
}

@_cdecl("Catalog_main")
public func start(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 { runFuzzer(argc, argv, fuzz) }
