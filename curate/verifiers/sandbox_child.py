"""The first code a sandboxed child process runs: it contains itself, then runs a harness.

`curate.verifiers.sandbox` starts `python -I -S -B -c <this file's source>` (inside `unshare
--net` where that works) with a JSON payload on stdin. This module then, in the child and never
in the caller's process:

1. reads the payload and points stdin at /dev/null;
2. asks the kernel to kill it if its parent dies (PR_SET_PDEATHSIG);
3. sets resource limits: CPU seconds, address space, file size, open files, no core files;
4. (Linux, kernel layers) Landlock: reads only from the Python installation, /usr, /lib, a few
   device and config files and its working directory; writes only in its working directory (no
   device nodes even there); no TCP bind/connect; no signals or abstract sockets outside its own
   domain. seccomp: no fork, vfork, execve, non-thread clone, ptrace, mount, namespaces,
   non-Unix sockets, signals to other processes, io_uring, bpf, kernel modules, and none of the
   calls that only root may make (clock, hostname, device nodes, ...). Then it drops every
   capability, so a child started by root is uid 0 without root's powers. Where seccomp is
   missing, RLIMIT_NPROC=1 stands in as the fork-bomb guard (root is exempt from it);
5. (Python guard) an audit hook that ends the process at the first socket use, process creation,
   write outside the working directory, read or directory listing outside the allowed roots,
   read of another process's /proc entries (its environment), signal to another process or
   ctypes use, after reporting what it blocked;
6. reports which layers are in force, then runs the harness program from the payload with
   `DATA` (the payload's data) and `report` (send a JSON message to the parent) in its globals.

Messages go to a pipe of their own, not stdout, each tagged with a per-run nonce from the
payload, so a program that prints a fake result or writes to stray file descriptors forges
nothing. Standard library only: this runs under `-I -S`, without site-packages.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import sys
from collections.abc import Callable
from typing import Any, cast

EXIT_BLOCKED = 86  # the guard ended the process after reporting a blocked operation

# Files (not directories) a contained program may read; /dev/null may also be written.
READ_FILES = (
    "/dev/null",
    "/dev/zero",
    "/dev/urandom",
    "/dev/random",
    "/etc/localtime",
    "/etc/ld.so.cache",
)
READ_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/bin")
WRITABLE_FILES = ("/dev/null",)

Report = Callable[[dict[str, Any]], None]


def main() -> None:
    payload = json.loads(sys.stdin.buffer.read())
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    report = _reporter(int(payload["channel_fd"]), str(payload["nonce"]))
    workdir = os.path.realpath(os.getcwd())
    read_dirs = _read_roots(workdir)
    layers: list[str] = ["netns"] if payload.get("netns") else []
    _die_with_parent()
    _set_limits(payload["limits"])
    layers.append("rlimits")
    seccomp_on = False
    if payload.get("kernel", True):
        if _landlock(workdir, read_dirs):
            layers.append("landlock")
        seccomp_on = _seccomp()
        if seccomp_on:
            layers.append("seccomp")
        if _drop_capabilities():
            layers.append("nocaps")
    if not seccomp_on:
        _limit(resource.RLIMIT_NPROC, 1)  # root is exempt; everyone else cannot fork
    _forget_ctypes()
    if payload.get("guard", True):
        _install_guard(workdir, read_dirs, report)
        layers.append("audit")
    report({"kind": "layers", "layers": layers})
    program = compile(payload["program"], "<curate-harness>", "exec")
    namespace: dict[str, Any] = {
        "__name__": "__curate_harness__",
        "DATA": payload["data"],
        "report": report,
    }
    del payload
    exec(program, namespace)
    os._exit(0)  # no atexit handlers or lingering threads of the contained program


def _reporter(fd: int, nonce: str) -> Report:
    write = os.write
    dumps = json.dumps

    def report(message: dict[str, Any]) -> None:
        data = (dumps({"nonce": nonce, **message}, default=repr) + "\n").encode()
        while data:
            data = data[write(fd, data) :]

    return report


def _read_roots(workdir: str) -> list[str]:
    roots = {workdir}
    for prefix in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix):
        roots.add(os.path.realpath(prefix))
    for path in sys.path:
        if path and os.path.isdir(path):
            roots.add(os.path.realpath(path))
    for path in READ_DIRS:
        if os.path.isdir(path):
            roots.add(os.path.realpath(path))
    return sorted(roots)


def _limit(which: int, value: int) -> None:
    try:
        resource.setrlimit(which, (value, value))
    except (ValueError, OSError):
        _, hard = resource.getrlimit(which)
        if hard == resource.RLIM_INFINITY or value < hard:
            resource.setrlimit(which, (min(value, hard), hard))


def _set_limits(limits: dict[str, int]) -> None:
    cpu = int(limits["cpu_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    _limit(resource.RLIMIT_AS, int(limits["memory_mb"]) << 20)
    _limit(resource.RLIMIT_FSIZE, int(limits["file_mb"]) << 20)
    _limit(resource.RLIMIT_NOFILE, int(limits["open_files"]))
    _limit(resource.RLIMIT_CORE, 0)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write fails, it does not kill


# --------------------------------------------------------------------------- kernel layers
def _libc() -> Any:
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        _libc().prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


# Landlock (linux/landlock.h)
_LL_SYS_CREATE, _LL_SYS_ADD, _LL_SYS_RESTRICT = 444, 445, 446
_LL_FS_EXECUTE = 1 << 0
_LL_FS_WRITE_FILE = 1 << 1
_LL_FS_READ_FILE = 1 << 2
_LL_FS_READ_DIR = 1 << 3
_LL_FS_MAKE_CHAR = 1 << 6
_LL_FS_MAKE_BLOCK = 1 << 11
_LL_FS_TRUNCATE = 1 << 14
_LL_FS_IOCTL_DEV = 1 << 15
_LL_NET_ALL = (1 << 0) | (1 << 1)  # BIND_TCP, CONNECT_TCP
_LL_SCOPE_ALL = (1 << 0) | (1 << 1)  # ABSTRACT_UNIX_SOCKET, SIGNAL


def _landlock_fs_rights(abi: int) -> int:
    rights = (1 << 13) - 1  # ABI 1: EXECUTE .. MAKE_SYM
    if abi >= 2:
        rights |= 1 << 13  # REFER
    if abi >= 3:
        rights |= _LL_FS_TRUNCATE
    if abi >= 5:
        rights |= _LL_FS_IOCTL_DEV
    return rights


def _landlock(workdir: str, read_dirs: list[str]) -> bool:
    """Restrict this process's file system, TCP and signal reach; False when unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = _libc()
        libc.syscall.restype = ctypes.c_long
        abi = libc.syscall(_LL_SYS_CREATE, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
        if abi < 1:
            return False
        handled = _landlock_fs_rights(abi)

        class RulesetAttr(ctypes.Structure):
            _fields_ = [
                ("handled_access_fs", ctypes.c_uint64),
                ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64),
            ]

        class PathBeneath(ctypes.Structure):
            _pack_ = 1
            _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

        attr = RulesetAttr(
            handled, _LL_NET_ALL if abi >= 4 else 0, _LL_SCOPE_ALL if abi >= 6 else 0
        )
        size = 24 if abi >= 6 else 16 if abi >= 4 else 8
        ruleset = libc.syscall(_LL_SYS_CREATE, ctypes.byref(attr), ctypes.c_size_t(size), 0)
        if ruleset < 0:
            return False
        file_read = _LL_FS_READ_FILE
        dir_read = _LL_FS_EXECUTE | _LL_FS_READ_FILE | _LL_FS_READ_DIR
        # everything in the working directory except device nodes (a root child could make one
        # for a disk and read it)
        rules: list[tuple[str, int]] = [
            (workdir, handled & ~(_LL_FS_MAKE_CHAR | _LL_FS_MAKE_BLOCK))
        ]
        rules += [(path, dir_read) for path in read_dirs if path != workdir]
        for path in READ_FILES:
            rights = file_read
            if path in WRITABLE_FILES:
                rights |= _LL_FS_WRITE_FILE | (handled & _LL_FS_TRUNCATE)
            rules.append((path, rights))
        rules.append((f"/proc/{os.getpid()}", dir_read))
        for path, rights in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                rule = PathBeneath(rights & handled, fd)
                libc.syscall(_LL_SYS_ADD, ruleset, 1, ctypes.byref(rule), 0)
            finally:
                os.close(fd)
        if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
            return False
        ok = libc.syscall(_LL_SYS_RESTRICT, ruleset, 0) == 0
        os.close(ruleset)
        return bool(ok)
    except (OSError, AttributeError, ImportError):
        return False


