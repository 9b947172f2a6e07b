"""The end of an `mlvc` process (runtime.end_process): what the interpreter's exit does that anyone can observe
(non-daemon threads joined, atexit handlers run once, stdout and stderr flushed, the status) happens, and only
the teardown is skipped; where the interpreter would do more, it exits as usual. Each case is a fresh
interpreter; an object's `__del__` at exit tells whether the teardown ran."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from conftest import make_repo

CHILD = textwrap.dedent("""
    import atexit, sys, threading, time, weakref
    from mlvc.runtime import end_process
    log = sys.argv[1]
    mode = sys.argv[2]

    def note(what, _open=open):  # `open` kept: the teardown may have cleared the builtins when __del__ runs
        with _open(log, "a") as f:
            f.write(what + "\\n")

    class Teardown:
        def __del__(self):
            note("teardown")

    kept = Teardown()  # alive at exit: only the interpreter's teardown deletes it
    atexit.register(note, "atexit")

    class Gone:
        pass

    gone = Gone()
    weakref.finalize(gone, note, "finalize")  # run at exit by its own atexit hook (the object stays alive)

    def late():
        time.sleep(1.0 if mode == "ctrl-c" else 0.3)
        note("thread")

    threading.Thread(target=late).start()  # not a daemon: the exit waits for it
    print("out" * 1000)  # buffered: stdout is a pipe
    sys.stderr.write("err")  # no newline: stderr is line-buffered
    if mode == "trace":
        sys.settrace(lambda *a: None)
        atexit.register(sys.settrace, None)  # else the tracer keeps `kept` alive through the teardown
    if mode == "coverage":
        import types
        sys.modules["coverage"] = types.ModuleType("coverage")
    if mode == "monitoring":
        sys.monitoring.use_tool_id(3, "a profiler")
    if mode == "ctrl-c":  # while the exit waits for the thread
        import os, signal
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
    if mode == "flush-fails":
        class Broken:
            def write(self, s):
                return len(s)

            def flush(self):
                raise BrokenPipeError

        sys.stdout = Broken()
    code = {"text": "a message", "none": None}.get(mode, 3)
    end_process(SystemExit(code))
""")


def _run(tmp_path, mode: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    log = tmp_path / f"{mode}.log"
    p = subprocess.run([sys.executable, "-c", CHILD, str(log), mode], capture_output=True, text=True, timeout=60)
    return p, log.read_text().split() if log.exists() else []


def test_a_number_ends_the_process_without_the_teardown_and_nothing_else_is_lost(tmp_path):
    p, log = _run(tmp_path, "number")
    assert p.returncode == 3, p.stderr
    assert p.stdout == "out" * 1000 + "\n" and p.stderr == "err"
    assert sorted(log) == ["atexit", "finalize", "thread"]  # each once; no teardown
    p, log = _run(tmp_path, "none")
    assert p.returncode == 0 and sorted(log) == ["atexit", "finalize", "thread"]


MONITORING = pytest.param("monitoring", marks=pytest.mark.skipif(sys.version_info < (3, 12),
                                                                  reason="sys.monitoring is Python 3.12's"))


@pytest.mark.parametrize("mode", ["text", "trace", "coverage", MONITORING, "flush-fails"])
def test_where_the_interpreter_does_more_it_exits_as_usual(tmp_path, mode):
    """A status that is text (printed, status 1), a tracer, coverage or a profiler of sys.monitoring (which
    report at exit), a flush that fails (the interpreter reports it, status 120): the usual exit, with its
    teardown, and the atexit handlers still run once."""
    p, log = _run(tmp_path, mode)
    assert sorted(log) == ["atexit", "finalize", "teardown", "thread"], p.stderr
    assert p.returncode == {"text": 1, "flush-fails": 120}.get(mode, 3), p.stderr
    if mode == "text":
        assert p.stderr.endswith("a message\n")
    if mode == "flush-fails":
        assert "BrokenPipeError" in p.stderr


def test_ctrl_c_while_the_exit_waits_for_a_thread_keeps_the_status(tmp_path):
    """Ctrl-C while the exit joins a thread: as with the interpreter's own exit, the status stays the command's,
    the exit hooks have run and the thread is left (no traceback: the command's work is done)."""
    p, log = _run(tmp_path, "ctrl-c")
    plain = tmp_path / "plain.log"
    usual = subprocess.run([sys.executable, "-c", CHILD.replace("end_process(SystemExit(code))", "sys.exit(code)"),
                            str(plain), "ctrl-c"], capture_output=True, text=True, timeout=60)
    assert p.returncode == usual.returncode == 3, p.stderr
    assert sorted(log) == sorted(plain.read_text().split()) == ["atexit", "finalize"]
    assert "Traceback" not in p.stderr and "KeyboardInterrupt" in usual.stderr


def test_python_i_gets_its_prompt_after_the_program(tmp_path):
    """PYTHONINSPECT (`python -i`): the interpreter's prompt comes after the program (here it reads an empty
    stdin and ends), so the process is not ended under it."""
    log = tmp_path / "inspect.log"
    p = subprocess.run([sys.executable, "-c", CHILD, str(log), "none"], capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL, env={**__import__("os").environ, "PYTHONINSPECT": "1"})
    assert sorted(log.read_text().split()) == ["atexit", "finalize", "teardown", "thread"], p.stderr


def test_the_program_exits_with_each_commands_status(tmp_path):
    """`python -m mlvc` (as the console script): the status and every line of output of a command that succeeds,
    one that fails, a usage error and a closed reader."""
    repo = make_repo(tmp_path / "repo")

    def mlvc(*args: str, cwd=repo.root) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mlvc", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=120)

    p = mlvc("--help")
    assert p.returncode == 0 and "Commands:" in p.stdout and p.stdout.endswith("\n")
    p = mlvc("log", cwd=tmp_path)  # not a repository
    assert p.returncode != 0 and "not" in p.stderr.lower() and p.stdout == ""
    p = mlvc("no-such-command")
    assert p.returncode == 2 and "No such command" in p.stderr
    head = subprocess.run(f"{sys.executable} -m mlvc --help | head -c 10", shell=True, cwd=repo.root,
                          capture_output=True, text=True, timeout=120)
    assert head.stdout == "Usage: mlv" and "Traceback" not in head.stderr


def test_the_program_entry_points_end_without_the_teardown(tmp_path):
    """`python -m mlvc` ends through end_process (an object alive at exit is never deleted), and the console
    script is the same entry (`mlvc.cli:run`); `mlvc.cli.main` called from code raises SystemExit as before."""
    import os
    import tomllib

    log = tmp_path / "log"
    code = textwrap.dedent(f"""
        import runpy, sys

        class Teardown:
            def __del__(self, _open=open):
                with _open({str(log)!r}, "a") as f:
                    f.write("teardown")

        kept = Teardown()
        sys.argv = ["mlvc", "--version"]
        runpy.run_module("mlvc", run_name="__main__", alter_sys=True)
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "version" in p.stdout and not log.exists()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        assert tomllib.load(f)["project"]["scripts"]["mlvc"] == "mlvc.cli:run"
    from mlvc.cli import main

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["mlvc", "--version"])
        with pytest.raises(SystemExit) as e:
            main()
    assert e.value.code == 0
