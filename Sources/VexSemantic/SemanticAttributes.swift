import CLinux
import Glibc
import VexStore
import VexIndex

// Computed attributes out, and the settings and query options set in: every `user.vexfs.*` name but
// the stored vector is answered here, never by the store. A file's `status`, `dim` and `passages`, a
// collection's `dim`, `metric`, `count`, `status`, `index`, `embed` and `recall`; `knn*` goes on to
// QueryEngine.swift. Values are checked before anything is stored: a bad one is EINVAL with its
// reason in the file's status.

extension SemanticLayer {
    /// Whether a listed attribute name is one of ours that listxattr hides (settings and answers;
    /// `user.vexfs.vector` is a real attribute and is listed).
    public static func hidesFromListing(_ name: UnsafePointer<CChar>) -> Bool {
        strncmp(name, ownPrefix, 11) == 0 && strcmp(name, vectorAttribute) != 0
    }

    /// Whether `name` is ours to answer (all of `user.vexfs.*` but the stored vector).
    public static func owns(_ name: UnsafePointer<CChar>) -> Bool { hidesFromListing(name) }

    /// The value of our attribute `attribute` of `file`, for `requester`.
    public func fileAttribute(_ attribute: String, file: FileRef, requester: Caller = .root) throws(SemanticError) -> [UInt8] {
        let suffix = attribute.dropFirst(SemanticLayer.ownPrefix.count)
        if suffix == "knn" || suffix.hasPrefix("knn.") {
            let (k, from) = try SemanticLayer.knnRequest(suffix.dropFirst(3))
            return try query(file, attribute: "knn.\(k)", k: k, from: from, requester: requester)
        }
        if let option = QueryOptions.Option(rawValue: attribute) {
            guard let value = (try? StoreFiles.attribute(opath: file.fd, option.rawValue, limit: QueryOptions.maxFilterBytes)) else { throw .noData }
            return value
        }
        switch suffix {
        case "status":
            try settle(file.dir.key, for: requester)
            if file.name.isQuery {
                if let inode = (try? StoreFiles.inodeNumber(file.fd)), let problem = queryProblems.withLock({ $0[inode] }) {
                    return Array("query file: never indexed; last refused: \(problem)".utf8)
                }
                return Array("query file: never indexed".utf8)
            }
            guard let r = existing(file.dir.key)?.record(of: file.name) else {
                switch kind(of: file.name, in: file.dir) {
                case .vector, .text: break
                default: throw .noData
                }
                if let st = (try? StoreFiles.stat(file.dir.fd, file.name)), !StoreFiles.isRegular(st) {
                    return Array("not indexed: \(FormatError.notRegular(st.st_mode))".utf8)
                }
                return Array("not indexed".utf8)
            }
            return Array(r.status.utf8)
        case "dim":
            if case .success(let v)? = vectors(of: file) { return Array(String(v.dimension).utf8) }
            // Too big to read for an attribute: indexed, it has the collection's dimension.
            var st = stat()
            guard fstat(file.fd, &st) == 0, let c = existing(file.dir.key), let r = c.record(of: file.name),
                  r.rows > 0, r.sameSignature(st), let d = c.dimension else { throw .noData }
            return Array(String(d).utf8)
        case "passages":
            try settle(file.dir.key, for: requester)
            guard let r = existing(file.dir.key)?.record(of: file.name), !r.passages.isEmpty else { throw .noData }
            var out = ""
            for (i, p) in r.passages.enumerated() { out += "\(i)\t\(p.lowerBound)\t\(p.upperBound)\n" }
            return Array(out.utf8)
        default:
            throw .noData
        }
    }

    /// The value of our attribute of the collection `dir` itself.
    public func directoryAttribute(_ attribute: String, dir: DirectoryRef, requester: Caller = .root) throws(SemanticError) -> [UInt8] {
        try settle(dir.key, for: requester)
        let summary = existing(dir.key)?.summary
        switch attribute.dropFirst(SemanticLayer.ownPrefix.count) {
        case "dim":
            let stored: Int? = if case .dimension(let d)? = Setting.read(.dimension, from: dir.fd) { d } else { nil }
            guard let d = summary?.dimension ?? stored else { throw .noData }
            return Array(String(d).utf8)
        case "metric": return Array((summary?.metric ?? .l2).rawValue.utf8)
        case "count": return Array(String(summary?.count ?? 0).utf8)
        case "status":
            guard let summary, summary.dimension != nil else {
                if summary == nil, let why = onOtherFilesystem(dir) ?? ownerFull(dir) { return Array("not a collection: \(why)".utf8) }
                return Array("not a collection yet: no vectors".utf8)
            }
            var text = "indexed: \(summary.count) vectors"
            if !summary.recovery.isEmpty { text += "; at mount: \(summary.recovery)" }
            return Array(text.utf8)
        case "index": return Array((summary?.index ?? "none (no vectors yet)").utf8)
        case "embed":
            guard embedQueue != nil else { throw .noData }
            return Array((Setting.read(.embed, from: dir.fd) ?? .embed(SemanticLayer.defaultEmbedGlobs)).text.utf8)
        case "recall":
            let stored: Double? = if case .recall(let r)? = Setting.read(.recall, from: dir.fd) { r } else { nil }
            return Array(String(summary?.recall ?? stored ?? Setting.defaultRecall).utf8)
        default: throw .noData
        }
    }

