import CFuse
import CLinux
import Glibc
import SystemPackage
import VexStore

/// The ioctls that act on a whole filesystem rather than on a file, which the kernel sends a FUSE
/// daemon on any handle of the mount: fstrim(8)'s FITRIM and the filesystem label. Where a
/// filesystem asks for CAP_SYS_ADMIN, vexfs asks for uid 0: the request carries the caller's ids,
/// not its capabilities, and root in the mount's user namespace is the one caller that has them
/// there. The daemon then acts with its own credentials.
extension Handlers {
    /// FITRIM trims the store's filesystem, which holds the mount's blocks and shares them with
    /// whatever else lives on it: the store's filesystem checks and clamps the range as it would for
    /// fstrim on it, and its answer (the trimmed length in `len`, or its errno: EOPNOTSUPP without
    /// discard, EINVAL for a start past its end) is the mount's. Refused (EROFS) under `norecovery`,
    /// as ext4 refuses it before its journal is replayed: a mount that writes nothing trims nothing.
    static func trim(_ req: fuse_req_t?, _ fd: Int32, _ input: UnsafeRawPointer?, _ inputSize: Int, _ outputSize: Int) {
        let rangeSize = 3 * MemoryLayout<UInt64>.size  // struct fstrim_range: start, len, minlen
        guard caller(req).uid == 0 else {
            fuse_reply_err(req, EPERM)
            return
        }
        guard !fs(req).options.norecovery else {
            fuse_reply_err(req, EROFS)
            return
        }
        guard let input, inputSize >= rangeSize else {
            fuse_reply_err(req, EINVAL)
            return
        }
        var range = [UInt64](repeating: 0, count: 3)
        range.withUnsafeMutableBytes { $0.baseAddress!.copyMemory(from: input, byteCount: rangeSize) }
        let status = range.withUnsafeMutableBytes { vx_ioctl_ptr(fd, vx_FITRIM, $0.baseAddress) }
        if status < 0 {
            fuse_reply_err(req, errno)
        } else {
            range.withUnsafeBytes { _ = fuse_reply_ioctl(req, 0, $0.baseAddress, min(outputSize, rangeSize)) }
        }
    }

    /// FS_IOC_GETFSLABEL: the mount's own label (Store.label), NUL-padded to FSLABEL_MAX bytes.
    static func getLabel(_ req: fuse_req_t?, _ outputSize: Int) {
        do throws(Errno) {
            var buffer = try fs(req).store.label()
            buffer += [UInt8](repeating: 0, count: Int(vx_FSLABEL_MAX) - buffer.count)
            buffer.withUnsafeBytes { _ = fuse_reply_ioctl(req, 0, $0.baseAddress, min(outputSize, buffer.count)) }
        } catch {
            fuse_reply_err(req, error.rawValue)
        }
    }

    /// FS_IOC_SETFSLABEL, in the order ext4 checks: the caller (EPERM), a NUL within FSLABEL_MAX
    /// bytes and the length (EINVAL), a read-only mount (EROFS; see `Filesystem.isReadOnly`).
    static func setLabel(_ req: fuse_req_t?, _ input: UnsafeRawPointer?, _ inputSize: Int) {
        let fs = fs(req)
        guard caller(req).uid == 0 else {
            fuse_reply_err(req, EPERM)
            return
        }
        guard let input, inputSize >= Int(vx_FSLABEL_MAX) else {
            fuse_reply_err(req, EINVAL)
            return
        }
        let bytes = UnsafeRawBufferPointer(start: input, count: Int(vx_FSLABEL_MAX))
        guard let end = bytes.firstIndex(of: 0) else {
            fuse_reply_err(req, EINVAL)
            return
        }
        guard !fs.isReadOnly else {
            fuse_reply_err(req, EROFS)
            return
        }
        do throws(Errno) {
            try fs.store.setLabel(Array(bytes[..<end]))
            fuse_reply_ioctl(req, 0, nil, 0)
        } catch {
            fuse_reply_err(req, error.rawValue)
        }
    }
}

extension Filesystem {
    /// Whether the mount is read-only now: made `ro`, or remounted so since (`mount -o remount,ro`
    /// changes the superblock without a request to the daemon; the super options of its mount in
    /// /proc/self/mountinfo say it). A read-only bind mount of a read-write mount is not seen: the
    /// kernel sends a FUSE daemon an ioctl with the open file's handle alone, not the mount it was
    /// opened through, and checks no mount's read-only flag for it (ext4's handlers check their own).
    var isReadOnly: Bool {
        options.readOnly || Filesystem.superOptions(mountedAt: mountpoint)?.contains("ro") == true
    }

    /// The super options of the last mount at `path` in /proc/self/mountinfo (whose fields write
    /// space, tab, newline and backslash as \ooo); nil when nothing is mounted there.
    static func superOptions(mountedAt path: String) -> [String]? {
        guard !path.isEmpty, let file = fopen("/proc/self/mountinfo", "r") else { return nil }
        defer { fclose(file) }
        var wanted: [UInt8] = []
        for b in path.utf8 {
            if b == 0x20 || b == 0x09 || b == 0x0A || b == 0x5C {
                let digits = String(b, radix: 8)
                wanted += Array(("\\" + String(repeating: "0", count: 3 - digits.count) + digits).utf8)
            } else {
                wanted.append(b)
            }
        }
        var line: UnsafeMutablePointer<CChar>?
        var capacity = 0
        defer { free(line) }
        var found: [String]?
        while true {
            let n = getline(&line, &capacity, file)
            guard n > 0, let line else { break }
            let fields = UnsafeRawBufferPointer(start: line, count: n).split(whereSeparator: { $0 == 0x20 || $0 == 0x0A })
            // mount-id parent major:minor root mountpoint options [tags...] - type source super-options
            guard fields.count > 4, fields[4].elementsEqual(wanted),
                  let dash = fields.firstIndex(where: { $0.elementsEqual([0x2D]) }), dash + 3 < fields.count else { continue }
            found = String(decoding: fields[dash + 3], as: UTF8.self).split(separator: ",").map(String.init)
        }
        return found
    }
}