# seccomp (linux/seccomp.h, linux/filter.h)
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
# Syscall numbers (x86_64, aarch64) from asm/unistd_64.h and asm-generic/unistd.h; None: the
# architecture has no such call. Denied outright (EPERM): process creation, tracing,
# namespaces and mounts, kernel interfaces that reach past the process.
_DENIED_CALLS: dict[str, tuple[int | None, int | None]] = {
    "fork": (57, None),
    "vfork": (58, None),
    "execve": (59, 221),
    "execveat": (322, 281),
    "ptrace": (101, 117),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "mount": (165, 40),
    "umount2": (166, 39),
    "unshare": (272, 97),
    "setns": (308, 268),
    "pivot_root": (155, 41),
    "chroot": (161, 51),
    "reboot": (169, 142),
    "kexec_load": (246, 104),
    "kexec_file_load": (320, 294),
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "keyctl": (250, 219),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "userfaultfd": (323, 282),
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "swapon": (167, 224),
    "swapoff": (168, 225),
    "open_by_handle_at": (304, 265),
    "name_to_handle_at": (303, 264),
    "open_tree": (428, 428),
    "move_mount": (429, 429),
    "fsopen": (430, 430),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fspick": (433, 433),
    "mount_setattr": (442, 442),
    "pidfd_send_signal": (424, 424),
    "pidfd_getfd": (438, 438),
    # what only root could do (the child also drops its capabilities; this holds if it cannot)
    "sethostname": (170, 161),
    "setdomainname": (171, 162),
    "settimeofday": (164, 170),
    "clock_settime": (227, 112),
    "clock_adjtime": (305, 266),
    "adjtimex": (159, 171),
    "mknod": (133, None),
    "mknodat": (259, 33),
    "syslog": (103, 116),
    "acct": (163, 89),
    "quotactl": (179, 60),
    "iopl": (172, None),
    "ioperm": (173, None),
    "fanotify_init": (300, 262),
}
_MACHINES = ("x86_64", "aarch64")  # column order of the tables
# Allowed with a condition: kill, tkill, tgkill only at this process; socket only AF_UNIX;
# clone only for threads (CLONE_THREAD).
_SIGNAL_CALLS = {"x86_64": (62, 200, 234), "aarch64": (129, 130, 131)}
_SOCKET = {"x86_64": 41, "aarch64": 198}
_CLONE = {"x86_64": 56, "aarch64": 220}
_CLONE3 = 435
_CLONE_THREAD = 0x00010000
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_RET_KILL_PROCESS = 0x80000000