    /// Waits until what was posted for `collection` is applied (read-your-writes). While there is
    /// anything to wait for, the wait holds a FUSE thread: for a user other than root it counts as
    /// one of their questions (`max_user_queries` at once, EBUSY past it), and it ends as soon as the
    /// asker gives up (EINTR).
    func settle(_ collection: UInt64, for requester: Caller) throws(SemanticError) {
        guard bridge.hasUnapplied(collection) else { return }
        try budget.run(for: requester) { (deadline) throws(SemanticError) in try settle(collection, deadline) }
    }

    /// The same, within a question that already counts.
    func settle(_ collection: UInt64, _ deadline: QueryBudget.Deadline) throws(SemanticError) {
        guard bridge.settle(collection, unless: { deadline.interrupted?() ?? false }) else { throw .interrupted }
    }

    /// Why `dir` cannot become a collection when it is on another filesystem than the store's root
    /// (see `register`).
    func onOtherFilesystem(_ dir: DirectoryRef) -> String? {
        var st = stat()
        guard fstat(dir.fd, &st) == 0, UInt64(st.st_dev) != storeDevice else { return nil }
        return "it is on another filesystem than the store's root"
    }

    /// Why `dir` cannot become a collection when its owner (other than root) has as many as they may.
    func ownerFull(_ dir: DirectoryRef) -> String? {
        var st = stat()
        guard fstat(dir.fd, &st) == 0, st.st_uid != 0, registry.count(ownedBy: st.st_uid) >= collectionsPerUser else { return nil }
        return "its owner's directories hold \(collectionsPerUser) collections already (max_user_collections)"
    }

    /// Sets `user.vexfs.dim`, `user.vexfs.metric` or `user.vexfs.recall` on a collection; other names of ours are refused.
    public func setDirectoryAttribute(_ attribute: String, dir: DirectoryRef, value: [UInt8], requester: Caller = .root) throws(SemanticError) {
        let setting = try Setting.parse(attribute, value)
        if case .embed = setting, !requester.seesEverything {
            // Which files go to the endpoint is their directory owner's choice: in a directory
            // others may write (a shared /tmp), nobody else may send everyone's files out.
            var st = stat()
            guard fstat(dir.fd, &st) == 0, st.st_uid == requester.uid else {
                throw .denied("only the directory's owner (or root) may set user.vexfs.embed")
            }
        }
        try settle(dir.key, for: requester)
        guard let c = collection(dir) else {
            if let why = onOtherFilesystem(dir) { throw .invalid(why) }
            if let why = ownerFull(dir) { throw .quota(why) }
            throw .invalid("there are \(registry.maxCollections) collections already")
        }
        try c.change(setting)
        noteShared(.settings, in: dir)
        journal.record(.setxattr, dir.path, detail: ["name": attribute, "value": setting.text])
        answers.withLock { $0 = AnswerCache() }
    }

    // MARK: query options

    /// Sets a query option on a query file: checked first, so a bad value is EINVAL, is never
    /// stored, and its reason shows in the file's status.
    public func setFileAttribute(_ attribute: String, file: FileRef, value: [UInt8]) throws(SemanticError) {
        let inode = (try? StoreFiles.inodeNumber(file.fd)) ?? 0
        do throws(SemanticError) {
            guard let option = QueryOptions.Option(rawValue: attribute) else { throw .invalid("\(attribute) cannot be set on a file") }
            guard file.name.isQuery else { throw .invalid("\(attribute) is an option of query files (NAME.query)") }
            var options = QueryOptions()
            try options.set(option, value)
            do { try StoreFiles.setAttribute(opath: file.fd, attribute, value) } catch {
                throw .invalid("\(attribute) cannot be stored: \(String(cString: strerror(error.rawValue)))")
            }
            queryProblems.withLock { _ = $0.removeValue(forKey: inode) }
        } catch {
            noteQueryProblem(inode, error.description)
            throw error
        }
    }

    /// Removes a query option (the default applies again); other names of ours are computed.
    public func removeFileAttribute(_ attribute: String, file: FileRef) throws(SemanticError) {
        guard QueryOptions.Option(rawValue: attribute) != nil, file.name.isQuery else { throw .noData }
        do { try StoreFiles.removeAttribute(opath: file.fd, attribute) } catch { throw .noData }
    }

    func noteQueryProblem(_ inode: UInt64, _ why: String) {
        queryProblems.withLock { table in
            if table.count >= 4096 { table.removeAll() }  // bounded: anyone can make queries fail
            table[inode] = why
        }
    }
}
