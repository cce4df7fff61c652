import CoreMetrics
import Glibc
import Logging

/// Texts waiting to become vectors, from many callers, turned into few requests by one thread. A
/// job is one caller's texts under a key; a newer job for the same key replaces a waiting one. A
/// request carries whole jobs up to the batch bounds (a larger job goes alone, in several requests).
/// When a request fails, its jobs wait and are tried again after 1, 2, 4 ... 60 s, and the caller
/// hears why at once (for a status line) and again when they finally succeed. While the endpoint
/// answers, `submit` waits when the backlog is full (backpressure); while it does not, a job past
/// the bound is refused, so a writer never waits on a dead endpoint. With a `memory`, texts it holds
/// vectors for are answered from it and never sent, and what the endpoint gives is kept in it.
///
/// Jobs belong to owners (the user whose collection asks). Requests take turns by owner: each is
/// filled first with the jobs of the owners served least lately, so one user's thousands of texts
/// delay another's by about one request, not by the pile. An owner other than root may have at most
/// `shareBound` texts waiting; past it `offer` says `.full` at once instead of waiting, so the one
/// thread that offers every collection's texts never waits on one user's behalf.
public final class EmbedQueue<Key: Hashable & Sendable>: @unchecked Sendable {
    /// `retrying`: a failure that will be tried again (the endpoint away, or busy); false for one it
    /// refused for good (a 4xx about this text).
    public typealias Done = @Sendable (_ key: Key, _ token: UInt64, _ result: Result<[[Float]], EmbedError>, _ retrying: Bool) -> Void

    struct Job {
        let key: Key
        let token: UInt64
        let owner: UInt32
        /// Whose texts they are, for `memory`: the user who wrote them.
        let author: UInt32
        /// The texts to send: those `memory` had no vector for.
        let texts: [String]
        /// The caller's texts in order: the vector `memory` had, nil for one sent.
        var known: [[Float]?] = []
        var attempts = 0
        var notBefore = 0.0
        /// Sent in a request of its own: a request with it was refused, and this finds out whose text.
        var alone = false
    }

    let client: EmbeddingClient
    let metrics: EmbedMetrics
    let memory: (any EmbeddingMemory)?
    private let done: Done
    /// Texts waiting at most, and of one owner other than root.
    public let backlogBound: Int
    public var shareBound: Int { max(1, backlogBound / 4) }
    private let logger = Logger(label: "vexfs")

    /// Guards everything below.
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let changed = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var jobs: [Job] = []
    private var waitingTexts = 0
    private var waitingByOwner: [UInt32: Int] = [:]
    /// When each owner's jobs last went in a request (a count of requests), for turns.
    private var served: [UInt32: UInt64] = [:]
    private var requestsMade: UInt64 = 0
    private var reachable = true
    private var stopping = false
    private var thread = pthread_t()

    private init(client: EmbeddingClient, metrics: EmbedMetrics, memory: (any EmbeddingMemory)?, backlogBound: Int, done: @escaping Done) {
        self.client = client
        self.metrics = metrics
        self.memory = memory
        self.backlogBound = backlogBound
        self.done = done
        pthread_mutex_init(lock, nil)
        pthread_cond_init(changed, nil)
    }

    /// A queue with its thread running.
    public static func start(client: EmbeddingClient, metrics: EmbedMetrics, memory: (any EmbeddingMemory)? = nil, backlogBound: Int = 65_536,
                             done: @escaping Done) -> EmbedQueue {
        let q = EmbedQueue(client: client, metrics: metrics, memory: memory, backlogBound: backlogBound, done: done)
        q.thread = spawn { q.run() }
        return q
    }

    deinit {
        pthread_mutex_destroy(lock)
        pthread_cond_destroy(changed)
        lock.deallocate()
        changed.deallocate()
    }

    /// What `offer` did with a job.
    public enum Offer: Sendable { case queued, full, refused }

