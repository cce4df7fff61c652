import Testing
@testable import VexSemantic

func parse(_ bytes: [UInt8], _ format: VectorFormat) -> Result<ParsedVectors, FormatError> {
    bytes.withUnsafeBytes { VectorParser.parse($0, as: format) }
}

func text(_ s: String) -> Result<ParsedVectors, FormatError> { parse(Array(s.utf8), .text) }

func reason(_ r: Result<ParsedVectors, FormatError>) -> String? {
    if case .failure(let e) = r { return e.description }
    return nil
}

@Suite struct VectorFormatsTests {
    @Test func textTakesBlanksCommasAndBrackets() throws {
        for s in ["0.1 0.2 0.3", "0.1,0.2,0.3", "[0.1, 0.2, 0.3]\n", "  0.1\t0.2\n0.3  ", "[0.1,0.2,0.3]"] {
            #expect(try text(s).get() == ParsedVectors(dimension: 3, values: [0.1, 0.2, 0.3]), "\(s)")
        }
        #expect(try text("1e3 -2.5E-1").get().values == [1000, -0.25])
    }

    @Test func textRefusesWithAReason() {
        #expect(reason(text("")) == "empty file")
        #expect(reason(text("   \n")) == "no numbers")
        #expect(reason(text("0.1 abc 0.3"))?.contains("'abc' (number 2) is not a number") == true)
        #expect(reason(text("0.1 nan"))?.contains("number 2 is not finite") == true)
        #expect(reason(text("1 inf")) != nil)
        #expect(reason(text("[1 2")) != nil)
        #expect(reason(text("1,,2")) != nil)
    }

    @Test func rawFloat32() throws {
        let values: [Float] = [1, -2, 3.5]
        let bytes = values.withUnsafeBytes { Array($0) }
        #expect(try parse(bytes, .raw).get().values == values)
        #expect(reason(parse(Array(bytes.prefix(7)), .raw))?.contains("not a whole number") == true)
    }

    @Test func fvecsRecords() throws {
        var bytes: [UInt8] = []
        for row in [[1, 2] as [Float], [3, 4]] {
            withUnsafeBytes(of: Int32(2).littleEndian) { bytes += $0 }
            row.withUnsafeBytes { bytes += $0 }
        }
        let v = try parse(bytes, .fvecs).get()
        #expect(v.rows == 2 && v.dimension == 2 && v.values == [1, 2, 3, 4])
        #expect(reason(parse(Array(bytes.dropLast(1)), .fvecs))?.contains("record 2 is truncated") == true)
        var mixed = bytes
        mixed[12] = 3
        #expect(reason(parse(mixed, .fvecs)) != nil)
    }

    func npy(_ descr: String, _ shape: String, _ payload: [UInt8], fortran: Bool = false, version: UInt8 = 1) -> [UInt8] {
        var header = "{'descr': '\(descr)', 'fortran_order': \(fortran ? "True" : "False"), 'shape': \(shape), }"
        let prefix = version == 1 ? 10 : 12
        while (prefix + header.utf8.count + 1) % 64 != 0 { header += " " }
        header += "\n"
        var out: [UInt8] = [0x93] + Array("NUMPY".utf8) + [version, 0]
        if version == 1 { withUnsafeBytes(of: UInt16(header.utf8.count).littleEndian) { out += $0 } } else {
            withUnsafeBytes(of: UInt32(header.utf8.count).littleEndian) { out += $0 }
        }
        return out + Array(header.utf8) + payload
    }

    @Test func numpyDtypesShapesAndOrders() throws {
        let f32: [Float] = [1, 2, 3, 4, 5, 6]
        let b32 = f32.withUnsafeBytes { Array($0) }
        #expect(try parse(npy("<f4", "(6,)", b32), .numpy).get() == ParsedVectors(dimension: 6, values: f32))
        #expect(try parse(npy("<f4", "(2, 3)", b32), .numpy).get() == ParsedVectors(dimension: 3, values: f32))
        #expect(try parse(npy("<f4", "(2, 3)", b32, fortran: true), .numpy).get().values == [1, 3, 5, 2, 4, 6])
        let f64: [Double] = [0.5, -1.25]
        #expect(try parse(npy("<f8", "(1, 2)", f64.withUnsafeBytes { Array($0) }), .numpy).get().values == [0.5, -1.25])
        let f16: [Float16] = [1.5, -2]
        #expect(try parse(npy("<f2", "(2,)", f16.withUnsafeBytes { Array($0) }, version: 2), .numpy).get().values == [1.5, -2])
        let big = f32.map { $0.bitPattern.bigEndian }.withUnsafeBytes { Array($0) }
        #expect(try parse(npy(">f4", "(6,)", big), .numpy).get().values == f32)
        #expect(reason(parse(npy("<i4", "(6,)", b32), .numpy))?.contains("not float16") == true)
        #expect(reason(parse(npy("<f4", "(2, 3)", Array(b32.dropLast(4))), .numpy))?.contains("truncated") == true)
        #expect(reason(parse(npy("<f4", "(2, 3, 1)", b32), .numpy))?.contains("not 1-D or 2-D") == true)
        #expect(reason(parse(npy("<f4", "(100000000000, 100000000000)", b32), .numpy)) != nil)
        #expect(reason(parse(Array("not numpy".utf8), .numpy)) != nil)
    }

    @Test func namesDecideTheFormat() {
        #expect(VectorFormat(fileName: "a.vec") == .text)
        #expect(VectorFormat(fileName: "x.tar.npy") == .numpy)
        #expect(VectorFormat(fileName: "a.query") == nil)
        #expect(VectorFormat(fileName: ".vec") == nil)
        #expect(VectorFormat(fileName: "photo.jpg") == nil)
    }
}
