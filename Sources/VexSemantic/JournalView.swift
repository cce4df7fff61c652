import CLinux
import Glibc
import VexStore

// What one user may see of the journal (PRODUCT.md §4): it names every user's files, so a caller
// other than root and the store's owner sees an event only if every path it names is one they may
// read now, by the mode bits, walking from the store's root by descriptors: every directory on the
// way searchable, the file (or directory) itself readable; for a path gone since (an unlink, the old
// name of a rename), its directory readable. A path is judged once per view.

extension SemanticLayer {
    /// The journal's lines that `requester` may see, oldest first.
    public func journal(visibleTo requester: Requester) -> [UInt8] {
        let all = journal.events()
        var judged: [FileName: Bool] = [:]
        func visible(_ path: FileName) -> Bool {
            if let known = judged[path] { return known }
            let ok = mayRead(path.bytes, requester)
            judged[path] = ok
            return ok
        }
        let shown = requester.seesEverything ? all : all.filter { $0.paths.allSatisfy(visible) }
        return Array(shown.map(\.line).joined().utf8)
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
