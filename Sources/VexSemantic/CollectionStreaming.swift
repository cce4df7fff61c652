import CLinux
import Glibc
import VexStore
import Synchronization
import VexEmbed
import VexIndex
import VexKernels

// A vector file too big to read whole (`.npy`, `.fvecs` past the stream threshold) is read a slice at
// a time on the bridge's builder, with the collection's lock let go between slices, within the
// memory the mount has left for indexes.

extension Collection {
    /// Indexes a file too big to read whole, a slice of rows at a time, each slice built on every
    /// core. A file that turns out bad part of the way through (a number that is not finite, a
    /// record of another dimension) leaves none of its vectors behind.
    /// False when the mount stopped it part of the way (the file is then out of the catalog).
    func stream(_ name: FileName, _ format: VectorFormat, _ record: inout FileRecord, replacing old: FileRecord?, _ s: inout State) -> Bool {
        guard let job = startStream(name, format, &record, replacing: old, &s) else { return true }
        switch feed(job) {
        case .stopped:
            abandon(name, labels: job.labels, &s)
            return false
        case .read: endStream(job, failure: nil, &record, &s)
        case .failed(let reason): endStream(job, failure: reason, &record, &s)
        }
        return true
    }

    /// A streamed file once its labels are taken: what reading it needs, none of it the state.
    struct StreamJob {
        let name: FileName
        let input: VectorStream
        let index: PersistentIndex
        let firstLabel: UInt64
        let shown: String
        var labels: [UInt64] { Array(firstLabel..<(firstLabel + UInt64(input.rows))) }
    }

    /// How reading a stream ended.
    enum StreamEnd {
        case read
        case failed(String)
        /// The mount is stopping: given up between slices.
        case stopped
    }

    /// Opens the stream, checks it against the collection and memory, and takes its labels (each
    /// owned by `name` from now on); nil, with `record`'s status saying why, when it is not read.
    func startStream(_ name: FileName, _ format: VectorFormat, _ record: inout FileRecord, replacing old: FileRecord?,
                             _ s: inout State) -> StreamJob? {
        let input: VectorStream
        let opened = withDirectory { dir in Result { () throws(FormatError) in try VectorStream(dir, name, format) } }
            ?? .failure(FormatError("the directory cannot be reopened now"))
        do { input = try opened.get() } catch {
            record.status = "not indexed: \(error)"
            release(old, &s)
            return nil
        }
        guard let index = index(forDimension: input.dimension, &s) else {
            record.status = "not indexed: \(input.dimension) numbers, the collection's dimension is \(s.settings.dimension ?? 0)"
            release(old, &s)
            return nil
        }
        // A sparse file claims millions of rows at no cost to its writer: refuse what memory cannot
        // hold before reading any of it, rather than let the daemon be killed for memory.
        let room = host.room(forDimension: input.dimension, replacing: old?.rows ?? 0, owner: owner)
        guard input.rows <= room.rows else {
            record.status = "not indexed: \(input.rows) vectors of dimension \(input.dimension); \(room.limit) holds \(room.rows) more"
            release(old, &s)
            return nil
        }
        assignLabels(input.rows, to: &record, replacing: old, &s)
        for l in record.firstLabel..<(record.firstLabel + UInt64(input.rows)) { s.owner[l] = name }
        record.rows = input.rows
        return StreamJob(name: name, input: input, index: index, firstLabel: record.firstLabel, shown: shown(s))
    }

    /// Reads and indexes the whole file (no lock of the collection needed).
    func feed(_ job: StreamJob) -> StreamEnd {
        var slice: [Float] = []
        var done = 0
        while done < job.input.rows {
            if host.isStopping { return .stopped }
            let rows = done..<min(job.input.rows, done + job.input.sliceRows)
            do { try job.input.read(rows, into: &slice) } catch { return .failed("\(error)") }
            let labels = rows.map { job.firstLabel + UInt64($0) }
            switch slice.withUnsafeBufferPointer({ insertInPieces(job.index, labels: labels, vectors: $0) }) {
            case .failure(let error): return .failed("\(error)")
            case .success(false): return .stopped
            case .success(true): break
            }
            done = rows.upperBound
            host.progressed("\(job.shown)/\(job.name.escaped): \(done) of \(job.input.rows) vectors")
        }
        return .read
    }

