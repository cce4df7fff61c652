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

/// SwiftPM starts an executable at `Settings_main`: hand over to libFuzzer's driver.
@_cdecl("Settings_main")
public func start(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    var count = argc
    var vector = argv
    return LLVMFuzzerRunDriver(&count, &vector, fuzz)
}

@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<Int32>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> Int32) -> Int32
