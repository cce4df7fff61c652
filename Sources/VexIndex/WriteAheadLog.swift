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

/// The write-ahead log of one index: inserts and removes appended by the writer, made durable in
/// batches by a background thread (group commit: one write and one fdatasync per batch, a batch
/// closed after `batchRecords` records or `batchDelay` after its first). A bounded queue: append
/// waits while `maxPendingBytes` are not yet written.
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

    private let fd: Int32
    private let state = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let wake = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private let written = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    // Guarded by `state`.
    private var pending: [UInt8] = []
    private var pendingRecords = 0
    private var firstPendingAt = timespec()
    private var appended = 0        // records handed to append
    private var durable = 0         // records written and fdatasynced
    private var failure: Int32?
    private var stopping = false
    private var fileBytes: Int
    private var thread = pthread_t()

    /// Opens (creating when missing) the log at `path` for appending; `replay` must have cut a
    /// damaged tail first.
    public init(path: String, batchRecords: Int = 512, batchDelayMilliseconds: Int = 2, maxPendingBytes: Int = 32 << 20) throws(PersistenceError) {
        self.path = path
        self.batchRecords = batchRecords
        batchDelayNanoseconds = batchDelayMilliseconds * 1_000_000
        self.maxPendingBytes = maxPendingBytes
        fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .io(path: path, errno: errno) }
        let size = lseek(fd, 0, SEEK_END)
        if size == 0 {
            guard write(fd, WriteAheadLog.magic, 8) == 8, fdatasync(fd) == 0 else { let e = errno; Glibc.close(fd); throw .io(path: path, errno: e) }
            try syncDirectory(of: path)
        }
        fileBytes = max(Int(size), 8)
        pthread_mutex_init(state, nil)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(wake, &attr)
        pthread_cond_init(written, nil)
        pthread_condattr_destroy(&attr)
        let rc = pthread_create(&thread, nil, { arg in
            Unmanaged<WriteAheadLog>.fromOpaque(arg!).takeUnretainedValue().commitLoop()
            return nil
        }, Unmanaged.passUnretained(self).toOpaque())
        precondition(rc == 0, "cannot start the log writer")
    }

    deinit {
        close()
        pthread_mutex_destroy(state); pthread_cond_destroy(wake); pthread_cond_destroy(written)
        state.deallocate(); wake.deallocate(); written.deallocate()
    }

    /// Bytes in the file plus those waiting: what decides when to snapshot.
    public var size: Int { locked { fileBytes + pending.count } }

    /// Queues one record; returns its sequence number (for `waitDurable`).
    @discardableResult
    public func append(_ record: LogRecord) -> Int {
        let bytes = WriteAheadLog.encode(record)
        return locked {
            while pending.count + bytes.count > maxPendingBytes && pending.count > 0 && !stopping {
                pthread_cond_wait(written, state)
            }
            if pendingRecords == 0 { clock_gettime(CLOCK_MONOTONIC, &firstPendingAt) }
            pending.append(contentsOf: bytes)
            pendingRecords += 1
            appended += 1
            if pendingRecords == 1 || pendingRecords >= batchRecords { pthread_cond_signal(wake) }
            return appended
        }
    }

    /// Waits until every record appended so far is on disk; the first write error, if any.
    @discardableResult
    public func flush() -> PersistenceError? {
        locked {
            let target = appended
            if durable < target { flushRequested = true }
            pthread_cond_signal(wake)
            while durable < target && failure == nil { pthread_cond_wait(written, state) }
            return failure.map { .io(path: path, errno: $0) }
        }
    }

    /// Flushes and stops the writer thread; the file stays.
    public func close() {
        let running: Bool = locked {
            guard !stopping else { return false }
            stopping = true
            pthread_cond_signal(wake)
            return true
        }
        guard running else { return }
        pthread_join(thread, nil)
        Glibc.close(fd)
    }

    private func commitLoop() {
        pthread_mutex_lock(state)
        while true {
            while pending.isEmpty && !stopping { pthread_cond_wait(wake, state) }
            if pending.isEmpty && stopping { break }
            // Hold the batch open until it is full or old enough (or the log is closing / flushed).
            var deadline = firstPendingAt
            deadline.tv_nsec += batchDelayNanoseconds
            if deadline.tv_nsec >= 1_000_000_000 { deadline.tv_sec += 1; deadline.tv_nsec -= 1_000_000_000 }
            while pendingRecords < batchRecords && !stopping && !flushRequested {
                if pthread_cond_timedwait(wake, state, &deadline) == ETIMEDOUT { break }
            }
            let batch = pending, count = pendingRecords
            pending = []
            pendingRecords = 0
            flushRequested = false
            pthread_mutex_unlock(state)
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
            pthread_mutex_lock(state)
            fileBytes += batch.count
            if let error, failure == nil { failure = error }
            durable += count
            batchCount += 1
            pthread_cond_broadcast(written)
        }
        pthread_mutex_unlock(state)
    }

    /// Batches written so far (each one write and one fdatasync).
    public var batches: Int { locked { batchCount } }
    private var batchCount = 0

    /// Set by `flush` so the writer does not wait out the batch delay.
    private var flushRequested = false

    private func locked<R>(_ body: () -> R) -> R {
        pthread_mutex_lock(state)
        defer { pthread_mutex_unlock(state) }
        return body()
    }

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
