import Glibc
import VexStore
import Synchronization

/// The mount's collections by directory inode number (stable across renames), and the table of
/// every name each indexed file has in them (a write through one hard link refreshes all). Both
/// tables are leaves in the lock order: nothing is called while either is held.
final class CollectionRegistry: Sendable {
    /// Collections at most: users make directories at will, and where directories cannot be
    /// reopened by handle each collection keeps a descriptor of its own (see
    /// `CollectionDirectories`), so 10,000, or an eighth of what the process may open if that is
    /// less (three quarters go to the store's idle inodes, the rest to open files).
    let maxCollections: Int

    init(maxCollections: Int = CollectionRegistry.defaultMaxCollections) { self.maxCollections = maxCollections }

    static var defaultMaxCollections: Int {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 128 }
        return max(16, min(10_000, Int(min(limit.rlim_cur, 1 << 24)) / 8))
    }

    struct Link: Hashable {
        let collection: UInt64
        let name: FileName
    }

    private let collections = Mutex<Table>(Table())
    struct Table {
        var byKey: [UInt64: Collection] = [:]
        /// Collections per owner of their directory (at the time it became one).
        var byOwner: [uid_t: Int] = [:]
    }
    /// The names of each file by inode number.
    private let links = Mutex<[UInt64: Set<Link>]>([:])

    func existing(_ key: UInt64) -> Collection? { collections.withLock { $0.byKey[key] } }

    var all: [Collection] { collections.withLock { Array($0.byKey.values) } }

    var count: Int { collections.withLock { $0.byKey.count } }

    /// How many collections the directories of `owner` hold.
    func count(ownedBy owner: uid_t) -> Int { collections.withLock { $0.byOwner[owner] ?? 0 } }

    enum Registration {
        /// `fresh` is registered, or (`made` false) another collection was there already.
        case registered(Collection, made: Bool)
        /// Its directory's owner has `perOwner` collections already.
        case ownerFull
    }

    /// `fresh`, registered under its key, unless a collection is there already (then that one), or
    /// its owner has `perOwner` already (nil: no bound).
    func register(_ fresh: Collection, perOwner: Int?) -> Registration {
        collections.withLock { table -> Registration in
            if let c = table.byKey[fresh.key] { return .registered(c, made: false) }
            if let perOwner, table.byOwner[fresh.owner, default: 0] >= perOwner { return .ownerFull }
            table.byKey[fresh.key] = fresh
            table.byOwner[fresh.owner, default: 0] += 1
            return .registered(fresh, made: true)
        }
    }

    /// Drops the collection under `key` (with `ifStill`, only if it is still that one).
    func remove(_ key: UInt64, ifStill expected: Collection? = nil) -> Collection? {
        collections.withLock { table in
            guard let c = table.byKey[key], expected.map({ $0 === c }) ?? true else { return nil }
            table.byKey[key] = nil
            table.byOwner[c.owner, default: 1] -= 1
            if table.byOwner[c.owner] == 0 { table.byOwner[c.owner] = nil }
            return c
        }
    }

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
    /// Nil past `maxCollections`, or when the directory's owner (other than root) has
    /// `collectionsPerUser` already: one user must not take every collection, nor the
    /// descriptors they hold.
    func register(_ dir: DirectoryRef) -> (Collection, Bool)? {
        if let c = existing(dir.key) {
            guard c.directory.isGone else { return (c, false) }
            // Its directory was found gone at a reopen (removed, perhaps replaced by one that got
            // its inode number, behind the mount's back): this directory gets a collection of its
            // own, and the index under the key agrees with its files when it is opened.
            if let gone = registry.remove(dir.key, ifStill: c) { gone.forgetAllLinks() }
        }
        let shown = dir.path.isEmpty ? "." : dir.path.escaped
        guard registry.count < registry.maxCollections else {
            log(problems: ["\(shown): not a collection: there are \(registry.maxCollections) already"])
            return nil
        }
        guard let fd = (try? StoreFiles.holdDirectory(dir.fd, ".")) else { return nil }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            Glibc.close(fd)
            return nil
        }
        // Collections, their indexes and the hard-link table are keyed by inode number, which is
        // unique on one filesystem only: a directory of another one mounted inside the store is
        // served, but never a collection.
        guard UInt64(st.st_dev) == storeDevice else {
            Glibc.close(fd)
            log(problems: ["\(shown): not a collection: it is on another filesystem than the store's root"])
            return nil
        }
        let fresh = Collection(key: dir.key, path: dir.path, directory: directories.adopt(fd), owner: st.st_uid, host: self, configuration: configuration)
        switch registry.register(fresh, perOwner: st.st_uid == 0 ? nil : collectionsPerUser) {
        case .registered(let c, let made): return (c, made)
        case .ownerFull:
            log(problems: ["\(shown): not a collection: its owner (uid \(st.st_uid)) has \(collectionsPerUser) already"])
            return nil
        }
    }
}
