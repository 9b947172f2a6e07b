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
    """Create an empty repository in PATH (default: here)."""
    from ..repo import Repo

    repo = Repo.init(path, branch=branch)
    if as_json:
        echo_json({"root": repo.root, "branch": branch})
    else:
        click.echo(f"Initialized empty mlvc repository in {repo.dir}")


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
@json_option
@quiet_option
@with_repo
def commit(repo: Repo, paths, message, meta, step, as_blob, allow_empty, as_json, quiet) -> None:
    """Commit the checkpoint at PATHS (files or folders; default: the paths tracked by HEAD)."""
    metadata = _parse_meta(meta)
    if step is not None:
        metadata["step"] = step
    r = repo.commit(message=message, metadata=metadata, paths=list(paths) or None, as_blob=as_blob,
                    allow_empty=allow_empty, progress=progress(quiet))
    if as_json:
        echo_json(r.to_json())
        return
    where = r.branch or "detached HEAD"
    click.echo(f"[{where} {short(r.commit.id)}] {r.commit.message.splitlines()[0]}")
    ratio = r.new_bytes / r.raw_bytes if r.raw_bytes else 0.0
    click.echo(f" {r.files} file(s), {r.tensors} tensor(s), {human_bytes(r.raw_bytes)}; stored "
               f"{human_bytes(r.new_bytes)} new ({ratio:.3f} of raw), {r.new_chunks}/{r.chunks} chunks new")
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
    if st.clean:
        click.echo(f"Working checkpoint matches HEAD ({len(st.files)} file(s) under {', '.join(st.roots)}).")
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
        rows.append([f.state, f.path, ", ".join(detail)])
    click.echo(table(rows, ["state", "file", "tensors"]))
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
              help="Per commit: tensors changed against its first parent and the relative change.")
@json_option
@with_repo
def log(repo: Repo, rev, oneline, n, stat, as_json) -> None:
    """Show the history reachable from REV (default HEAD)."""
    if repo.head() is None and rev == "HEAD":
        if as_json:
            echo_json([])
        else:
            click.echo("No commits yet.")
        return
    commits = repo.log(rev, n)
    stats = {}
    if stat:
        stats = {c.id: repo.diff_commit(c.id, progress=progress()) for c in commits}
    if as_json:
        from dataclasses import asdict

        echo_json([{**c.to_json(), **({"stat": asdict(stats[c.id].total())} if stat else {})} for c in commits])
        return
    if stat:
        from ..render.diff import short_stat, summary
    from ..render.labels import repo_labels

    labels = repo_labels(repo)
    for c in commits:
        deco = f" ({', '.join(labels[c.id])})" if c.id in labels else ""
        if oneline:
            tail = f"  [{short_stat(stats[c.id])}]" if stat else ""
            click.echo(f"{short(c.id)}{deco} {c.message.splitlines()[0]}{tail}")
            continue
        click.echo(f"commit {c.id}{deco}")
        if len(c.parents) > 1:
            click.echo("Merge:  " + " ".join(short(p) for p in c.parents))
        click.echo(f"Author: {c.author}")
        click.echo(f"Date:   {c.time}")
        if c.metadata:
            click.echo("Meta:   " + ", ".join(f"{k}={v}" for k, v in sorted(c.metadata.items())))
        click.echo("")
        for line in c.message.splitlines():
            click.echo(f"    {line}")
        click.echo("")
        if stat:
            click.echo(f" {summary(stats[c.id])}\n")


@cli.command()
@click.argument("rev", default="HEAD")
@click.option("--stat", is_flag=True, help="Summarize the change by layer group instead of by tensor.")
@click.option("--no-diff", is_flag=True, help="Leave out the diff against the parent (it reads the changed tensors).")
@json_option
@quiet_option
@with_repo
def show(repo: Repo, rev, stat, no_diff, as_json, quiet) -> None:
    """Show a commit: its metadata, its files, and what it changed against its first parent."""
    s = repo.show(rev)
    d = None if no_diff else repo.diff_commit(s.commit.id, progress=progress(quiet))
    if as_json:
        echo_json({**s.to_json(), **({"diff": d.to_json()} if d else {})})
        return
    c = s.commit
    click.echo(f"commit {c.id}")
    for label, items in (("Branches", s.branches), ("Tags", s.tags)):
        if items:
            click.echo(f"{label}: {', '.join(items)}")
    if c.parents:
        click.echo("Parents: " + " ".join(short(p) for p in c.parents))
    click.echo(f"Author:  {c.author}")
    click.echo(f"Date:    {c.time}")
    for k, v in sorted(c.metadata.items()):
        click.echo(f"Meta:    {k} = {v}")
    click.echo("")
    for line in c.message.splitlines():
        click.echo(f"    {line}")
    click.echo("")
    rows = [[f.path, f.kind + ("" if f.exact else " (tensor-exact)"), len(f.tensors) or "", human_bytes(f.size)]
            for f in s.manifest.files]
    click.echo(table(rows, ["file", "kind", "tensors", "size"]))
    if d is not None:
        from ..render.diff import diff_text

        click.echo(f"\nChanges against {'parent ' + short(d.a) if d.a else 'nothing (first commit)'}:")
        click.echo(diff_text(d, stat=stat))


