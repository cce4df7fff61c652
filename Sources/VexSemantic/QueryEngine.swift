import CLinux
import Glibc
import VexStore
import Synchronization
import VexIndex

// The query engine: `user.vexfs.knn*` of a file. The question is the file's vectors (or its words,
// embedded; or, for a text file, the vectors it was embedded as); the scope is its directory's
// collection, or with `scope=tree` every collection below that the asker may enter; each row is
// searched in each, merged by distance, and paged when the answer is longer than one value. Answers
// are cached for the second of getfattr's two asks, keyed by who asks and the versions searched.

extension SemanticLayer {
    struct AnswerKey: Hashable {
        let inode: UInt64
        let attribute: String
        /// Answers depend on who asks (they name only what the asker may read).
        let asker: [UInt32]
    }
    struct Answer {
        let collection: UInt64
        let signature: [Int64]
        let bytes: [UInt8]
    }
    /// Bounded by bytes, since K and names are the caller's to choose.
    struct AnswerCache {
        static let maxBytes = 16 << 20
        var table: [AnswerKey: Answer] = [:]
        var bytes = 0
        mutating func put(_ key: AnswerKey, _ answer: Answer) {
            guard answer.bytes.count <= SemanticLayer.maxAnswerTotal else { return }
            if bytes + answer.bytes.count > AnswerCache.maxBytes || table.count >= 4096 { table.removeAll(); bytes = 0 }
            if let old = table.updateValue(answer, forKey: key) { bytes -= old.bytes.count }
            bytes += answer.bytes.count
        }
    }

    /// K and, for a page of a long answer, the line it starts at, from what follows `knn`: nothing
    /// (10), `.K`, `.K.from.N` or `.from.N`.
    static func knnRequest(_ rest: Substring) throws(SemanticError) -> (k: Int, from: Int?) {
        var parts = rest.split(separator: ".", omittingEmptySubsequences: false).dropFirst()
        guard rest.isEmpty || rest.first == "." else { throw .noData }
        var k = 10
        if let first = parts.first, first != "from" {
            guard let n = Int(first), (1...1000).contains(n) else { throw .invalid("K must be from 1 to 1000") }
            k = n
            parts = parts.dropFirst()
        }
        guard !parts.isEmpty else { return (k, nil) }
        guard parts.count == 2, parts.first == "from", let from = Int(parts.last!), from >= 0 else {
            throw .invalid("a page of an answer is knn.K.from.LINE")
        }
        return (k, from)
    }

    /// The largest value an extended attribute can have (the kernel's XATTR_SIZE_MAX).
    public static let maxAnswerBytes = 65_536

    /// A collection a query searches, and where it is from the query's directory.
    struct Scoped {
        let collection: Collection
        let prefix: FileName
    }

    /// The collections `options.scope` names for a query in `dir`: the directory's own, and with
    /// `tree` every one below it that `requester` may list and enter all the way down, reached by
    /// descriptors (never a symlink), in path order. Runs with the asker's identity
    /// (`Caller.withAccess`), so the kernel decides what they may list and enter, ACLs included;
    /// the query's own directory must be listable and reachable from the store's root by them
    /// now, whatever descriptor they hold (EACCES otherwise: an answer names its files).
    func scope(_ dir: DirectoryRef, _ options: QueryOptions, requester: Caller) throws(SemanticError) -> [Scoped] {
        var out: [Scoped] = []
        let own = existing(dir.key)
        if !requester.seesEverything && (own != nil || options.scope == .tree) {
            try mayList(dir)
        }
        if let own { out.append(Scoped(collection: own, prefix: FileName([]))) }
        guard options.scope == .tree else { return out }
        var pending: [(FileName, Int32)] = []
        func below(_ fd: Int32, _ rel: FileName) {
            for sub in ((try? StoreFiles.entries(fd)) ?? ([], [])).directories.sorted(by: >) {
                if rel.isEmpty && dir.path.isEmpty && sub == FileName(".vexfs") { continue }
                if let child = (try? StoreFiles.holdDirectory(fd, sub)) { pending.append((rel.child(sub), child)) }
            }
        }
        below(dir.fd, FileName([]))
        var visited = 0
        while let (rel, fd) = pending.popLast() {
            defer { Glibc.close(fd) }
            var st = stat()
            guard fstat(fd, &st) == 0, requester.seesEverything || StoreFiles.mayAccess(fd, ".", R_OK | X_OK) else { continue }
            visited += 1
            guard visited <= SemanticLayer.maxTreeDirectories else {
                for (_, other) in pending { Glibc.close(other) }
                throw .invalid("the tree holds more than \(SemanticLayer.maxTreeDirectories) directories")
            }
            if let c = existing(UInt64(st.st_ino)) { out.append(Scoped(collection: c, prefix: rel)) }
            below(fd, rel)
        }
        return out
    }