    /// Inserts `vectors` under `labels` on every core, a piece at a time, each sized to take about
    /// a quarter of a second, so that a stopping mount waits for one piece of a long file at most
    /// (`mayGiveUp`: a small file is always finished, as unmount applies what is pending). Fewer
    /// than 1,024 rows go in at once on one thread. `.success(false)`: the mount is stopping, and
    /// only some of them went in.
    func insertInPieces(_ index: PersistentIndex, labels: [UInt64], vectors: UnsafeBufferPointer<Float>,
                        mayGiveUp: Bool = true) -> Result<Bool, IndexError> {
        let dimension = index.dimension
        guard labels.count >= 1024 else {
            return Result { () throws(IndexError) in try index.insert(batch: labels, vectors: vectors, threads: 1) }.map { true }
        }
        var done = 0
        var piece = 4096
        while done < labels.count {
            if mayGiveUp && host.isStopping { return .success(false) }
            let end = min(labels.count, done + piece)
            let began = QueryBudget.Deadline.now()
            do {
                try index.insert(batch: Array(labels[done..<end]), vectors: UnsafeBufferPointer(rebasing: vectors[(done * dimension)..<(end * dimension)]),
                                 threads: availableCores)
            } catch { return .failure(error) }
            let seconds = max(Double(QueryBudget.Deadline.now() - began) / 1e9, 1e-3)
            piece = max(1024, min(1 << 20, Int(Double(end - done) * 0.25 / seconds)))
            done = end
        }
        return .success(true)
    }

    /// Settles `record` after `feed`: indexed, or (failed) none of its vectors left.
    func endStream(_ job: StreamJob, failure: String?, _ record: inout FileRecord, _ s: inout State) {
        if let failure {
            let labels = Array(job.firstLabel..<(job.firstLabel + UInt64(job.input.rows)))
            job.index.remove(labels: labels)
            for l in labels { s.owner[l] = nil }
            record.rows = 0
            record.status = "not indexed: \(failure)"
        } else {
            record.status = "indexed: \(job.input.rows) vectors"
        }
    }

    /// Applies a refresh of a file read through a stream (the bridge's builder, with this
    /// collection held) without holding the collection's lock while it reads: queries here that
    /// need not wait for the file (read-your-writes waits only for changes made before a query)
    /// answer meanwhile, and see its vectors arrive a slice at a time. False when `name` is not
    /// such a file (then it is applied the usual way).
    func applyStreamed(_ name: FileName) -> Bool {
        let begun = state.withLock { s -> (job: StreamJob?, record: FileRecord)? in
            guard !name.isQuery, let st = withDirectory({ try? StoreFiles.stat($0, name) }) ?? nil, StoreFiles.isRegular(st), !isText(name, s),
                  let format = configuration.streamedFormat(name, st) else { return nil }
            if let r = s.files[name], r.sameSignature(st) { return (nil, r) }
            var record = FileRecord(st)
            let old = s.files[name]
            let job = startStream(name, format, &record, replacing: old, &s)
            if let job { record.status = "not indexed yet: reading \(job.input.rows) vectors" }
            keep(record, as: name, replacing: old, &s)
            published(s)
            if job == nil { host.journal.record(.index, s.path.child(name), detail: ["status": record.journalStatus]) }
            return (job, record)
        }
        guard let begun else { return false }
        guard let job = begun.job else { return true }
        let end = feed(job)
        state.withLock { s in
            var record = begun.record
            let failure: String?
            switch end {
            case .stopped:
                abandon(name, labels: job.labels, &s)
                return
            case .read: failure = nil
            case .failed(let reason): failure = reason
            }
            endStream(job, failure: failure, &record, &s)
            // Only this thread changes this file's entry while the builder holds the collection.
            s.files[name] = record
            s.unsavedFiles += 1
            published(s)
            host.journal.record(.index, s.path.child(name), detail: ["status": record.journalStatus])
            considerCheckpoint(&s)
            considerMeasuring(&s)
        }
        return true
    }
}
