"""Command line: argparse, verbs, exit codes, human and JSON output. No logic lives here."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from extmod.core import config, paths, progress, run, verbs
from extmod.core.errors import (
    EnvError,
    ExtmodError,
    GuardError,
    UserError,
    VerifyError,
    refused_write,
)
from extmod.ops import caches, commands, doctor, hooks, migrate, preflight, session, verify
from extmod.ui import argv as argv_parser

# Verbs that run (package, kernel) jobs: on a terminal they get the live progress view
# (hooks set TERM=dumb).
_JOB_VERBS = verbs.names(jobs=True)


class _Out:
    def __init__(self, args: argparse.Namespace):
        self.json = args.json
        self.quiet = args.quiet
        self._lock = threading.Lock()  # builds report from several threads
        live = (
            args.verb in _JOB_VERBS
            and not args.json
            and not args.quiet
            and not args.verbose
            and sys.stderr.isatty()
            and os.environ.get("TERM", "dumb") != "dumb"
        )
        self.board: progress.Board = progress.LiveBoard(sys.stderr) if live else progress.Board()
        self._live = live

    def say(self, text: str) -> None:
        """Progress for people: stderr, so stdout stays for results."""
        if not self.quiet:
            with self._lock:
                if self._live:
                    self.board.say(text)
                else:
                    print(text, file=sys.stderr, flush=True)

    def error(self, text: str) -> None:
        """The command's last line: below the live view, which ends first."""
        self.board.close()
        print(text, file=sys.stderr)

    def result(self, human: str, data: Any) -> None:
        self.board.close()  # the live view ends before the results are printed
        if self.json:
            print(json.dumps(data, indent=2, default=str))
        elif human:
            print(human)


def main(argv: Sequence[str] | None = None) -> int:
    p = argv_parser.parser()
    args = p.parse_args(argv)
    out = _Out(args)
    try:
        with run.children_end_with_us():
            return _dispatch(args, out)
    except ExtmodError as e:
        if args.debug:
            out.board.close()
            traceback.print_exc()
        out.error(f"extmod: error: {e}")
        return e.exit_code
    except KeyboardInterrupt:
        out.error("extmod: interrupted")
        return 130
    except OSError as e:
        refused = refused_write(e)
        if refused is None:
            return _internal(args, out)
        if args.debug:
            out.board.close()
            traceback.print_exc()
        out.error(f"extmod: error: {refused}")
        return refused.exit_code
    except Exception:
        return _internal(args, out)
    finally:
        out.board.close()


def _internal(args: argparse.Namespace, out: _Out) -> int:
    """A bug (called while handling it): one line, the traceback with --debug."""
    out.board.close()
    if args.debug:
        raise  # the exception being handled: _internal runs in its except block
    out.error(f"extmod: internal error: {sys.exc_info()[1]!r} (rerun with --debug)")
    return 1


def _check_releases(args: argparse.Namespace) -> None:
    """Every kernel release given (-k, KVER) names dirs under /lib/modules and the state
    tree: one that could lead out of them (``../..``) or cannot be a name is refused before
    anything reads or removes what it names (issue 22: ``kernel-prerm ../..`` removed the
    state dir's build dirs)."""
    given = args.kernel
    releases = [given] if isinstance(given, str) else list(given or [])
    option = "-k"
    if args.kver is not None:
        releases, option = [args.kver], "KVER"
    for kver in releases:
        if why := paths.release_problem(kver):
            raise UserError(f"{option}: {kver!r}: {why}")


def _dispatch(args: argparse.Namespace, out: _Out) -> int:
    if args.root is None:
        args.root = paths.root_of(os.environ)  # how the hooks are run in a staged root
    _check_releases(args)
    p = paths.for_invocation(args.root, os.environ, os.geteuid())
    cfg = config.load(
        args.config or p.config_file,
        flags=config.flags_of(vars(args)),
        environ=os.environ,
        required=args.config is not None,
    )
    return _DOORS[args.verb](args, cfg, p, out)


def _doctor(args: argparse.Namespace, cfg: config.Config, p: paths.Paths, out: _Out) -> int:
    checks = doctor.run_checks(p, cfg, args.kernel)
    out.result("\n".join(c.line() for c in checks), doctor.data(checks))
    return next((c.exit_code for c in checks if c.status == "FAIL"), 0)


