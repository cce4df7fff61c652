import CLinux
import Glibc
import VexStore
import VexIndex

// Events in: what the filesystem tells the vector layer after each change it made to the store,
// recorded in the journal and posted to the bridge, which applies them to collections in batches.
// None of these waits for an index: a write's request returns before its vectors are indexed, and
// a query waits (read-your-writes) only for the changes posted before it.

extension SemanticLayer {
    public func created(_ dir: DirectoryRef, _ name: FileName) {
        journal.record(.create, dir.child(name))
    }

    /// A file was closed after writing (or truncated): index what it holds now, under this name and
    /// every other name it is indexed by (hard links), in every collection.
    public func written(_ dir: DirectoryRef, _ name: FileName, inode: UInt64) {
        if name.isQuery { return }
        journal.record(.writeClose, dir.child(name))
        let kind = kind(of: name, in: dir) { existing(dir.key)?.attributeCarriers.withLock { $0.contains(name) } == true }
        if kind.isIndexed {
            if let c = collection(dir) { bridge.post(.refresh, collection: c.key, name: name) }
            noteShared(.file, in: dir, name: name)
        }
        let others = registry.links(of: inode)
        for link in others where !(link.collection == dir.key && link.name == name) {
            bridge.post(.refresh, collection: link.collection, name: link.name)
            noteShared(.file, collection: link.collection, name: link.name)
        }
    }

    /// The kind of `name` in `dir`: by its name, else by its collection's rules (read only with an
    /// embedder, when text is possible), else by `carriesVector`.
    func kind(of name: FileName, in dir: DirectoryRef, carriesVector: () -> Bool = { false }) -> FileKind {
        if let kind = FileKind(name: name) { return kind }
        if embedQueue != nil && rules(dir).isText(name) { return .text }
        return carriesVector() ? .attributeCarrier : .other
    }

    /// The rules `dir` classifies its names by: its collection's, or (none yet) its directory's.
    func rules(_ dir: DirectoryRef) -> NameRules {
        if let c = existing(dir.key) { return c.state.withLock { c.rules($0) } }
        let globs: [String]? = if case .embed(let g)? = Setting.read(.embed, from: dir.fd) { g } else { nil }
        return NameRules(textGlobs: globs, embedding: embedQueue != nil)
    }

    /// A new name for an existing file (link(2)): it is a vector wherever its name says so.
    public func linked(_ dir: DirectoryRef, _ name: FileName) {
        journal.record(.link, dir.child(name))
        if kind(of: name, in: dir, carriesVector: { hasVectorAttribute(dir.fd, name) }).isIndexed, let c = collection(dir) {
            bridge.post(.refresh, collection: c.key, name: name)
            noteShared(.file, in: dir, name: name)
        }
    }

    public func removed(_ dir: DirectoryRef, _ name: FileName) {
        journal.record(.unlink, dir.child(name))
        if existing(dir.key) != nil {
            bridge.post(.remove, collection: dir.key, name: name)
            noteShared(.file, in: dir, name: name)
        }
    }

    /// The attribute `name` of `file` was set or removed (nil: its mode or owner changed): filters
    /// read the file's attributes again and cached answers go, in every collection it is indexed in
    /// (hard links share attributes); `user.vexfs.vector` also re-indexes it.
    public func attributeChanged(_ file: FileRef, name: UnsafePointer<CChar>? = nil) {
        let dir = file.dir
        if let name, strcmp(name, SemanticLayer.vectorAttribute) == 0 {
            journal.record(.setxattr, dir.child(file.name), detail: ["name": SemanticLayer.vectorAttribute])
            if let c = collection(dir) { bridge.post(.refresh, collection: c.key, name: file.name) }
            noteShared(.file, in: dir, name: file.name)
        }
        guard let inode = (try? StoreFiles.inodeNumber(file.fd)) else { return }
        existing(dir.key)?.attributesChanged(of: inode)
        let others = registry.links(of: inode)
        for link in others where link.collection != dir.key { existing(link.collection)?.attributesChanged(of: inode) }
    }

    /// A file moved: its vectors leave the old collection and join the new one (the target's old
    /// vectors, if it replaced a file, are replaced). With `exchange`, both names are refreshed.
    public func renamed(from: DirectoryRef, _ fromName: FileName, to: DirectoryRef, _ toName: FileName, exchange: Bool) {
        journal.record(.rename, from.child(fromName), to: to.child(toName))
        if existing(from.key) != nil {
            bridge.post(exchange ? .refresh : .remove, collection: from.key, name: fromName)
            noteShared(.file, in: from, name: fromName)
        }
        if existing(to.key) != nil || kind(of: toName, in: to, carriesVector: { hasVectorAttribute(to.fd, toName) }).isIndexed,
           let c = collection(to) {
            bridge.post(.refresh, collection: c.key, name: toName)
            noteShared(.file, in: to, name: toName)
        }
    }

    /// A directory moved: collections at or under it follow (with `exchange`, those under `new`
    /// move to `old` at the same time). Only their names for messages change: they hold their
    /// directories by descriptor.
    public func directoryMoved(from old: FileName, to new: FileName, exchange: Bool = false) {
        journal.record(.rename, old, to: new)
        func moved(_ path: FileName, _ from: FileName, _ to: FileName) -> FileName? {
            path.relative(to: from).map { FileName(to.bytes + $0) }
        }
        for c in registry.all {
            c.state.withLock { s in
                if let p = moved(s.path, old, new) { s.path = p } else if exchange, let p = moved(s.path, new, old) { s.path = p }
            }
        }
    }

    /// A directory was removed: its collection and index go with it.
    public func directoryRemoved(key: UInt64, path: FileName) {
        journal.record(.unlink, path)
        sharing?.removed.withLock { $0.append(key) }
        guard existing(key) != nil else { return }
        bridge.settle(key)
        guard let c = registry.remove(key) else { return }
        c.forgetAllLinks()
        StatePaths.removeTree(c.indexDirectory)
    }

    func apply(_ events: [Bridge.Event]) {
        var byCollection: [UInt64: [Bridge.Event]] = [:]
        for e in events { byCollection[e.key.collection, default: []].append(e) }
        for (key, list) in byCollection { existing(key)?.apply(list) }
    }

    /// Links a few of one collection's waiting vectors into its graph (the bridge, when idle); true
    /// while some collection still has some waiting.
    func absorbSome() -> Bool {
        let all = registry.all
        for c in all {
            // A collection the builder holds is passed over, never waited for.
            guard let held = c.state.withLockIfAvailable({ $0.index }), let index = held, index.unabsorbed > 0 else { continue }
            index.absorb(limit: 8)
            return true
        }
        return false
    }

    /// Whether applying `event` reads a vector file big enough to take a while (a megabyte of `.npy`
    /// holds 262,144 vectors of dimension 1): the bridge's builder does it, so the worker that
    /// every other collection's changes (and the questions that wait for them) need stays free.
    func isLong(_ event: Bridge.Event) -> Bool {
        guard let c = existing(event.key.collection), let st = c.withDirectory({ try? StoreFiles.stat($0, event.key.name) }) ?? nil else { return false }
        return configuration.streamedFormat(event.key.name, st) != nil
            || (StoreFiles.isRegular(st) && event.key.name.vectorFormat != nil && Int(st.st_size) >= configuration.longFileBytes)
    }
}
