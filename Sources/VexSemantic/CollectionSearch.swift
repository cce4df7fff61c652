import CLinux
import Glibc
import VexStore
import Synchronization
import VexEmbed
import VexIndex
import VexKernels

// Search planning for one collection: who may see which file, which filter rows pass, and whether a
// graph walk or an exact scan of the few rows that pass answers a query; the file attributes
// filters read, cached per inode.

extension Collection {
    /// One answer of `nearest`: the file, the row within it when it holds several, the distance.
    struct Hit {
        let name: FileName
        let row: Int?
        let distance: Float
    }

    /// The k nearest to `query` that `requester` may read (the kernel's access check of the file
    /// each comes from, made now, inside the search, so the caller still gets k of what they may
    /// see; the caller runs this under `requester.withAccess`, so the check is the asker's) and
    /// that pass `options`' conditions, leaving out the vectors of the file `excludingFile` (an
    /// inode number) under every name. A filter that keeps few vectors of a graph is answered by an
    /// exact scan of those it keeps, chosen from a sample of the files; otherwise the graph walk asks
    /// the filter of each node it would take, once per file.
    func nearest(_ query: ArraySlice<Float>, k: Int, excludingFile: UInt64?, requester: Caller = .root,
                 options: QueryOptions = QueryOptions(), admissions: Admissions = Admissions()) throws(SemanticError) -> [Hit] {
        let filtered = !options.conditions.isEmpty
        let (index, excluded, dimension, files) = state.withLock { s -> (PersistentIndex?, Set<UInt64>, Int?, [(FileName, FileRecord)]) in
            var ex = Set<UInt64>()
            if let inode = excludingFile {
                for name in host.names(of: inode, in: key) {
                    if let r = s.files[name], r.rows > 0, r.inode == inode { ex.formUnion(r.firstLabel..<(r.firstLabel + UInt64(r.rows))) }
                }
            }
            return (s.index, ex, s.settings.dimension, filtered ? s.files.filter { $0.value.rows > 0 }.map { ($0.key, $0.value) } : [])
        }
        guard let index, let dimension else { return [] }
        guard query.count == dimension else { throw .invalid("the query has \(query.count) numbers, the collection's dimension is \(dimension)") }
        let mustCheck = !requester.seesEverything
        let admits = admission(requester: requester, options: options, admissions: admissions)
        // A query never waits for a link in progress: a vector too many changes nothing here.
        let total = index.roughCount
        let few = max(configuration.exactScanRows, total / 20)
        // With `match`, only passages that hold the words: few are scanned exactly, many walked with a filter.
        var matched: [UInt64]?
        if let match = options.match {
            matched = try matchedLabels(match, admits: admits).filter { !excluded.contains($0) }
            if matched!.isEmpty { return [] }
        }
        let found: [Neighbor]
        do {
            if let labels = matched {
                if labels.count <= few || !index.isGraph {
                    found = try query.withUnsafeBufferPointer { q throws(IndexError) in try index.exactSearch(q, k: k, among: labels) }
                } else {
                    let allowed = Set(labels)
                    let filter = SearchFilter(accept: { allowed.contains($0) })
                    found = try query.withUnsafeBufferPointer { q throws(IndexError) in try index.search(q, k: k, ef: options.ef, filter: filter) }
                }
            } else if filtered && files.count <= Collection.judgedWhole {
                // Every file judged now: the rows that pass are known exactly, as label ranges.
                var ranges: [(UInt64, UInt64)] = []
                var rows = 0
                for (name, r) in files where admits(name, r.inode) {
                    ranges.append((r.firstLabel, r.firstLabel + UInt64(r.rows)))
                    rows += r.rows
                }
                if rows == 0 { return [] }
                ranges.sort { $0.0 < $1.0 }
                if rows <= few, index.isGraph {
                    let labels = ranges.flatMap { $0.0..<$0.1 }.filter { !excluded.contains($0) }
                    found = try query.withUnsafeBufferPointer { q throws(IndexError) in try index.exactSearch(q, k: k, among: labels) }
                } else {
                    let filter = SearchFilter(accept: { label in !excluded.contains(label) && Collection.holds(ranges, label) })
                    found = try query.withUnsafeBufferPointer { q throws(IndexError) in try index.search(q, k: k, ef: options.ef, filter: filter) }
                }
            } else if filtered, index.isGraph, let labels = fewAdmitted(files, total: total, few: few, admits: admits) {
                found = try query.withUnsafeBufferPointer { q throws(IndexError) in
                    try index.exactSearch(q, k: k, among: labels.filter { !excluded.contains($0) })
                }
            } else {
                var filter = SearchFilter()
                if excluded.count == 1 { filter.excluding = excluded.first }
                if excluded.count > 1 || mustCheck || filtered {
                    filter.accept = { [self] label in
                        if excluded.count > 1 && excluded.contains(label) { return false }
                        guard mustCheck || filtered else { return true }
                        guard let (name, inode) = state.withLock({ s in s.owner[label].map { ($0, s.files[$0]?.inode ?? 0) } }) else { return false }
                        return admits(name, inode)
                    }
                }
                found = try query.withUnsafeBufferPointer { q throws(IndexError) in try index.search(q, k: k, ef: options.ef, filter: filter) }
            }
        } catch { throw .invalid(error.description) }
        return state.withLock { s in
            var out: [Hit] = []
            for n in found where out.count < k {
                guard let name = s.owner[n.label], let r = s.files[name] else { continue }
                out.append(Hit(name: name, row: r.rows > 1 ? Int(n.label - r.firstLabel) : nil, distance: n.distance))
            }
            return out
        }
    }