    /// Queues `texts` under `key`; false when refused (the endpoint is away and the backlog full).
    /// When `memory` holds every text's vector, `done` hears at once, on this thread.
    @discardableResult
    public func submit(_ key: Key, token: UInt64, texts all: [String]) -> Bool {
        offer(key, token: token, texts: all, owner: 0, author: 0) == .queued
    }

    /// Queues `owner`'s `texts` under `key`: `.refused` when the endpoint is away and the backlog
    /// full, `.full` (nothing queued, nothing waited for) when an owner other than root has their
    /// share waiting already. While the endpoint answers and the whole backlog is full, it waits.
    /// When `memory` holds every text's vector (kept for `author`'s texts), `done` hears at once,
    /// on this thread.
    public func offer(_ key: Key, token: UInt64, texts all: [String], owner: UInt32, author: UInt32) -> Offer {
        var known: [[Float]?] = []
        var texts = all
        if let memory {
            known = memory.recall(all, owner: author)
            texts = zip(all, known).filter { $0.1 == nil }.map(\.0)
            if texts.isEmpty {
                metrics.cacheHits.increment(by: all.count)
                cancel(key)
                done(key, token, .success(known.map { $0! }), false)
                return .queued
            }
        }
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        cancelLocked(key)
        let mine = waitingByOwner[owner] ?? 0
        if owner != 0 && !stopping && mine > 0 && mine + texts.count > shareBound { return .full }
        while reachable && !stopping && waitingTexts > 0 && waitingTexts + texts.count > backlogBound {
            pthread_cond_wait(changed, lock)
        }
        guard !stopping, reachable || waitingTexts + texts.count <= backlogBound else { return .refused }
        if memory != nil {
            metrics.cacheHits.increment(by: all.count - texts.count)
            metrics.cacheMisses.increment(by: texts.count)
        }
        add(Job(key: key, token: token, owner: owner, author: author, texts: texts, known: known))
        pthread_cond_broadcast(changed)
        return .queued
    }

    /// Waits until `owner` has room for more texts, or `seconds` have passed.
    public func waitForRoom(owner: UInt32, seconds: Double) {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        var until = timespec()
        clock_gettime(CLOCK_REALTIME, &until)
        let ns = Int(until.tv_nsec) + Int(seconds * 1e9)
        until.tv_sec += ns / 1_000_000_000
        until.tv_nsec = ns % 1_000_000_000
        while !stopping && (waitingByOwner[owner] ?? 0) >= shareBound {
            if pthread_cond_timedwait(changed, lock, &until) == ETIMEDOUT { break }
        }
    }

    private func add(_ job: Job) {
        jobs.append(job)
        waitingTexts += job.texts.count
        waitingByOwner[job.owner, default: 0] += job.texts.count
    }

    private func drop(_ job: Job) {
        waitingTexts -= job.texts.count
        waitingByOwner[job.owner, default: 0] -= job.texts.count
        if waitingByOwner[job.owner] == 0 { waitingByOwner[job.owner] = nil }
    }

    /// Forgets the waiting job of `key` (its file changed or went).
    public func cancel(_ key: Key) {
        pthread_mutex_lock(lock)
        cancelLocked(key)
        pthread_mutex_unlock(lock)
    }

    private func cancelLocked(_ key: Key) {
        if let i = jobs.firstIndex(where: { $0.key == key }) {
            drop(jobs[i])
            jobs.remove(at: i)
            pthread_cond_broadcast(changed)
        }
    }

    public var backlog: Int {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return waitingTexts
    }

    /// Stops the thread; waiting jobs are dropped (their files are read again at the next mount).
    public func stop() {
        pthread_mutex_lock(lock)
        stopping = true
        pthread_cond_broadcast(changed)
        pthread_mutex_unlock(lock)
        pthread_join(thread, nil)
    }

    static func now() -> Double {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
    }

