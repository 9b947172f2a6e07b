"""Running mlvc commands in child processes, fast: used by the crash harness and the concurrency tests.

`SpawnRunner` starts `python -m mlvc` for each command (about 0.4 s of interpreter start and imports on a
small machine). `ForkRunner` keeps one pre-imported Python (a "zygote") that forks a child per command:
a few milliseconds each. A forked child is its own process (own pid and file descriptors, killed by a real
SIGKILL), reloads `mlvc.faults` so that it reads the fault-injection variables of its own environment
(MLVC_FAULT_AT, MLVC_FAULT_LOG), and runs the same click entry point as the `mlvc` script. The zygote
refuses to start when its imports left it with threads (forking those can deadlock the child); then
`make_runner` falls back to spawning.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

AUTHOR = "crash-harness"
CHILD_ENV = {"MLVC_AUTHOR": AUTHOR, "OPENBLAS_NUM_THREADS": "1", "MLVC_DEBUG": None,
             "MLVC_FAULT_AT": None, "MLVC_FAULT_LOG": None, "MLVC_REPO": None}


# -- running mlvc commands in child processes -------------------------------------------------------------


@dataclass
class Result:
    argv: list[str]
    rc: int  # exit code; -9 when killed by SIGKILL (as subprocess reports it)
    stdout: str
    stderr: str

    @property
    def killed(self) -> bool:
        return self.rc == -9

    def describe(self) -> str:
        tail = (self.stderr.strip().splitlines() or [""])[-1][:300]
        return f"`mlvc {' '.join(self.argv)}` exited {self.rc}: {tail}"


def _child_env(extra: dict[str, str | None] | None) -> dict[str, str | None]:
    env = dict(CHILD_ENV)
    env.update(extra or {})
    return env


class SpawnRunner:
    """One fresh `python -m mlvc` per command: the slow, obviously faithful way."""

    name = "spawn"

    def run(self, argv: list[str], cwd: str, env: dict[str, str | None] | None = None,
            timeout: float = 120) -> Result:
        full = dict(os.environ)
        for k, v in _child_env(env).items():
            if v is None:
                full.pop(k, None)
            else:
                full[k] = v
        p = subprocess.run([sys.executable, "-m", "mlvc", *argv], cwd=cwd, env=full, capture_output=True,
                           text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
        return Result(list(argv), p.returncode, p.stdout, p.stderr)

    def close(self) -> None:
        pass


_ZYGOTE = r"""
import importlib, json, os, pkgutil, sys, time, traceback
import mlvc, mlvc.cli, mlvc.faults
for m in pkgutil.walk_packages(mlvc.__path__, "mlvc."):
    if m.name.endswith("__main__") or ".demo" in m.name:
        continue
    try:
        importlib.import_module(m.name)
    except Exception:
        pass  # a module mid-edit or needing torch: the child imports it itself if a command needs it
import numpy, safetensors.numpy
threads = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 1
# a module holding `point` itself (from .faults import point) would keep the pre-reload function in a child
bound = sorted(n for n, m in list(sys.modules.items()) if n.startswith("mlvc") and m is not mlvc.faults
               and any(v is mlvc.faults.point for v in vars(m).values()))
reply = sys.stdout
reply.write(json.dumps({"ready": True, "threads": threads, "bound": bound}) + "\n")
reply.flush()
for line in sys.stdin:
    req = json.loads(line)
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(req["cwd"])
            for k, v in req["env"].items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            for fd, path, flags in ((0, os.devnull, os.O_RDONLY),
                                    (1, req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                    (2, req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
                f = os.open(path, flags, 0o644)
                os.dup2(f, fd)
                os.close(f)
            importlib.reload(mlvc.faults)  # it reads MLVC_FAULT_AT / MLVC_FAULT_LOG when imported
            sys.argv = ["mlvc"] + req["argv"]
            try:
                mlvc.cli.cli.main(args=req["argv"], prog_name="mlvc")
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:
                traceback.print_exc()
                code = 1
        finally:
            try:
                sys.stdout.flush(); sys.stderr.flush()
            finally:
                os._exit(code)
    deadline = time.monotonic() + req["timeout"]
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(0.002)
    reply.write(json.dumps({"rc": os.waitstatus_to_exitcode(status), "pid": pid}) + "\n")
    reply.flush()
"""


class ForkRunner:
    """Commands forked from one pre-imported Python: a few ms per command instead of ~0.4 s."""

    name = "fork"

    def __init__(self) -> None:
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
        for k in ("MLVC_FAULT_AT", "MLVC_FAULT_LOG"):
            env.pop(k, None)
        self._tmp = tempfile.mkdtemp(prefix="mlvc-zygote-")
        self._p = subprocess.Popen([sys.executable, "-c", _ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   text=True, env=env, cwd=self._tmp, bufsize=1)
        hello = json.loads(self._p.stdout.readline() or "{}")
        if not hello.get("ready"):  # it could not import mlvc (its error went to stderr)
            self.close()
            raise RuntimeError("the fork server did not start")
        if hello["threads"] != 1:  # forking a process with threads can deadlock the child
            self.close()
            raise RuntimeError(f"the fork server has {hello['threads']} threads after its imports; use SpawnRunner")
        if hello["bound"]:
            self.close()
            raise RuntimeError(f"{hello['bound']} import faults.point by name: a forked child could not re-arm it")
        self._n = 0

    def run(self, argv: list[str], cwd: str, env: dict[str, str | None] | None = None,
            timeout: float = 120) -> Result:
        self._n += 1
        out, err = (os.path.join(self._tmp, f"{self._n}.{s}") for s in ("out", "err"))
        req = {"argv": list(argv), "cwd": os.path.abspath(cwd), "env": _child_env(env), "stdout": out,
               "stderr": err, "timeout": timeout}
        self._p.stdin.write(json.dumps(req) + "\n")
        self._p.stdin.flush()
        line = self._p.stdout.readline()
        if not line:
            raise RuntimeError("the fork server died")
        rc = json.loads(line)["rc"]
        texts = []
        for path in (out, err):
            with open(path, encoding="utf-8", errors="replace") as f:
                texts.append(f.read())
            os.unlink(path)
        return Result(list(argv), rc, *texts)

    def close(self) -> None:
        if self._p.poll() is None:
            self._p.stdin.close()
            try:
                self._p.wait(10)
            except subprocess.TimeoutExpired:
                self._p.kill()
        shutil.rmtree(self._tmp, ignore_errors=True)


def make_runner(kind: str = "fork"):
    if kind == "spawn":
        return SpawnRunner()
    try:
        return ForkRunner()
    except RuntimeError as e:
        print(f"crashlib: {e}; falling back to one process per command", file=sys.stderr)
        return SpawnRunner()