    /// Whether the file `name` (inode) may answer a question: readable by `requester` by the kernel's
    /// rules (the caller runs the search with their identity) and passing every condition of
    /// `options`; judged once per file per question (`admissions` outlives one collection's search).
    /// Vector and keyword answers both go through it.
    func admission(requester: Caller, options: QueryOptions, admissions: Admissions) -> (FileName, UInt64) -> Bool {
        let mustCheck = !requester.seesEverything, filtered = !options.conditions.isEmpty
        return { [self] (name: FileName, inode: UInt64) -> Bool in
            if let known = admissions.judged[name] { return known }
            var ok = true
            // A directory that cannot be reopened admits nothing.
            if mustCheck {
                ok = withDirectory { dir in (try? StoreFiles.stat(dir, name)).map(StoreFiles.isRegular) == true && StoreFiles.mayAccess(dir, name, R_OK) } ?? false
            }
            if ok && filtered { ok = options.admits(name) { key, limit in tag(key, of: name, inode: inode, limit: limit) } }
            admissions.judged[name] = ok
            return ok
        }
    }

    /// Up to this many files, a filtered query judges every file before it searches; past it, a
    /// sample decides and the walk judges the files it meets.
    static let judgedWhole = 20_000

    /// Whether `label` falls in one of `ranges` (sorted, half-open, disjoint).
    static func holds(_ ranges: [(UInt64, UInt64)], _ label: UInt64) -> Bool {
        var lo = 0, hi = ranges.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if ranges[mid].1 <= label { lo = mid + 1 } else { hi = mid }
        }
        return lo < ranges.count && ranges[lo].0 <= label
    }

    /// The labels of the files that pass `admits` when a sample says they are few (at most
    /// `few` vectors); nil when the graph walk is the better way.
    func fewAdmitted(_ files: [(FileName, FileRecord)], total: Int, few: Int, admits: (FileName, UInt64) -> Bool) -> [UInt64]? {
        guard !files.isEmpty else { return [] }
        let step = max(1, files.count / 64)
        var sampledRows = 0, admittedRows = 0
        for i in stride(from: 0, to: files.count, by: step) {
            sampledRows += files[i].1.rows
            if admits(files[i].0, files[i].1.inode) { admittedRows += files[i].1.rows }
        }
        guard sampledRows > 0, Double(admittedRows) / Double(sampledRows) * Double(total) <= Double(few) else { return nil }
        var labels: [UInt64] = []
        for (name, r) in files where admits(name, r.inode) {
            labels.append(contentsOf: r.firstLabel..<(r.firstLabel + UInt64(r.rows)))
            // The sample was wrong: the walk is cheaper than a long scan.
            if labels.count > 4 * few { return nil }
        }
        return labels
    }

    // MARK: attributes for filters

    static let maxTags = 1 << 20

    /// The attribute `key` of the file `name` (inode `inode`) if it holds at most `limit` bytes.
    func tag(_ key: String, of name: FileName, inode: UInt64, limit: Int) -> [UInt8]? {
        if let known = tags.withLock({ $0[inode]?[key] }) {
            return known.flatMap { $0.count <= limit ? $0 : nil }
        }
        // Values longer than a filter can hold never match one: not kept.
        guard let read = withDirectory({ try? StoreFiles.attribute($0, name, key, limit: QueryOptions.maxFilterBytes) }) else { return nil }
        let value = read
        tags.withLock { table in
            if table.count >= Collection.maxTags { table.removeAll() }
            table[inode, default: [:]][key] = .some(value)
        }
        return value.flatMap { $0.count <= limit ? $0 : nil }
    }

    /// An attribute of the file `inode` changed: what filters read of it is read again.
    func forgetTags(of inode: UInt64) { tags.withLock { _ = $0.removeValue(forKey: inode) } }

    /// The same, from outside the bridge: cached answers (which filters may have shaped) go too.
    func attributesChanged(of inode: UInt64) {
        forgetTags(of: inode)
        version.add(1, ordering: .releasing)
    }
}
