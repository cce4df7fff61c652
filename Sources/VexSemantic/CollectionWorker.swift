import Glibc
import VexStore
import VexIndex

/// One background thread that does one kind of work for collections that ask, one collection at a
/// time, started when the first asks. The mount has two: the tuner measures a collection's recall
/// and sets its search breadth from it (`user.vexfs.recall`; a measurement scans the collection,
/// about a second for 400,000 x 50), and the linker links the vectors waiting beside a graph into
/// it. Neither may run on the bridge's worker, a FUSE thread or under a collection's lock: queries
/// and changes go on meanwhile. Collections take turns by owner: the next is the oldest request of
/// the user served least lately, so one user's many collections delay another's by one piece of work.
final class CollectionWorker: @unchecked Sendable {
    /// Does a piece of the work for a collection; true when more remains (it is asked again).
    private let job: @Sendable (Collection) -> Bool
    /// Guards everything below.
    private let queueLock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let wake = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    /// In the order asked; a collection is in it once.
    private var waiting: [Collection] = []
    /// When each owner's collection was last taken (a count of pieces), for turns.
    private var served: [uid_t: UInt64] = [:]
    private var pieces: UInt64 = 0
    private var busy = false
    private var stopping = false
    private var thread: pthread_t?

    init(_ job: @escaping @Sendable (Collection) -> Bool) {
        self.job = job
        pthread_mutex_init(queueLock, nil)
        pthread_cond_init(wake, nil)
    }

    deinit {
        stop()
        pthread_mutex_destroy(queueLock); pthread_cond_destroy(wake)
        queueLock.deallocate(); wake.deallocate()
    }

    /// Asks for `collection` to be measured (again); a collection already waiting is not queued twice.
    func request(_ collection: Collection) {
        pthread_mutex_lock(queueLock)
        defer { pthread_mutex_unlock(queueLock) }
        guard !stopping else { return }
        if !waiting.contains(where: { $0 === collection }) { waiting.append(collection) }
        if thread == nil {
            var t = pthread_t()
            let rc = pthread_create(&t, nil, { arg in
                Unmanaged<CollectionWorker>.fromOpaque(arg!).takeUnretainedValue().work()
                return nil
            }, Unmanaged.passUnretained(self).toOpaque())
            if rc == 0 { thread = t } else { waiting = []; return }
        }
        pthread_cond_broadcast(wake)
    }

    /// Returns once nothing is waiting or being measured (tests).
    func settle() {
        pthread_mutex_lock(queueLock)
        while !waiting.isEmpty || busy { pthread_cond_wait(wake, queueLock) }
        pthread_mutex_unlock(queueLock)
    }

    /// Lets a measurement under way finish, drops the rest, and ends the thread.
    func stop() {
        pthread_mutex_lock(queueLock)
        stopping = true
        waiting = []
        let running = thread
        thread = nil
        pthread_cond_broadcast(wake)
        pthread_mutex_unlock(queueLock)
        if let running { pthread_join(running, nil) }
    }

    private func work() {
        pthread_mutex_lock(queueLock)
        while true {
            while waiting.isEmpty && !stopping { pthread_cond_wait(wake, queueLock) }
            if stopping { break }
            let chosen = waiting.indices.min { (served[waiting[$0].owner] ?? 0, $0) < (served[waiting[$1].owner] ?? 0, $1) }!
            let next = waiting.remove(at: chosen)
            pieces += 1
            served[next.owner] = pieces
            busy = true
            pthread_mutex_unlock(queueLock)
            let more = job(next)
            pthread_mutex_lock(queueLock)
            if more && !stopping && !waiting.contains(where: { $0 === next }) { waiting.append(next) }
            busy = false
            pthread_cond_broadcast(wake)
        }
        pthread_mutex_unlock(queueLock)
    }
}
