import CLinux
import CoreMetrics
import Glibc
import VexStore
import Synchronization

/// The cross-layer bridge: the filesystem posts what changed, a worker thread brings the indexes up to
/// date in batches.
///
/// Pending work is keyed by file (collection, name) and coalesced: a later event for the same file
/// replaces an earlier one, which is correct because applying means "make the index agree with the
/// file as it is now" (`refresh`) or "forget it" (`remove`). A batch closes at `batchSize` events or
/// `batchDelay` after its first; within it, removes go before refreshes. The delay (20 ms) costs
/// queries nothing, since they settle their collection first; shorter windows woke the worker for
/// every few files and slowed a `cp` of many small files by a fifth on two cores. The queue holds at
/// most `capacity` files; posting to a full queue waits (backpressure).
///
/// Read-your-writes without waiting for the queue to drain: every event gets an order number when
/// posted, and a query waits only until its own collection has no event left unapplied with a
/// number at or below the last one given out when it started (a watermark), so a steady writer
/// cannot hold it off, and other collections' work never delays it. The worker applies a batch in
/// slices of `sliceSize`, publishing progress after each, and when a query is waiting it puts the
/// rest of the batch back and takes the waiting collection's events first.
///
/// Long work goes to a second thread, the builder: a file of millions of vectors (`isLong`), and
/// jobs handed in with `hold` (a collection's snapshot). Its collection is held apart (its events
/// stay pending, in order) until the builder is done, while the worker goes on with every other
/// collection. A query in that collection waits for such a file, as read-your-writes asks; a query
/// anywhere else waits for nothing of it.
final class Bridge: @unchecked Sendable {
    enum Op: Sendable { case refresh, remove }
    struct Key: Hashable, Sendable {
        let collection: UInt64
        let name: FileName
    }
    struct Event: Sendable {
        let key: Key
        let op: Op
    }

    let capacity: Int
    let batchSize: Int
    let batchDelayNanoseconds: Int
    private let apply: @Sendable ([Event]) -> Void
    /// Whether applying an event is long work, for the builder (asked without the queue's lock).
    private let isLong: @Sendable (Event) -> Bool
    /// Whose collection it is (asked without the queue's lock): the builder takes turns by user.
    private let owner: @Sendable (UInt64) -> uid_t
    /// Background work for when the queue is empty, a little at a time; true while more remains.
    private let idle: @Sendable () -> Bool

    /// Guards the queue: everything below down to `thread`.
    private let queueLock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let wake = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private let progress = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    /// Each waiting file's latest event, and when it was first posted (the order it is applied in).
    private var pending: [Key: (op: Op, order: UInt64)] = [:]
    private var nextOrder: UInt64 = 0
    /// The files waiting, by kind, oldest first. An entry whose file was taken since, or whose event
    /// changed kind, is stale and skipped, so taking a batch costs the batch, not the queue.
    private var removes = Lane()
    private var refreshes = Lane()

