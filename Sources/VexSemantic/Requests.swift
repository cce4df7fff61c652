import Glibc
import VexStore

/// A collection's directory as the filesystem layer sees it now: its inode number (the key, stable
/// across renames), its path from the store's root (for the journal and messages only: nothing is
/// ever opened by it) and a descriptor of it, valid for the duration of the call.
public struct DirectoryRef: Sendable {
    public let key: UInt64
    /// Relative to the store's root; empty for the root.
    public let path: FileName
    /// An O_PATH (or any) descriptor of the directory, owned by the caller.
    public let fd: Int32
    public init(key: UInt64, path: FileName, fd: Int32) {
        self.key = key
        self.path = path
        self.fd = fd
    }
    /// The path of `name` in this directory, relative to the store's root.
    public func child(_ name: FileName) -> FileName { path.child(name) }
}

/// A file a request is about: where it is and a descriptor of the file itself (O_PATH, owned by the
/// caller, valid for the call). Its contents are read through `fd`, so the answer is about the file
/// the caller holds, even if its name now points elsewhere.
public struct FileRef: Sendable {
    public let dir: DirectoryRef
    public let name: FileName
    public let fd: Int32
    public init(dir: DirectoryRef, name: FileName, fd: Int32) {
        self.dir = dir
        self.name = name
        self.fd = fd
    }
}

/// A refused request, with the errno the caller answers.
public enum SemanticError: Error, Equatable, CustomStringConvertible {
    case noData
    case invalid(String)
    case busy(String)
    case range
    /// The answer is longer than one attribute value can be (read it by pages).
    case tooBig
    /// A question in words, and the embedder cannot turn it into a vector now.
    case embedder(String)
    /// The asker may not see what the answer would name (EACCES).
    case denied(String)
    /// The asker has as many questions running as they may (EBUSY).
    case overloaded(String)
    /// The question ran out of its time (ETIMEDOUT).
    case timedOut(String)
    /// The asker gave up on it: a signal interrupted their system call (EINTR).
    case interrupted
    /// A per-user bound is reached (EDQUOT).
    case quota(String)

    public var errno: Int32 {
        switch self {
        case .noData: ENODATA
        case .invalid: EINVAL
        case .busy: ENOTEMPTY
        case .range: ERANGE
        case .tooBig: E2BIG
        case .embedder: EHOSTDOWN
        case .denied: EACCES
        case .overloaded: EBUSY
        case .timedOut: ETIMEDOUT
        case .interrupted: EINTR
        case .quota: EDQUOT
        }
    }

    public var description: String {
        switch self {
        case .noData: "no such attribute"
        case .invalid(let s), .busy(let s), .embedder(let s), .denied(let s), .overloaded(let s), .timedOut(let s), .quota(let s): s
        case .range: "the buffer is too small"
        case .interrupted: "the asker gave up (interrupted)"
        case .tooBig: "the answer is longer than 64 KiB: read it by pages (knn.K.from.LINE)"
        }
    }
}
