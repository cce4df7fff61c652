/// Cuts a text into passages of at most `limit` characters, at paragraph boundaries (a blank line)
/// where it can, else at sentence ends (`.`, `!`, `?` before white space), else at white space,
/// else anywhere between characters. Passages are byte ranges of the UTF-8 text, in order, without
/// the white space between them; a text that fits is one passage.
public enum Passages {
    public static func split(_ text: [UInt8], limit: Int) -> [Range<Int>] {
        precondition(limit > 0)
        var out: [Range<Int>] = []
        var start = skipBlank(text, 0)
        while start < text.count {
            // Where `limit` characters from `start` end (UTF-8 continuation bytes are not characters).
            var end = start, characters = 0
            while end < text.count && characters < limit {
                end += 1
                while end < text.count && text[end] & 0xC0 == 0x80 { end += 1 }
                characters += 1
            }
            if end < text.count {
                end = cut(text, start, end)
            }
            var last = end
            while last > start && isBlank(text[last - 1]) { last -= 1 }
            if last > start { out.append(start..<last) }
            start = skipBlank(text, end)
        }
        return out
    }

    /// The best place to end a passage that may not go past `end`.
    private static func cut(_ text: [UInt8], _ start: Int, _ end: Int) -> Int {
        let floor = start + 1
        // A paragraph: a newline, blanks, a newline.
        var i = end
        while i > floor {
            if text[i - 1] == 0x0A {
                var j = i - 1
                while j > start && (text[j - 1] == 0x20 || text[j - 1] == 0x09 || text[j - 1] == 0x0D) { j -= 1 }
                if j > start && text[j - 1] == 0x0A { return i }
            }
            i -= 1
        }
        // A sentence end: . ! or ? before white space.
        i = end
        while i > floor {
            if i - 2 >= start && isBlank(text[i - 1]) && [0x2E, 0x21, 0x3F].contains(text[i - 2]) { return i }
            i -= 1
        }
        // White space, else anywhere on a character boundary.
        i = end
        while i > floor { if isBlank(text[i - 1]) { return i }; i -= 1 }
        return end
    }

    static func isBlank(_ b: UInt8) -> Bool { b == 0x20 || b == 0x09 || b == 0x0A || b == 0x0D }

    private static func skipBlank(_ text: [UInt8], _ from: Int) -> Int {
        var i = from
        while i < text.count && isBlank(text[i]) { i += 1 }
        return i
    }
}
