import CLinux
import Glibc
import VexStore
import VexIndex
import VexKeyword

// A text collection's keyword index (STORE/.vexfs/index/INODE/keywords.sqlite): the same passages
// the embedder is sent, under the same names the vector index answers with, kept in step with the
// catalog (every text read puts a file's passages, every removal drops them) and repaired from the
// files at mount. Searched by `user.vexfs.match` and `user.vexfs.mode`, through the same admission
// check as vector answers: a passage of a file the asker may not read never appears.

extension Collection {
    var keywordPath: String { indexDirectory + "/keywords.sqlite" }

    /// Opens the keyword index when this mount embeds text (only then are files text); a damaged one
    /// is set aside and filled again from the files by `repairKeywords`.
    func openKeywords(_ s: inout State) {
        guard configuration.keywords, host.embedQueue != nil, s.keywords == nil else { return }
        mkdir(configuration.stateRoot + "/index", 0o700)
        mkdir(indexDirectory, 0o700)
        do {
            let index = try KeywordIndex(path: keywordPath)
            if let why = index.setAside { host.log(problems: ["\(shown(s)): keywords.sqlite set aside (\(why)); rebuilt from the files"]) }
            s.keywords = index
        } catch {
            host.log(problems: ["\(shown(s)): the keyword index cannot be opened: \(error)"])
        }
    }

    /// The signature a file's passages are kept with: what the catalog knows it by.
    static func keywordSignature(_ r: FileRecord) -> [UInt8] {
        var out: [UInt8] = []
        for v in [Int64(bitPattern: r.inode), r.size, r.mtime, r.ctime] { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        return out
    }

    /// Makes the keyword index hold the passages `ranges` of `text`, the file `name` as `record`.
    func putKeywords(_ name: FileName, _ record: FileRecord, _ text: [UInt8], _ s: inout State) {
        openKeywords(&s)
        guard let keywords = s.keywords else { return }
        let signature = Collection.keywordSignature(record)
        guard keywords.signature(of: name.bytes) != signature else { return }
        do {
            try keywords.put(name.bytes, signature: signature, passages: record.passages.map { String(decoding: text[$0], as: UTF8.self) })
        } catch {
            host.log(problems: ["\(shown(s)): \(name.escaped): the keyword index cannot keep it: \(error)"])
        }
    }

    /// Drops `name`'s passages from the keyword index (it went, or holds no text now).
    func dropKeywords(_ name: FileName, _ s: inout State) {
        guard let keywords = s.keywords, keywords.signature(of: name.bytes) != nil else { return }
        do { try keywords.remove(name.bytes) } catch { host.log(problems: ["\(shown(s)): \(name.escaped): \(error)"]) }
    }

    /// Makes the keyword index agree with the catalog (at mount, after the catalog agrees with the
    /// files): passages of files gone are dropped, text files it lacks or holds stale are read again.
    func repairKeywords(_ s: inout State) {
        guard configuration.keywords else { return }
        guard s.keywords != nil || access(keywordPath, F_OK) == 0 || s.files.values.contains(where: { !$0.passages.isEmpty }) else { return }
        openKeywords(&s)
        guard let keywords = s.keywords, let held = try? keywords.files() else { return }
        for (name, signature) in held {
            let file = FileName(name)
            guard let r = s.files[file], !r.passages.isEmpty, signature == Collection.keywordSignature(r) else {
                dropKeywords(file, &s)
                continue
            }
        }
        for (name, r) in s.files where !r.passages.isEmpty && held[name.bytes] != Collection.keywordSignature(r) {
            let read = withDirectory { dir -> [UInt8]? in
                guard let st = (try? StoreFiles.stat(dir, name)), r.sameSignature(st) else { return nil }
                return try? StoreFiles.read(dir, name, limit: SemanticLayer.maxTextBytes)
            }
            guard let text = read ?? nil,
                  r.passages.last.map({ $0.upperBound <= text.count }) ?? true else { continue }
            putKeywords(name, r, text, &s)
        }
    }

    /// The `k` best passages by BM25 for the FTS5 expression `match` that `admits` lets through,
    /// leaving out the file `excludingFile` (an inode number) under every name. Reads the ranked
    /// passages a page at a time, until `k` are admitted. The distance is `bm25()`'s score (lower is
    /// better).
    func keywordNearest(_ match: String, k: Int, excludingFile: UInt64?, ranking: KeywordIndex.Ranking? = nil,
                        admits: (FileName, UInt64) -> Bool) throws(SemanticError) -> [Hit] {
        guard let keywords = state.withLock({ $0.keywords }) else { return [] }
        var out: [Hit] = []
        var offset = 0, page = max(2 * k, 32)
        while out.count < k {
            let hits: [KeywordIndex.Hit]
            do { hits = try keywords.search(match, ranking: ranking, offset: offset, limit: page) } catch { throw .invalid("user.vexfs.match: \(error)") }
            // Only files the catalog holds as text now (a glob change may leave passages behind until the next mount).
            let inodes = state.withLock { s in hits.map { s.files[FileName($0.name)].flatMap { $0.passages.isEmpty ? nil : $0.inode } } }
            for (hit, inode) in zip(hits, inodes) where out.count < k {
                let name = FileName(hit.name)
                guard let inode, inode != excludingFile, admits(name, inode) else { continue }
                out.append(Hit(name: name, row: hit.passages > 1 ? hit.row : nil, distance: Float(hit.score)))
            }
            if hits.count < page { break }
            offset += page
            page = min(2 * page, 4096)
        }
        return out
    }

    /// This collection's BM25 statistics for `match`, to rank several collections as one (none
    /// without a keyword index).
    func keywordStatistics(_ match: String) throws(SemanticError) -> KeywordIndex.Statistics {
        guard let keywords = state.withLock({ $0.keywords }) else { return KeywordIndex.Statistics() }
        do { return try keywords.statistics(match) } catch { throw .invalid("user.vexfs.match: \(error)") }
    }

    /// The labels of the embedded passages that match `match` and `admits` lets through: what a
    /// vector search with `user.vexfs.match` is restricted to.
    func matchedLabels(_ match: String, admits: (FileName, UInt64) -> Bool) throws(SemanticError) -> [UInt64] {
        guard let keywords = state.withLock({ $0.keywords }) else { return [] }
        let hits: [KeywordIndex.Hit]
        do { hits = try keywords.search(match, limit: nil) } catch { throw .invalid("user.vexfs.match: \(error)") }
        let found = state.withLock { s in
            hits.compactMap { h -> (FileName, UInt64, UInt64)? in
                let name = FileName(h.name)
                guard let r = s.files[name], r.rows == r.passages.count, h.row < r.rows else { return nil }
                return (name, r.inode, r.firstLabel + UInt64(h.row))
            }
        }
        return found.filter { admits($0.0, $0.1) }.map(\.2)
    }
}
