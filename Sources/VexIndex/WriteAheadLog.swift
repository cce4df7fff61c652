import CCompress
import Glibc

/// One change to an index, as the log keeps it.
public enum LogRecord: Equatable, Sendable {
    case insert(label: UInt64, vector: [Float])
    case remove(label: UInt64)
}

/// What replaying a log found: records applied, and where a torn or damaged tail was cut.
public struct LogReplay: Equatable, Sendable {
    public var records: [LogRecord] = []
    /// Byte offset of the first bad record, when the file was cut there.
    public var cutAt: Int?
    public var bytesDropped = 0
    public var reason: String?
}

/// Makes logs durable in the background: one thread for every log that names it, so a thousand
/// collections cost one thread, not a thousand. The thread starts with the first log and ends when
/// the last one closes. Each log's batch is closed after `batchRecords` records or `batchDelay`
/// after its first record, then written with one write and one fdatasync (group commit).
public final class LogCommitter: @unchecked Sendable {
    /// Guards every registered log's queue and counters, and `logs`/`running`.
    fileprivate let queues = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    fileprivate let wake = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    fileprivate let written = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var logs: [ObjectIdentifier: WriteAheadLog] = [:]
    private var running = false

    public init() {
        pthread_mutex_init(queues, nil)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(wake, &attr)
        pthread_cond_init(written, nil)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        pthread_mutex_destroy(queues); pthread_cond_destroy(wake); pthread_cond_destroy(written)
        queues.deallocate(); wake.deallocate(); written.deallocate()
    }

    fileprivate func locked<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        pthread_mutex_lock(queues)
        defer { pthread_mutex_unlock(queues) }
        return try body()
    }

    /// Call with `queues` held. Fails (instead of aborting) when no thread can be started.
    fileprivate func register(_ log: WriteAheadLog) throws(PersistenceError) {
        logs[ObjectIdentifier(log)] = log
        guard !running else { return }
        var thread = pthread_t()
        let me = Unmanaged.passRetained(self).toOpaque()
        let rc = pthread_create(&thread, nil, { arg in
            let committer = Unmanaged<LogCommitter>.fromOpaque(arg!).takeRetainedValue()
            committer.commitLoop()
            return nil
        }, me)
        guard rc == 0 else {
            Unmanaged<LogCommitter>.fromOpaque(me).release()
            logs[ObjectIdentifier(log)] = nil
            throw .io(path: log.path, errno: rc)
        }
        pthread_detach(thread)
        running = true
    }

    /// Call with `queues` held.
    fileprivate func unregister(_ log: WriteAheadLog) {
        logs[ObjectIdentifier(log)] = nil
        pthread_cond_broadcast(wake)
    }

    private func commitLoop() {
        pthread_mutex_lock(queues)
        while true {
            if logs.isEmpty {
                running = false
                break
            }
            var now = timespec()
            clock_gettime(CLOCK_MONOTONIC, &now)
            var due: [(WriteAheadLog, [UInt8], Int)] = []
            var earliest: timespec?
            for log in logs.values where !log.pending.isEmpty {
                let deadline = log.firstPendingAt.adding(nanoseconds: log.batchDelayNanoseconds)
                if log.pendingRecords >= log.batchRecords || log.stopping || log.flushRequested || !now.isBefore(deadline) {
                    due.append((log, log.pending, log.pendingRecords))
                    log.pending = []
                    log.pendingRecords = 0
                    log.flushRequested = false
                } else if earliest.map({ deadline.isBefore($0) }) ?? true {
                    earliest = deadline
                }
            }
            if due.isEmpty {
                if var until = earliest { pthread_cond_timedwait(wake, queues, &until) } else { pthread_cond_wait(wake, queues) }
                continue
            }
            pthread_mutex_unlock(queues)
            let outcomes = due.map { log, batch, _ in log.writeOut(batch) }
            pthread_mutex_lock(queues)
            for ((log, batch, count), error) in zip(due, outcomes) {
                log.fileBytes += batch.count
                if let error, log.failure == nil { log.failure = error }
                log.durable += count
                log.batchCount += 1
            }
            pthread_cond_broadcast(written)
        }
        pthread_mutex_unlock(queues)
    }
}

