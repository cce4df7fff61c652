import CLinux
import Glibc
import SystemPackage
import VexSemantic
import VexStore

// The requests that concern the vector layer, as plain functions of what the request carried: each
// does the store's part, tells the vector layer (`FileEvents`) or asks it (`ComputedAttributes`), and
// returns what the answer needs or throws the `Errno` to answer. They know nothing of libfuse, so the
// handlers (Handlers.swift) only unpack, call one of these, and reply once; and tests drive them with
// a store in a temporary directory and a fake vector layer (Tests/VexFUSETests/HandlersTests.swift).
//
// Every event is sent after the store's change and before the answer: a query made once the system
// call has returned then waits for it. Which extended attributes go where: `user.vexfs.vector` is
// stored like any attribute (but only a vector the index can take); the rest of `user.vexfs.*` is the
// vector layer's (computed answers, a collection's settings, a query file's options); everything
// else is the store's.

extension Filesystem {
    // MARK: names

    /// link(2): a new name for `inode` in `dir`. Every name of a vector file is a vector.
    func link(_ inode: Inode, in dir: Inode, _ name: UnsafePointer<CChar>) throws(Errno) -> Entry {
        let entry = try store.link(inode, dir, name)
        if let semantic { withDirectory(dir) { semantic.linked($0, FileName(cString: name)) } }
        return entry
    }

    /// unlink(2).
    func unlink(_ dir: Inode, _ name: UnsafePointer<CChar>) throws(Errno) {
        try store.unlink(dir, name)
        if let semantic { withDirectory(dir) { semantic.removed($0, FileName(cString: name)) } }
    }

    /// rmdir(2). The directory's index goes before the answer, so nothing of it outlives the call.
    func rmdir(_ dir: Inode, _ name: UnsafePointer<CChar>) throws(Errno) {
        let removed = semantic == nil ? nil : store.child(dir, name)
        try store.rmdir(dir, name)
        if let semantic, let removed {
            semantic.directoryRemoved(key: removed.key.number, path: shownPath(dir).child(FileName(cString: name)))
        }
    }

    /// rename(2) and renameat2(2) with `flags` (RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT).
    func rename(_ from: Inode, _ name: UnsafePointer<CChar>, to: Inode, _ newName: UnsafePointer<CChar>, flags: UInt32,
                caller: Caller? = nil) throws(Errno) {
        guard let semantic, let moving = store.child(from, name) else {
            try store.rename(from, name, to, newName, flags: flags, caller: caller)
            return
        }
        let oldName = FileName(cString: name), newNameBytes = FileName(cString: newName)
        let exchange = flags & vx_RENAME_EXCHANGE != 0
        // Collections hold their directories by descriptor; a moved directory changes only their
        // names for messages, taken before the move changes them.
        let moved = moving.isDirectory ? (shownPath(from).child(oldName), shownPath(to).child(newNameBytes)) : nil
        try store.rename(from, name, to, newName, flags: flags, caller: caller)
        if let (old, new) = moved {
            semantic.directoryMoved(from: old, to: new, exchange: exchange)
        } else {
            withDirectory(from) { fromRef in
                withDirectory(to) { toRef in semantic.renamed(from: fromRef, oldName, to: toRef, newNameBytes, exchange: exchange) }
            }
        }
    }

    // MARK: files

    /// create(2), after the store made and opened the file (under the caller's umask). It is marked
    /// written before the answer: the FLUSH of the caller's close(2) may run on another thread as
    /// soon as the answer is out, and must find it so (an empty new file is news too).
    func created(_ dir: Inode, _ name: UnsafePointer<CChar>, _ file: OpenFile) {
        guard let semantic else { return }
        withDirectory(dir) { semantic.created($0, FileName(cString: name)) }
        file.wasWritten.store(true, ordering: .relaxed)
    }

    /// setattr: chmod, chown, truncate, utimens. `file` is the handle the request came with (ftruncate,
    /// futimens); `dropPrivileges` is set when a truncation must drop set-id bits and capabilities
    /// (FUSE_HANDLE_KILLPRIV_V2 and a caller other than root).
    func setAttributes(_ inode: Inode, _ change: Store.AttributeChange, file: OpenFile?, dropPrivileges: Bool,
                       writerInGroup: (gid_t) -> Bool = { _ in true }) throws(Errno) -> stat {
        if change.size != nil && dropPrivileges { try store.dropPrivileges(inode, openFile: file?.fd, writerInGroup: writerInGroup) }
        let attributes = try store.setAttributes(inode, change, openFile: file)
        // Truncation changes what a vector file holds (to nothing: it leaves the index). Through
        // an open handle the change is indexed at its close, like a write.
        if change.size != nil, !inode.isDirectory, let semantic {
            if let file { file.wasWritten.store(true, ordering: .relaxed) } else {
                withFile(inode) { semantic.written($0.dir, $0.name, inode: inode.key.number) }
            }
        }
        // Who may read a file decides whether answers name it: cached answers go with the old modes.
        if change.mode != nil || change.uid != nil || change.gid != nil, inode.fileType == S_IFREG, let semantic {
            withFile(inode) { semantic.attributeChanged($0, name: nil) }
        }
        return attributes
    }

