import CLinux
import Glibc
import VexStore

// What the filesystem layer (VexFUSE) needs of the vector layer, split by seam: the events it sends
// in (`FileEvents`), the attributes it asks out (`ComputedAttributes`), what `.vexfs/` shows
// (`StateReports`), and the whole service a mount holds (`SemanticService`). VexFUSE holds these
// protocols, never `SemanticLayer` itself, so its handlers can be tested with a fake and the layer
// behind them can change shape.
//
// Every call is made on a FUSE worker thread, in parallel with others, while the request that caused
// it waits; the descriptors in a `DirectoryRef` or `FileRef` are the caller's, valid for the call only.
// None of these calls may reach the store through the mount (the daemon would wait on itself).

/// Changes to the store, told to the vector layer after the store made them and before the kernel
/// hears the answer: a query made after the system call returns is then sure to see them.
/// None of these fail: what cannot be indexed shows in the file's `user.vexfs.status` and the log.
public protocol FileEvents: AnyObject, Sendable {
    /// A new, empty file `name` in `dir` (create(2) or open with O_CREAT). Its contents come with
    /// `written`, at its close.
    func created(_ dir: DirectoryRef, _ name: FileName)
    /// The file `name` in `dir` was written and closed, or truncated (`inode` is its inode number):
    /// what it holds now is indexed under every name it has (hard links). Sent at most once per
    /// close (flush and release may both see the change; the second finds nothing new).
    func written(_ dir: DirectoryRef, _ name: FileName, inode: UInt64)
    /// A new name `name` in `dir` for an existing file (link(2)).
    func linked(_ dir: DirectoryRef, _ name: FileName)
    /// The name `name` in `dir` is gone (unlink(2)); the file may live on under other names.
    func removed(_ dir: DirectoryRef, _ name: FileName)
    /// A file (not a directory) moved; with `exchange` (RENAME_EXCHANGE) both names still exist
    /// and swapped their files.
    func renamed(from: DirectoryRef, _ fromName: FileName, to: DirectoryRef, _ toName: FileName, exchange: Bool)
    /// A directory moved from `old` to `new` (paths from the store's root, taken before the move);
    /// with `exchange`, the directory at `new` moved to `old` at the same time.
    func directoryMoved(from old: FileName, to new: FileName, exchange: Bool)
    /// The directory whose inode number is `key`, at `path`, was removed (rmdir(2) succeeded, so it
    /// was empty): its collection and index go.
    func directoryRemoved(key: UInt64, path: FileName)
    /// The stored attribute `name` of a regular file was set or removed; nil: its mode or owner
    /// changed (which decides who may see it in answers). `user.vexfs.vector` re-indexes the file.
    func attributeChanged(_ file: FileRef, name: UnsafePointer<CChar>?)
}

/// The `user.vexfs.*` attributes the vector layer answers and keeps (all but `user.vexfs.vector`,
/// which is stored on the file like any attribute: see `SemanticAttributeNames`). Values are bytes,
/// with no terminating NUL. Errors are `SemanticError`s; the caller answers `error.errno`.
public protocol ComputedAttributes: AnyObject, Sendable {
    /// The value of `attribute` of the regular file `file`, as `requester` may see it (answers name
    /// only files the requester may read, by the kernel's rules for them, checked when they ask).
    /// Throws `.noData` (ENODATA) for a name with no value here, `.invalid` (EINVAL) for a malformed
    /// query, `.tooBig` (E2BIG) for an answer over 64 KiB (read it by pages), `.embedder`
    /// (EHOSTDOWN) when a question in words cannot be embedded now, `.denied` (EACCES) when the
    /// requester may not list the directory whose names the answer would give.
    /// getxattr(2) asks twice, for the size (a buffer of 0) and then the value: both calls come
    /// here, and the second is served from a cache when nothing changed. Fitting the value to the
    /// caller's buffer (ERANGE) is the caller's.
    func fileAttribute(_ attribute: String, file: FileRef, requester: Caller) throws(SemanticError) -> [UInt8]
    /// The value of `attribute` of the directory `dir` (its collection: dim, metric, count, status,
    /// index, embed, recall). Throws `.noData` (ENODATA) for a name with no value.
    func directoryAttribute(_ attribute: String, dir: DirectoryRef, requester: Caller) throws(SemanticError) -> [UInt8]
    /// Sets a collection's setting (`user.vexfs.dim`, `.metric`, `.recall`, `.embed`) for
    /// `requester`. Throws `.invalid` (EINVAL) for another name or a bad value, `.busy` (ENOTEMPTY)
    /// for a change its vectors forbid (a new dimension while it holds vectors of another),
    /// `.denied` (EACCES) for `.embed` set by anyone but the directory's owner or root (it chooses
    /// whose files are sent to the embedder), `.quota` (EDQUOT) past the owner's collections.
    func setDirectoryAttribute(_ attribute: String, dir: DirectoryRef, value: [UInt8], requester: Caller) throws(SemanticError)
    /// Sets a query option on a query file (NAME.query). Throws `.invalid` (EINVAL) for another name,
    /// a file that is not a query, or a bad value (which is then never stored).
    func setFileAttribute(_ attribute: String, file: FileRef, value: [UInt8]) throws(SemanticError)
    /// Removes a query option from a query file. Throws `.noData` (ENODATA) when there is none, or
    /// for any other name of ours (they are computed, not stored).
    func removeFileAttribute(_ attribute: String, file: FileRef) throws(SemanticError)
}