def seccomp_program(machine: str, pid: int) -> list[tuple[int, int, int, int]]:
    """The BPF filter as (code, jt, jf, k) instructions; KeyError for an unknown machine."""
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    arch = _AUDIT_ARCH[machine]
    # Instructions with symbolic jump targets, resolved below.
    prog: list[tuple[int, Any, Any, int]] = [
        (ld, 0, 0, 4),  # seccomp_data.arch
        (jeq, None, "kill", arch),
        (ld, 0, 0, 0),  # seccomp_data.nr
    ]
    if machine == "x86_64":
        prog.append((jge, "kill", None, 0x40000000))  # the x32 ABI
    for nr in _SIGNAL_CALLS[machine]:
        prog.append((jeq, "signal", None, nr))
    prog.append((jeq, "socket", None, _SOCKET[machine]))
    prog.append((jeq, "clone", None, _CLONE[machine]))
    prog.append((jeq, "enosys", None, _CLONE3))  # glibc then falls back to clone
    column = _MACHINES.index(machine)
    for numbers in _DENIED_CALLS.values():
        denied = numbers[column]
        if denied is not None:
            prog.append((jeq, "deny", None, denied))
    prog.append((ret, 0, 0, _RET_ALLOW))
    labels: dict[str, int] = {}
    labels["signal"] = len(prog)
    prog += [(ld, 0, 0, 16), (jeq, "allow", None, pid), (jeq, "allow", "deny", 0)]
    labels["socket"] = len(prog)
    prog += [(ld, 0, 0, 16), (jeq, "allow", "deny", 1)]  # AF_UNIX
    labels["clone"] = len(prog)
    prog += [(ld, 0, 0, 16), (jset, "allow", "deny", _CLONE_THREAD)]
    labels["allow"] = len(prog)
    prog.append((ret, 0, 0, _RET_ALLOW))
    labels["deny"] = len(prog)
    prog.append((ret, 0, 0, _RET_ERRNO | 1))  # EPERM
    labels["enosys"] = len(prog)
    prog.append((ret, 0, 0, _RET_ERRNO | 38))  # ENOSYS
    labels["kill"] = len(prog)
    prog.append((ret, 0, 0, _RET_KILL_PROCESS))

    def offset(here: int, target: Any) -> int:
        if target is None:
            return 0
        if isinstance(target, int):
            return target
        jump = labels[target] - here - 1
        if not 0 <= jump <= 255:
            raise ValueError("seccomp jump out of range")
        return jump

    return [(code, offset(i, jt), offset(i, jf), k) for i, (code, jt, jf, k) in enumerate(prog)]


