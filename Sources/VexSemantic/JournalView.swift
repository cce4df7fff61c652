import CLinux
import Glibc
import VexStore

// What one user may see of the journal (PRODUCT.md §4): it names every user's files, so a caller
// other than root and the store's owner sees an event only if every path it names is one they may
// read now, by the kernel's rules for them (mode bits and ACLs; the thread takes their identity, see
// `Caller.withAccess`), walking from the store's root by descriptors: every directory on the way
// searchable, the file (or directory) itself readable; for a path gone since (an unlink, the old
// name of a rename), its directory readable. A path is judged once per view.

extension SemanticLayer {
    /// The journal's lines that `requester` may see, oldest first.
    public func journal(visibleTo requester: Caller) -> [UInt8] {
        let all = journal.events()
        guard !requester.seesEverything else { return Array(all.map(\.line).joined().utf8) }
        var judged: [FileName: Bool] = [:]
        // Nothing is shown when the thread cannot take the asker's identity.
        let shown = (try? requester.withAccess(orElse: SemanticError.denied("")) { () throws(SemanticError) in
            all.filter { event in
                event.paths.allSatisfy { path in
                    if let known = judged[path] { return known }
                    let ok = mayRead(path)
                    judged[path] = ok
                    return ok
                }
            }
        }) ?? []
        return Array(shown.map(\.line).joined().utf8)
    }

    /// Whether this thread's identity may read `path` (relative to the store's root) now, or, when
    /// it is gone, list the directory it was in.
    func mayRead(_ path: FileName) -> Bool {
        let parts = path.bytes.split(separator: 0x2F, omittingEmptySubsequences: true).map { FileName(Array($0)) }
        guard !parts.contains(where: { $0.bytes == [0x2E, 0x2E] }) else { return false }
        guard let last = parts.last else { return StoreFiles.mayAccess(rootFD, ".", R_OK) }
        guard let parent = try? StoreFiles.walk(from: rootFD, FileName(Array(path.bytes.dropLast(last.bytes.count)))) else { return false }
        defer { Glibc.close(parent) }
        do {
            _ = try StoreFiles.stat(parent, last)
            return StoreFiles.mayAccess(parent, last, R_OK)
        } catch {
            // Gone: what the directory it was in shows.
            return error == .noSuchFileOrDirectory && StoreFiles.mayAccess(parent, ".", R_OK)
        }
    }
}
