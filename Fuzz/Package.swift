// swift-tools-version:6.0
// libFuzzer targets for every parser that reads what users write: the vector formats, the values of
// the settable `user.vexfs.*` attributes, escaped names and the `-o` options; and for what vexfs reads
// back from STORE/.vexfs: a collection's snapshot and the catalog in it. A separate package so
// that `-sanitize=fuzzer` reaches only these; run them with ../scripts/fuzz.
import Foundation
import PackageDescription

// The main package, by path; SwiftPM names a path dependency after its directory.
let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
let main = root.lastPathComponent.lowercased()

func fuzzer(_ name: String, _ product: String) -> Target {
    .executableTarget(name: name, dependencies: ["FuzzDriver", .product(name: product, package: main)], path: "Sources/\(name)",
                      swiftSettings: [.unsafeFlags(["-parse-as-library"])])
}

let package = Package(
    name: "VexFuzz",
    dependencies: [.package(path: "..")],
    targets: [
        .target(name: "FuzzDriver", dependencies: [.product(name: "VexSemantic", package: main)]),
        fuzzer("VecText", "VexSemantic"), fuzzer("Numpy", "VexSemantic"), fuzzer("Fvecs", "VexSemantic"),
        fuzzer("Raw", "VexSemantic"), fuzzer("Settings", "VexSemantic"), fuzzer("Names", "VexStore"),
        fuzzer("Options", "VexFUSE"), fuzzer("Snapshot", "VexSemantic"), fuzzer("Catalog", "VexSemantic"),
    ]
)
