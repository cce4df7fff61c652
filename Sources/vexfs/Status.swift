// `vexfs status MNT`: what a mount holds and does, in one screen, from what the mount itself says
// (each collection's attributes and `.vexfs/stats`).
import ArgumentParser
import Foundation
import Glibc
import VexStore

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Summarise a vexfs mount: collections, vectors, indexes, what is waiting, passthrough, embedder.")

    @Argument(help: "A vexfs mountpoint, or a directory in one (then only the tree below it).") var path: String
    @Flag(help: "JSON instead of text.") var json = false

    struct Report: Encodable {
        struct Collection: Encodable {
            let path: String, vectors: Int, dimension: Int?, metric: String, recall: String, index: String, status: String
            let waitingFiles: Int, vectorsToLink: Int
        }
        let mountpoint: String, store: String, pid: Int?
        let passthrough: String?
        let embedder: String
        let collections: [Collection]
        let vectors: Int
        let waitingFiles: Int, vectorsToLink: Int
        let queries: Int?
    }

    func run() throws {
        let (dir, mount) = try MountInspection.locate(path)
        let stats = StatsReading(mountRoot: mount.mountpoint)
        let reports = MountInspection.tree(dir, mountRoot: mount.mountpoint).map { MountInspection.inspect($0.absolute, as: $0.relative) }
        // Collections, and directories whose first files still wait for their vectors.
        let collections = reports.filter { $0.isCollection || !$0.isSettled }.map {
            Report.Collection(path: $0.path, vectors: $0.count, dimension: $0.dimension, metric: $0.metric, recall: $0.recall,
                              index: $0.index, status: $0.status, waitingFiles: $0.waitingFiles.count + $0.retryingFiles.count,
                              vectorsToLink: $0.vectorsToLink)
        }
        let passthrough = stats?.series.first { $0.name == "vexfs_fuse_passthrough" }.map { s in
            s.value == 1 ? "on" : "off (" + s.labels.replacingOccurrences(of: "{reason=\"", with: "").replacingOccurrences(of: "\"}", with: "") + ")"
        }
        let report = Report(
            mountpoint: mount.mountpoint, store: mount.source, pid: daemonPID(store: mount.source, mountpoint: mount.mountpoint), passthrough: passthrough,
            embedder: embedderHealth(mountRoot: mount.mountpoint, stats: stats, reports: reports),
            collections: collections, vectors: collections.reduce(0) { $0 + $1.vectors },
            waitingFiles: collections.reduce(0) { $0 + $1.waitingFiles }, vectorsToLink: collections.reduce(0) { $0 + $1.vectorsToLink },
            queries: stats?["vexfs_query_seconds_count"].map { Int($0) })

        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes, .prettyPrinted]
            print(String(decoding: try encoder.encode(report), as: UTF8.self))
            return
        }
        print("vexfs on \(report.mountpoint), store \(report.store)\(report.pid.map { ", daemon \($0)" } ?? "")")
        if let passthrough { print("passthrough: \(passthrough)") }
        print("embedder: \(report.embedder)")
        if let queries = report.queries { print("queries: \(queries)") }
        var waiting = [report.waitingFiles > 0 ? "\(report.waitingFiles) files to index" : nil,
                       report.vectorsToLink > 0 ? "\(report.vectorsToLink) vectors to link" : nil].compactMap { $0 }.joined(separator: ", ")
        if waiting.isEmpty { waiting = "nothing" }
        print("\(collections.filter { $0.dimension != nil }.count) collections, \(report.vectors) vectors; waiting: \(waiting)")
        guard !collections.isEmpty else { return }
        print("")
        let rows = [["COLLECTION", "VECTORS", "DIM", "METRIC", "RECALL", "WAITING", "INDEX"]] + collections.map { c in
            let w = [c.waitingFiles > 0 ? "\(c.waitingFiles) files" : nil, c.vectorsToLink > 0 ? "\(c.vectorsToLink) vectors" : nil]
                .compactMap { $0 }.joined(separator: ", ")
            return [c.path, String(c.vectors), c.dimension.map(String.init) ?? "-", c.metric, c.recall, w.isEmpty ? "-" : w, c.index]
        }
        let widths = (0..<6).map { i in rows.map { $0[i].count }.max() ?? 0 }
        for row in rows {
            print((0..<6).map { row[$0].padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  ") + "  " + row[6])
        }
    }

    /// The daemon's pid, as it wrote it in the store's lock file (readable by whoever may read the store),
    /// or in its mount id's on a shared store.
    private func daemonPID(store: String, mountpoint: String) -> Int? {
        let lock = MountLock.sharedPath(storePath: store, mountpoint: mountpoint) ?? store + "/.vexfs/mount.lock"
        guard let text = try? String(contentsOfFile: lock, encoding: .utf8) else { return nil }
        return text.split(whereSeparator: { $0 == " " || $0 == "\n" }).first.flatMap { Int($0) }
    }

    /// None, or how its requests went, and why texts wait when it is away.
    private func embedderHealth(mountRoot: String, stats: StatsReading?, reports: [DirectoryReport]) -> String {
        guard vexfsAttribute(mountRoot, "user.vexfs.embed") != nil else { return "none (mount with -o embedder=URL for text)" }
        var text = "configured"
        if let stats, let requests = stats["vexfs_embed_requests_total"] {
            text += "; \(Int(requests)) requests, \(Int(stats["vexfs_embed_failures_total"] ?? 0)) failed, \(Int(stats["vexfs_embed_retries_total"] ?? 0)) retries"
        }
        if let retrying = reports.lazy.flatMap(\.retryingFiles).first {
            let why = retrying.status.replacingOccurrences(of: "not indexed: ", with: "").replacingOccurrences(of: "embedder unreachable: ", with: "")
            text += "; unreachable: \(why)"
        }
        return text
    }
}