    /// Hands a changed file to the index, at flush and release. The daemon knows of writes it made
    /// (`wasWritten`); the others (the kernel's, under passthrough, and a shared mapping's) show in
    /// the file's size and times. Returns true when the change is one the kernel saw only the start
    /// of (a page written through a mapping, with `passthrough` negotiated): its cached attributes
    /// of the file are then stale.
    func noticeChanges(_ file: OpenFile, passthrough: Bool) -> Bool {
        guard let inode = file.inode else { return false }
        let written = file.wasWritten.exchange(false, ordering: .relaxed)
        let changed = file.changedSinceLastCheck()
        guard written || changed else { return false }
        // Posted before the answer: close(2) returns only after it, so a query that follows the
        // close finds the change queued (and settles it first).
        if let semantic {
            withFile(inode) { semantic.written($0.dir, $0.name, inode: inode.key.number) }
        }
        return changed && !written && passthrough
    }

    // MARK: extended attributes

    /// getxattr(2) of `name` on `inode`, for a buffer of `size` bytes (0: a size probe). A stored
    /// value is read into `buffer` (given when `size` > 0 and `name` is not computed); a computed one
    /// is returned. ERANGE when the value is longer than `size`; ENODATA for a computed name with no
    /// value, or on a node that is neither a directory nor a regular file, or with no vector layer;
    /// EOPNOTSUPP for an SELinux label the file does not have.
    func attribute(_ inode: Inode, _ name: UnsafePointer<CChar>, size: Int, into buffer: UnsafeMutableRawBufferPointer?,
                   requester: () -> Caller) throws(Errno) -> AttributeAnswer {
        if SemanticAttributeNames.isComputed(name) {
            return try AttributeAnswer.fitting(computedAttribute(inode, String(cString: name), requester: requester), size: size)
        }
        let isCapability = strcmp(name, securityCapability) == 0
        // Asked before every write by kernels that cannot spare it; known absent for files made here.
        if isCapability && inode.knownWithoutCapability.load(ordering: .relaxed) { throw .noData }
        do throws(Errno) {
            if size == 0 { return .size(try store.getxattr(inode, name, into: nil)) }
            return .stored(try store.getxattr(inode, name, into: buffer))
        } catch {
            if isCapability && error == .noData { inode.knownWithoutCapability.store(true, ordering: .relaxed) }
            // No SELinux label: "not supported" rather than "none". ls -l asks every file for its
            // label and, told "not supported", takes that as true of the whole mount and stops asking:
            // a warm ls -lR cost one round trip per file for it. The request reaches vexfs only when no
            // security module answers for that name in the kernel (SELinux would), and a label a file
            // does have is still read and set as before.
            if error == .noData && strcmp(name, selinuxLabel) == 0 { throw Errno(rawValue: EOPNOTSUPP) }
            throw error
        }
    }

    /// A computed attribute of a directory (its collection) or a regular file (read through its own
    /// descriptor, as `requester` may see it).
    private func computedAttribute(_ inode: Inode, _ attribute: String, requester: () -> Caller) throws(Errno) -> [UInt8] {
        guard let semantic else { throw .noData }
        let answer: Result<[UInt8], SemanticError>?
        if inode.isDirectory {
            answer = withDirectory(inode) { dir in
                Result { () throws(SemanticError) in try semantic.directoryAttribute(attribute, dir: dir, requester: requester()) }
            }
        } else {
            guard inode.fileType == S_IFREG else { throw .noData }
            let who = requester()
            answer = withFile(inode) { file in
                Result { () throws(SemanticError) in try semantic.fileAttribute(attribute, file: file, requester: who) }
            }
        }
        guard let answer else { throw .noData }
        return try answer.mapError { Errno($0) }.get()
    }