    struct Lane {
        var keys: [Key] = []
        var head = 0
        mutating func append(_ key: Key) { keys.append(key) }
        mutating func next() -> Key? {
            guard head < keys.count else {
                keys.removeAll(keepingCapacity: true)
                head = 0
                return nil
            }
            defer {
                head += 1
                if head > 4096 && head * 2 > keys.count {
                    keys.removeFirst(head)
                    head = 0
                }
            }
            return keys[head]
        }
    }
    private var pendingPerCollection: [UInt64: Int] = [:]
    /// Per collection, the order numbers of its events not yet applied (pending or in flight).
    private var unapplied: [UInt64: Orders] = [:]
    /// How many events are unapplied, per stripe of collections (key mod 64): changed under the
    /// queue's lock with `unapplied`, read without it, so a query in a collection with nothing
    /// unapplied (an idle one, while another is written) never waits for the lock.
    private let unappliedStripes = UnappliedStripes()
    /// Collections a query waits for, with the watermark it waits for.
    private var urgent: [UInt64: UInt64] = [:]
    /// Collections whose long event the builder has: none of their events is taken meanwhile.
    private var busy: Set<UInt64> = []
    /// Work for the builder, oldest first, each with the user whose collection it is.
    private var long: [(work: LongWork, owner: uid_t)] = []
    /// When the builder last took work of each user (a count of the pieces it has taken).
    private var builderServed: [uid_t: UInt64] = [:]
    private var builderTurns: UInt64 = 0
    private enum LongWork {
        case event(Event, UInt64)
        case job(UInt64, @Sendable () -> (@Sendable () -> Void)?)
        var collection: UInt64 {
            switch self {
            case .event(let e, _): e.key.collection
            case .job(let c, _): c
            }
        }
    }
    /// Collections of the batch the worker is applying now.
    private var inFlight: Set<UInt64> = []
    private let longReady = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var builder = pthread_t()
    private var builderStopping = false
    /// Jobs handed in, and jobs the builder has finished: it does them in the order given.
    private var jobsAsked: UInt64 = 0
    private var jobsDone: UInt64 = 0
    /// Events are applied this many at a time, so a query waits for a slice, not a whole batch.
    let sliceSize = 8

    /// Increasing order numbers, finished in any order; `first` is the lowest unfinished one.
    struct Orders {
        private var orders: [UInt64] = []
        private var head = 0
        private var finished: Set<UInt64> = []
        var isEmpty: Bool { head == orders.count }
        mutating func append(_ order: UInt64) { orders.append(order) }
        mutating func finish(_ order: UInt64) {
            finished.insert(order)
            while head < orders.count, finished.remove(orders[head]) != nil { head += 1 }
            if head == orders.count {
                orders.removeAll(keepingCapacity: true)
                head = 0
            } else if head > 4096 && head * 2 > orders.count {
                orders.removeFirst(head)
                head = 0
            }
        }
        var first: UInt64? { head < orders.count ? orders[head] : nil }
    }
    private var firstPendingAt = timespec()
    private var stopping = false
    private var thread = pthread_t()

    /// The figures `.vexfs/stats` shows, through swift-metrics (the only count the bridge keeps).
    struct Counters: Sendable {
        let posted: Counter
        let coalesced: Counter
        let batches: Counter
        let fullWaits: Counter
        let batchSizes: Recorder

        init(factory: any MetricsFactory) {
            posted = Counter(label: "vexfs_bridge_events_total", dimensions: [], factory: factory)
            coalesced = Counter(label: "vexfs_bridge_coalesced_total", dimensions: [], factory: factory)
            batches = Counter(label: "vexfs_bridge_batches_total", dimensions: [], factory: factory)
            fullWaits = Counter(label: "vexfs_bridge_full_waits_total", dimensions: [], factory: factory)
            batchSizes = Recorder(label: SemanticMetrics.batchLabel, dimensions: [], aggregate: true, factory: factory)
        }
    }
    private let counters: Counters

    init(capacity: Int = 65_536, batchSize: Int = 1024, batchDelayMicroseconds: Int = 20_000, counters: Counters = Counters(factory: NOOPMetricsHandler.instance),
         idle: @escaping @Sendable () -> Bool = { false }, isLong: @escaping @Sendable (Event) -> Bool = { _ in false },
         owner: @escaping @Sendable (UInt64) -> uid_t = { _ in 0 },
         apply: @escaping @Sendable ([Event]) -> Void) {
        self.counters = counters
        self.idle = idle
        self.isLong = isLong
        self.owner = owner
        self.capacity = capacity
        self.batchSize = batchSize
        batchDelayNanoseconds = batchDelayMicroseconds * 1000
        self.apply = apply
        pthread_mutex_init(queueLock, nil)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(wake, &attr)
        pthread_condattr_destroy(&attr)
        pthread_cond_init(progress, nil)
        pthread_cond_init(longReady, nil)
        let rc = pthread_create(&thread, nil, { arg in
            Unmanaged<Bridge>.fromOpaque(arg!).takeUnretainedValue().work()
            return nil
        }, Unmanaged.passUnretained(self).toOpaque())
        precondition(rc == 0, "cannot start the bridge worker")
        let rb = pthread_create(&builder, nil, { arg in
            Unmanaged<Bridge>.fromOpaque(arg!).takeUnretainedValue().build()
            return nil
        }, Unmanaged.passUnretained(self).toOpaque())
        precondition(rb == 0, "cannot start the bridge's builder")
    }

