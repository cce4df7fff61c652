import Glibc

/// Reads /proc/self/mountinfo: which filesystem is mounted where, and from what source.
enum MountTable {
    struct Entry {
        let mountpoint: String
        let type: String
        let source: String
    }

    static func entry(at mountpoint: String) -> Entry? {
        guard let file = fopen("/proc/self/mountinfo", "r") else { return nil }
        defer { fclose(file) }
        var line: UnsafeMutablePointer<CChar>?
        var capacity = 0
        defer { free(line) }
        var found: Entry?
        while getline(&line, &capacity, file) > 0 {
            let fields = String(cString: line!).split(separator: " ", omittingEmptySubsequences: true).map(String.init)
            guard fields.count > 4, let dash = fields.firstIndex(of: "-"), dash + 2 < fields.count else { continue }
            if unescape(fields[4]) == mountpoint {
                // The last mount at a path is the one visible there.
                found = Entry(mountpoint: mountpoint, type: fields[dash + 1], source: unescape(fields[dash + 2]))
            }
        }
        return found
    }

    /// The mount that holds `path` (absolute and resolved): the one with the longest mountpoint
    /// that is `path` or a parent of it.
    static func containing(_ path: String) -> Entry? {
        guard let file = fopen("/proc/self/mountinfo", "r") else { return nil }
        defer { fclose(file) }
        var line: UnsafeMutablePointer<CChar>?
        var capacity = 0
        defer { free(line) }
        var best: Entry?
        while getline(&line, &capacity, file) > 0 {
            let fields = String(cString: line!).split(separator: " ", omittingEmptySubsequences: true).map(String.init)
            guard fields.count > 4, let dash = fields.firstIndex(of: "-"), dash + 2 < fields.count else { continue }
            let point = unescape(fields[4])
            guard path == point || path.hasPrefix(point == "/" ? "/" : point + "/") else { continue }
            if best == nil || point.count >= best!.mountpoint.count {
                best = Entry(mountpoint: point, type: fields[dash + 1], source: unescape(fields[dash + 2]))
            }
        }
        return best
    }

    /// The kernel writes space, tab, newline and backslash as \ooo.
    static func unescape(_ field: String) -> String {
        var bytes: [UInt8] = []
        let raw = Array(field.utf8)
        var i = 0
        while i < raw.count {
            if raw[i] == UInt8(ascii: "\\"), i + 3 < raw.count,
               let value = UInt8(String(decoding: raw[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
                bytes.append(value)
                i += 4
            } else {
                bytes.append(raw[i])
                i += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
