"""`mlvc report`: one self-contained HTML page, checked as a person sees it in headless Chromium."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import make_repo, write_safetensors_np
from mlvc.cli import cli
from mlvc.ledger import Record

pytest.importorskip("matplotlib", reason="mlvc report needs matplotlib (pip install 'mlvc[report]')")
pytest.importorskip("jinja2", reason="mlvc report needs jinja2 (pip install 'mlvc[report]')")

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                  "--hide-scrollbars"]


@pytest.fixture
def reported(tmp_path):
    """Four commits that change different layer groups, two tasks with results, and one failed evaluation."""
    repo = make_repo(tmp_path / "repo")
    rng = np.random.default_rng(0)
    sd = {"embeddings.word.weight": rng.standard_normal((32, 16), dtype=np.float32),
          "encoder.layer.0.attn.weight": rng.standard_normal((16, 16), dtype=np.float32),
          "encoder.layer.1.attn.weight": rng.standard_normal((16, 16), dtype=np.float32),
          "head.weight": rng.standard_normal((4, 16), dtype=np.float32)}
    path = repo.abs_path("ckpt/model.safetensors")
    os.makedirs(os.path.dirname(path))
    ids = []
    for i, (layer, scale) in enumerate([(None, 0), ("encoder.layer.1.attn.weight", 0.01),
                                        ("head.weight", 0.5), ("encoder.layer.0.attn.weight", 0.001)]):
        if layer:
            sd[layer] = sd[layer] + scale * rng.standard_normal(sd[layer].shape, dtype=np.float32)
        write_safetensors_np(path, sd)
        ids.append(repo.commit(message=f"update {i} <b>not bold</b>", paths=[repo.abs_path("ckpt")],
                               metadata={"step": i * 100}).commit.id)
    with open(os.path.join(repo.root, "mlvc.toml"), "w") as f:
        f.write('[tasks.qa]\ncommand = ["x", "{checkpoint}"]\n'
                'metrics = { f1 = "higher", loss = { direction = "lower", tolerance = 0.01 } }\n')
    for cid, f1, loss in zip(ids, [0.61, 0.64, 0.58, 0.585], [1.2, 1.1, 1.3, 1.295], strict=True):
        repo.record_eval(cid, "qa", {"f1": f1, "loss": loss})
    for cid, acc in zip(ids[:3], [0.7, 0.72, 0.75], strict=True):
        repo.record_eval(cid, "retrieval", {"recall_at_1": acc}, higher_is_better={"recall_at_1": True})
    repo.ledger.append([Record(ids[3], "retrieval", None, None, None, "s", status="timeout",
                               error="timed out after 60 s and was killed", stderr_tail="...")])
    out = str(tmp_path / "out" / "report.html")
    os.makedirs(os.path.dirname(out))
    res = CliRunner().invoke(cli, ["-C", repo.root, "report", "-o", out])
    assert res.exit_code == 0, res.output
    assert "4 commit(s), 2 task(s), 3 chart(s)" in res.output
    return repo, ids, out


def test_report_is_one_self_contained_page(reported):
    repo, ids, out = reported
    with open(out, encoding="utf-8") as f:
        page = f.read()
    # nothing to fetch: no scripts, no external stylesheets, images or fonts
    assert not re.search(r"<script|<link|<img|@import|url\(\s*['\"]?(?:https?:)?//", page)
    assert not re.search(r"(?:src|href)=['\"]?(?:https?:)?//", page)
    assert page.count("<svg") == 3  # a chart per task and the layer-group map
    for cid in ids:
        assert cid[:12] in page
    assert "&lt;b&gt;not bold&lt;/b&gt;" in page and "<b>not bold</b>" not in page  # messages are escaped
    assert page.count("<details class='layers'") == 3  # one per commit with a parent
    assert "TIMEOUT" in page and "timed out after 60 s" in page


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium); the report's browser "
                    "check needs it")
    return exe


def _browse(exe: str, tmp_path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"chromium-profile-{len(os.listdir(tmp_path))}"
    return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=180)


def test_report_in_headless_chromium(reported, tmp_path):
    exe = _chromium()
    repo, ids, out = reported
    url = "file://" + out
    dom = _browse(exe, tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    # What a person sees: the four sections, a chart per task, the layer map, the tables with their marks.
    for heading in ("History", "Charts", "Effects", "Layer changes"):
        assert f"<h2>{heading}</h2>" in html
    charts = re.findall(r"<figure class=\"chart\" data-task=\"([^\"]+)\">\s*<svg", html)
    assert charts == ["qa", "retrieval"]
    assert len(re.findall(r"<svg", html)) == 3
    assert "qa: f1 (higher is better)" in html and "qa: loss (lower is better, ±0.01)" in html
    effects = html[html.index("<table class=\"effects\""):]
    effects = effects[effects.index("<tbody>"): effects.index("</tbody>")]
    rows = re.findall(r"<tr>(.*?)</tr>", effects, re.S)
    assert len(rows) == 4  # one per evaluated commit
    newest = rows[0]
    assert ids[3][:12] in newest
    # update 3: f1 0.58 -> 0.585 improved, loss 1.3 -> 1.295 within the 0.01 tolerance, retrieval timed out
    assert re.search(r"<td class=\"improved\">0\.585 \(\+0\.005 ✓\)</td>", newest)
    assert re.search(r"<td class=\"unchanged\">1\.295 \(-0\.005 =\)</td>", newest)
    assert re.search(r"<td class=\"failed\"[^>]*>TIMEOUT</td>", newest)
    assert re.search(r"<td class=\"regressed\">0\.58 \(-0\.06 ✗\)</td>", rows[1])
    # the layer map names the groups each commit changed
    layer_text = {m.group(1): m.group(2) for m in
                  re.finditer(r"<details class=\"layers\" data-commit=\"(\w+)\"><summary>(.*?)</summary>", html)}
    assert set(layer_text) == set(ids[1:])
    assert all("1 of 4 layer group(s) changed" in s for s in layer_text.values())
    assert "encoder.layer.1" in html and "head" in html

    shot = tmp_path / "report.png"
    res = _browse(exe, tmp_path, f"--screenshot={shot}", "--window-size=1280,2200", url)
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    import matplotlib.image

    img = matplotlib.image.imread(str(shot))[..., :3]
    assert img.shape[:2] == (2200, 1280)
    assert img.std() > 0.05  # not a blank page
    pixels = (img * 255).round().astype(int).reshape(-1, 3)

    def count(rgb, tol=6):
        return int((np.abs(pixels - np.array(rgb)) <= tol).all(axis=1).sum())

    assert count((0xc6, 0xf6, 0xd5)) > 200  # green improvement cells are drawn
    assert count((0xfe, 0xd7, 0xd7)) > 200  # red regression cells
    assert count((0x2b, 0x6c, 0xb0)) > 200  # the charts' metric lines


def test_report_of_a_history_without_results(tmp_path):
    repo = make_repo(tmp_path / "repo")
    path = repo.abs_path("w.safetensors")
    write_safetensors_np(path, {"layer.0.w": np.ones(4, dtype=np.float32)})
    repo.commit(message="only commit", paths=[path])
    r = repo.report(str(tmp_path / "r.html"))
    assert (r.commits, r.tasks, r.charts, r.layer_maps) == (1, [], 0, 0)
    with open(r.path, encoding="utf-8") as f:
        page = f.read()
    assert "No evaluation results yet" in page and "No commit with a parent" in page and "<svg" not in page


def test_report_escapes_ref_names_and_labels_a_detached_head(tmp_path):
    repo = make_repo(tmp_path / "repo")
    path = repo.abs_path("w.safetensors")
    ids = []
    for i in range(2):
        write_safetensors_np(path, {"layer.0.w": np.full(4, i, dtype=np.float32)})
        ids.append(repo.commit(message=f"c{i} <script>alert(1)</script>", paths=[path]).commit.id)
    repo.create_tag("v<1>&'x'", ids[0])
    r = repo.report(str(tmp_path / "r.html"))
    page = open(r.path, encoding="utf-8").read()
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "tag: v&lt;1&gt;&amp;&#39;x&#39;" in page
    assert "<span class='label'>HEAD → main</span>" in page
    repo.checkout(ids[0])
    data = repo.report_data()
    assert data.head == ids[0] and data.head_branch is None and data.to_json()["commits"][0]["id"] == ids[0]
    page = open(repo.report(str(tmp_path / "d.html")).path, encoding="utf-8").read()
    assert "<span class='label'>HEAD</span>" in page  # detached, as `mlvc log` shows it


def test_ref_labels_are_the_same_for_log_and_report():
    from mlvc.render.labels import ref_labels

    branches, tags = {"main": "a", "exp": "b"}, {"v1": "a"}
    assert ref_labels("a", "main", branches, tags) == {"a": ["HEAD -> main", "tag: v1"], "b": ["exp"]}
    assert ref_labels("c", None, branches, tags, arrow="→") == {"c": ["HEAD"], "a": ["main", "tag: v1"],
                                                                "b": ["exp"]}
    assert ref_labels(None, "main", {}, {}) == {}


def test_the_template_ships_with_the_package():
    from importlib.resources import files

    templates = files("mlvc.render") / "templates"
    assert (templates / "report.html.j2").is_file() and (templates / "report.css").is_file()
    pyproject = open(os.path.join(os.path.dirname(__file__), "..", "pyproject.toml"), encoding="utf-8").read()
    assert re.search(r'"mlvc\.render" = \["templates/\*"\]', pyproject)


MLVC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mlvc")
PRESENTATION = ("jinja2", "markupsafe", "tabulate", "matplotlib", "html")


def _imports(path: str):
    """(module imported, enclosing function name) for every import a file executes."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    out = []

    def visit(node, func):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and ast.unparse(child.test) == "TYPE_CHECKING":
                continue  # imports for type hints only: never executed
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if isinstance(child, ast.Import):
                out.extend((a.name, name) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                mod = "." * child.level + (child.module or "")
                out.extend((f"{mod}.{a.name}" if not child.module else mod, name) for a in child.names)
            visit(child, name)

    visit(tree, None)
    return out


def test_the_library_never_imports_render():
    """Layers: cli -> render -> library. Below cli/ and render/, nothing imports render or formats output;
    the one exception is the Repo.report convenience, which reaches render lazily."""
    offenders = []
    for base, _, files in os.walk(MLVC):
        rel = os.path.relpath(base, MLVC)
        if rel.split(os.sep)[0] in ("cli", "render"):
            continue
        for f in files:
            if not f.endswith(".py") or (rel == "." and f in ("demo.py", "__main__.py")):
                continue
            path = os.path.join(base, f)
            for mod, func in _imports(path):
                parts = mod.lstrip(".").split(".")
                if "render" in parts and not (f == "repo.py" and rel == "." and func == "report"):
                    offenders.append(f"{os.path.join(rel, f)}: {mod} (in {func})")
                if rel == "ops" and parts[0] in PRESENTATION:
                    offenders.append(f"{os.path.join(rel, f)}: {mod}")
    assert offenders == []


def test_help_imports_no_template_engine_or_plotting():
    code = ("import sys; from mlvc.cli import main; sys.argv=['mlvc','report','--help'];\n"
            "try:\n    main()\nexcept SystemExit: pass\n"
            "print('HEAVY', sorted(m for m in ('jinja2', 'matplotlib', 'torch', 'pyarrow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out and "self-contained HTML page" in out
