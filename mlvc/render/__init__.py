"""The presentation layer: library dataclasses in, text tables, CSV and the HTML report out.

It sits between the command line and the library: cli/ imports render, render imports the library's
dataclasses (and, for the report, writes the file through mlvc.util), and nothing under ops/ or below imports
render. Every module here is cheap to import; tabulate, jinja2 and matplotlib are imported inside the
functions that use them, so `mlvc --help` stays light.

- text.py    generic table, the one number format of metric values and changes, metadata as JSON
- units.py   byte sizes and grace periods as people read them
- diff.py    a TreeDiff as tensor / layer-group tables and summary lines (`mlvc diff`, `show`, `log --stat`)
- labels.py  branch/tag labels of commits (`mlvc log` and the report share them)
- evals.py   the ledger's views as text: the effect table, compare, eval run outcomes, task list, CSV
- check.py   `mlvc check` and `mlvc bisect`: the verdict table, JUnit XML, Markdown, the bisect result
- report.py  the self-contained HTML report (templates/report.html.j2, autoescaped jinja2)
- charts.py  the report's charts: matplotlib drawn into inline SVG
"""