def _seccomp() -> bool:
    """Install the filter; False when the platform or kernel does not allow it."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        program = seccomp_program(os.uname().machine, os.getpid())

        class SockFilter(ctypes.Structure):
            _fields_ = [
                ("code", ctypes.c_uint16),
                ("jt", ctypes.c_uint8),
                ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32),
            ]

        class SockFprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]

        filters = (SockFilter * len(program))(*[SockFilter(*ins) for ins in program])
        fprog = SockFprog(len(program), filters)
        libc = _libc()
        if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
            return False
        return bool(libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0)  # SECCOMP_MODE_FILTER
    except (OSError, AttributeError, ImportError, KeyError, ValueError):
        return False


def _drop_capabilities() -> bool:
    """Give up every capability (effective, permitted, inheritable), for good: a child started
    by root is then uid 0 without root's powers. True when done."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        class Header(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

        class Data(ctypes.Structure):
            _fields_ = [
                ("effective", ctypes.c_uint32),
                ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32),
            ]

        header = Header(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
        data = (Data * 2)()
        return bool(_libc().capset(ctypes.byref(header), data) == 0)
    except (OSError, AttributeError, ImportError):
        return False


def _forget_ctypes() -> None:
    """Drop ctypes from sys.modules, so that importing it again passes through the guard."""
    for name in [n for n in sys.modules if n == "ctypes" or n.startswith(("ctypes.", "_ctypes"))]:
        del sys.modules[name]


# ---------------------------------------------------------------------------- Python guard
_FORK_EVENTS = frozenset(
    {
        "os.fork",
        "os.forkpty",
        "os.system",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.startfile",
        "subprocess.Popen",
    }
)
_BLOCKED_IMPORTS = {"_posixsubprocess": "fork", "ctypes": "native", "_ctypes": "native"}
# event -> (positions of path arguments that must stay inside the working directory,
#           positions of the dir_fd arguments those paths are relative to)
_PATH_WRITE_EVENTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "os.remove": ((0,), (1,)),
    "os.rmdir": ((0,), (1,)),
    "os.mkdir": ((0,), (2,)),
    "os.rename": ((0, 1), (2, 3)),
    "os.link": ((0, 1), (2, 3)),
    "os.symlink": ((1,), (2,)),
    "os.chmod": ((0,), (2,)),
    "os.chown": ((0,), (3,)),
    "os.chflags": ((0,), ()),
    "os.lchflags": ((0,), ()),
    "os.truncate": ((0,), ()),
    "os.utime": ((0,), (3,)),
    "os.mkfifo": ((0,), (2,)),
    "os.setxattr": ((0,), ()),
    "os.removexattr": ((0,), ()),
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def _install_guard(workdir: str, read_dirs: list[str], report: Report) -> None:
    pid = os.getpid()
    own_proc = {"self", "thread-self", str(pid)}
    realpath, fspath, fsdecode, exit_now = os.path.realpath, os.fspath, os.fsdecode, os._exit
    isdir, isabs, join, readlink = os.path.isdir, os.path.isabs, os.path.join, os.readlink
    readable_files = frozenset(READ_FILES)

    def block(kind: str, what: str) -> None:
        try:
            report({"kind": "blocked", "blocked": kind, "what": what[:200]})
        finally:
            exit_now(EXIT_BLOCKED)

    def resolve(path: object, dir_fd: object = None) -> str | None:
        """The real path `path` names (relative to `dir_fd` when given); None for a file
        descriptor, "?" when it cannot be told."""
        if isinstance(path, int):
            return None  # an already open descriptor
        try:
            text = fsdecode(fspath(cast(Any, path)))
            if isinstance(dir_fd, int) and dir_fd >= 0 and not isabs(text):
                text = join(readlink(f"/proc/self/fd/{dir_fd}"), text)
            return realpath(text)
        except (TypeError, ValueError, OSError):
            return "?"

    def under(path: str, roots: list[str] | tuple[str, ...]) -> bool:
        return any(path == root or path.startswith(root + "/") for root in roots)

    def check_open(path: object, mode: object, flags: object) -> None:
        resolved = resolve(path)
        if resolved is None:
            return
        if isinstance(flags, int) and flags:
            writing = bool(flags & _WRITE_FLAGS)
        else:
            writing = isinstance(mode, str) and any(c in mode for c in "wax+")
        if not under(resolved, (workdir,)) and isdir(resolved):
            # a directory descriptor outside: a base for dir_fd-relative writes ("open" events
            # do not carry dir_fd)
            block("read", f"directory descriptor {resolved}")
        if writing:
            if resolved not in WRITABLE_FILES and not under(resolved, (workdir,)):
                block("write", resolved)
            return
        if resolved.startswith("/proc/"):
            parts = resolved.split("/")
            if len(parts) > 2 and parts[2] not in own_proc:
                block("env" if "environ" in parts else "read", resolved)
            return
        if resolved not in readable_files and not under(resolved, read_dirs):
            block("read", resolved)

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event.startswith("socket."):
            block("network", event)
        elif event in _FORK_EVENTS:
            block("fork", event)
        elif event.startswith("ctypes."):
            block("native", event)
        elif event == "import":
            kind = _BLOCKED_IMPORTS.get(args[0])
            if kind is not None:
                block(kind, f"import {args[0]}")
        elif event == "open":
            check_open(*args[:3])
        elif event in _PATH_WRITE_EVENTS:
            paths, dir_fds = _PATH_WRITE_EVENTS[event]
            for k, index in enumerate(paths):
                if index >= len(args):
                    continue
                at = dir_fds[min(k, len(dir_fds) - 1)] if dir_fds else None
                dir_fd = args[at] if at is not None and at < len(args) else None
                resolved = resolve(args[index], dir_fd)
                if resolved is not None and not under(resolved, (workdir,)):
                    block("write", f"{event} {resolved}")
        elif event in ("os.listdir", "os.scandir"):
            resolved = resolve(args[0] if args and args[0] is not None else ".")
            if resolved is not None and not under(resolved, read_dirs):
                block("read", f"{event} {resolved}")
        elif event == "os.mknod":
            block("write", f"os.mknod {args[0]}")
        elif event in ("os.kill", "os.killpg") and args[0] not in (pid, 0):
            block("signal", f"{event} {args[0]}")

    sys.addaudithook(hook)


if __name__ == "__main__":
    main()