def _build_door(args: argparse.Namespace, cfg: config.Config, p: paths.Paths, out: _Out) -> int:
    """``build`` of a package is a lifecycle verb; of a bare kbuild dir, a build alone."""
    if _is_bare_kbuild_dir(args.what):
        return _build(args, cfg, p, out)
    return _lifecycle(args, cfg, p, out)


def _verify(args: argparse.Namespace, cfg: config.Config, p: paths.Paths, out: _Out) -> int:
    _need_root_or_staging(args)
    s = session.Session(cfg, p, out.say, board=out.board)
    reports = commands.verify(s, args.kernel, args.targets, args.image)
    human = [line for r in reports for line in verify.summary(r)] + [f"note: {n}" for n in s.notes]
    out.result(
        "\n".join(human) or "nothing to verify",
        {"kernels": [dataclasses.asdict(r) | {"ok": r.ok} for r in reports], "notes": s.notes},
    )
    return 0 if all(r.ok for r in reports) else VerifyError.exit_code


def _preflight(args: argparse.Namespace, cfg: config.Config, p: paths.Paths, out: _Out) -> int:
    _need_root_or_staging(args)
    s = session.Session(cfg, p, out.say, board=out.board)
    if args.verb == "apt-guard":
        return _apt_guard(s, out)
    rows = commands.preflight(s, args.deb, args.candidates, tuple(args.kernel), args.kernel_dir)
    out.result(
        "\n".join(_row_line(r) for r in rows) or "nothing to check",
        {"rows": [dataclasses.asdict(r) for r in rows], "notes": s.notes},
    )
    return next((r.exit_code for r in rows if r.verdict == "fails"), 0)


def _row_line(r: preflight.Row) -> str:
    return f"{r.package}, {r.kver}: {r.verdict}" + (f" ({r.detail})" if r.detail else "")


def _apt_guard(s: session.Session, out: _Out) -> int:
    g = commands.apt_guard(s, sys.stdin.read())
    for r in g.missing:
        out.error(f"extmod: warning: {r.package} will be missing on {r.kver}: {r.detail}")
    for r in g.refused:
        out.error(
            f"extmod: refusing kernel {r.kver}: {r.package} does not build for it "
            f"({r.detail}); to install it anyway: EXTMOD_GUARD=off apt-get ..."
        )
    return GuardError.exit_code if g.refused else 0


def _kernels(args: argparse.Namespace, p: paths.Paths, out: _Out) -> int:
    rows = commands.kernel_rows(p, args.kernel_dir)
    lines = [
        f"{'RELEASE':<24} {'ARCH':<7} {'COMPILER':<14} {'LINKER':<6} {'LTO':<5} "
        f"{'TOOLCHAIN':<10} BUILD TREE"
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"(unusable) {r['error']}")
            continue
        comp = f"{r['compiler']}-{r.get('compiler_version', '?')}"
        inst = "installed" if r["toolchain_installed"] == "yes" else "MISSING"
        tree = r["build_dir"] + ("" if r["prepared"] else f"  (not prepared: {r['missing']})")
        lines.append(
            f"{r['release']:<24} {r['arch']:<7} {comp:<14} {r.get('linker', '?'):<6} "
            f"{r['lto']:<5} {inst:<10} {tree}"
        )
        if r["toolchain_installed"] != "yes":
            lines.append(f"  {r['toolchain_installed']}")
    out.result("\n".join(lines), rows)
    return 0


def _which(args: argparse.Namespace) -> commands.Kernels:
    """The kernels the command line names: -k (one or many), --kernel-dir, --all."""
    return commands.Kernels(tuple(args.kernel), args.kernel_dir, args.all)


def _is_bare_kbuild_dir(target: str) -> bool:
    t = Path(target)
    return t.is_dir() and not (t / "dkms.conf").exists()


def _need_root_or_staging(args: argparse.Namespace) -> None:
    if os.geteuid() != 0 and args.root is None:
        what = (
            "/etc and /usr/lib"
            if args.verb == "install-hooks"
            else "/usr/src, /lib/modules and /var/lib/extmod"
        )
        raise EnvError(
            f"extmod {args.verb} changes {what}: run it as root, or give --root "
            f"DIR to stage into a tree of your own"
        )


