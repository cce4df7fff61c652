import VexStore

/// Who asks a question: the store's `Caller`, with its groups.
public typealias Requester = Caller
