import Glibc
import Testing
import VexStore
@testable import VexSemantic

@Suite struct QueryBudgetTests {
    @Test func aUserHasAtMostTheirShareOfQuestionsRunning() throws {
        let budget = QueryBudget(perUser: 2, seconds: 10)
        let mallory = Caller(uid: 4242, gid: 4242), alice = Caller(uid: 4343, gid: 4343)
        let inner: () throws(SemanticError) -> Int = { () throws(SemanticError) -> Int in
            // Mallory's third question at once is refused; Alice and root still get theirs.
            #expect(throws: SemanticError.self) { try budget.run(for: mallory) { _ throws(SemanticError) in 0 } }
            #expect(try budget.run(for: alice) { _ throws(SemanticError) in 1 } == 1)
            #expect(try budget.run(for: .root) { _ throws(SemanticError) in 2 } == 2)
            return 3
        }
        let got = try budget.run(for: mallory) { _ throws(SemanticError) in try budget.run(for: mallory) { _ throws(SemanticError) in try inner() } }
        #expect(got == 3)
        // Once answered, the slots are free again.
        #expect(try budget.run(for: mallory) { _ throws(SemanticError) in try budget.run(for: mallory) { _ throws(SemanticError) in 4 } } == 4)
        do {
            _ = try budget.run(for: mallory) { _ throws(SemanticError) in try budget.run(for: mallory) { _ throws(SemanticError) in
                try budget.run(for: mallory) { _ throws(SemanticError) in 5 } } }
            Issue.record("a third question at once was let through")
        } catch {
            #expect(error.errno == EBUSY)
        }
    }

    @Test func aQuestionPastItsTimeIsRefused() throws {
        let deadline = QueryBudget.Deadline(seconds: 0.001)
        usleep(5000)
        do {
            try deadline.check()
            Issue.record("the deadline did not pass")
        } catch {
            #expect(error.errno == ETIMEDOUT)
        }
        // Root's questions have none.
        try QueryBudget.Deadline(seconds: nil).check()
    }
}