def _lifecycle(args: argparse.Namespace, cfg: config.Config, p: paths.Paths, out: _Out) -> int:
    _need_root_or_staging(args)
    s = session.Session(
        cfg,
        p,
        out.say,
        echo=args.verbose and not args.quiet,
        force=args.force,
        board=out.board,
    )
    verb = args.verb
    if verb == "import-dkms" and args.dry_run:
        return _import_plan(migrate.plan(s), args.keep_dkms, out)
    req = commands.Request(
        verb,
        tuple(args.targets or ([args.what] if args.what else [])),
        _which(args),
        args.kver or "",
        args.format or "",
        args.output,
        args.keep_dkms,
    )
    depmod = commands.run(s, req)
    failed = [o for o in s.outcomes if o.exit_code]
    human = [
        f"{o.ident}{', ' + o.kver if o.kver else ''}: {o.action}"
        f"{' (' + o.detail + ')' if o.detail else ''}"
        for o in s.outcomes
    ]
    human += [f"depmod {k}" for k in depmod]
    out.result(
        "\n".join(human),
        {"outcomes": [o.__dict__ for o in s.outcomes], "depmod": depmod, "notes": s.notes},
    )
    return failed[0].exit_code if failed else 0


def _import_plan(plans: list[migrate.PackagePlan], keep_dkms: bool, out: _Out) -> int:
    lines = []
    for p in plans:
        if p.problem:
            lines.append(f"{p.ident}: cannot import: {p.problem}")
            continue
        unknown = "" if p.record is not None else " (a source DKMS has not registered)"
        lines.append(f"{p.ident}: register {p.source}{unknown}")
        for b in p.builds:
            what = (
                f"installed ({', '.join(sorted(b.installed.values()))}), not rebuilt"
                if b.installed
                else "built, not installed"
            )
            lines.append(f"  {b.kver} {b.arch}: {what}")
            lines += [
                f"    {m}: DKMS says installed, not found: recorded as built" for m in b.missing
            ]
    records = (
        []
        if keep_dkms
        else sorted({str(p.record) for p in plans if not p.problem and p.record is not None})
    )
    lines += [f"move {r} to the extmod state (DKMS no longer builds it)" for r in records]
    out.result(
        "\n".join(lines) or "DKMS manages no package here",
        {"dry_run": True, "packages": [p.data() for p in plans]},
    )
    return 0


def _status(args: argparse.Namespace, p: paths.Paths, out: _Out) -> int:
    rows = commands.status_rows(p, args.what, args.kernel)
    out.result(
        "\n".join(r.line() for r in rows),
        [
            {
                "name": r.name,
                "version": r.version,
                "kernel": r.kver or None,
                "arch": r.arch or None,
                "state": r.state,
                "original_module_saved": r.original_saved,
                "shadows": list(r.shadows),
                "interrupted": r.interrupted or None,
                "withheld": list(r.withheld),
                "from_store": r.from_store or None,
            }
            for r in rows
        ],
    )
    return 0


def _build(args: argparse.Namespace, cfg: config.Config, p: paths.Paths, out: _Out) -> int:
    echo = args.verbose and not args.quiet
    name, kver, res = commands.build_bare(
        cfg, p, Path(args.what), args.name, _which(args), echo, args.output, out.say
    )
    for note in res.notes:
        out.say(f"note: {note}")
    human = [f"built {name} for {kver} in {res.seconds:.1f}s:"]
    human += [f"  {m}" for m in res.modules]
    if res.cache_dir:
        human.append(f"ThinLTO cache: {res.cache_dir} (from {res.cache_source})")
    human.append(f"log: {res.log}")
    out.result(
        "\n".join(human),
        {
            "name": name,
            "kernel": kver,
            "modules": [str(m) for m in res.modules],
            "log": str(res.log),
            "build_dir": str(res.build_dir),
            "reproducer": res.reproducer,
            "compiler": res.compiler,
            "seconds": round(res.seconds, 3),
            "thinlto_cache_dir": str(res.cache_dir) if res.cache_dir else None,
            "thinlto_cache_source": res.cache_source,
            "notes": list(res.notes),
        },
    )
    return 0


def _clean(args: argparse.Namespace, cfg: config.Config, p: paths.Paths, out: _Out) -> int:
    removed = commands.clean(cfg, p, args.name, args.kernel, args.all)
    out.result(
        "\n".join(f"removed {r}" for r in removed) or "nothing to clean",
        {"removed": [str(r) for r in removed]},
    )
    return 0


