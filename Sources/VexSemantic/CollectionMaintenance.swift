import CLinux
import Glibc
import VexStore
import Synchronization
import VexEmbed
import VexIndex
import VexKernels

// The work a collection's index asks for beside its changes: linking the vectors waiting beside a
// graph (the layer's linker), measuring recall against the target (the tuner), and snapshots with
// the catalog (the bridge's builder).

extension Collection {
    /// Links a few of the vectors waiting beside the graph into it (the layer's linker thread);
    /// true while more than the bound still wait. Takes the collection's lock only to find the
    /// index, and passes over a collection the bridge's builder holds (its next batch asks again).
    func linkWaiting() -> Bool {
        guard let found = state.withLockIfAvailable({ $0.index }), let index = found else { return false }
        let bound = configuration.freshBound(dimension: index.dimension)
        guard index.unabsorbed > bound else { return false }
        // One at a time, then let others at the index: a link holds the index's writes for about a
        // millisecond, and the bridge worker's inserts, which a query may be waiting for, queue
        // behind it (8 at a time put 114 ms in the written collection's p99).
        let more = index.absorb(limit: 1) > bound
        sched_yield()
        return more
    }

    // MARK: recall target (measured by the layer's tuner thread)

    /// Asks for a recall measurement when the graph is new or has doubled since the last one. A big
    /// batch calibrates the graph on held-out rows as it builds it: that counts as a measurement.
    func considerMeasuring(_ s: inout State) {
        guard let index = s.index, index.isGraph else { return }
        if let m = index.measurement, m.heldOut, m.target == s.settings.recall { s.measuredAt = max(s.measuredAt, m.vectors) }
        guard s.measuredAt == 0 || index.count >= 2 * s.measuredAt else { return }
        s.measuredAt = max(index.count, 1)
        host.measureRecallSoon(self)
    }

    /// Measures the index against the recall target and sets its breadth (the tuner's thread).
    func measureRecall() {
        guard let (index, target) = state.withLock({ s in s.index.map { ($0, s.settings.recall) } }) else { return }
        guard let m = index.tune(target: target) else { return }
        version.add(1, ordering: .releasing)
        host.journal.record(.index, state.withLock { $0.path.isEmpty ? "." : $0.path }, detail: ["recall": m.description])
    }

    /// Asks for a snapshot once the changes since the last one are as many as the collection holds
    /// (and at least the layer's minimum): growing from nothing to N vectors then writes at most
    /// about 2N in snapshots, and a crash costs reading again what changed since the last one. The
    /// bridge's builder writes it with this collection held, so the bridge worker (and every other
    /// collection) never waits for it; it then makes it durable (the fsyncs) with the collection let
    /// go, so this collection's queries and changes do not wait for the disk either.
    func considerCheckpoint(_ s: inout State) {
        guard let index = s.index, isDue(index, s), !snapshotAsked.exchange(true, ordering: .relaxed) else { return }
        host.bridge.hold(key) { [weak self] in
            guard let self else { return nil }
            snapshotAsked.store(false, ordering: .relaxed)
            let taken = state.withLock { s -> (PersistentIndex.PreparedSnapshot, String)? in
                guard let index = s.index, isDue(index, s), let prepared = prepareCheckpoint(&s) else { return nil }
                return (prepared, shown(s))
            }
            guard let (prepared, name) = taken else { return nil }
            let host = host
            return {
                do { try prepared.commit() } catch { host.log(problems: ["\(name): snapshot failed: \(error)"]) }
            }
        }
    }

    func isDue(_ index: PersistentIndex, _ s: borrowing State) -> Bool {
        !index.isAdopting && max(index.unsaved, s.unsavedFiles) >= max(configuration.snapshotMinimum, index.count)
    }


    /// Writes the index's snapshot with the catalog, which names every file (and its signature) the
    /// snapshot holds: after a crash, `open` reads again exactly the files that differ from it.
    func checkpoint(_ s: inout State) {
        do { try prepareCheckpoint(&s)?.commit() } catch { host.log(problems: ["\(shown(s)): snapshot failed: \(error)"]) }
    }

    /// The half of `checkpoint` that must see the index and the catalog agree (see
    /// `PersistentIndex.prepareCheckpoint`).
    func prepareCheckpoint(_ s: inout State) -> PersistentIndex.PreparedSnapshot? {
        // An adopted snapshot's vectors still being copied: this mount's snapshot is written after.
        guard let index = s.index, !index.isAdopting else { return nil }
        do {
            let prepared = try index.prepareCheckpoint(attachments: [("CAT", Catalog.encode(s.files, nextLabel: s.nextLabel))])
            s.unsavedFiles = 0
            return prepared
        } catch {
            host.log(problems: ["\(shown(s)): snapshot failed: \(error)"])
            return nil
        }
    }
}