    deinit {
        stop()
        pthread_mutex_destroy(queueLock); pthread_cond_destroy(wake); pthread_cond_destroy(progress); pthread_cond_destroy(longReady)
        queueLock.deallocate(); wake.deallocate(); progress.deallocate(); longReady.deallocate()
    }

    /// Events waiting, for stats.
    var depth: Int { locked { pending.count } }

    /// Has the worker look for idle work again (vectors a snapshot kept waiting beside a graph):
    /// it looks when it runs out of events, and at mount there were none yet.
    func nudge() { locked { _ = pthread_cond_signal(wake) } }

    func post(_ op: Op, collection: UInt64, name: FileName) {
        let key = Key(collection: collection, name: name)
        locked {
            counters.posted.increment()
            var waited = false
            while true {
                if let waiting = pending[key] {
                    pending[key] = (op, waiting.order)
                    if waiting.op != op { op == .remove ? removes.append(key) : refreshes.append(key) }
                    counters.coalesced.increment()
                    return
                }
                guard pending.count >= capacity && !stopping else { break }
                if !waited { counters.fullWaits.increment() }
                waited = true
                pthread_cond_wait(progress, queueLock)
            }
            if pending.isEmpty { clock_gettime(CLOCK_MONOTONIC, &firstPendingAt) }
            pendingPerCollection[collection, default: 0] += 1
            nextOrder += 1
            pending[key] = (op, nextOrder)
            unapplied[collection, default: Orders()].append(nextOrder)
            unappliedStripes.add(collection, 1)
            op == .remove ? removes.append(key) : refreshes.append(key)
            if pending.count == 1 || pending.count >= batchSize { pthread_cond_signal(wake) }
        }
    }

    /// Returns once nothing posted for `collection` before the call is still unapplied (events
    /// posted since are not waited for); true then. With `givenUp`, asked every 50 ms, false as soon
    /// as it says so: the request waiting here may have been interrupted by its asker, whose FUSE
    /// thread must then be free at once.
    @discardableResult
    func settle(_ collection: UInt64, unless givenUp: (() -> Bool)? = nil) -> Bool {
        // Every event posted before this call is counted by now (posting counts it before it
        // returns); none counted, none to wait for.
        guard unappliedStripes.any(collection) else { return true }
        return locked {
            let watermark = nextOrder
            while let first = unapplied[collection]?.first, first <= watermark {
                if let givenUp, givenUp() { return false }
                urgent[collection] = max(urgent[collection] ?? 0, watermark)
                pthread_cond_signal(wake)
                guard givenUp != nil else {
                    pthread_cond_wait(progress, queueLock)
                    continue
                }
                // `progress` waits on the realtime clock (its attributes are the default ones).
                var t = timespec()
                clock_gettime(CLOCK_REALTIME, &t)
                t.tv_nsec += 50_000_000
                if t.tv_nsec >= 1_000_000_000 { t.tv_sec += 1; t.tv_nsec -= 1_000_000_000 }
                pthread_cond_timedwait(progress, queueLock, &t)
            }
            return true
        }
    }

    /// Whether anything posted for `collection` is still unapplied (a settle would wait).
    func hasUnapplied(_ collection: UInt64) -> Bool { unappliedStripes.any(collection) }

    /// Returns once every event posted before the call is applied.
    func settleAll() {
        locked {
            let watermark = nextOrder
            while true {
                let behind = unapplied.filter { ($0.value.first ?? .max) <= watermark }.keys
                if behind.isEmpty { break }
                for c in behind { urgent[c] = max(urgent[c] ?? 0, watermark) }
                pthread_cond_signal(wake)
                pthread_cond_wait(progress, queueLock)
            }
        }
    }

