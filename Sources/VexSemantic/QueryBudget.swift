import Glibc
import Synchronization
import VexStore

/// What one question may cost. A user other than root has at most `perUser` questions running at
/// once (each holds a FUSE thread while it runs: one user must not hold them all), and each of
/// their questions at most `seconds` of time, checked between the rows and the collections it
/// searches; past either, a clear errno (EBUSY, ETIMEDOUT) and the reason in the query file's status.
/// Root's questions are not limited.
final class QueryBudget: Sendable {
    let perUser: Int
    let seconds: Double
    /// Questions running now, by asker.
    private let running = Mutex<[uid_t: Int]>([:])

    init(perUser: Int, seconds: Double) {
        self.perUser = perUser
        self.seconds = seconds
    }

    /// Runs `body` as one of `asker`'s questions, or throws EBUSY when they have `perUser` running.
    func run<R>(for asker: Caller, _ body: (Deadline) throws(SemanticError) -> R) throws(SemanticError) -> R {
        guard !asker.seesEverything else { return try body(Deadline(seconds: nil, interrupted: asker.interrupted)) }
        let admitted = running.withLock { table -> Bool in
            guard table[asker.uid, default: 0] < perUser else { return false }
            table[asker.uid, default: 0] += 1
            return true
        }
        guard admitted else { throw .overloaded("\(perUser) of your questions (or waits for your writes to be indexed) are running already: ask again when one is answered") }
        defer {
            running.withLock { table in
                table[asker.uid]! -= 1
                if table[asker.uid] == 0 { table[asker.uid] = nil }
            }
        }
        return try body(Deadline(seconds: seconds, interrupted: asker.interrupted))
    }

    /// When a question must be answered by; `check` throws ETIMEDOUT past it, and EINTR once the
    /// asker has given up (a FUSE interrupt), so their thread is free again at once.
    struct Deadline {
        let end: Int64?
        let seconds: Double?
        let interrupted: (@Sendable () -> Bool)?

        init(seconds: Double?, interrupted: (@Sendable () -> Bool)? = nil) {
            self.seconds = seconds
            self.interrupted = interrupted
            end = seconds.map { Deadline.now() + Int64($0 * 1e9) }
        }

        static func now() -> Int64 {
            var t = timespec()
            clock_gettime(CLOCK_MONOTONIC, &t)
            return Int64(t.tv_sec) * 1_000_000_000 + Int64(t.tv_nsec)
        }

        func check() throws(SemanticError) {
            if let interrupted, interrupted() { throw .interrupted }
            guard let end, Deadline.now() > end else { return }
            throw .timedOut("the question took more than \(seconds!) s: ask for fewer rows, a smaller ef or a narrower scope")
        }
    }
}

/// Which files of one collection a question may name, judged once per question (not once per row
/// or per candidate): readable by the asker and passing its conditions.
final class Admissions {
    var judged: [FileName: Bool] = [:]
}