extension timespec {
    fileprivate func adding(nanoseconds: Int) -> timespec {
        var t = self
        t.tv_nsec += nanoseconds
        while t.tv_nsec >= 1_000_000_000 { t.tv_sec += 1; t.tv_nsec -= 1_000_000_000 }
        return t
    }

    fileprivate func isBefore(_ other: timespec) -> Bool {
        tv_sec < other.tv_sec || (tv_sec == other.tv_sec && tv_nsec < other.tv_nsec)
    }
}

/// The write-ahead log of one index: inserts and removes appended by the writer, made durable in
/// batches by a `LogCommitter` shared with other logs. A bounded queue: append waits while
/// `maxPendingBytes` are not yet written.
///
///     file   = "VEXWAL01" record*
///     record = length:u32 crc32c(payload):u32 payload
///     payload = 1:u8 label:u64 float32 * dim  |  2:u8 label:u64
public final class WriteAheadLog: @unchecked Sendable {
    static let magic: [UInt8] = Array("VEXWAL01".utf8)
    public let path: String
    let batchRecords: Int
    let batchDelayNanoseconds: Int
    let maxPendingBytes: Int
    let committer: LogCommitter

    private let fd: Int32
    // Guarded by the committer's `queues`.
    fileprivate var pending: [UInt8] = []
    fileprivate var pendingRecords = 0
    fileprivate var firstPendingAt = timespec()
    fileprivate var appended = 0        // records handed to append
    fileprivate var durable = 0         // records written and fdatasynced
    fileprivate var failure: Int32?
    /// Set by `close`: the rest is written out and no batch waits for more.
    fileprivate var stopping = false
    fileprivate var fileBytes: Int
    fileprivate var batchCount = 0
    /// Set by `flush` so the committer does not wait out the batch delay.
    fileprivate var flushRequested = false

