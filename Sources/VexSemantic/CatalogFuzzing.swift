import VexIndex

/// The fuzz targets' door to the catalog decoder (Fuzz/Sources/Catalog), which is internal: any bytes
/// as the catalog a snapshot stores (its XCAT section), decoded and checked exactly as a mount and
/// `vexfs check` decode it, for an index holding `rows` vectors. Returns how many files it names and
/// how many vectors they hold together. Nothing else calls it.
public func decodeCatalog(_ bytes: [UInt8], rows: Int) throws(PersistenceError) -> (files: Int, rows: Int) {
    let (files, _) = try Catalog.decode(bytes, rows: rows)
    return (files.count, files.values.reduce(0) { $0 + $1.rows })
}
