"""The programs manifest (scripts/programs.txt) and the spawn check that enforces it.

Every program that the build, the tests, the demo, the benchmarks or the fuzzing run must be
listed in scripts/programs.txt with the Debian package that provides it, since
scripts/install-deps.sh installs exactly those packages. install() wraps subprocess.Popen (which
subprocess.run and asyncio's subprocesses use too) so that spawning an unlisted program fails at
once, with a message naming the manifest, on a developer's machine as on a fresh one: a program
that happens to be installed here cannot hide a missing install step.

Programs built by the repository itself (anything under its top directory, such as
.output/bgswitch) need no entry. Wrappers (nsenter, ip netns exec, timeout, taskset, env, sh -c)
are checked and so is the program they start.
"""

import os
import shlex
import subprocess
from typing import Dict, List, Optional, Sequence

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MANIFEST = os.path.join(TOP, "scripts", "programs.txt")


class UnlistedProgram(RuntimeError):
    """A test tried to run a program that scripts/programs.txt does not list."""


def load(path: str = MANIFEST) -> Dict[str, str]:
    """{program: package} of the manifest (entries whose program is "-" are packages the repo
    needs for something else than a program, such as headers or a Python module)."""
    out = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            words = line.split()
            if len(words) != 2:
                raise ValueError(f"{path}:{n}: want 'PROGRAM PACKAGE', got {line!r}")
            out[words[0]] = words[1]
    return out


def packages(path: str = MANIFEST) -> List[str]:
    """Every package of the manifest, once each, in order."""
    seen: List[str] = []
    for pkg in load(path).values():
        if pkg not in seen:
            seen.append(pkg)
    return seen


# Options of the wrappers that take a separate value (the rest are single words).
_NSENTER_ARGS = {"-t", "--target", "-S", "--setuid", "-G", "--setgid", "-w", "--wd", "-r",
                 "--root"}
_TIMEOUT_ARGS = {"-s", "--signal", "-k", "--kill-after"}


def _skip_opts(argv: Sequence[str], i: int, with_arg=frozenset()) -> int:
    while i < len(argv) and argv[i].startswith("-"):
        if argv[i] == "--":
            return i + 1
        i += 2 if argv[i] in with_arg else 1
    return i


def chain(argv: Sequence[str]) -> List[str]:
    """The programs an argv runs: the first word, and through known wrappers what they run."""
    out: List[str] = []
    argv = list(argv)
    while argv:
        prog = argv[0]
        out.append(prog)
        name = os.path.basename(prog)
        if name == "nsenter":
            i = _skip_opts(argv, 1, _NSENTER_ARGS)
        elif name == "ip" and argv[1:3] == ["netns", "exec"]:
            i = 4
        elif name == "timeout":
            i = _skip_opts(argv, 1, _TIMEOUT_ARGS) + 1
        elif name == "taskset":
            i = _skip_opts(argv, 1)
            i += 1 if "-c" in argv[1:i] or "--cpu-list" in argv[1:i] else 1
        elif name == "env":
            i = _skip_opts(argv, 1)
            while i < len(argv) and "=" in argv[i]:
                i += 1
        elif name in ("setsid", "stdbuf", "sudo"):
            i = _skip_opts(argv, 1)
        elif name in ("sh", "bash") and "-c" in argv[1:-1]:
            return out + chain(_first_command(argv[argv.index("-c") + 1]))
        else:
            break
        argv = argv[i:]
    return out


# Shell builtins a `sh -c` line may start with: no program to check.
_BUILTINS = {"command", "echo", "printf", "test", "[", "cd", "set", "trap", "wait", "read",
             "exit", ":", "kill", "ulimit", "umask", "export", "eval", ".", "source"}

# The repository's own command, also where a test installs it (`make install DESTDIR=...`).
_OWN = {"bgswitch"}


def _first_command(script: str) -> List[str]:
    """The first word of a shell command line that names a program (best effort)."""
    try:
        words = shlex.split(script)
    except ValueError:
        return []
    while words and ("=" in words[0] or words[0] == "exec"):
        words = words[1:]
    return words[:1] if words and words[0] not in _BUILTINS else []


def unlisted(argv: Sequence[str], listed: Dict[str, str]) -> Optional[str]:
    """The first program argv runs that is neither in the manifest nor built by the repo."""
    for prog in chain(argv):
        path = os.path.realpath(prog) if os.sep in prog else None
        if path and (path.startswith(TOP + os.sep) or os.path.basename(path) in _OWN):
            continue
        if os.path.basename(prog) not in listed:
            return prog
    return None


_installed = False


def install(path: str = MANIFEST) -> None:
    """Refuse, from now on in this process, to spawn a program the manifest does not list."""
    global _installed
    if _installed:
        return
    listed = load(path)
    record = os.environ.get("BGS_PROGRAMS_RECORD")  # a file: list unlisted programs, run them
    real_init = subprocess.Popen.__init__

    def checked_init(self, args, *a, **kw):
        argv = [args] if isinstance(args, (str, bytes)) else list(args)
        argv = [os.fsdecode(w) for w in argv]
        if kw.get("shell"):
            argv = ["sh", "-c", argv[0]]
        if kw.get("executable"):
            argv[0] = os.fsdecode(kw["executable"])
        prog = unlisted(argv, listed)
        if prog is not None and record:
            with open(record, "a") as f:
                f.write(prog + "\n")
        elif prog is not None:
            raise UnlistedProgram(
                f"{prog!r} is not in scripts/programs.txt: add it with its Debian package, so "
                f"that scripts/install-deps.sh installs it (argv: {argv[:6]})")
        real_init(self, args, *a, **kw)

    subprocess.Popen.__init__ = checked_init
    _installed = True