    /// Throws EACCES unless this thread's identity may reach `dir` from the store's root (search
    /// permission on every directory on the way, walked now) and list and enter it.
    func mayList(_ dir: DirectoryRef) throws(SemanticError) {
        let path = existing(dir.key).map { c in c.state.withLock { $0.path } } ?? dir.path
        guard let fd = try? StoreFiles.walk(from: rootFD, path) else { throw .denied("the collection's directory is out of your reach") }
        defer { Glibc.close(fd) }
        var st = stat()
        // A path that leads elsewhere now (a directory moved in the store itself) proves nothing.
        guard fstat(fd, &st) == 0, UInt64(st.st_ino) == dir.key else { throw .denied("the collection's directory is out of your reach") }
        guard StoreFiles.mayAccess(fd, ".", R_OK | X_OK) else { throw .denied("you may not list the collection's directory") }
    }

    /// A query file answers at most this many rows, and an answer (all its pages) is at most this long.
    public static let maxQueryRows = 1024
    public static let maxAnswerTotal = 8 << 20

    /// A tree query walks at most this many directories.
    public static let maxTreeDirectories = 100_000

    func query(_ file: FileRef, attribute: String, k: Int, from: Int?, requester: Caller) throws(SemanticError) -> [UInt8] {
        var st = stat()
        guard fstat(file.fd, &st) == 0 else { throw .noData }
        let inode = UInt64(st.st_ino)
        do throws(SemanticError) {
            let whole = try budget.run(for: requester) { (deadline) throws(SemanticError) -> [UInt8] in
                try answer(file, st, attribute: attribute, k: k, requester: requester, deadline: deadline)
            }
            queryProblems.withLock { _ = $0.removeValue(forKey: inode) }
            return try SemanticLayer.page(whole, from: from)
        } catch {
            switch error {
            case .invalid(let why), .embedder(let why), .overloaded(let why), .timedOut(let why), .denied(let why): noteQueryProblem(inode, why)
            default: break
            }
            throw error
        }
    }

    /// The whole answer, or, from `from` on, as many whole lines as one attribute value holds.
    /// Without `from`, an answer too long for one value is E2BIG: ask for it by pages.
    static func page(_ answer: [UInt8], from: Int?) throws(SemanticError) -> [UInt8] {
        guard let from else {
            guard answer.count <= maxAnswerBytes else { throw .tooBig }
            return answer
        }
        var line = 0, start = answer.startIndex
        while line < from, start < answer.endIndex {
            start = (answer[start...].firstIndex(of: 0x0A) ?? answer.endIndex) + 1
            line += 1
        }
        guard start < answer.endIndex else { return [] }
        var end = start
        while end < answer.endIndex {
            let next = (answer[end...].firstIndex(of: 0x0A) ?? answer.endIndex - 1) + 1
            if next - start > maxAnswerBytes { break }
            end = next
        }
        guard end > start else { throw .tooBig }
        return Array(answer[start..<end])
    }

