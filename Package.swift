// swift-tools-version: 6.0
import PackageDescription

// Layers point one way: vexfs (CLI) -> VexFUSE -> VexMemory, VexSemantic -> VexStore; VexSemantic ->
// VexIndex -> VexKernels hold the vectors and know nothing of FUSE; VexSemantic -> VexEmbed turns text
// into vectors through an HTTP endpoint and knows nothing of files.
// CShims holds the C: the FUSE bridge (CFuse), Linux calls (CLinux), the SIMD kernels (CKernels),
// LZ4 and CRC-32C (CCompress), libnuma and stack probing (CMemory).
let package = Package(
    name: "vexfs",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "vexfs", targets: ["vexfs"]),
        // For Fuzz/ (a separate package, built with -sanitize=fuzzer): the layers whose parsers it drives.
        .library(name: "VexStore", targets: ["VexStore"]),
        .library(name: "VexSemantic", targets: ["VexSemantic"]),
        .library(name: "VexFUSE", targets: ["VexFUSE"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        // Already resolved through async-http-client; named for VexOps's metrics endpoint.
        .package(url: "https://github.com/apple/swift-nio", from: "2.81.0"),
    ],
    targets: [
        .target(
            name: "CFuse",
            path: "CShims/CFuse",
            cSettings: [.unsafeFlags(["-O2"])],
            linkerSettings: [.linkedLibrary("fuse3"), .linkedLibrary("uring"), .linkedLibrary("pthread")]
        ),
        .target(name: "CLinux", path: "CShims/CLinux"),
        .target(name: "CKernels", path: "CShims/CKernels", cSettings: [.unsafeFlags(["-O3"])]),
        .target(name: "VexKernels", dependencies: ["CKernels"]),
        .target(name: "CCompress", path: "CShims/CCompress", cSettings: [.unsafeFlags(["-O2"])],
                linkerSettings: [.linkedLibrary("lz4")]),
        .target(name: "VexIndex", dependencies: ["VexKernels", "CKernels", "CCompress"]),
        .systemLibrary(name: "CSQLite", path: "CShims/CSQLite"),
        .target(name: "VexKeyword", dependencies: ["CSQLite"]),
        .target(name: "VexEmbed", dependencies: [.product(name: "AsyncHTTPClient", package: "async-http-client"),
                                                .product(name: "CoreMetrics", package: "swift-metrics"),
                                                .product(name: "Logging", package: "swift-log")]),
        .target(name: "VexSemantic", dependencies: ["VexStore", "VexIndex", "VexKernels", "VexEmbed", "VexKeyword", "CCompress", "CLinux",
                                                   .product(name: "CoreMetrics", package: "swift-metrics"),
                                                   .product(name: "Logging", package: "swift-log")]),
        .target(name: "CMemory", path: "CShims/CMemory", cSettings: [.unsafeFlags(["-O2"])],
                linkerSettings: [.linkedLibrary("numa")]),
        .target(name: "VexMemory", dependencies: ["CMemory", .product(name: "Logging", package: "swift-log")]),
        .target(
            name: "VexStore",
            dependencies: ["CLinux", .product(name: "SystemPackage", package: "swift-system")]
        ),
        .target(
            name: "VexFUSE",
            dependencies: ["CFuse", "CLinux", "CMemory", "VexStore", "VexMemory", "VexSemantic",
                           .product(name: "CoreMetrics", package: "swift-metrics"),
                           .product(name: "Prometheus", package: "swift-prometheus"),
                           .product(name: "Logging", package: "swift-log"),
                           .product(name: "SystemPackage", package: "swift-system")]
        ),
        // What operators' tools expect of a daemon: systemd readiness, a Prometheus endpoint.
        .target(name: "VexOps", dependencies: [.product(name: "NIOCore", package: "swift-nio"),
                                              .product(name: "NIOPosix", package: "swift-nio"),
                                              .product(name: "NIOHTTP1", package: "swift-nio")]),
        .executableTarget(
            name: "vexfs",
            dependencies: [
                "VexFUSE", "VexStore", "VexKernels", "VexIndex", "VexSemantic", "VexEmbed", "VexMemory", "CMemory", "CLinux", "VexOps",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(name: "VexTestSupport", path: "Tests/VexTestSupport"),
        .testTarget(name: "VexKernelsTests", dependencies: ["VexKernels", "VexTestSupport"]),
        .testTarget(name: "VexIndexTests", dependencies: ["VexIndex", "VexKernels", "VexTestSupport"]),
        .testTarget(name: "VexSemanticTests", dependencies: ["VexSemantic", "VexStore", "VexIndex", "VexKernels", "VexTestSupport",
                                                         .product(name: "MetricsTestKit", package: "swift-metrics")]),
        .testTarget(name: "VexEmbedTests", dependencies: ["VexEmbed"]),
        .testTarget(name: "VexKeywordTests", dependencies: ["VexKeyword"]),
        .testTarget(name: "VexMemoryTests", dependencies: ["VexMemory", "VexTestSupport"]),
        .testTarget(name: "VexStoreTests", dependencies: ["VexStore"]),
        .testTarget(name: "VexFUSETests", dependencies: ["VexFUSE"]),
        .testTarget(name: "VexOpsTests", dependencies: ["VexOps"]),
    ]
)
