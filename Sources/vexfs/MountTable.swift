import Glibc

/// Reads /proc/self/mountinfo: which filesystem is mounted where, and from what source.
enum MountTable {
    struct Entry {
        let mountpoint: String
        let type: String
        let source: String
        /// The filesystem's device, "major:minor": the same for every mount of one superblock (a bind
        /// mount, a second mount of a served store).
        let device: String
    }

    /// Every mount, in the order of /proc/self/mountinfo (later mounts over earlier ones).
    static func all() -> [Entry] {
        guard let file = fopen("/proc/self/mountinfo", "r") else { return [] }
        defer { fclose(file) }
        var line: UnsafeMutablePointer<CChar>?
        var capacity = 0
        defer { free(line) }
        var found: [Entry] = []
        while getline(&line, &capacity, file) > 0 {
            let fields = String(cString: line!).split(separator: " ", omittingEmptySubsequences: true).map(String.init)
            guard fields.count > 4, let dash = fields.firstIndex(of: "-"), dash + 2 < fields.count else { continue }
            found.append(Entry(mountpoint: unescape(fields[4]), type: fields[dash + 1], source: unescape(fields[dash + 2]), device: fields[2]))
        }
        return found
    }

    /// The mount visible at `mountpoint` (the last one made there).
    static func entry(at mountpoint: String) -> Entry? { all().last { $0.mountpoint == mountpoint } }

    /// The mount that holds `path` (absolute and resolved): the deepest mountpoint that is `path` or
    /// a parent of it, the last made there.
    static func containing(_ path: String) -> Entry? {
        let holding = all().filter { path == $0.mountpoint || path.hasPrefix($0.mountpoint == "/" ? "/" : $0.mountpoint + "/") }
        return holding.last { $0.mountpoint.count == holding.map(\.mountpoint.count).max() }
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