    /// setxattr(2). Ours: a collection's settings and a query file's options (anything else of ours
    /// is computed: EINVAL). `user.vexfs.vector` must hold a vector the index can take (EINVAL, and
    /// never on a directory). Everything else is stored, and the vector layer told of it for a
    /// regular file (filters read attributes). When the kernel enforces ACLs (`posixACL`), setting an
    /// access ACL drops set-group-ID unless `requester` is in the file's group or root.
    func setAttribute(_ inode: Inode, _ name: UnsafePointer<CChar>, _ value: UnsafeRawBufferPointer, flags: Int32,
                      posixACL: Bool = false, requester: () -> Caller = { .root }) throws(Errno) {
        if SemanticAttributeNames.isComputed(name) {
            guard let semantic else { throw .invalidArgument }
            let bytes = Array(value)
            let attribute = String(cString: name)
            let done = inode.isDirectory
                ? withDirectory(inode) { dir in
                    Result { () throws(SemanticError) in try semantic.setDirectoryAttribute(attribute, dir: dir, value: bytes, requester: requester()) }
                }
                : inode.fileType == S_IFREG ? withFile(inode) { file in
                    Result { () throws(SemanticError) in try semantic.setFileAttribute(attribute, file: file, value: bytes) }
                } : nil
            guard let done else { throw .invalidArgument }
            try done.mapError { Errno($0) }.get()
            return
        }
        if strcmp(name, SemanticAttributeNames.vector) == 0 {
            // A vector that cannot be indexed is refused, so the attribute never holds one.
            guard !inode.isDirectory, SemanticAttributeNames.isIndexableVector(value) else { throw .invalidArgument }
        }
        if strcmp(name, securityCapability) == 0 { inode.knownWithoutCapability.store(false, ordering: .relaxed) }
        try store.setxattr(inode, name, value, flags: flags)
        if posixACL && strcmp(name, Store.accessACLName) == 0 { try store.dropSetGroupIDAfterACL(inode, setBy: requester()) }
        if let semantic, inode.fileType == S_IFREG { withFile(inode) { semantic.attributeChanged($0, name: name) } }
    }

    /// removexattr(2). Of ours only a query file's options are stored, and so removable (ENODATA
    /// for the rest, and on anything but a regular file).
    func removeAttribute(_ inode: Inode, _ name: UnsafePointer<CChar>) throws(Errno) {
        if SemanticAttributeNames.isComputed(name) {
            guard !inode.isDirectory, inode.fileType == S_IFREG, let semantic else { throw .noData }
            let attribute = String(cString: name)
            let done = withFile(inode) { file in
                Result { () throws(SemanticError) in try semantic.removeFileAttribute(attribute, file: file) }
            }
            guard let done else { throw .noData }
            try done.mapError { Errno($0) }.get()
            return
        }
        try store.removexattr(inode, name)
        if let semantic, inode.fileType == S_IFREG { withFile(inode) { semantic.attributeChanged($0, name: name) } }
    }
}

/// The name the kernel asks for before writes when it cannot leave dropping privileges to us.
let securityCapability = "security.capability"
/// The SELinux label, which ls -l asks of every file it lists.
let selinuxLabel = "security.selinux"

/// What getxattr(2) answers.
enum AttributeAnswer: Equatable {
    /// The value's length, for a size probe (a buffer of 0 bytes).
    case size(Int)
    /// A computed value, no longer than the buffer.
    case computed([UInt8])
    /// A stored value of this many bytes, read into the buffer given.
    case stored(Int)

    /// A computed value as getxattr(2) answers it for a buffer of `size` bytes: its length for a
    /// size probe, ERANGE when it does not fit, else the value.
    static func fitting(_ value: [UInt8], size: Int) throws(Errno) -> AttributeAnswer {
        if size == 0 { return .size(value.count) }
        guard value.count <= size else { throw .outOfRange }
        return .computed(value)
    }
}

extension Errno {
    /// The errno a refusal of the vector layer is answered with.
    init(_ error: SemanticError) { self.init(rawValue: error.errno) }
}

/// Compacts a listxattr(2) list (NUL-terminated names, `length` bytes in all) in place to the names
/// listed to users, and returns the length kept: the settings vexfs keeps on directories are left
/// out, or cp -a and rsync -X would copy them as if they were the user's.
func listedAttributes(_ names: UnsafeMutablePointer<CChar>, length: Int) -> Int {
    var kept = 0, at = 0
    while at < length {
        let nameLength = strlen(names + at) + 1
        if !SemanticAttributeNames.hidesFromListing(names + at) {
            if kept != at { memmove(names + kept, names + at, nameLength) }
            kept += nameLength
        }
        at += nameLength
    }
    return kept
}
