import Glibc
import Testing
import VexStore
@testable import VexSemantic

@Suite struct JournalTests {
    /// A flood of one user's questions fills at most their share of each segment: everyone's
    /// changes stay in the history, and what was left out is counted.
    @Test func oneAskerFillsAtMostTheirShareOfASegment() throws {
        let store = temporaryStore()
        defer { StatePaths.removeTree(store) }
        let journal = Journal(directory: store + "/journal", segmentBytes: 4096, maxSegments: 4)
        for i in 0..<2000 { journal.record(.query, FileName("q\(i).query"), detail: ["k": "10"], by: 4242) }
        for i in 0..<20 { journal.record(.create, FileName("root\(i).vec")) }
        for i in 0..<2000 { journal.record(.query, FileName("again\(i).query"), detail: ["k": "10"], by: 4242) }
        journal.flush()
        let events = journal.events()
        #expect(events.filter { $0.kind == .create }.count == 20)
        let mallory = events.filter { $0.kind == .query && $0.detail.first?.key == "k" }
        #expect(mallory.count < 200)
        let unrecorded = events.compactMap { e in e.detail.first { $0.key == "unrecorded" }.flatMap { Int($0.value) } }.reduce(0, +)
        #expect(unrecorded + mallory.count == 4000)
    }
}
