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
    /// bytes and the length (EINVAL), a read-only mount (EROFS).
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
        guard !fs.options.kernelOptions.contains("ro") else {
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
