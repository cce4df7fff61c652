import VexSemantic

/// Any bytes as the value of `user.vexfs.dim` and `user.vexfs.metric`: accepted and well formed, or EINVAL.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let value = Array(UnsafeBufferPointer(start: data, count: size))
    for attribute in ["user.vexfs.dim", "user.vexfs.metric", "user.vexfs.knn"] {
        do throws(SemanticError) {
            let text = try SemanticLayer.settingValue(attribute, value)
            precondition(attribute == "user.vexfs.dim" ? Int(text) != nil : ["l2", "cosine", "dot"].contains(text))
        } catch {
            precondition(error.errno != 0)
        }
    }
    return 0
}
