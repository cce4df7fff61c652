import CLinux
import Glibc

// What one user may see of the journal (PRODUCT.md §4): it names every user's files, so a caller
// other than root and the store's owner sees an event only if every path it names is one they may
// read now, by the mode bits, walking from the store's root by descriptors: every directory on the
// way searchable, the file (or directory) itself readable; for a path gone since (an unlink, the old
// name of a rename), its directory readable. A path is judged once per view.

extension SemanticLayer {
    /// The journal's lines that `requester` may see, oldest first.
    public func journal(visibleTo requester: Requester) -> [UInt8] {
        let all = journal.contents()
        guard !requester.seesEverything else { return all }
        var judged: [[UInt8]: Bool] = [:]
        func visible(_ escaped: [UInt8]) -> Bool {
            if let known = judged[escaped] { return known }
            let ok = String(validating: escaped, as: UTF8.self).flatMap(FileName.unescape).map { mayRead($0, requester) } ?? false
            judged[escaped] = ok
            return ok
        }
        var out: [UInt8] = []
        var start = all.startIndex
        while start < all.endIndex {
            let end = (all[start...].firstIndex(of: 0x0A) ?? all.endIndex - 1) + 1
            let line = all[start..<end]
            let paths = ["\"path\":", "\"to\":"].compactMap { JournalLine.string(after: $0, in: line) }
            if !paths.isEmpty && paths.allSatisfy(visible) { out.append(contentsOf: line) }
            start = end
        }
        return out
    }

    /// Whether `requester` may read `path` (relative to the store's root) now, or, when it is gone,
    /// list the directory it was in.
    func mayRead(_ path: [UInt8], _ requester: Requester) -> Bool {
        let parts = path.split(separator: 0x2F).map { FileName(Array($0)) }
        guard !parts.contains(where: { $0.bytes == [0x2E, 0x2E] }) else { return false }
        var dir = Glibc.dup(rootFD)
        guard dir >= 0 else { return false }
        defer { Glibc.close(dir) }
        var st = stat()
        guard fstat(dir, &st) == 0 else { return false }
        if parts.isEmpty { return requester.mayRead(st) }
        for (i, part) in parts.enumerated() {
            guard requester.maySearch(st) else { return false }
            let parent = st
            let next = part.withCString { openat(dir, $0, vx_O_PATH | O_NOFOLLOW | O_CLOEXEC) }
            if next < 0 {
                // Gone: what the directory it was in shows.
                return i == parts.count - 1 && errno == ENOENT && requester.mayRead(parent)
            }
            Glibc.close(dir)
            dir = next
            guard fstat(dir, &st) == 0 else { return false }
            if i < parts.count - 1 && st.st_mode & S_IFMT != S_IFDIR { return false }
        }
        return requester.mayRead(st)
    }
}

/// Reads back the journal's own JSON lines (written by `Journal.record`).
enum JournalLine {
    /// The bytes of the JSON string that follows `key` in `line`, its escapes undone.
    static func string(after key: String, in line: ArraySlice<UInt8>) -> [UInt8]? {
        let k = Array(key.utf8)
        guard let at = line.indices.first(where: { i in line[i...].starts(with: k) }) else { return nil }
        var i = at + k.count
        guard i < line.endIndex, line[i] == 0x22 else { return nil }
        i += 1
        var out: [UInt8] = []
        while i < line.endIndex {
            let b = line[i]
            if b == 0x22 { return out }
            if b == 0x5C {
                guard i + 1 < line.endIndex else { return nil }
                switch line[i + 1] {
                case 0x6E: out.append(0x0A)
                case 0x74: out.append(0x09)
                case 0x72: out.append(0x0D)
                case 0x75:
                    guard i + 5 < line.endIndex, let v = UInt32(String(decoding: line[(i + 2)...(i + 5)], as: UTF8.self), radix: 16),
                          let scalar = Unicode.Scalar(v) else { return nil }
                    out.append(contentsOf: Array(String(scalar).utf8))
                    i += 4
                default: out.append(line[i + 1])
                }
                i += 2
                continue
            }
            out.append(b)
            i += 1
        }
        return nil
    }
}