    /// Applies what is pending, then stops the worker and the builder.
    func stop() {
        let running: Bool = locked {
            guard !stopping else { return false }
            stopping = true
            pthread_cond_signal(wake)
            return true
        }
        guard running else { return }
        pthread_join(thread, nil)
        locked {
            builderStopping = true
            pthread_cond_signal(longReady)
        }
        pthread_join(builder, nil)
    }

    /// Pending events the worker may take now (not those of a collection the builder holds).
    private var takeable: Int {
        busy.isEmpty ? pending.count : pending.count - busy.reduce(0) { $0 + (pendingPerCollection[$1] ?? 0) }
    }

    /// Runs `job` on the builder with `collection` held: none of its events is applied meanwhile.
    /// What `job` returns runs next on the builder, with the collection let go.
    func hold(_ collection: UInt64, _ job: @escaping @Sendable () -> (@Sendable () -> Void)?) {
        let user = owner(collection)
        locked {
            jobsAsked += 1
            long.append((.job(collection, job), user))
            pthread_cond_signal(longReady)
        }
    }

    /// `hold`, and returns once `job` is done (once the builder has stopped, it runs here).
    func holdAndWait(_ collection: UInt64, _ job: @escaping @Sendable () -> Void) {
        let user = owner(collection)
        let ticket: UInt64? = locked {
            guard !builderStopping else { return nil }
            jobsAsked += 1
            long.append((.job(collection, { job(); return nil }), user))
            pthread_cond_signal(longReady)
            return jobsAsked
        }
        guard let ticket else { return job() }
        locked { while jobsDone < ticket { pthread_cond_wait(progress, queueLock) } }
    }

    /// The builder: does long work one piece at a time, then lets its collection go.
    private func build() {
        // Background work, on every core (its helper threads inherit this): every FUSE request,
        // the worker and the questions come first. A victim's query p99 was 6x its idle figure
        // while another user kept a 100,000-row build going beside floods of requests.
        _ = vx_nice_this_thread(10)
        pthread_mutex_lock(queueLock)
        while true {
            while long.isEmpty && !builderStopping { pthread_cond_wait(longReady, queueLock) }
            if long.isEmpty { break }
            let work = takeLong()
            let c = work.collection
            // Stopping: a long file waiting is not read now. Its catalog entry does not match it,
            // so the next mount reads it; the mount stops within one slice of the one being read.
            if stopping, case .event(let e, let order) = work {
                finish(e, order)
                if !long.contains(where: { if case .event(let e, _) = $0.work { e.key.collection == c } else { false } }) { busy.remove(c) }
                pthread_cond_broadcast(progress)
                pthread_cond_signal(wake)
                continue
            }
            // A job waits for the worker's batch of its collection, then holds the collection.
            while inFlight.contains(c) { pthread_cond_wait(progress, queueLock) }
            busy.insert(c)
            pthread_mutex_unlock(queueLock)
            var then: (@Sendable () -> Void)?
            switch work {
            case .event(let e, _): apply([e])
            case .job(_, let job): then = job()
            }
            pthread_mutex_lock(queueLock)
            if case .event(let e, let order) = work { finish(e, order) } else { jobsDone += 1 }
            // Held on while more of its long events wait (they were taken in order).
            if !long.contains(where: { if case .event(let e, _) = $0.work { e.key.collection == c } else { false } }) { busy.remove(c) }
            pthread_cond_broadcast(progress)
            pthread_cond_signal(wake)
            if let then {
                pthread_mutex_unlock(queueLock)
                then()
                pthread_mutex_lock(queueLock)
            }
        }
        pthread_mutex_unlock(queueLock)
    }

