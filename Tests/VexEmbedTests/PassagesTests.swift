import Testing
@testable import VexEmbed

@Suite struct PassagesTests {
    func cut(_ text: String, _ limit: Int) -> [String] {
        let bytes = Array(text.utf8)
        return Passages.split(bytes, limit: limit).map { String(decoding: bytes[$0], as: UTF8.self) }
    }

    @Test func aTextThatFitsIsOnePassage() {
        #expect(cut("  hello world.\n", 100) == ["hello world."])
        #expect(cut("", 10).isEmpty && cut(" \n\t ", 10).isEmpty)
    }

    @Test func paragraphsFirstThenSentencesThenWords() {
        let text = "First paragraph is here.\n\nSecond one. It has two sentences.\n"
        #expect(cut(text, 40) == ["First paragraph is here.", "Second one. It has two sentences."])
        #expect(cut("One two. Three four five. Six.", 20) == ["One two.", "Three four five.", "Six."])
        #expect(cut("aaaa bbbb cccc", 9) == ["aaaa", "bbbb cccc"])
        #expect(cut("abcdefghij", 4) == ["abcd", "efgh", "ij"])
    }

    @Test func limitsCountCharactersAndRangesAreByteExact() {
        let text = "été à la plage. ünïcödé ça va."
        let bytes = Array(text.utf8)
        let ranges = Passages.split(bytes, limit: 16)
        for r in ranges {
            let piece = String(decoding: bytes[r], as: UTF8.self)
            #expect(piece.count <= 16)
            #expect(String(validating: bytes[r], as: UTF8.self) != nil)
        }
        #expect(ranges.map { String(decoding: bytes[$0], as: UTF8.self) }.joined(separator: " ") == text)
        // Ranges are in order and never overlap.
        #expect(zip(ranges, ranges.dropFirst()).allSatisfy { $0.upperBound <= $1.lowerBound })
    }

    @Test func anEndpointThatIsNotThereIsUnreachable() throws {
        var config = EmbedderConfiguration(url: "http://127.0.0.1:9/v1/embeddings", documentModel: "m")
        config.timeout = 2
        let client = EmbeddingClient(config)
        defer { client.shutdown() }
        #expect(throws: EmbedError.unreachable("connection refused")) { try client.embed(["hello"]) }
    }
}
