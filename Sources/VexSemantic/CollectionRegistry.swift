import Glibc
import VexStore
import Synchronization

/// The mount's collections by directory inode number (stable across renames), and the table of
/// every name each indexed file has in them (a write through one hard link refreshes all). Both
/// tables are leaves in the lock order: nothing is called while either is held.
final class CollectionRegistry: Sendable {
    /// Collections at most (each holds a descriptor of its directory; users make directories at will).
    static let maxCollections = 10_000

    struct Link: Hashable {
        let collection: UInt64
        let name: FileName
    }

    private let collections = Mutex<[UInt64: Collection]>([:])
    /// The names of each file by inode number.
    private let links = Mutex<[UInt64: Set<Link>]>([:])

    func existing(_ key: UInt64) -> Collection? { collections.withLock { $0[key] } }

    var all: [Collection] { collections.withLock { Array($0.values) } }

    var count: Int { collections.withLock { $0.count } }

    /// `fresh`, registered under its key, unless a collection is there already (then that one);
    /// true when `fresh` was registered.
    func register(_ fresh: Collection) -> (Collection, Bool) {
        collections.withLock { table -> (Collection, Bool) in
            if let c = table[fresh.key] { return (c, false) }
            table[fresh.key] = fresh
            return (fresh, true)
        }
    }

    func remove(_ key: UInt64) -> Collection? { collections.withLock { $0.removeValue(forKey: key) } }

    /// `name` in `collection` is now the file `new` (nil: no longer indexed), was `old`.
    func noteLink(collection: UInt64, name: FileName, from old: UInt64?, to new: UInt64?) {
        guard old != new else { return }
        let link = Link(collection: collection, name: name)
        links.withLock { table in
            if let old {
                table[old]?.remove(link)
                if table[old]?.isEmpty == true { table[old] = nil }
            }
            if let new { table[new, default: []].insert(link) }
        }
    }

    /// Every indexed name of the file `inode`, in every collection.
    func links(of inode: UInt64) -> Set<Link> { links.withLock { $0[inode] ?? [] } }

    /// The names of `inode` indexed in `collection`.
    func names(of inode: UInt64, in collection: UInt64) -> [FileName] {
        links.withLock { $0[inode].map { $0.filter { $0.collection == collection }.map(\.name) } ?? [] }
    }
}

extension SemanticLayer {
    func existing(_ key: UInt64) -> Collection? { registry.existing(key) }

    /// The collection of `dir`, made (and opened) on first use; nil past `maxCollections`.
    func collection(_ dir: DirectoryRef) -> Collection? {
        guard let (c, isNew) = register(dir) else { return nil }
        if isNew {
            let opened = c.open(deferring: true)
            log(problems: opened.problems)
            for name in opened.toRead { bridge.post(.refresh, collection: c.key, name: name) }
        }
        return c
    }

    /// The collection of `dir`, made (unopened) if there is none yet; true when this call made it.
    func register(_ dir: DirectoryRef) -> (Collection, Bool)? {
        if let c = existing(dir.key) { return (c, false) }
        guard registry.count < CollectionRegistry.maxCollections else {
            log(problems: ["\(dir.path.isEmpty ? "." : dir.path.escaped): not a collection: there are \(CollectionRegistry.maxCollections) already"])
            return nil
        }
        guard let fd = (try? StoreFiles.holdDirectory(dir.fd, ".")) else { return nil }
        return registry.register(Collection(key: dir.key, path: dir.path, directory: fd, host: self, configuration: configuration))
    }
}