    /// The builder's next work (under the queue's lock, `long` not empty): the oldest of the user it
    /// served least lately, so one user's pile of big files delays another's by one piece of work
    /// at most. Only the first entry of each collection can be taken (a collection's work keeps its
    /// order), and only the first job (`holdAndWait` counts jobs done in order).
    private func takeLong() -> LongWork {
        var chosen = 0
        var chosenTurn = UInt64.max
        var collections: Set<UInt64> = []
        var jobSeen = false
        for (i, entry) in long.enumerated() {
            guard collections.insert(entry.work.collection).inserted else { continue }
            if case .job = entry.work {
                if jobSeen { continue }
                jobSeen = true
            }
            let turn = builderServed[entry.owner].map { $0 + 1 } ?? 0
            if turn < chosenTurn {
                chosen = i
                chosenTurn = turn
            }
            if turn == 0 { break }
        }
        let entry = long.remove(at: chosen)
        builderServed[entry.owner] = builderTurns
        builderTurns += 1
        return entry.work
    }

    private func finish(_ e: Event, _ order: UInt64) {
        unapplied[e.key.collection]!.finish(order)
        unappliedStripes.add(e.key.collection, -1)
        if unapplied[e.key.collection]!.isEmpty { unapplied[e.key.collection] = nil }
    }

    private func work() {
        // Every query in a written collection waits for this thread: on a busy machine it runs
        // before the writers' own threads (as root; otherwise the call fails and nothing changes).
        _ = vx_nice_this_thread(-5)
        pthread_mutex_lock(queueLock)
        while true {
            var idleWork = true
            while takeable == 0 && !(stopping && pending.isEmpty) {
                if stopping {
                    // What is left belongs to collections the builder holds: wait for it.
                    pthread_cond_wait(wake, queueLock)
                    continue
                }
                if idleWork {
                    pthread_mutex_unlock(queueLock)
                    idleWork = idle()
                    pthread_mutex_lock(queueLock)
                } else {
                    // Looked at again each second as well: idle work passes over a collection that
                    // was busy when it looked, and nothing may come to wake it after (seen: the
                    // last slice of a streamed file left waiting beside its graph for good).
                    var again = timespec()
                    clock_gettime(CLOCK_MONOTONIC, &again)
                    again.tv_sec += 1
                    pthread_cond_timedwait(wake, queueLock, &again)
                    idleWork = true
                }
            }
            if pending.isEmpty && stopping { break }
            // Let the batch fill, unless a query is waiting or the queue is closing.
            var deadline = firstPendingAt
            deadline.tv_nsec += batchDelayNanoseconds
            if deadline.tv_nsec >= 1_000_000_000 { deadline.tv_sec += 1; deadline.tv_nsec -= 1_000_000_000 }
            while takeable < batchSize && urgent.isEmpty && !stopping {
                if pthread_cond_timedwait(wake, queueLock, &deadline) == ETIMEDOUT { break }
            }
            var batch = takeBatch()
            // Long events go to the builder, and their collection with them: its other events in
            // this batch go back to wait, in order.
            pthread_mutex_unlock(queueLock)
            let longOnes = Set(batch.indices.filter { batch[$0].0.op == .refresh && isLong(batch[$0].0) })
            let owners = Dictionary(longOnes.map { (batch[$0].0.key.collection, owner(batch[$0].0.key.collection)) }) { a, _ in a }
            pthread_mutex_lock(queueLock)
            if !longOnes.isEmpty {
                var kept: [(Event, UInt64)] = []
                for (i, (e, order)) in batch.enumerated() {
                    if longOnes.contains(i) && !busy.contains(e.key.collection) {
                        busy.insert(e.key.collection)
                        long.append((.event(e, order), owners[e.key.collection] ?? 0))
                        pthread_cond_signal(longReady)
                    } else {
                        kept.append((e, order))
                    }
                }
                batch = []
                for (e, order) in kept {
                    if busy.contains(e.key.collection) { requeue(e, order) } else { batch.append((e, order)) }
                }
            }
            inFlight = Set(batch.map(\.0.key.collection))
            var done = 0
            while done < batch.count {
                let slice = batch[done..<min(done + sliceSize, batch.count)]
                pthread_mutex_unlock(queueLock)
                apply(slice.map(\.0))
                pthread_mutex_lock(queueLock)
                for (e, order) in slice { finish(e, order) }
                done += slice.count
                pthread_cond_broadcast(progress)
                // A query arrived for a collection this batch does not serve next: it goes first.
                if done < batch.count && !urgent.isEmpty && !urgent.keys.contains(batch[done].0.key.collection) {
                    for (e, order) in batch[done...] { requeue(e, order) }
                    break
                }
            }
            inFlight = []
            if done > 0 {
                counters.batches.increment()
                counters.batchSizes.record(done)
            }
            if !pending.isEmpty { clock_gettime(CLOCK_MONOTONIC, &firstPendingAt) }
            pthread_cond_broadcast(progress)
        }
        pthread_mutex_unlock(queueLock)
    }