    /// Opens (creating when missing) the log at `path` for appending; `replay` must have cut a
    /// damaged tail first.
    public init(path: String, committer: LogCommitter = LogCommitter(), batchRecords: Int = 512, batchDelayMilliseconds: Int = 2,
                maxPendingBytes: Int = 32 << 20) throws(PersistenceError) {
        self.path = path
        self.committer = committer
        self.batchRecords = batchRecords
        batchDelayNanoseconds = batchDelayMilliseconds * 1_000_000
        self.maxPendingBytes = maxPendingBytes
        fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .io(path: path, errno: errno) }
        let size = lseek(fd, 0, SEEK_END)
        if size == 0 {
            guard write(fd, WriteAheadLog.magic, 8) == 8, fdatasync(fd) == 0 else { let e = errno; Glibc.close(fd); throw .io(path: path, errno: e) }
            do { try syncDirectory(of: path) } catch { Glibc.close(fd); throw error }
        }
        fileBytes = max(Int(size), 8)
        do { try committer.locked { () throws(PersistenceError) in try committer.register(self) } } catch {
            Glibc.close(fd)
            throw error
        }
    }

    deinit { close() }

    /// Bytes in the file plus those waiting: what decides when to snapshot.
    public var size: Int { committer.locked { fileBytes + pending.count } }

    /// Queues one record; returns its sequence number (for `waitDurable`).
    @discardableResult
    public func append(_ record: LogRecord) -> Int {
        let bytes = WriteAheadLog.encode(record)
        return committer.locked {
            while pending.count + bytes.count > maxPendingBytes && pending.count > 0 && !stopping {
                pthread_cond_wait(committer.written, committer.queues)
            }
            if pendingRecords == 0 { clock_gettime(CLOCK_MONOTONIC, &firstPendingAt) }
            pending.append(contentsOf: bytes)
            pendingRecords += 1
            appended += 1
            if pendingRecords == 1 || pendingRecords >= batchRecords { pthread_cond_signal(committer.wake) }
            return appended
        }
    }

    /// Waits until every record appended so far is on disk; the first write error, if any.
    @discardableResult
    public func flush() -> PersistenceError? {
        committer.locked {
            let target = appended
            if durable < target { flushRequested = true }
            pthread_cond_broadcast(committer.wake)
            while durable < target && failure == nil { pthread_cond_wait(committer.written, committer.queues) }
            return failure.map { .io(path: path, errno: $0) }
        }
    }

    /// Writes out what is queued and leaves the committer; the file stays.
    public func close() {
        let first: Bool = committer.locked {
            guard !stopping else { return false }
            stopping = true
            pthread_cond_broadcast(committer.wake)
            while durable < appended && failure == nil { pthread_cond_wait(committer.written, committer.queues) }
            committer.unregister(self)
            return true
        }
        if first { Glibc.close(fd) }
    }

    /// One batch to the file: one write, one fdatasync. Runs on the committer's thread, unlocked.
    fileprivate func writeOut(_ batch: [UInt8]) -> Int32? {
        var error: Int32?
        batch.withUnsafeBytes { buf in
            var done = 0
            while done < buf.count {
                let n = write(fd, buf.baseAddress! + done, buf.count - done)
                if n < 0 { if errno == EINTR { continue }; error = errno; return }
                done += n
            }
            if fdatasync(fd) != 0 { error = errno }
        }
        return error
    }

    /// Batches written so far (each one write and one fdatasync).
    public var batches: Int { committer.locked { batchCount } }

    static func encode(_ record: LogRecord) -> [UInt8] {
        var payload = ByteWriter()
        switch record {
        case .insert(let label, let vector):
            payload.put(UInt8(1)); payload.put(label)
            for x in vector { payload.put(x) }
        case .remove(let label):
            payload.put(UInt8(2)); payload.put(label)
        }
        var out = ByteWriter()
        out.put(UInt32(payload.bytes.count))
        out.put(vx_crc32c(0, payload.bytes, payload.bytes.count))
        out.bytes.append(contentsOf: payload.bytes)
        return out.bytes
    }

    /// Reads every whole, intact record of the log at `path` for an index of `dimension`, and cuts
    /// the file at the first record that is torn or damaged (reported, never fatal). A missing file
    /// is an empty log.
    public static func replay(path: String, dimension: Int) throws(PersistenceError) -> LogReplay {
        var result = LogReplay()
        let file: [UInt8]
        do { file = try readFile(path) } catch .io(_, ENOENT) { return result }
        func cut(at offset: Int, _ reason: String) throws(PersistenceError) {
            result.cutAt = offset
            result.bytesDropped = file.count - offset
            result.reason = reason
            guard truncate(path, off_t(offset)) == 0 else { throw .io(path: path, errno: errno) }
        }
        guard file.count >= 8, Array(file[0..<8]) == magic else {
            try cut(at: 0, file.count < 8 ? "the header is torn" : "not a vexfs log")
            return result
        }
        var r = ByteReader(file)
        r.offset = 8
        while r.remaining > 0 {
            let start = r.offset
            guard let length = try? r.get(UInt32.self), let crc = try? r.get(UInt32.self), Int(length) <= r.remaining else {
                try cut(at: start, "the last record is torn")
                return result
            }
            let payload = Array(file[r.offset..<(r.offset + Int(length))])
            guard vx_crc32c(0, payload, payload.count) == crc else {
                try cut(at: start, "a record fails its checksum")
                return result
            }
            var p = ByteReader(payload)
            let op = try? p.get(UInt8.self), label = try? p.get(UInt64.self)
            switch (op, label) {
            case (1, let label?) where p.remaining == dimension * 4:
                var v = [Float](repeating: 0, count: dimension)
                for i in 0..<dimension { v[i] = (try? p.getFloat()) ?? 0 }
                result.records.append(.insert(label: label, vector: v))
            case (2, let label?) where p.remaining == 0:
                result.records.append(.remove(label: label))
            default:
                try cut(at: start, "a record has the wrong shape")
                return result
            }
            r.offset += Int(length)
        }
        return result
    }
}
