// VexEmbed turns text into vectors, and knows nothing of files: `EmbeddingClient` speaks the
// OpenAI-compatible `POST /v1/embeddings` (ollama, llama.cpp's server, text-embeddings-inference,
// vLLM, OpenAI) through async-http-client; `Passages` cuts a long text at paragraph, then sentence,
// boundaries; `EmbedQueue` batches texts from many callers into few requests on one thread,
// retries with backoff while the endpoint is away, and hands each caller its vectors.
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1

/// Where the vectors come from (`-o embedder=URL,embed_model=...`).
public struct EmbedderConfiguration: Sendable, Equatable {
    public var url: String
    /// The `model` sent with documents, and with queries.
    public var documentModel: String
    public var queryModel: String
    /// Sent as a bearer token when set (from the environment, never the command line).
    public var apiKey: String?
    /// Characters a passage holds at most.
    public var chunk = 2000
    /// One request carries at most this many texts and bytes.
    public var batchTexts = 64
    public var batchBytes = 256 << 10
    /// Seconds one request may take.
    public var timeout = 30.0

    public init(url: String, documentModel: String = "", queryModel: String? = nil, apiKey: String? = nil) {
        self.url = url
        self.documentModel = documentModel
        self.queryModel = queryModel ?? documentModel
        self.apiKey = apiKey
    }
}

/// Why texts could not be embedded: one line for a file's status.
public enum EmbedError: Error, Equatable, CustomStringConvertible {
    case unreachable(String)
    case refused(status: Int, message: String)
    case malformed(String)

    public var description: String {
        switch self {
        case .unreachable(let why): "embedder unreachable: \(why)"
        case .refused(let status, let message): "embedder answered \(status): \(message)"
        case .malformed(let why): "embedder's answer is malformed: \(why)"
        }
    }
}

/// One HTTP client for the mount's life; calls block the calling thread (the queue's, or a text
/// query's), never an event loop.
public final class EmbeddingClient: Sendable {
    public let configuration: EmbedderConfiguration
    private let client: HTTPClient

    /// Make it after any fork(): its event-loop threads do not survive one.
    public init(_ configuration: EmbedderConfiguration) {
        self.configuration = configuration
        var c = HTTPClient.Configuration()
        c.timeout = .init(connect: .seconds(5), read: .milliseconds(Int64(configuration.timeout * 1000)))
        client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: c)
    }

    public func shutdown() { try? client.syncShutdown() }

    struct Request: Encodable {
        let model: String
        let input: [String]
        let encoding_format = "float"
    }
    struct Response: Decodable {
        struct Item: Decodable {
            let index: Int?
            let embedding: [Float]
        }
        let data: [Item]
    }
    struct Failure: Decodable {
        struct Detail: Decodable { let message: String? }
        let error: Detail?
    }

    /// The vectors of `texts`, in order, from the document model or (`query`) the query model.
    public func embed(_ texts: [String], query: Bool = false) throws(EmbedError) -> [[Float]] {
        guard !texts.isEmpty else { return [] }
        let model = query ? configuration.queryModel : configuration.documentModel
        let body: Data
        do { body = try JSONEncoder().encode(Request(model: model, input: texts)) } catch { throw .malformed("cannot encode the request: \(error)") }
        let response: HTTPClient.Response
        do {
            var request = try HTTPClient.Request(url: configuration.url, method: .POST)
            request.headers.add(name: "Content-Type", value: "application/json")
            if let key = configuration.apiKey { request.headers.add(name: "Authorization", value: "Bearer \(key)") }
            request.body = .bytes(body)
            response = try client.execute(request: request, deadline: .now() + .milliseconds(Int64(configuration.timeout * 1000))).wait()
        } catch {
            throw .unreachable(EmbeddingClient.reason(error))
        }
        let bytes = response.body.map { Data($0.readableBytesView) } ?? Data()
        guard response.status == .ok else {
            let message = (try? JSONDecoder().decode(Failure.self, from: bytes))?.error?.message
                ?? String(decoding: bytes.prefix(200), as: UTF8.self)
            throw .refused(status: Int(response.status.code), message: message.split(separator: "\n").first.map(String.init) ?? "")
        }
        let decoded: Response
        do { decoded = try JSONDecoder().decode(Response.self, from: bytes) } catch { throw .malformed("not an embeddings list") }
        guard decoded.data.count == texts.count else { throw .malformed("\(decoded.data.count) vectors for \(texts.count) texts") }
        var out = [[Float]](repeating: [], count: texts.count)
        for (i, item) in decoded.data.enumerated() {
            let at = item.index ?? i
            guard out.indices.contains(at), out[at].isEmpty else { throw .malformed("vector indexes do not match the texts") }
            guard !item.embedding.isEmpty, item.embedding.allSatisfy(\.isFinite) else { throw .malformed("an empty or non-finite vector") }
            out[at] = item.embedding
        }
        guard Set(out.map(\.count)).count == 1 else { throw .malformed("vectors of different lengths") }
        return out
    }

    /// A short reason: "connection refused", not a type dump.
    static func reason(_ error: any Error) -> String {
        let text = "\(error)"
        if text.contains("connectionRefused") || text.contains("Connection refused") { return "connection refused" }
        if text.contains("connectTimeout") || text.contains("deadlineExceeded") || text.contains("readTimeout") { return "timed out" }
        if text.contains("remoteConnectionClosed") { return "the connection was closed" }
        return String(text.prefix(160))
    }
}
