import FuzzDriver
import VexSemantic

/// Any bytes as the value of `user.vexfs.dim`, `user.vexfs.metric` and `user.vexfs.recall`: accepted and well formed, or EINVAL.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let value = Array(UnsafeBufferPointer(start: data, count: size))
    for attribute in ["user.vexfs.dim", "user.vexfs.metric", "user.vexfs.recall", "user.vexfs.knn"] {
        do throws(SemanticError) {
            // What is accepted is stored as `text`, and reads back as the same setting.
            let setting = try Setting.parse(attribute, value)
            precondition((try? Setting.parse(attribute, Array(setting.text.utf8))) == setting)
        } catch {
            precondition(error.errno != 0)
        }
    }
    return 0
}

@_cdecl("Settings_main")
public func start(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 { runFuzzer(argc, argv, fuzz) }
