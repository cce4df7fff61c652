import CLinux
import Glibc
import VexStore
import Synchronization
import VexEmbed
import VexIndex
import VexKernels

// A collection's text files: cut into passages, sent to the embedder through the layer's queue, and
// their vectors taken back when they come (on the embedding thread, under the collection's lock).

extension Collection {
    /// Sends the embedding requests made under the lock; one refused (the endpoint is away and the
    /// queue full) says so in its file's status, and the file is asked for again at its next write
    /// or at the next mount.
    /// Has the host's sender thread send the outbox: sending waits while the endpoint's backlog is
    /// full, and that wait must never hold the bridge's worker (every collection's changes) or a
    /// FUSE thread.
    func sendSoon() {
        if state.withLock({ !$0.outbox.isEmpty }) { host.sendSoon(self) }
    }

    /// Offers the outbox to the embedder's queue; true when some of it is left because the
    /// owner's share of the queue is full (the sender asks again, after other collections' turns).
    func sendOutbox() -> Bool {
        let requests = state.withLock { s in
            defer { s.outbox.removeAll() }
            return s.outbox
        }
        guard let queue = host.embedQueue else { return false }
        for (i, (name, token, author, texts)) in requests.enumerated() {
            switch queue.offer(Bridge.Key(collection: key, name: name), token: token, texts: texts, owner: UInt32(owner), author: UInt32(author)) {
            case .queued:
                continue
            case .full:
                // Back in front of what came since, unless a newer request for a file replaced it.
                state.withLock { s in
                    let newer = Set(s.outbox.map(\.name))
                    s.outbox = requests[i...].filter { s.embedding[$0.name] == $0.token && !newer.contains($0.name) } + s.outbox
                }
                queue.waitForRoom(owner: UInt32(owner), seconds: 0.02)
                return true
            case .refused:
                state.withLock { s in
                    guard s.embedding[name] == token, var r = s.files[name] else { return }
                    r.status = "not indexed: embedder unreachable and \(queue.backlogBound) texts already wait: read again at the next write or mount"
                    s.files[name] = r
                    s.embedding[name] = nil
                }
            }
        }
        return false
    }

    /// The rules this collection classifies its names by.
    func rules(_ s: borrowing State) -> NameRules { NameRules(textGlobs: s.settings.embedGlobs, embedding: host.embedQueue != nil) }

    /// Whether `name` is a text file to embed here.
    func isText(_ name: FileName, _ s: borrowing State) -> Bool { rules(s).kind(of: name) == .text }

    /// A text file as it is now: cut into passages and sent to be embedded (its vectors arrive in
    /// `embedded`); until then it holds none, and its status says so.
    func readText(_ name: FileName, _ st: stat, _ record: inout FileRecord, _ s: inout State) {
        let text: [UInt8]
        let read = withDirectory { dir in FormatError.reading { () throws(ReadRefusal) in try StoreFiles.read(dir, name, limit: SemanticLayer.maxTextBytes) } }
        switch read ?? .failure(FormatError("the directory cannot be reopened now")) {
        case .failure(let e):
            record.status = "not indexed: \(e)"
            return
        case .success(let bytes): text = bytes
        }
        guard String(validating: text, as: UTF8.self) != nil, !text.contains(0) else {
            record.status = "not indexed: not UTF-8 text"
            return
        }
        let ranges = Passages.split(text, limit: configuration.embedChunk)
        guard !ranges.isEmpty else {
            record.status = "not indexed: no text"
            return
        }
        record.passages = ranges
        putKeywords(name, record, text, &s)
        record.status = "not indexed yet: \(ranges.count == 1 ? "1 passage" : "\(ranges.count) passages") waiting for the embedder"
        let token = host.nextEmbedToken()
        s.embedding[name] = token
        s.outbox.append((name, token, st.st_uid, ranges.map { String(decoding: text[$0], as: UTF8.self) }))
    }

    /// The vectors (or the failure) of the embedding request `token` for `name`: applied if the
    /// request is still the newest for the file and the file has not changed since it was read.
    func embedded(_ name: FileName, token: UInt64, _ result: Result<[[Float]], EmbedError>, retrying: Bool) {
        let readAgain = state.withLock { s -> Bool in
            guard s.embedding[name] == token, var record = s.files[name] else { return false }
            switch result {
            case .failure(let e):
                record.status = "not indexed: \(e)" + (retrying ? " (retrying)" : "")
                if !retrying { s.embedding[name] = nil }
                s.files[name] = record
                return false
            case .success(let vectors):
                s.embedding[name] = nil
                guard let st = withDirectory({ try? StoreFiles.stat($0, name) }) ?? nil else { return false }
                // Changed since it was read: a write is read again at its close, but a chmod or an
                // attribute set after the write (cp -p) is no write. Read again now; the passages
                // that did not change come back from the embedding cache.
                guard record.sameSignature(st) else {
                    refresh(name, &s)
                    return true
                }
                let d = vectors[0].count
                guard let index = index(forDimension: d, &s), vectors.count == record.passages.count else {
                    record.status = "not indexed: the embedder gives \(d) numbers, the collection's dimension is \(s.settings.dimension ?? 0)"
                    s.files[name] = record
                    published(s)
                    return false
                }
                // Passages count against the same memory and the owner's share as vector files.
                let room = host.room(forDimension: d, replacing: 0, owner: owner)
                guard vectors.count <= room.rows else {
                    record.status = "not indexed: \(vectors.count) passages of dimension \(d); \(room.limit) holds \(room.rows) more"
                    s.files[name] = record
                    published(s)
                    return false
                }
                record.firstLabel = s.nextLabel
                s.nextLabel += UInt64(vectors.count)
                let labels = (0..<UInt64(vectors.count)).map { record.firstLabel + $0 }
                do throws(IndexError) {
                    for (label, v) in zip(labels, vectors) { try v.withUnsafeBufferPointer { v throws(IndexError) in try index.insert(label: label, vector: v) } }
                    record.rows = vectors.count
                    for label in labels { s.owner[label] = name }
                    record.status = vectors.count == 1 ? "indexed" : "indexed: \(vectors.count) passages"
                } catch {
                    // An answer with a number that is not finite, or a full graph: none of the
                    // file's passages stay.
                    index.remove(labels: labels)
                    record.status = "not indexed: \(error)"
                }
                s.files[name] = record
                published(s)
                host.journal.record(.index, s.path.child(name), detail: ["status": record.journalStatus])
                considerCheckpoint(&s)
                return false
            }
        }
        if readAgain { sendSoon() }
    }
}
