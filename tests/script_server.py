"""Runs the repository's scripts for the tests in forked copies of one warm interpreter.

A fresh `python script.py` spends about 3 s importing torch before it reads its first flag, and the
tests run the scripts about a hundred times. This server imports torch and the repository's packages
once (running no torch operation, so no thread pool exists to be broken by fork), then for each
request forks a child that becomes that command: its own working folder, environment, argv, stdin
from /dev/null, stdout and stderr into files, the script run as `__main__` and the exit code the
interpreter would give (`sys.exit`, an uncaught exception's 1, atexit handlers run). tests/conftest.py
falls back to a real subprocess where fork is unavailable.

Protocol, one JSON object a line: request {"argv", "cwd", "env", "stdout", "stderr"} on stdin; the
server answers {"pid"} at once and {"returncode"} when the child has exited.
"""
from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy  # noqa: E402,F401
import torch  # noqa: E402,F401
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
    runpy.run_path(argv[0], run_name="__main__")
    # Falling off the end (or SystemExit, or an exception) unwinds to the top level, where the
    # interpreter exits as it would after the script.


def serve() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            become(request)
            return  # the child's interpreter exits normally from here
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    serve()
