import CLinux
import Glibc
import Synchronization
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
        guard !requester.seesEverything else { return journal.contents() }
        let all = journal.events()
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
        return JournalEvent.lines(shown)
    }

    public func journalFile(visibleTo requester: Caller) throws(SemanticError) -> Int32 {
        let key = requester.seesEverything ? [] : [requester.uid, requester.gid] + requester.groups
        let now = QueryBudget.Deadline.now(), version = journal.recorded.load(ordering: .relaxed)
        if let shared = journalViews.withLock({ $0.shared(key, version: version, now: now) }) { return shared }
        // Rendering a view costs a filter of every event: it counts as one of the reader's questions.
        let bytes = try budget.run(for: requester) { _ throws(SemanticError) in journal(visibleTo: requester) }
        let fd = bytes.withUnsafeBytes { vx_memfd_with("vexfs-journal", $0.baseAddress, $0.count) }
        guard fd >= 0 else { throw .overloaded("the journal cannot be shown now: \(String(cString: strerror(errno)))") }
        let mine = dup(fd)
        journalViews.withLock { $0.keep(key, fd: fd, version: version, now: now) }
        guard mine >= 0 else { throw .overloaded("the journal cannot be shown now: \(String(cString: strerror(errno)))") }
        return mine
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

/// The journal views made lately, one per reader identity, each an in-memory file that every open
/// by that identity shares (a dup) while it is current: the journal unchanged since, or made less
/// than a second ago. Bounded: the oldest goes past `capacity`.
struct JournalViews {
    static let capacity = 64
    static let freshNanoseconds: Int64 = 1_000_000_000
    struct View {
        let fd: Int32
        let version: UInt64
        let made: Int64
    }
    var views: [[UInt32]: View] = [:]

    func shared(_ key: [UInt32], version: UInt64, now: Int64) -> Int32? {
        guard let v = views[key], v.version == version || now - v.made < JournalViews.freshNanoseconds else { return nil }
        let fd = dup(v.fd)
        return fd >= 0 ? fd : nil
    }

    mutating func keep(_ key: [UInt32], fd: Int32, version: UInt64, now: Int64) {
        if let old = views.updateValue(View(fd: fd, version: version, made: now), forKey: key) { close(old.fd) }
        if views.count > JournalViews.capacity, let oldest = views.min(by: { $0.value.made < $1.value.made }) {
            close(oldest.value.fd)
            views[oldest.key] = nil
        }
    }
}