/// What `.vexfs/` shows of the vector layer.
public protocol StateReports: AnyObject, Sendable {
    /// The journal's lines (JSON, one event a line, oldest first) that `requester` may see: all of
    /// them for `Caller.root`, else only events on paths the requester may read now.
    func journal(visibleTo requester: Caller) -> [UInt8]
    /// The same, as a descriptor of a read-only in-memory file to read with pread (the caller
    /// closes it): readers with the same identity share one file while the journal is unchanged,
    /// and for a second whatever it records, so a flood of opens costs one view, not one each.
    /// Throws EBUSY while `requester` has as many questions running as they may.
    func journalFile(visibleTo requester: Caller) throws(SemanticError) -> Int32
    /// Sets the layer's gauges (collections, vectors, queue depth, journal size) from its state now,
    /// without waiting for pending work; called just before the metrics are rendered.
    func refreshGauges()
}

extension StateReports {
    /// Unshared: a file of its own per open (for wrappers and fakes).
    public func journalFile(visibleTo requester: Caller) throws(SemanticError) -> Int32 {
        let bytes = journal(visibleTo: requester)
        let fd = bytes.withUnsafeBytes { vx_memfd_with("vexfs-journal", $0.baseAddress, $0.count) }
        guard fd >= 0 else { throw .overloaded("the journal cannot be shown now: \(String(cString: strerror(errno)))") }
        return fd
    }
}

/// The vector layer as a mount holds it: made once before the request loop starts, closed once
/// after the kernel has stopped sending requests.
public protocol SemanticService: FileEvents, ComputedAttributes, StateReports {
    /// The mount is going away (a stop signal): long index work gives up between slices, so the
    /// requests still in flight, which may wait for it, are answered soon. Requests keep working.
    func beginStopping()
    /// Applies what is pending, persists every index and the journal. No call may follow.
    func close()
}

/// Which extended attribute names belong to the vector layer, and what it accepts in the one it
/// reads from the store. Static: the routing holds with or without a vector layer.
public enum SemanticAttributeNames {
    /// `user.vexfs.vector`: a real attribute, stored on the file like `user.*`, whose value (a
    /// vector in text) makes a file of any name a vector file. Listed and copied like any other.
    public static let vector = SemanticLayer.vectorAttribute

    /// Whether `name` is answered (or kept) by the vector layer rather than the store: all of
    /// `user.vexfs.*` but `vector`.
    public static func isComputed(_ name: UnsafePointer<CChar>) -> Bool { SemanticLayer.owns(name) }

    /// Whether a stored attribute `name` is left out of listxattr(2): the settings vexfs keeps on
    /// directories, which cp -a and rsync -X would otherwise copy as if they were the user's.
    public static func hidesFromListing(_ name: UnsafePointer<CChar>) -> Bool { SemanticLayer.hidesFromListing(name) }

    /// Whether `value` may be stored as `user.vexfs.vector`: a vector the index can take, in text
    /// (numbers separated by blanks or commas, optionally in brackets). A value that is not is refused, so the attribute
    /// never holds one.
    public static func isIndexableVector(_ value: UnsafeRawBufferPointer) -> Bool {
        if case .success = VectorParser.parse(value, as: .text) { return true }
        return false
    }
}

extension SemanticLayer: SemanticService {
    // Every requirement is met by the layer's own members, with the same names and signatures.
}
