import Glibc
import VexIndex

/// Measures collections' recall in the background and sets their search breadth from it
/// (`user.vexfs.recall`). One thread for the mount, started when the first collection asks: a
/// measurement scans the collection (about a second for 400,000 x 50), so it must never run on the
/// bridge's worker, a FUSE thread or under a collection's lock. Queries meanwhile go on with the
/// breadth measured before.
final class RecallTuner: @unchecked Sendable {
    /// Guards everything below.
    private let queueLock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let wake = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var waiting: [UInt64: Collection] = [:]
    private var busy = false
    private var stopping = false
    private var thread: pthread_t?

    init() {
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
        waiting[collection.key] = collection
        if thread == nil {
            var t = pthread_t()
            let rc = pthread_create(&t, nil, { arg in
                Unmanaged<RecallTuner>.fromOpaque(arg!).takeUnretainedValue().work()
                return nil
            }, Unmanaged.passUnretained(self).toOpaque())
            if rc == 0 { thread = t } else { waiting = [:]; return }
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
        waiting = [:]
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
            let next = waiting.removeValue(forKey: waiting.keys.first!)!
            busy = true
            pthread_mutex_unlock(queueLock)
            next.measureRecall()
            pthread_mutex_lock(queueLock)
            busy = false
            pthread_cond_broadcast(wake)
        }
        pthread_mutex_unlock(queueLock)
    }
}
