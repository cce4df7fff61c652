// What `vexfs status` and `vexfs wait` learn of a mount, asked through the mount as any program
// would: the computed attributes of each directory and file (README "Vectors in one screen") and
// `.vexfs/stats`. Nothing here reads the store behind the daemon's back.
import CLinux
import Foundation
import Glibc

/// One of our attributes of `path`, as text; nil when it has none (ENODATA) or cannot be read.
func vexfsAttribute(_ path: String, _ name: String) -> String? {
    var buffer = [UInt8](repeating: 0, count: 65_536)
    let n = buffer.withUnsafeMutableBytes { vx_lgetxattr(path, name, $0.baseAddress, $0.count) }
    return n >= 0 ? String(decoding: buffer[0..<n], as: UTF8.self) : nil
}

/// What one directory of a mount says of itself and of the files in it.
struct DirectoryReport {
    /// Relative to the inspected path ("." for itself).
    let path: String
    /// Nil when the directory is not a collection (no dimension yet).
    let dimension: Int?
    let count: Int
    let metric: String
    let index: String
    let recall: String
    let status: String
    /// Vectors the graph has not linked yet ("N vectors waiting to be linked" in `user.vexfs.index`).
    let vectorsToLink: Int
    /// Files whose vectors are still to come: being read, or waiting for the embedder.
    let waitingFiles: [(name: String, status: String)]
    /// Files the embedder could not take yet and is retrying: they wait too, and say why.
    let retryingFiles: [(name: String, status: String)]

    var isCollection: Bool { dimension != nil }
    var isSettled: Bool { vectorsToLink == 0 && waitingFiles.isEmpty && retryingFiles.isEmpty }
}

enum MountInspection {
    /// Reads `dir` (absolute) and what its files say. Its `user.vexfs.index` is read first: that
    /// applies the directory's pending changes, so the files' statuses are current after it.
    static func inspect(_ dir: String, as relative: String, filesToo: Bool = true) -> DirectoryReport {
        let index = vexfsAttribute(dir, "user.vexfs.index") ?? ""
        var waiting: [(String, String)] = [], retrying: [(String, String)] = []
        if filesToo {
            for name in entries(dir).files where !name.hasSuffix(".query") {
                guard let status = vexfsAttribute(dir + "/" + name, "user.vexfs.status") else { continue }
                if status.hasPrefix("not indexed yet") { waiting.append((name, status)) }
                else if status.hasPrefix("not indexed:"), status.hasSuffix("(retrying)") { retrying.append((name, status)) }
            }
        }
        return DirectoryReport(
            path: relative, dimension: vexfsAttribute(dir, "user.vexfs.dim").flatMap { Int($0) },
            count: vexfsAttribute(dir, "user.vexfs.count").flatMap { Int($0) } ?? 0,
            metric: vexfsAttribute(dir, "user.vexfs.metric") ?? "", index: index,
            recall: vexfsAttribute(dir, "user.vexfs.recall") ?? "", status: vexfsAttribute(dir, "user.vexfs.status") ?? "",
            vectorsToLink: vectorsToLink(index), waitingFiles: waiting, retryingFiles: retrying)
    }

    /// `dir` and every directory below it, parents first, names relative to `dir`. The mount's own
    /// `.vexfs/` is left out; directories that cannot be read are skipped.
    static func tree(_ dir: String, mountRoot: String) -> [(absolute: String, relative: String)] {
        var found: [(String, String)] = []
        var pending = [(dir, ".")]
        while let (absolute, relative) = pending.popLast() {
            found.append((absolute, relative))
            for sub in entries(absolute).directories.sorted().reversed() {
                if absolute == mountRoot && sub == ".vexfs" { continue }
                pending.append((absolute + "/" + sub, relative == "." ? sub : relative + "/" + sub))
            }
        }
        return found
    }

    /// The names in `dir`: regular files (and anything not a directory) and directories.
    static func entries(_ dir: String) -> (files: [String], directories: [String]) {
        guard let d = opendir(dir) else { return ([], []) }
        defer { closedir(d) }
        var files: [String] = [], directories: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name == "." || name == ".." { continue }
            var type = e.pointee.d_type
            if type == UInt8(DT_UNKNOWN) {
                var st = stat()
                if lstat(dir + "/" + name, &st) == 0 && st.st_mode & S_IFMT == S_IFDIR { type = UInt8(DT_DIR) }
            }
            if type == UInt8(DT_DIR) { directories.append(name) } else if type == UInt8(DT_REG) || type == UInt8(DT_UNKNOWN) { files.append(name) }
        }
        return (files, directories)
    }

    /// N of "...; N vectors waiting to be linked" in an index summary.
    static func vectorsToLink(_ index: String) -> Int {
        guard let range = index.range(of: " vectors waiting to be linked") else { return 0 }
        let digits = index[..<range.lowerBound].reversed().prefix { $0.isNumber }
        return Int(String(digits.reversed())) ?? 0
    }

    /// The absolute, resolved directory `path` and the vexfs mount holding it.
    static func locate(_ path: String) throws -> (dir: String, mount: MountTable.Entry) {
        guard let resolved = realpath(path, nil) else { throw UserError("\(path) does not exist") }
        let dir = String(cString: resolved)
        free(resolved)
        var st = stat()
        guard stat(dir, &st) == 0, st.st_mode & S_IFMT == S_IFDIR else { throw UserError("\(dir) is not a directory") }
        guard let mount = MountTable.containing(dir), mount.type == "fuse.vexfs" else { throw UserError("\(dir) is not inside a vexfs mount") }
        return (dir, mount)
    }
}

/// `.vexfs/stats`, read as Prometheus text: each series' value, summed per family name.
struct StatsReading {
    private(set) var totals: [String: Double] = [:]
    private(set) var series: [(name: String, labels: String, value: Double)] = []

    init?(mountRoot: String) {
        guard let f = fopen(mountRoot + "/.vexfs/stats", "r") else { return nil }
        defer { fclose(f) }
        var line: UnsafeMutablePointer<CChar>?
        var capacity = 0
        defer { free(line) }
        while getline(&line, &capacity, f) > 0 {
            let text = String(cString: line!)
            guard !text.hasPrefix("#"), let space = text.lastIndex(of: " "),
                  let value = Double(text[text.index(after: space)...].trimmingCharacters(in: .whitespacesAndNewlines)) else { continue }
            let key = text[..<space]
            let name = String(key.prefix { $0 != "{" })
            let labels = String(key.dropFirst(name.count))
            totals[name, default: 0] += value
            series.append((name, labels, value))
        }
    }

    subscript(name: String) -> Double? { totals[name] }
}
