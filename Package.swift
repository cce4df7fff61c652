// swift-tools-version: 6.0
import PackageDescription

// Layers point one way: vexfs (CLI) -> VexFUSE -> VexStore; CFuse is the C side of the FUSE bridge.
let package = Package(
    name: "vexfs",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "vexfs", targets: ["vexfs"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
    ],
    targets: [
        .target(
            name: "CFuse",
            path: "CShims/CFuse",
            cSettings: [.unsafeFlags(["-O2"])],
            linkerSettings: [.linkedLibrary("fuse3"), .linkedLibrary("pthread")]
        ),
        .target(name: "CLinux", path: "CShims/CLinux"),
        .target(
            name: "VexStore",
            dependencies: ["CLinux", .product(name: "SystemPackage", package: "swift-system")]
        ),
        .target(
            name: "VexFUSE",
            dependencies: ["CFuse", "VexStore", .product(name: "SystemPackage", package: "swift-system")]
        ),
        .executableTarget(
            name: "vexfs",
            dependencies: [
                "VexFUSE", "VexStore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        .testTarget(name: "VexStoreTests", dependencies: ["VexStore"]),
        .testTarget(name: "VexFUSETests", dependencies: ["VexFUSE"]),
    ]
)
