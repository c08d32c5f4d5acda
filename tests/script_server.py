"""Runs the repository's scripts for the tests in forked copies of one warm interpreter.

A fresh `python script.py` spends about 3 s importing torch before it reads its first flag, and the
tests run the scripts about a hundred times. This server imports torch and the repository's packages
once (running no torch operation, so no thread pool exists to be broken by fork), then for each
request forks a child that becomes that command: its own working folder, environment, argv, stdin
from /dev/null, stdout and stderr into files, the script run as `__main__` and the exit code the
interpreter would give (`sys.exit`, an uncaught exception's traceback and 1, non-daemon threads
joined, atexit handlers run, streams flushed). The child then leaves by os._exit instead of tearing
the interpreter down: a normal teardown touches every object torch's import made (~300,000), each
page copied from the parent on write, 1.5 s a command on a 2-core CPU; what the teardown would still
do for a script (finalise its unreachable objects, such as a loader's workers held by a traceback) is
done by a garbage collection first. tests/conftest.py falls back to a real subprocess where fork is
unavailable.

Protocol, one JSON object a line: request {"argv", "cwd", "env", "stdout", "stderr"} on stdin; the
server answers {"pid"} at once and {"returncode"} when the child has exited.
"""
from __future__ import annotations

import atexit
import gc
import json
import os
import runpy
import signal
import sys
import threading
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy  # noqa: E402,F401
import torch  # noqa: E402,F401
import torch._dynamo  # noqa: E402,F401  (the first optimizer a command builds imports it: ~1.4 s a command)
import tqdm  # noqa: E402,F401

import dataset  # noqa: E402,F401
import engine.run  # noqa: E402,F401
import eval.fewshot  # noqa: E402,F401
import util  # noqa: E402,F401


def become(request: dict) -> None:
    """In the child: take on the command's process state, run its script, exit as the interpreter would."""
    os.setsid()  # its own process group, so that a timeout kills it with the loader workers it started
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for fd, target in ((null, 0), (out, 1), (err, 2)):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", closefd=False)
    argv = request["argv"]
    sys.argv = list(argv)
    sys.path[0] = str(Path(argv[0]).resolve().parent)  # as `python script.py` puts the script's folder first
    interrupted = False
    try:
        runpy.run_path(argv[0], run_name="__main__")
        code = 0
    except SystemExit as e:  # as the interpreter reads sys.exit's argument
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    except KeyboardInterrupt:
        traceback.print_exc()
        code, interrupted = 130, True
    except BaseException:
        traceback.print_exc()
        code = 1
    exit_as_the_interpreter(code, interrupted)


def exit_as_the_interpreter(code: int, interrupted: bool) -> None:
    """What the interpreter's exit does that a script can observe, then os._exit (module docstring)."""
    threading._shutdown()  # non-daemon threads joined, as at a normal exit
    atexit._run_exitfuncs()
    gc.collect()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    if interrupted:  # an uncaught KeyboardInterrupt ends the interpreter by SIGINT
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code)


def serve() -> None:
    # The imports' objects out of the collector's reach: a child's collections (the one before its exit
    # too) then never touch, and so never copy, the pages they live on.
    gc.freeze()
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            become(request)  # never returns: the child exits as the command
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    serve()
