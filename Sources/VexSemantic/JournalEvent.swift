import Foundation
import Glibc
import VexIndex
import VexStore

/// One thing that happened to the store, kept as a value: the paths it names stay bytes (a reader's
/// view is judged on them) and it becomes a JSON line only when someone reads the journal.
public struct JournalEvent: Sendable, Equatable {
    public enum Kind: String, Sendable, CaseIterable {
        case create
        case writeClose = "write-close"
        case link, unlink, rename, setxattr, index, query
    }

    /// Wall-clock time, to the millisecond.
    public var seconds: Int
    public var milliseconds: Int
    public var kind: Kind
    /// Relative to the store's root ("." for the root itself).
    public var path: FileName
    /// The new name of a rename.
    public var to: FileName?
    /// What else is said of it, in key order.
    public var detail: [(key: String, value: String)]

    public init(_ kind: Kind, path: FileName, to: FileName? = nil, detail: [String: String] = [:], at time: timespec? = nil) {
        let t = time ?? {
            var now = timespec()
            clock_gettime(CLOCK_REALTIME, &now)
            return now
        }()
        seconds = Int(t.tv_sec)
        milliseconds = Int(t.tv_nsec) / 1_000_000
        self.kind = kind
        self.path = path
        self.to = to
        self.detail = detail.sorted { $0.key < $1.key }.map { (key: $0.key, value: $0.value) }
    }

    public static func == (a: JournalEvent, b: JournalEvent) -> Bool {
        a.seconds == b.seconds && a.milliseconds == b.milliseconds && a.kind == b.kind && a.path == b.path && a.to == b.to
            && a.detail.map(\.key) == b.detail.map(\.key) && a.detail.map(\.value) == b.detail.map(\.value)
    }

    /// Every path the event names: a reader sees it only if they may see all of them.
    var paths: [FileName] { to.map { [path, $0] } ?? [path] }

    /// The event as one JSON line: time, event, path, to, then the detail; names escaped as in
    /// answers (`FileName.escaped`).
    public var line: String {
        var millis = String(milliseconds)
        while millis.count < 3 { millis = "0" + millis }
        var out = "{\"time\":\(seconds).\(millis),\"event\":\"\(kind.rawValue)\",\"path\":\(jsonString(path.escaped))"
        if let to { out += ",\"to\":\(jsonString(to.escaped))" }
        for (k, v) in detail { out += ",\(jsonString(k)):\(jsonString(v))" }
        return out + "}\n"
    }

    /// `events` as the journal file shows them: one line each, oldest first.
    static func lines(_ events: [JournalEvent]) -> [UInt8] { Array(events.map(\.line).joined().utf8) }

    // MARK: in a segment

    func encode(into w: inout ByteWriter) {
        w.put(Int64(seconds)); w.put(UInt16(milliseconds))
        w.put(UInt8(JournalEvent.Kind.allCases.firstIndex(of: kind)!))
        w.put(UInt32(path.bytes.count)); w.bytes.append(contentsOf: path.bytes)
        if let to { w.put(UInt8(1)); w.put(UInt32(to.bytes.count)); w.bytes.append(contentsOf: to.bytes) } else { w.put(UInt8(0)) }
        w.put(UInt16(detail.count))
        for (k, v) in detail { w.put(k); w.put(v) }
    }

    static func decode(from r: inout ByteReader) throws(ByteReader.Short) -> JournalEvent? {
        let seconds = Int(try r.get(Int64.self)), millis = Int(try r.get(UInt16.self))
        let kindIndex = Int(try r.get(UInt8.self))
        let path = FileName(try r.getBytes())
        let to = try r.get(UInt8.self) == 1 ? FileName(try r.getBytes()) : nil
        var detail: [String: String] = [:]
        for _ in 0..<(try r.get(UInt16.self)) {
            let k = try r.getString()
            detail[k] = try r.getString()
        }
        guard kindIndex < Kind.allCases.count else { return nil }
        return JournalEvent(Kind.allCases[kindIndex], path: path, to: to, detail: detail,
                            at: timespec(tv_sec: seconds, tv_nsec: millis * 1_000_000))
    }

    /// An event from a JSON line of a segment written before events were kept as values; nil for a
    /// line that is not one.
    static func legacy(_ line: ArraySlice<UInt8>) -> JournalEvent? {
        guard let object = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any],
              let kind = (object["event"] as? String).flatMap(Kind.init(rawValue:)),
              let path = (object["path"] as? String).flatMap(FileName.unescape) else { return nil }
        let to = (object["to"] as? String).flatMap(FileName.unescape).map(FileName.init)
        let time = (object["time"] as? NSNumber)?.doubleValue ?? 0
        var detail: [String: String] = [:]
        for (k, v) in object where !["time", "event", "path", "to"].contains(k) { detail[k] = v as? String ?? "\(v)" }
        let seconds = Int(time), millis = Int(((time - Double(seconds)) * 1000).rounded())
        return JournalEvent(kind, path: FileName(path), to: to, detail: detail,
                            at: timespec(tv_sec: seconds, tv_nsec: min(millis, 999) * 1_000_000))
    }
}

/// A JSON string literal.
func jsonString(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
        switch u {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\t": out += "\\t"
        case "\r": out += "\\r"
        default:
            if u.value < 0x20 {
                let hex = String(u.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            } else {
                out.unicodeScalars.append(u)
            }
        }
    }
    return out + "\""
}