def _install_hooks(args: argparse.Namespace, p: paths.Paths, out: _Out) -> int:
    _need_root_or_staging(args)
    kinds = args.kinds or hooks.detect(p.root)
    if not kinds:
        raise UserError(
            f"install-hooks: {p.root} shows none of {', '.join(hooks.KINDS)}: "
            f"name them with --for KIND"
        )
    kinds = list(dict.fromkeys(kinds))
    if args.remove:
        gone = hooks.remove(p.root, kinds)
        out.result(
            "\n".join(f"removed {g}" for g in gone) or "no extmod hook to remove",
            {"removed": [str(g) for g in gone]},
        )
        return 0
    executable = args.executable or hooks.default_exec()
    written = hooks.install(p.root, kinds, executable, enable=not args.no_enable)
    out.result(
        "\n".join(f"{'wrote' if w.changed else 'unchanged'} {w.path}" for w in written)
        + f"\nhooks run {executable}",
        {
            "exec": executable,
            "kinds": kinds,
            "files": [{"path": str(w.path), "changed": w.changed} for w in written],
        },
    )
    return 0


def _cache(args: argparse.Namespace, cfg: config.Config, p: paths.Paths, out: _Out) -> int:
    if args.cache_verb == "prune":
        r = caches.prune_all(cfg, p)
        policy = caches.policy(cfg)
        out.result(
            f"pruned {r.files} files, {r.size} bytes ({r.build_dirs} kept build dirs) ({policy})",
            {"files": r.files, "bytes": r.size, "build_dirs": r.build_dirs, "policy": policy},
        )
        return 0
    rows, kept, stored = caches.show(cfg, p)
    lines = [f"{'KERNEL':<24} {'PACKAGE':<20} {'FILES':>6} {'SIZE':>10}  DIR"]
    lines += [f"{n.kver:<24} {n.package:<20} {n.files:>6} {n.size:>10}  {n.path}" for n in rows]
    if not rows:
        lines.append("(no ThinLTO cache)")
    lines.append(f"kept build dirs ({caches.keep_policy(cfg)}):")
    lines += [
        f"{b.kver:<24} {b.package + '/' + b.version:<20} {b.files:>6} {b.size:>10}  {b.path}"
        for b in kept
    ]
    lines.append(f"build store ({caches.store_policy(cfg)}):")
    lines += [f"{'':<24} {e.inputs[:20]:<20} {e.files:>6} {e.size:>10}  {e.path}" for e in stored]
    out.result("\n".join(lines), _cache_rows(rows, kept, stored))
    return 0


def _cache_rows(rows: list[Any], kept: list[Any], stored: list[Any]) -> list[dict[str, Any]]:
    """``cache show --json``: one row per ThinLTO namespace, kept build dir, stored build."""
    thin = [
        {
            "kind": "thinlto",
            "kernel": n.kver,
            "package": n.package,
            "files": n.files,
            "bytes": n.size,
            "dir": str(n.path),
            "last_used": n.last_used,
        }
        for n in rows
    ]
    kept_rows = [
        {
            "kind": "build",
            "kernel": b.kver,
            "package": b.package,
            "version": b.version,
            "files": b.files,
            "bytes": b.size,
            "dir": str(b.path),
            "last_used": b.last_used,
        }
        for b in kept
    ]
    store_rows = [
        {
            "kind": "store",
            "inputs": e.inputs,
            "files": e.files,
            "bytes": e.size,
            "dir": str(e.path),
            "last_used": e.last_used,
        }
        for e in stored
    ]
    return thin + kept_rows + store_rows


_Door = Callable[[argparse.Namespace, config.Config, paths.Paths, _Out], int]
# Each verb of the verb table (core/verbs.py) and how this door runs it.
_DOORS: dict[str, _Door] = {
    "kernels": lambda a, c, p, o: _kernels(a, p, o),
    **{v: _lifecycle for v in verbs.extmod_names(lifecycle=True)},
    "build": _build_door,
    "status": lambda a, c, p, o: _status(a, p, o),
    "install-hooks": lambda a, c, p, o: _install_hooks(a, p, o),
    "preflight": _preflight,
    "apt-guard": _preflight,
    "verify": _verify,
    "doctor": _doctor,
    "clean": _clean,
    "cache": _cache,
}