    private func run() {
        while true {
            // The jobs of the next request: ready ones, in order, up to the bounds.
            pthread_mutex_lock(lock)
            var batch: [Job] = []
            while !stopping {
                let now = EmbedQueue.now()
                var texts = 0, bytes = 0
                var taken: [Int] = []
                // Ready jobs, those of the owners served least lately first, each owner's in order.
                let ready = jobs.indices.filter { jobs[$0].notBefore <= now }
                    .sorted { (served[jobs[$0].owner] ?? 0, $0) < (served[jobs[$1].owner] ?? 0, $1) }
                for i in ready {
                    let job = jobs[i]
                    let size = job.texts.reduce(0) { $0 + $1.utf8.count }
                    if !taken.isEmpty && (job.alone || texts + job.texts.count > client.configuration.batchTexts
                                          || bytes + size > client.configuration.batchBytes) { break }
                    if job.alone {
                        taken.append(i)
                        break
                    }
                    taken.append(i)
                    texts += job.texts.count
                    bytes += size
                }
                if !taken.isEmpty {
                    batch = taken.map { jobs[$0] }
                    for i in taken.sorted().reversed() { jobs.remove(at: i) }
                    requestsMade += 1
                    for job in batch { served[job.owner] = requestsMade }
                    break
                }
                // Nothing ready: sleep until the earliest retry, or until something arrives.
                if let next = jobs.map(\.notBefore).min() {
                    var until = timespec()
                    clock_gettime(CLOCK_REALTIME, &until)
                    let wait = max(0.001, next - now)
                    let ns = Int(until.tv_nsec) + Int((wait - wait.rounded(.down)) * 1e9)
                    until.tv_sec += Int(wait) + ns / 1_000_000_000
                    until.tv_nsec = ns % 1_000_000_000
                    pthread_cond_timedwait(changed, lock, &until)
                } else {
                    pthread_cond_wait(changed, lock)
                }
            }
            let stop = stopping
            pthread_mutex_unlock(lock)
            if stop { return }
            send(batch)
        }
    }

    /// One request (or, for a job larger than a request, several) and its outcome for each job.
    private func send(_ batch: [Job]) {
        let texts = batch.flatMap(\.texts)
        var vectors: [[Float]] = []
        var failure: EmbedError?
        var start = 0
        while start < texts.count {
            let end = min(texts.count, start + client.configuration.batchTexts)
            let t0 = EmbedQueue.now()
            metrics.requests.increment()
            metrics.texts.increment(by: end - start)
            do {
                vectors += try client.embed(Array(texts[start..<end]))
                metrics.latency.recordNanoseconds(Int64((EmbedQueue.now() - t0) * 1e9))
            } catch {
                failure = error
                break
            }
            start = end
        }
        pthread_mutex_lock(lock)
        for job in batch { drop(job) }
        // Refused for what was sent (not for being busy or away): each job alone finds whose text it
        // was, and a job refused alone is refused for good.
        var refusedForGood = false
        if case .refused(let status, _)? = failure, (400..<500).contains(status), status != 408, status != 429 {
            if batch.count > 1 {
                for var job in batch where !jobs.contains(where: { $0.key == job.key }) {
                    job.alone = true
                    add(job)
                }
                pthread_cond_broadcast(changed)
                pthread_mutex_unlock(lock)
                return
            }
            refusedForGood = true
        }
        if let failure, refusedForGood {
            metrics.failures.increment()
            pthread_mutex_unlock(lock)
            for job in batch { done(job.key, job.token, .failure(failure), false) }
            return
        }
        if let failure {
            metrics.failures.increment()
            if reachable { logger.warning("\(failure): retrying with backoff") }
            reachable = false
            // Tried again later, unless a newer job for the same key arrived meanwhile.
            for var job in batch where !jobs.contains(where: { $0.key == job.key }) {
                job.attempts += 1
                job.notBefore = EmbedQueue.now() + min(60, pow(2, Double(job.attempts - 1)))
                add(job)
                metrics.retries.increment()
            }
        } else {
            if !reachable { logger.notice("the embedder answers again") }
            reachable = true
        }
        pthread_cond_broadcast(changed)
        pthread_mutex_unlock(lock)
        if let failure {
            for job in batch { done(job.key, job.token, .failure(failure), true) }
            return
        }
        var at = 0
        for job in batch {
            memory?.keep(job.texts, Array(vectors[at..<(at + job.texts.count)]), owner: job.author)
            var sent = vectors[at..<(at + job.texts.count)].makeIterator()
            let all = job.known.isEmpty ? Array(vectors[at..<(at + job.texts.count)]) : job.known.map { $0 ?? sent.next()! }
            done(job.key, job.token, .success(all), false)
            at += job.texts.count
        }
    }
}