    func answer(_ file: FileRef, _ st: stat, attribute: String, k: Int, requester: Caller,
                deadline: QueryBudget.Deadline = QueryBudget.Deadline(seconds: nil)) throws(SemanticError) -> [UInt8] {
        var t0 = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t0)
        let options = file.name.isQuery ? try QueryOptions.read(opath: file.fd) : QueryOptions()
        try keywordsKept(for: options)
        let lost = SemanticError.denied("the answer cannot be checked as you")
        let scoped = try requester.withAccess(orElse: lost) { () throws(SemanticError) in try scope(file.dir, options, requester: requester) }
        for s in scoped { try settle(s.collection.key, deadline) }
        let versions = scoped.map { [Int64(bitPattern: $0.collection.key), Int64(bitPattern: $0.collection.version.load(ordering: .acquiring))] }
        let signature = [Int64(st.st_ino), Int64(st.st_size), nanoseconds(st.st_mtim), nanoseconds(st.st_ctim)] + versions.flatMap { $0 }
        let key = AnswerKey(inode: UInt64(st.st_ino), attribute: attribute,
                            asker: requester.seesEverything ? [] : [requester.uid, requester.gid] + requester.groups)
        if let cached = answers.withLock({ $0.table[key] }), cached.collection == file.dir.key, cached.signature == signature {
            metrics.cached.increment()
            return cached.bytes
        }
        // By words alone: no vector, no embedder.
        if options.mode == .keyword {
            let expression = try keywordExpression(file, options)
            let out = try requester.withAccess(orElse: lost) { () throws(SemanticError) -> [UInt8] in
                try keywordAnswer(expression, in: scoped, k: k, excludingFile: UInt64(st.st_ino), requester: requester, options: options, deadline: deadline)
            }
            finished(out, key: key, file: file, signature: signature, since: t0, k: k, options: options, rows: 1, requester: requester)
            return out
        }
        let expression = options.mode == .hybrid ? try keywordExpression(file, options) : nil
        let vectors: ParsedVectors
        if let words = try words(of: file, author: st.st_uid) {
            vectors = words
        } else if case .success(let v)? = self.vectors(of: file) {
            vectors = v
        } else if let stored = existing(file.dir.key)?.storedVectors(of: file.name, inode: UInt64(st.st_ino), signature: st,
                                                                     maxRows: SemanticLayer.maxQueryRows, maxBytes: SemanticLayer.maxQueryBytes) {
            vectors = stored
        } else {
            throw .noData
        }
        guard vectors.rows <= SemanticLayer.maxQueryRows else { throw .invalid("a query file holds at most \(SemanticLayer.maxQueryRows) rows") }
        // Every collection searched must rank by the same distance: the query directory's, else the
        // one all candidates below share.
        let summaries = scoped.map { ($0, $0.collection.summary) }
        var dimension = vectors.dimension
        var metric: Metric? = nil
        if let (own, summary) = summaries.first, own.prefix.isEmpty, let d = summary.dimension {
            dimension = d
            metric = summary.metric
        } else if case .metric(let m)? = Setting.read(.metric, from: file.dir.fd) {
            metric = m
        }
        let candidates = summaries.filter { $0.1.dimension == dimension }.map { ($0.0, $0.1.metric) }
        if metric == nil {
            let metrics = Set(candidates.map(\.1))
            guard metrics.count <= 1 else {
                throw .invalid("the collections below use different metrics: set user.vexfs.metric on the query's directory to choose")
            }
            metric = metrics.first
        }
        let searched = candidates.filter { $0.1 == metric }.map(\.0)
        // Searched with the asker's identity: which files they may read is the kernel's answer.
        let out = try requester.withAccess(orElse: lost) { () throws(SemanticError) -> [UInt8] in
            var out: [UInt8] = []
            let admissions = Dictionary(uniqueKeysWithValues: searched.map { ($0.collection.key, Admissions()) })
            let ranking = try expression.flatMap { (e) throws(SemanticError) in try keywordRanking(e, in: searched, deadline: deadline) }
            for row in 0..<vectors.rows {
                if row > 0 { out.append(0x0A) }
                var hits: [(String, Float)] = []
                var words: [[(String, Float)]] = []
                let depth = expression == nil ? k : min(QueryOptions.hybridMaxDepth, k * QueryOptions.hybridDepth)
                for s in searched {
                    try deadline.check()
                    // The file itself is left out, under every name it has here.
                    let near = try s.collection.nearest(vectors.row(row), k: depth, excludingFile: UInt64(st.st_ino), requester: requester,
                                                        options: options, admissions: admissions[s.collection.key]!)
                    for h in near {
                        if expression == nil, let r = options.radius, h.distance > r { continue }
                        hits.append(s.shown(h))
                    }
                    guard let expression else { continue }
                    let admits = s.collection.admission(requester: requester, options: options, admissions: admissions[s.collection.key]!)
                    words.append(try s.collection.keywordNearest(expression, k: depth, excludingFile: UInt64(st.st_ino), ranking: ranking,
                                                                 admits: admits).map(s.shown))
                }
                if searched.count > 1 { hits.sort { $0.1 < $1.1 || ($0.1 == $1.1 && Array($0.0.utf8).lexicographicallyPrecedes(Array($1.0.utf8))) } }
                // Hybrid: the two lists of the whole scope, each `depth` deep, fused once (distances of
                // one metric compare across collections; keyword lists are merged as keyword answers are).
                if expression != nil {
                    hits = SemanticLayer.fused(Array(hits.prefix(depth)), Array(SemanticLayer.mergedKeywords(words).prefix(depth)), by: options.fusion)
                }
                for (name, d) in hits.prefix(k) { out.append(contentsOf: "\(name)\t\(d)\n".utf8) }
                guard out.count <= SemanticLayer.maxAnswerTotal else { throw .tooBig }
            }
            return out
        }
        finished(out, key: key, file: file, signature: signature, since: t0, k: k, options: options, rows: vectors.rows, requester: requester)
        return out
    }

    /// An answer made: kept for the second ask, timed, journalled.
    func finished(_ out: [UInt8], key: AnswerKey, file: FileRef, signature: [Int64], since t0: timespec, k: Int, options: QueryOptions,
                  rows: Int, requester: Caller) {
        var t1 = timespec()
        answers.withLock { $0.put(key, Answer(collection: file.dir.key, signature: signature, bytes: out)) }
        clock_gettime(CLOCK_MONOTONIC, &t1)
        metrics.queries.recordNanoseconds(nanoseconds(t1) - nanoseconds(t0))
        var detail = ["k": String(k)]
        if options.scope == .tree { detail["scope"] = "tree" }
        if options.mode != .vector { detail["mode"] = options.mode.rawValue }
        if options.mode == .hybrid { detail["fusion"] = options.fusion.name }
        if rows > 1 { detail["rows"] = String(rows) }
        journal.record(.query, file.dir.child(file.name), detail: detail, by: requester.uid)
    }

    /// A bare `.query` file that holds words rather than numbers, as a vector of the query model;
    /// nil for numbers (or with no embedder). The one FUSE request that waits on the network, unless
    /// the same words were asked before in a file of the same owner, `author` (the embedding cache
    /// keeps questions too, apart for each user: how fast an answer comes must not tell one user
    /// what another asked).
    func words(of file: FileRef, author: uid_t) throws(SemanticError) -> ParsedVectors? {
        guard let client = embedClient, let question = try question(of: file) else { return nil }
        // Asked as the words alone: `echo` adds a newline an editor may not, and both are one question.
        let text = String(question.drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())
        if let v = embeddingCache?.recall(question: text, owner: UInt32(author)) {
            metrics.embed.noteCache(hits: 1, misses: 0)
            return ParsedVectors(dimension: v.count, values: v)
        }
        if embeddingCache != nil { metrics.embed.noteCache(hits: 0, misses: 1) }
        var t0 = timespec(), t1 = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t0)
        do {
            let v = try client.embed([text], query: true)[0]
            clock_gettime(CLOCK_MONOTONIC, &t1)
            metrics.embed.note(texts: 1, nanoseconds: nanoseconds(t1) - nanoseconds(t0))
            embeddingCache?.keep(question: text, v, owner: UInt32(author))
            return ParsedVectors(dimension: v.count, values: v)
        } catch {
            metrics.embed.note(texts: 1, nanoseconds: nil)
            throw .embedder("the question cannot be embedded: \(error)")
        }
    }

    /// The words of a bare `.query` file that holds words rather than numbers; nil for numbers.
    func question(of file: FileRef) throws(SemanticError) -> String? {
        guard file.name.isQuery, file.name.queryFormat == nil,
              let bytes = try? StoreFiles.read(opath: file.fd, limit: SemanticLayer.maxTextQueryBytes + 1) else { return nil }
        let sniffed = bytes.withUnsafeBytes { VectorFormat.sniff($0) }
        guard sniffed == .raw, !bytes.contains(0), let text = String(validating: bytes, as: UTF8.self),
              text.unicodeScalars.contains(where: { $0.properties.isAlphabetic }) else { return nil }
        guard bytes.count <= SemanticLayer.maxTextQueryBytes else { throw .invalid("a question in words is at most \(SemanticLayer.maxTextQueryBytes) bytes") }
        return text
    }

    /// What `file` holds as vectors, read through its own descriptor: at most a query file's worth
    /// (`maxQueryBytes`), whatever the file is, since a request may ask it of any file and many
    /// requests run at once. A bigger vector file is asked by the vectors it was indexed as
    /// (`Collection.storedVectors`).
    func vectors(of file: FileRef) -> Result<ParsedVectors, FormatError>? {
        VectorParser.vectors(name: file.name, read: { limit in
            FormatError.reading { () throws(ReadRefusal) in try StoreFiles.read(opath: file.fd, limit: min(limit, SemanticLayer.maxQueryBytes)) }
        },
                             attribute: { (try? StoreFiles.attribute(opath: file.fd, SemanticLayer.vectorAttribute)) })
    }
}