    /// Puts an event taken but not applied back, under its first order number (a newer post for
    /// the same file merges into it: applying reads the file as it is then).
    private func requeue(_ e: Event, _ order: UInt64) {
        let c = e.key.collection
        if let newer = pending[e.key] {
            pending[e.key] = (newer.op, order)
            unapplied[c]!.finish(newer.order)
            unappliedStripes.add(c, -1)
        } else {
            pending[e.key] = (e.op, order)
            pendingPerCollection[c, default: 0] += 1
        }
        let op = pending[e.key]!.op
        op == .remove ? removes.append(e.key) : refreshes.append(e.key)
    }

    /// Up to `batchSize` events. When queries wait: only the events they wait for, oldest first,
    /// so the batch is short. Otherwise removes, then refreshes, each oldest first (so the first
    /// vector written to a new collection is the first indexed); within the batch, removes first.
    private func takeBatch() -> [(Event, UInt64)] {
        var chosen: [(Event, UInt64)] = []
        chosen.reserveCapacity(min(batchSize, pending.count))
        var held: [(Key, Op)] = []
        func take(_ key: Key) {
            if busy.contains(key.collection) {
                if let waiting = pending[key] { held.append((key, waiting.op)) }
                return
            }
            guard let waiting = pending.removeValue(forKey: key) else { return }
            chosen.append((Event(key: key, op: waiting.op), waiting.order))
            let c = key.collection
            pendingPerCollection[c]! -= 1
            if pendingPerCollection[c] == 0 { pendingPerCollection[c] = nil }
        }
        if !urgent.isEmpty {
            let waiting = pending.filter { entry in
                !busy.contains(entry.key.collection) && (urgent[entry.key.collection].map { entry.value.order <= $0 } ?? false)
            }
                .sorted { $0.value.order < $1.value.order }
            for (key, _) in waiting.prefix(batchSize) { take(key) }
            urgent = [:]
        }
        func drain(_ lane: inout Lane, _ op: Op) {
            while chosen.count < batchSize, let key = lane.next() {
                if pending[key]?.op == op { take(key) }
            }
        }
        if chosen.isEmpty {
            drain(&removes, .remove)
            drain(&refreshes, .refresh)
            // Events of collections the builder holds keep their place at the back of their lane.
            for (key, op) in held { op == .remove ? removes.append(key) : refreshes.append(key) }
        }
        chosen.sort { ($0.0.op == .remove ? 0 : 1, $0.1) < ($1.0.op == .remove ? 0 : 1, $1.1) }
        return chosen
    }

    private func locked<R>(_ body: () -> R) -> R {
        pthread_mutex_lock(queueLock)
        defer { pthread_mutex_unlock(queueLock) }
        return body()
    }
}

/// Counts per stripe of collection keys (key mod 64), each an atomic.
final class UnappliedStripes: Sendable {
    private let counts: InlineArray<64, Atomic<Int>> = InlineArray { _ in Atomic(0) }
    func add(_ collection: UInt64, _ delta: Int) { counts[Int(collection & 63)].add(delta, ordering: .releasing) }
    func any(_ collection: UInt64) -> Bool { counts[Int(collection & 63)].load(ordering: .acquiring) != 0 }
}
