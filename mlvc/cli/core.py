"""The core commands: init, commit, status, log, show, checkout, switch, branch, tag, fsck."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ..errors import FsckError
from ..render.text import short, table
from ..render.units import human_bytes
from . import cli
from ._common import DashDashCommand, echo_json, json_option, progress, quiet_option, with_repo

if TYPE_CHECKING:
    from ..repo import Repo


@cli.command()
@click.argument("path", default=".", type=click.Path(file_okay=False))
@click.option("-b", "--initial-branch", "branch", default="main", show_default=True, help="Name of the first branch.")
@json_option
def init(path: str, branch: str, as_json: bool) -> None:
    """Create an empty repository in PATH (default: here). Run again in a repository, it reinitializes it
    (remakes missing folders) and changes nothing else: HEAD, refs, objects and settings stay."""
    from ..errors import RepositoryExistsError
    from ..repo import Repo

    try:
        repo, reinitialized = Repo.init(path, branch=branch), False
    except RepositoryExistsError:
        repo, reinitialized = Repo.init(path, branch=branch, exist_ok=True), True
    source = click.get_current_context().get_parameter_source("branch")
    ignored = reinitialized and source is not None and source.name != "DEFAULT"
    if as_json:
        echo_json({"root": repo.root, "branch": repo.head_branch(), "reinitialized": reinitialized})
        return
    if ignored:
        click.echo(f"warning: re-init: ignored --initial-branch={branch}", err=True)
    what = "Reinitialized existing" if reinitialized else "Initialized empty"
    click.echo(f"{what} mlvc repository in {repo.dir}")


def _parse_meta(items: tuple[str, ...]) -> dict:
    import json

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--meta")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
        except RecursionError:
            raise click.BadParameter(f"{key}: the JSON is nested too deeply", param_hint="--meta") from None
    return out


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("-m", "--message", required=True, help="What this checkpoint is.")
@click.option("--meta", multiple=True, metavar="KEY=VALUE",
              help="Metadata to record (VALUE parsed as JSON if it can be).")
@click.option("--step", type=int, default=None, help="Training step (stored as metadata 'step').")
@click.option("--as-blob", multiple=True, metavar="GLOB",
              help="Store matching files as opaque bytes (e.g. training_args.bin).")
@click.option("--allow-empty", is_flag=True, help="Commit even if nothing changed.")
@click.option("-b", "--branch", default=None, metavar="NAME",
              help="Commit PATHS onto branch NAME (made at HEAD if new) instead; HEAD and the work tree's "
                   "state stay as they are.")
@json_option
@quiet_option
@with_repo
def commit(repo: Repo, paths, message, meta, step, as_blob, allow_empty, branch, as_json, quiet) -> None:
    """Commit PATHS (files or folders) as they are now, carrying every other tracked path over unchanged.

    Without PATHS, every tracked path is committed (refused when a tracked file is missing: `mlvc rm PATH`
    untracks it). Files and folders matched by .mlvcignore are left out of folders (docs/tracking.md).
    With --branch, the commit goes onto that branch (its other tracked paths carried over from its tip)."""
    metadata = _parse_meta(meta)
    if step is not None:
        metadata["step"] = step
    r = repo.commit(message=message, metadata=metadata, paths=list(paths) or None, as_blob=as_blob,
                    allow_empty=allow_empty, progress=progress(quiet), branch=branch)
    if as_json:
        echo_json(r.to_json())
        return
    where = r.branch or "detached HEAD"
    click.echo(f"[{where} {short(r.commit.id)}] {r.commit.message.splitlines()[0]}")
    ratio = r.new_bytes / r.raw_bytes if r.raw_bytes else 0.0
    read = r.files - r.carried
    carried = f" ({r.carried} carried over unchanged)" if r.carried else ""
    click.echo(f" {read} file(s) read{carried}, {r.tensors} tensor(s) in the tree; read {human_bytes(r.raw_bytes)}, "
               f"stored {human_bytes(r.new_bytes)} new ({ratio:.3f} of raw), {r.new_chunks}/{r.chunks} chunks new")
    for path in r.removed:
        click.echo(f" removed {path}")
    for path in r.inexact:
        click.echo(f" note: {path} will check out tensor-identical but not byte-identical "
                   "(torch cannot re-save it the same way)")


@cli.command()
@json_option
@quiet_option
@with_repo
def status(repo: Repo, as_json, quiet) -> None:
    """Show whether the working checkpoint differs from HEAD, and which tensors."""
    st = repo.status(progress=progress(quiet))
    if as_json:
        echo_json(st.to_json())
        return
    click.echo(f"On branch {st.branch}" if st.branch else f"HEAD detached at {short(st.head)}")
    if st.head is None:
        click.echo("No commits yet: `mlvc commit PATH -m MSG` makes the first one.")
        return
    memory = [f.path for f in st.files if f.state == "not_checked_out"]
    stale = [f.path for f in st.files if f.state == "stale"]
    if st.clean:
        click.echo(f"Working checkpoint matches HEAD ({len(st.files)} file(s) under {', '.join(st.roots)}).")
    for paths, what in ((memory, "committed from memory, not checked out"),
                        (stale, "committed from memory; the file on disk is an older committed version")):
        if paths:
            click.echo(f"{len(paths)} file(s) {what} (`mlvc reset --hard HEAD` writes HEAD's version): "
                       + ", ".join(paths[:5]) + (" ..." if len(paths) > 5 else ""))
    if st.clean:
        return
    rows = []
    for f in st.changed:
        detail = []
        if f.tensors_changed:
            detail.append(f"{len(f.tensors_changed)} changed")
        if f.tensors_added:
            detail.append(f"{len(f.tensors_added)} added")
        if f.tensors_removed:
            detail.append(f"{len(f.tensors_removed)} removed")
        if f.unreadable:
            detail.append("not readable as a checkpoint (see below)")
        rows.append([f.state, f.path, ", ".join(detail)])
    click.echo(table(rows, ["state", "file", "tensors"]))
    if any(f.state == "deleted" for f in st.changed):
        click.echo("\nDeleted files are still tracked: `mlvc commit` refuses until `mlvc rm PATH` untracks them "
                   "or `mlvc reset --hard HEAD` writes them back.")
    if any(f.state in ("removed", "untracked") for f in st.changed):
        click.echo("\nRemoved and untracked files were untracked by `mlvc rm`: the next commit records it.")
    for f in st.changed:
        if f.unreadable:
            click.echo(f"\n{f.path} does not read as a checkpoint mlvc can store ({f.unreadable}); if that is not "
                       f"what you meant to save, `mlvc restore {f.path}` or `mlvc reset --hard HEAD --force` writes "
                       "HEAD's version back.")
    changed = [(f.path, n) for f in st.changed for n in f.tensors_changed]
    if changed:
        click.echo("\nChanged tensors:")
        for path, name in changed[:50]:
            click.echo(f"  {name}  ({path})")
        if len(changed) > 50:
            click.echo(f"  ... and {len(changed) - 50} more (see --json)")


@cli.command()
@click.argument("rev", default="HEAD")
@click.option("--oneline", is_flag=True, help="One line per commit.")
@click.option("-n", "--max-count", "n", type=click.IntRange(min=0), default=None, help="Show at most N commits.")
@click.option("--stat", is_flag=True,
              help="Per commit: files and tensors changed against its first parent, and the relative change.")
@click.option("--name-status", is_flag=True,
              help="Per commit: the files it added (A), removed (D), modified (M) or renamed (R100).")
@click.option("--all", "all_refs", is_flag=True, help="Every branch, every tag and HEAD instead of REV.")
@click.option("--graph", is_flag=True, help="Draw the graph of parents (branches and merges) on the left.")
@json_option
@quiet_option
@with_repo
def log(repo: Repo, rev, oneline, n, stat, name_status, all_refs, graph, as_json, quiet) -> None:
    """Show the history reachable from REV (default HEAD), newest first."""
    if all_refs and rev != "HEAD":
        raise click.UsageError("--all starts from every branch and tag: give no REV with it")
    if repo.head() is None and rev == "HEAD" and not (all_refs and (repo.branches() or repo.tags())):
        if as_json:
            echo_json([])
        else:
            click.echo("No commits yet.")
        return
    commits = repo.log(rev, n, all_refs=all_refs, topo=graph)
    diffs = {}
    if stat or name_status:
        diffs = {c.id: repo.diff_commit(c.id, progress=progress(quiet)) for c in commits}
    if as_json:
        from dataclasses import asdict

        echo_json([{**c.to_json(), **({"stat": asdict(diffs[c.id].total())} if stat else {}),
                    **({"files": [f.to_json() for f in diffs[c.id].changed_files]} if diffs else {})}
                   for c in commits])
        return
    from ..render.diff import name_status_text, short_stat, summary
    from ..render.labels import graph as draw_graph
    from ..render.labels import repo_labels, shown_metadata
    from ..render.text import metadata_text

    labels = repo_labels(repo)
    rows = draw_graph([(c.id, c.parents) for c in commits]) if graph else None
    for k, c in enumerate(commits):
        deco = f" ({', '.join(labels[c.id])})" if c.id in labels else ""
        lines = []
        if oneline:
            tail = f"  [{short_stat(diffs[c.id])}]" if stat else ""
            lines.append(f"{short(c.id)}{deco} {c.message.splitlines()[0] if c.message else ''}{tail}")
        else:
            lines.append(f"commit {c.id}{deco}")
            if len(c.parents) > 1:
                lines.append("Merge:  " + " ".join(short(p) for p in c.parents))
            lines += [f"Author: {c.author}", f"Date:   {c.time}"]
            if c.metadata:
                lines.append("Meta:   " + metadata_text(shown_metadata(c.metadata)))
            lines += ["", *(f"    {line}" for line in c.message.splitlines()), ""]
            if stat:
                lines += [f" {line}" for line in summary(diffs[c.id]).splitlines()] + [""]
        if name_status and diffs[c.id].changed_files:
            lines += name_status_text(diffs[c.id]).splitlines() + ([] if oneline else [""])
        if rows is None:
            click.echo("\n".join(lines))
            continue
        r = rows[k]
        click.echo("\n".join([f"{r.row} {lines[0]}", *(f"{r.cont} {line}".rstrip() for line in lines[1:]),
                              *(r.after if k + 1 < len(commits) else [])]))


@cli.command()
@click.argument("rev", default="HEAD")
@click.option("--stat", is_flag=True, help="Summarize the change by layer group instead of by tensor.")
@click.option("--name-status", is_flag=True,
              help="Only the files changed against the first parent: A, D, M or R100 and the path(s).")
@click.option("--no-diff", is_flag=True, help="Leave out the diff against the parent (it reads the changed tensors).")
@json_option
@quiet_option
@with_repo
def show(repo: Repo, rev, stat, name_status, no_diff, as_json, quiet) -> None:
    """Show a commit: its metadata, its files, and what it changed against its first parent (files, then
    tensors)."""
    s = repo.show(rev)
    d = None if no_diff else repo.diff_commit(s.commit.id, progress=progress(quiet))
    if as_json:
        echo_json({**s.to_json(), **({"diff": d.to_json()} if d else {})})
        return
    from ..render.labels import shown_metadata
    from ..render.text import json_value

    c = s.commit
    if s.tag is not None:  # an annotated tag: its own header and message first, as `git show TAG` prints
        click.echo(f"tag {s.tag.tag}\nTagger:  {s.tag.tagger}\nDate:    {s.tag.time}\n")
        click.echo("\n".join(f"    {line}" for line in s.tag.message.splitlines()) + "\n")
    click.echo(f"commit {c.id}")
    for label, items in (("Branches", s.branches), ("Tags", s.tags)):
        if items:
            click.echo(f"{label}: {', '.join(items)}")
    if c.parents:
        click.echo("Parents: " + " ".join(short(p) for p in c.parents))
    click.echo(f"Author:  {c.author}")
    click.echo(f"Date:    {c.time}")
    for k, v in sorted(shown_metadata(c.metadata).items()):
        click.echo(f"Meta:    {k} = {json_value(v)}")
    click.echo("")
    for line in c.message.splitlines():
        click.echo(f"    {line}")
    click.echo("")
    rows = [[f.path, f.kind + ("" if f.exact else " (tensor-exact)"), f.tensor_count() or "", human_bytes(f.size)]
            for f in s.manifest.files]
    click.echo(table(rows, ["file", "kind", "tensors", "size"]))
    if d is not None:
        from ..render.diff import diff_text, name_status_text

        click.echo(f"\nChanges against {'parent ' + short(d.a) if d.a else 'nothing (first commit)'}:")
        click.echo(name_status_text(d) if name_status else diff_text(d, stat=stat))


@cli.command(cls=DashDashCommand)
@click.argument("rev")
@click.option("-o", "--output", type=click.Path(file_okay=False), default=None,
              help="Write the files under this folder instead of the working tree (HEAD does not move); a folder "
                   "holding an earlier checkout is updated.")
@click.option("-f", "--force", is_flag=True, help="Overwrite uncommitted changes (or, with --output, other files).")
@json_option
@quiet_option
@with_repo
def checkout(repo: Repo, rev, output, force, as_json, quiet) -> None:
    """Check out REV: write its files (in place, or under --output) and, in place, move HEAD to it.

    With tensor globs after `--`, only those tensors are restored from REV into the working checkpoint
    files (rewritten atomically, other tensors kept as they are); HEAD does not move (`mlvc restore` does
    the same, and restores whole files too)."""
    globs = click.get_current_context().meta.get("globs")
    if globs is not None:
        if not globs:
            raise click.UsageError("name the tensors to restore after `--` (globs such as 'encoder.layer.0.*')")
        from .config_cmds import restore_summary

        r = repo.checkout(rev, output=output, force=force, progress=progress(quiet), tensors=globs)
        if as_json:
            echo_json(r.to_json())
            return
        click.echo(restore_summary(r))
        return
    r = repo.checkout(rev, output=output, force=force, progress=progress(quiet))
    if as_json:
        echo_json(r.to_json())
        return
    if r.already:
        click.echo(f"Already on {r.head!r}")
        return
    counts = (f"{len(r.written)} file(s) written ({human_bytes(r.bytes_written)}), {len(r.unchanged)} unchanged, "
              f"{len(r.removed)} removed")
    if r.previous:
        click.echo(f"Updated the checkout of {short(r.previous)} in {r.target} to {short(r.commit)}: {counts}")
    else:
        click.echo(f"Checked out {short(r.commit)} into {r.target if output else 'working tree'}: {counts}")
    if r.head == "(detached)":
        click.echo(f"HEAD is now detached at {short(r.commit)}; `mlvc switch -c NAME` keeps commits made here.")
    elif r.head:
        click.echo(f"Switched to branch {r.head!r}")


@cli.command()
@click.argument("branch")
@click.option("-c", "--create", is_flag=True, help="Create the branch (at --start, default HEAD) and switch to it.")
@click.option("--start", default="HEAD", show_default=True, help="Where a new branch starts.")
@click.option("-f", "--force", is_flag=True, help="Overwrite uncommitted changes.")
@json_option
@quiet_option
@with_repo
def switch(repo: Repo, branch, create, start, force, as_json, quiet) -> None:
    """Switch to BRANCH, writing its checkpoint into the working tree."""
    r = repo.switch(branch, create=create, start=start, force=force, progress=progress(quiet))
    if as_json:
        echo_json(r.to_json())
    elif r.already:
        click.echo(f"Already on {branch!r}")
    else:
        made = "a new branch" if create else "branch"
        click.echo(f"Switched to {made} {branch!r} at {short(r.commit)} ({len(r.written)} file(s) written)")


def _ref_command(kind: str):
    plural = "branches" if kind == "branch" else "tags"

    def command(repo, name, start, delete, force, as_json, message=None) -> None:
        if delete:
            if not name:
                raise click.UsageError(f"name the {kind} to delete")
            old = getattr(repo, f"delete_{kind}")(name)
            if as_json:
                echo_json({"name": name, "kind": kind, "deleted": True, "was": old})
            else:
                click.echo(f"Deleted {kind} {name} (was {short(old)})")
            return
        if name:
            extra = {"message": message} if message is not None else {}
            cid = getattr(repo, f"create_{kind}")(name, start or "HEAD", force=force, **extra)
            if as_json:
                info = next((t for t in repo.list_tags() if t.name == name), None) if kind == "tag" else None
                echo_json(info.to_json() if info else {"name": name, "kind": kind, "commit": cid})
            else:
                click.echo(f"Created {'annotated ' if message is not None else ''}{kind} {name} at {short(cid)}")
            return
        if kind == "tag":
            from ..errors import MlvcError

            tags = repo.list_tags()
            if as_json:
                echo_json([t.to_json() for t in tags])
                return
            for t in tags:
                if t.commit is None:
                    click.echo(f"{t.name}  (damaged: {t.error})")
                    continue
                try:
                    note = t.tag.message if t.tag else repo.read_commit(t.commit).message
                except MlvcError as e:  # one damaged commit does not hide the other tags
                    note = f"(cannot be read: {e})"
                click.echo(f"{t.name}  {short(t.commit)}  {(note.splitlines() or [''])[0]}")
            return
        refs = repo.branches()
        current = repo.head_branch()
        if as_json:
            echo_json([{"name": n, "commit": c, "current": n == current} for n, c in refs.items()])
            return
        for n, c in refs.items():
            mark = "* " if n == current else "  "
            click.echo(f"{mark}{n}  {short(c)}  {repo.read_commit(c).message.splitlines()[0]}")

    cmd = json_option(with_repo(command))
    if kind == "tag":
        cmd = click.option("-m", "--message", default=None, help="Make an annotated tag: a tag object with this "
                           "message, the tagger and the time.")(cmd)
    cmd = click.option("-f", "--force", is_flag=True, help=f"Move an existing {kind}.")(cmd)
    cmd = click.option("-d", "--delete", "delete", is_flag=True, help=f"Delete the {kind} NAME.")(cmd)
    cmd = click.argument("name", required=False)(click.argument("start", required=False)(cmd))
    cmd.__doc__ = (f"List {plural}, create {kind} NAME at START (default HEAD), or delete one with -d."
                   + (" With -m MESSAGE the tag is annotated." if kind == "tag" else ""))
    return cmd


cli.command("branch")(_ref_command("branch"))
cli.command("tag")(_ref_command("tag"))


@cli.command()
@json_option
@quiet_option
@with_repo
def fsck(repo: Repo, as_json, quiet) -> None:
    """Verify every object against its id and that every commit is complete (exit 5 if not)."""
    report = repo.fsck(progress=progress(quiet))
    if as_json:
        echo_json(report.to_json())
    else:
        click.echo(f"checked {report.objects_checked} object(s), reached {report.commits_reached} commit(s)")
        if report.problems:
            rows = [[p.problem, short(p.object_id) if p.object_id else "", p.detail, p.path or ""]
                    for p in report.problems]
            click.echo(table(rows, ["problem", "object", "detail", "where"]))
        if report.leftovers:
            click.echo(f"{len(report.leftovers)} leftover(s) of interrupted commands (nothing is lost; "
                       "`mlvc gc` clears them):")
            click.echo(table([[p.problem, p.path or "", p.detail] for p in report.leftovers],
                             ["leftover", "where", "detail"]))
    if not report.ok:
        raise FsckError(f"fsck found {len(report.problems)} problem(s); copy the damaged or missing objects back "
                        "from a backup or another copy of this repository (objects are named by their content, so "
                        "any copy's are the same bytes), or check out only commits that are intact")