@cli.command(cls=DashDashCommand)
@click.argument("rev")
@click.option("-o", "--output", type=click.Path(file_okay=False), default=None,
              help="Write the files under this folder instead of the working tree (HEAD does not move).")
@click.option("-f", "--force", is_flag=True, help="Overwrite uncommitted changes.")
@json_option
@quiet_option
@with_repo
def checkout(repo: Repo, rev, output, force, as_json, quiet) -> None:
    """Check out REV: write its files (in place, or under --output) and, in place, move HEAD to it.

    With tensor globs after `--`, only those tensors are restored from REV into the working checkpoint
    files (rewritten atomically, other tensors kept as they are); HEAD does not move."""
    globs = click.get_current_context().meta.get("globs")
    if globs is not None:
        if not globs:
            raise click.UsageError("name the tensors to restore after `--` (globs such as 'encoder.layer.0.*')")
        r = repo.checkout(rev, output=output, force=force, progress=progress(quiet), tensors=globs)
        if as_json:
            echo_json(r.to_json())
            return
        click.echo(f"Restored {len(r.tensors)} tensor(s) from {short(r.commit)} into {len(r.files)} working "
                   f"file(s); HEAD did not move (`mlvc status` shows them as changed).")
        return
    r = repo.checkout(rev, output=output, force=force, progress=progress(quiet))
    if as_json:
        echo_json(r.to_json())
        return
    where = r.target if output else "working tree"
    click.echo(f"Checked out {short(r.commit)} into {where}: {len(r.written)} file(s) written "
               f"({human_bytes(r.bytes_written)}), {len(r.unchanged)} unchanged, {len(r.removed)} removed")
    if r.head == "(detached)":
        click.echo(f"HEAD is now detached at {short(r.commit)}; `mlvc switch -c NAME` keeps commits made here.")
    elif r.head:
        click.echo(f"Switched to branch {r.head!r}")


@cli.command()
@click.argument("branch")
@click.option("-c", "--create", is_flag=True, help="Create the branch (at --start, default HEAD) and switch to it.")
@click.option("--start", default="HEAD", show_default=True, help="Where a new branch starts.")
@click.option("-f", "--force", is_flag=True, help="Overwrite uncommitted changes.")
@quiet_option
@with_repo
def switch(repo: Repo, branch, create, start, force, quiet) -> None:
    """Switch to BRANCH, writing its checkpoint into the working tree."""
    r = repo.switch(branch, create=create, start=start, force=force, progress=progress(quiet))
    made = "a new branch" if create else "branch"
    click.echo(f"Switched to {made} {branch!r} at {short(r.commit)} ({len(r.written)} file(s) written)")


def _ref_command(kind: str):
    plural = "branches" if kind == "branch" else "tags"

    @click.argument("name", required=False)
    @click.argument("start", required=False)
    @click.option("-d", "--delete", "delete", is_flag=True, help=f"Delete the {kind} NAME.")
    @click.option("-f", "--force", is_flag=True, help=f"Move an existing {kind}.")
    @json_option
    @with_repo
    def command(repo, name, start, delete, force, as_json) -> None:
        if delete:
            if not name:
                raise click.UsageError(f"name the {kind} to delete")
            old = getattr(repo, f"delete_{kind}")(name)
            click.echo(f"Deleted {kind} {name} (was {short(old)})")
            return
        if name:
            cid = getattr(repo, f"create_{kind}")(name, start or "HEAD", force=force)
            click.echo(f"Created {kind} {name} at {short(cid)}")
            return
        refs = getattr(repo, plural)()
        current = repo.head_branch() if kind == "branch" else None
        if as_json:
            echo_json([{"name": n, "commit": c, **({"current": n == current} if kind == "branch" else {})}
                       for n, c in refs.items()])
            return
        for n, c in refs.items():
            mark = "* " if n == current else "  "
            message = repo.read_commit(c).message.splitlines()[0]
            click.echo(f"{mark if kind == 'branch' else ''}{n}  {short(c)}  {message}")

    command.__doc__ = (f"List {plural}, create {kind} NAME at START (default HEAD), or delete one with -d.")
    return command


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
        raise FsckError(f"fsck found {len(report.problems)} problem(s); restore the damaged objects from a copy "
                        "or a remote, or check out only commits that are intact")