/// What `.vexfs/stats` shows of embedding, through swift-metrics.
public struct EmbedMetrics: Sendable {
    public static let latencyLabel = "vexfs_embed_request_seconds"
    let requests: Counter
    let texts: Counter
    let failures: Counter
    let retries: Counter
    let latency: CoreMetrics.Timer
    /// Texts (passages, and questions asked outside a queue) answered from the embedding cache, and
    /// those that had to be sent.
    let cacheHits: Counter
    let cacheMisses: Counter

    /// Texts looked up in the embedding cache outside a queue (a question in words).
    public func noteCache(hits: Int, misses: Int) {
        if hits > 0 { cacheHits.increment(by: hits) }
        if misses > 0 { cacheMisses.increment(by: misses) }
    }

    /// One request made outside a queue (a text query): its texts, and its time if it succeeded.
    public func note(texts count: Int, nanoseconds: Int64?) {
        requests.increment()
        texts.increment(by: count)
        if let nanoseconds { latency.recordNanoseconds(nanoseconds) } else { failures.increment() }
    }

    public init(factory: any MetricsFactory = NOOPMetricsHandler.instance) {
        requests = Counter(label: "vexfs_embed_requests_total", dimensions: [], factory: factory)
        texts = Counter(label: "vexfs_embed_texts_total", dimensions: [], factory: factory)
        failures = Counter(label: "vexfs_embed_failures_total", dimensions: [], factory: factory)
        retries = Counter(label: "vexfs_embed_retries_total", dimensions: [], factory: factory)
        latency = CoreMetrics.Timer(label: EmbedMetrics.latencyLabel, dimensions: [], factory: factory)
        cacheHits = Counter(label: "vexfs_embed_cache_hits_total", dimensions: [], factory: factory)
        cacheMisses = Counter(label: "vexfs_embed_cache_misses_total", dimensions: [], factory: factory)
    }
}

/// Vectors kept from earlier requests, by text (the embedding cache in STORE/.vexfs/): asked before
/// a text is sent, told what the endpoint gave. Its key must say which model and chunking made each,
/// and whose text it was: one user's texts never answer for another's.
public protocol EmbeddingMemory: AnyObject, Sendable {
    /// The vector kept for each of `owner`'s texts, nil where there is none.
    func recall(_ texts: [String], owner: UInt32) -> [[Float]?]
    /// Keeps `vectors[i]` as the vector of `owner`'s text `texts[i]`.
    func keep(_ texts: [String], _ vectors: [[Float]], owner: UInt32)
}

/// Runs `body` on a new thread (a class box carries the closure through pthread_create's pointer).
func spawn(_ body: @escaping () -> Void) -> pthread_t {
    final class Box { let body: () -> Void; init(_ b: @escaping () -> Void) { body = b } }
    var thread = pthread_t()
    let box = Unmanaged.passRetained(Box(body))
    pthread_create(&thread, nil, { raw in
        Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue().body()
        return nil
    }, box.toOpaque())
    return thread
}
