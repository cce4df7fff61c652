import Glibc
import VexStore
import VexKeyword

// Questions answered by words (`user.vexfs.mode=keyword`) and by words and meaning fused
// (`hybrid`, by scores or by ranks: `user.vexfs.fusion`): the FTS5 expression asked, the keyword
// answer across the collections in scope, and the fusion of the two lists. Both go through the same
// admission check as vector answers.

extension SemanticLayer {
    /// Refuses words options on a mount that keeps no keyword index (no embedder, `keywords=off`,
    /// or `norecovery`, under which SQLite's writes as it reads are not allowed).
    func keywordsKept(for options: QueryOptions) throws(SemanticError) {
        guard options.mode != .vector || options.match != nil else { return }
        guard !norecovery else { throw .invalid("a norecovery mount opens no keyword index (SQLite writes as it reads)") }
        guard embedQueue != nil else { throw .invalid("keyword search is over text files, and this mount embeds none (-o embedder=URL)") }
        guard configuration.keywords else { throw .invalid("this mount keeps no keyword index (-o keywords=off)") }
    }

    /// The FTS5 expression a keyword list is made from: `user.vexfs.match` when set, else any word
    /// of the question in words the query file holds.
    func keywordExpression(_ file: FileRef, _ options: QueryOptions) throws(SemanticError) -> String {
        if let match = options.match { return match }
        guard let text = try question(of: file), let any = KeywordIndex.anyWord(of: text) else {
            throw .invalid("user.vexfs.mode=\(options.mode.rawValue) needs a question in words in the query file, or user.vexfs.match")
        }
        return any
    }

    /// The `k` best passages by BM25 in the collections `scoped`, merged by score (lower is better;
    /// ties by name). Runs with the asker's identity, like a vector answer.
    func keywordAnswer(_ expression: String, in scoped: [Scoped], k: Int, excludingFile: UInt64, requester: Caller, options: QueryOptions,
                       deadline: QueryBudget.Deadline) throws(SemanticError) -> [UInt8] {
        // `answer` settled every collection in scope already (interruptibly), as for any question.
        let ranking = try keywordRanking(expression, in: scoped, deadline: deadline)
        var lists: [[(String, Float)]] = []
        for s in scoped {
            try deadline.check()
            let admits = s.collection.admission(requester: requester, options: options, admissions: Admissions())
            lists.append(try s.collection.keywordNearest(expression, k: k, excludingFile: excludingFile, ranking: ranking, admits: admits).map(s.shown))
        }
        var out: [UInt8] = []
        for (name, score) in SemanticLayer.mergedKeywords(lists).prefix(k) { out.append(contentsOf: "\(name)\t\(score)\n".utf8) }
        return out
    }

    /// How the collections `scoped` are ranked as one (KeywordRanking.swift): nil for one collection,
    /// which its own `bm25()` ranks the same. The statistics are of every passage, readable or not,
    /// as one collection's are: they are sums, and no passage is named by them.
    func keywordRanking(_ expression: String, in scoped: [Scoped], deadline: QueryBudget.Deadline) throws(SemanticError) -> KeywordIndex.Ranking? {
        guard scoped.count > 1 else { return nil }
        var sums = KeywordIndex.Statistics()
        for s in scoped {
            try deadline.check()
            sums = sums + (try s.collection.keywordStatistics(expression))
        }
        return KeywordIndex.Ranking(sums)
    }

    /// The keyword lists of the collections in scope (each best first, scored by one ranking) as one.
    static func mergedKeywords(_ lists: [[(String, Float)]]) -> [(String, Float)] {
        guard lists.count > 1 else { return lists.first ?? [] }
        return lists.flatMap { $0 }.sorted { $0.1 < $1.1 || ($0.1 == $1.1 && Array($0.0.utf8).lexicographicallyPrecedes(Array($1.0.utf8))) }
    }

    /// Hybrid fusion of a list by meaning and a list by words (each best first, scores lower-is-better:
    /// a distance, `bm25()`), as `fusion` says. The answer is every name, best first (ties by name),
    /// with its fused score negated so that, like a distance, lower is better.
    /// - `scores`: each list's scores are scaled to [0, 1] over that list, its best 1 and its worst 0
    ///   (all 1 when they are equal), and a name scores the mean of its two (0 from a list it is not
    ///   in): -1 is the best of both. How far ahead a passage is counts, not only its place.
    /// - `ranks(k)`: reciprocal rank fusion, a name scores 1 / (k + rank) from each list it is in
    ///   (the best rank 1), summed: -2 / (k + 1) is the best of both. Ranks follow each list's scores
    ///   with ties by name, so equal scores never rank by the order the index happened to find them.
    static func fused(_ vector: [(String, Float)], _ keyword: [(String, Float)], by fusion: QueryOptions.Fusion = .scores) -> [(String, Float)] {
        var score: [String: Double] = [:]
        for list in [vector, keyword] {
            switch fusion {
            case .scores:
                guard let best = list.lazy.map({ Double($0.1) }).min(), let worst = list.lazy.map({ Double($0.1) }).max() else { continue }
                for (name, s) in list {
                    let scaled = worst > best ? (worst - Double(s)) / (worst - best) : 1
                    score[name, default: 0] += scaled.isFinite ? scaled / 2 : 0
                }
            case .ranks(let k):
                // A name counts once per list, at its best place.
                var seen = Set<String>()
                for (name, _) in list.sorted(by: SemanticLayer.bestFirst) where seen.insert(name).inserted {
                    score[name, default: 0] += 1 / Double(k + seen.count)
                }
            }
        }
        return score.map { ($0.key, -Float($0.value)) }.sorted(by: SemanticLayer.bestFirst)
    }

    /// Lower score first, equal scores by name (bytewise): one order whatever order they came in.
    static func bestFirst(_ a: (String, Float), _ b: (String, Float)) -> Bool {
        a.1 < b.1 || (a.1 == b.1 && Array(a.0.utf8).lexicographicallyPrecedes(Array(b.0.utf8)))
    }
}

extension SemanticLayer.Scoped {
    /// A hit's line name: relative to the query's directory, with `#ROW` for a passage of several.
    func shown(_ h: Collection.Hit) -> (String, Float) {
        let name = prefix.isEmpty ? h.name.escaped : prefix.child(h.name).escaped
        return (h.row.map { "\(name)#\($0)" } ?? name, h.distance)
    }
}
