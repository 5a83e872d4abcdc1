"""A DKMS package: ``dkms.conf`` evaluated by bash itself, for one kernel, as typed data.

Real dkms.conf files are bash programs: they source the kernel ``.config``, compute arrays in
loops, call ``grep`` and ``sed``. The only faithful reader is bash, so each evaluation runs
bash in a child process with a scrubbed environment and the shell variables DKMS defines
(``kernelver``, ``arch``, ``kernel_source_dir``, ``dkms_tree``, ``source_tree``,
``install_tree``, ``module``, ``module_version``, ``kernel_config``). As DKMS 3.0.10's
``read_conf`` does, the file is followed by the override files ``/etc/dkms/<name>.conf``,
``<name>-<version>.conf``, ``<name>-<version>-<kver>.conf`` and
``<name>-<version>-<kver>-<arch>.conf``, each sourced in a subshell of which only the
directives survive. Every directive comes back NUL-separated; nothing is parsed by hand.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path

from extmod.core import atomic, digest, files, run
from extmod.core.errors import UserError
from extmod.source import patches, rules, scripts, sourcetree
from extmod.source.patches import Fault as PatchFault

SCALARS = (
    "PACKAGE_NAME",
    "PACKAGE_VERSION",
    "CLEAN",
    "PRE_BUILD",
    "POST_BUILD",
    "POST_ADD",
    "PRE_INSTALL",
    "POST_INSTALL",
    "POST_REMOVE",
    "AUTOINSTALL",
    "NO_WEAK_MODULES",
    "OBSOLETE_BY",
)
# Arrays; the BUILD_EXCLUSIVE_* ones are per module from index 1 on (DKMS 3.3 "per-module
# BUILD_EXCLUSIVE"); index 0 is the same bash variable as the plain scalar, so it applies
# to the whole package, as it always has.
ARRAYS = (
    "MAKE",
    "MAKE_MATCH",
    "PATCH",
    "PATCH_MATCH",
    "BUILT_MODULE_NAME",
    "BUILT_MODULE_LOCATION",
    "DEST_MODULE_NAME",
    "DEST_MODULE_LOCATION",
    "STRIP",
    "BUILD_DEPENDS",
    "BUILD_EXCLUSIVE_KERNEL",
    "BUILD_EXCLUSIVE_KERNEL_MIN",
    "BUILD_EXCLUSIVE_KERNEL_MAX",
    "BUILD_EXCLUSIVE_ARCH",
    "BUILD_EXCLUSIVE_CONFIG",
)
# In the order of dkms 3.0.10's dkms_conf_variables, which is the order safe_source prints
# and re-reads them: a value naming another directive late sees it only if it came first
# (CLEAN='make ${PACKAGE_NAME}' sees nothing on the first file). BUILD_EXCLUSIVE_KERNEL_MIN
# and _MAX (DKMS 3.1) follow BUILD_EXCLUSIVE_KERNEL, as in 3.4.
_ALL = (
    "CLEAN",
    "PACKAGE_NAME",
    "PACKAGE_VERSION",
    "POST_ADD",
    "POST_BUILD",
    "POST_INSTALL",
    "POST_REMOVE",
    "PRE_BUILD",
    "PRE_INSTALL",
    "BUILD_DEPENDS",
    "BUILD_EXCLUSIVE_KERNEL",
    "BUILD_EXCLUSIVE_KERNEL_MIN",
    "BUILD_EXCLUSIVE_KERNEL_MAX",
    "BUILD_EXCLUSIVE_ARCH",
    "BUILD_EXCLUSIVE_CONFIG",
    "OBSOLETE_BY",
    "MAKE",
    "MAKE_MATCH",
    "PATCH",
    "PATCH_MATCH",
    "BUILT_MODULE_NAME",
    "BUILT_MODULE_LOCATION",
    "DEST_MODULE_NAME",
    "DEST_MODULE_LOCATION",
    "STRIP",
    "AUTOINSTALL",
    "NO_WEAK_MODULES",
    *rules.DEPRECATED,
)
assert sorted(_ALL) == sorted(SCALARS + ARRAYS + rules.DEPRECATED)

_MODULE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_DEST_PREFIXES = ("/kernel", "/updates", "/extra")

# The evaluator, given the files as arguments; DKMS's variables are set before it (as shell
# variables, not exported, as in dkms). It reproduces DKMS's directive semantics by doing in
# bash exactly what DKMS does, so there is one place that owns them:
# - read_conf (dkms 3.0.10 dkms.in:442, 3.4 dkms.in:612) unsets every directive, then
#   sources dkms.conf and each override file that exists through safe_source;
# - safe_source (3.0.10 dkms.in:406-431, 3.4 dkms.in:540-583) sources the file in a subshell
#   (its stdout dropped; its own variables, BDIR or i, die with the subshell), prints every
#   element of every directive with
#       eval echo '$_export_env[$_i]=\"${'$_export_env'[$_i]}\"'
#   and sources that output in the calling shell. The expansion is unquoted, so newlines
#   and runs of blanks collapse into single spaces (zfs's multi-line PRE_BUILD becomes one
#   command line) and globs are expanded; sourcing the output evaluates each value a second
#   time, in read_conf's scope, where only DKMS's own variables exist: "$kernelver" written
#   in single quotes is expanded there, ${BDIR} of the file is gone by then, and $(...) runs
#   then. Values sourced earlier are printed (and so evaluated) again by every later file.
#   DKMS 3.2 also strips one trailing CR per value (%$CR), so a dkms.conf with CRLF line
#   ends reads as its LF twin (run_test.sh's dkms_crlf_test); so does extmod, as any
#   release. (3.0.10 kept the CR in each value: a package name with a CR in it.)
# What the files print on stdout is dropped; stdout then carries name, index, value triples,
# NUL-separated. The loop variables keep DKMS's names, as a file that sets them would clash
# with DKMS's too.
_EVAL_TEMPLATE = r"""
unset %(all)s
__CR=$'\r'
for __f in "$@"; do
  [ -e "$__f" ] || continue
  __err=$(bash -n "$__f" 2>&1) || { printf '%%s\n' "$__err" >&2; exit 65; }
  __out=$( . "$__f" >/dev/null
    for _export_env in %(all)s; do
      for _i in $(eval echo \${!$_export_env[@]}); do
        eval echo '$_export_env[$_i]=\"${'$_export_env'[$_i]%$__CR}\"'
      done
    done )
  eval "$__out"
done
for __d in %(all)s; do
  declare -p "$__d" >/dev/null 2>&1 || continue
  eval "__idx=(\"\${!$__d[@]}\")"
  for __i in "${__idx[@]}"; do
    eval "printf '%%s\0%%s\0%%s\0' \"\$__d\" \"\$__i\" \"\${$__d[$__i]}\""
  done
done
"""
_EVAL = _EVAL_TEMPLATE.replace("%(all)s", " ".join(_ALL)).replace("%%", "%")


@dataclass(frozen=True)
class Module:
    index: int
    built_name: str
    built_location: str  # relative to the build dir, "" or ending in "/"
    dest_name: str
    dest_location: str  # as written in dkms.conf, e.g. "/extra" or "/kernel/drivers/md"
    strip: bool


@dataclass(frozen=True)
class Package:
    """A dkms.conf evaluated for one kernel and arch."""

    name: str
    version: str
    source: Path  # the registered source dir (/usr/src/NAME-VERSION)
    conf_files: tuple[Path, ...]  # dkms.conf and the override files that exist
    modules: tuple[Module, ...]
    make: str  # the MAKE command chosen for this kernel (MAKE_MATCH), or DKMS's default
    clean: str
    patches: tuple[str, ...]  # PATCH entries that apply to this kernel (PATCH_MATCH)
    pre_build: str
    post_build: str
    post_add: str
    pre_install: str
    post_install: str
    post_remove: str
    autoinstall: bool
    build_depends: tuple[str, ...]
    no_weak_modules: bool
    excluded: str | None  # why this package is not built for this kernel, or None
    # Every directive as evaluated, (NAME, ((index, value), ...)): the shell DKMS runs MAKE
    # and CLEAN in has them (read_conf left them there).
    directives: tuple[tuple[str, tuple[tuple[int, str], ...]], ...] = field(default=())
    warnings: tuple[str, ...] = field(default=())
    bad_patch: PatchFault | None = None  # its build refuses it (source/patches.py)

    @property
    def ident(self) -> str:
        return f"{self.name}/{self.version}"


@dataclass(frozen=True)
class ConfKernel:
    """The kernel a dkms.conf is evaluated for: the values of DKMS's shell variables."""

    kver: str
    arch: str
    # As DKMS names it: /lib/modules/KVER/build as written, not resolved (dkms 3.0.10
    # _get_kernel_dir); zfs derives the source tree with ${kernel_source_dir/%build/source}.
    kernel_source_dir: Path
    kernel_config: dict[str, str]
    version: tuple[int, ...]
    readonly: tuple[Path, ...] = ()  # the kernel's trees: read-only to the evaluation


@dataclass(frozen=True)
class Context:
    """Where the evaluation runs: DKMS's tree variables and the override files' dir."""

    dkms_tree: Path
    source_tree: Path
    install_tree: Path
    etc_dkms: Path
    user: run.RunAs | None = None  # --build-user: bash runs as this user
    jobs: int = 0  # DKMS's $parallel_jobs (-j); 0: the number of CPUs, as DKMS defaults
    timeout: int = 120  # seconds an evaluation may take (build.dkms_conf_timeout)
    view: run.View | None = None  # release-free paths the evaluation sees (builder.pathmap)


def shell_vars(kernel: ConfKernel | None, ctx: Context, name: str, version: str) -> dict[str, str]:
    """The shell variables DKMS has defined when it sources a dkms.conf and runs its MAKE,
    CLEAN and scripts: the one place they are made (docs/reference/dkms.md lists them
    with their shapes). From dkms 3.0.10: read_conf's locals ``kernelver`` and ``arch``;
    set_kernel_source_dir_and_kconfig's ``kernel_source_dir`` (_get_kernel_dir:
    /lib/modules/KVER/build unresolved) and ``kernel_config`` (``$kernel_source_dir/.config``;
    3.4 prefers include/config/auto.conf when it exists); the globals ``dkms_tree``,
    ``source_tree``, ``install_tree``, ``tmp_location`` (``${TMPDIR:-/tmp}``), ``module``,
    ``module_version`` and ``parallel_jobs`` (``-j``, else get_num_cpus)."""
    ksrc = str(kernel.kernel_source_dir) if kernel else ""
    return {
        "kernelver": kernel.kver if kernel else "",
        "arch": kernel.arch if kernel else "",
        "kernel_source_dir": ksrc,
        "kernel_config": f"{ksrc}/.config" if kernel else "",
        "dkms_tree": str(ctx.dkms_tree),
        "source_tree": str(ctx.source_tree),
        "install_tree": str(ctx.install_tree),
        "tmp_location": os.environ.get("TMPDIR") or "/tmp",
        "module": name,
        "module_version": version,
        "parallel_jobs": str(ctx.jobs or os.cpu_count() or 1),
    }


def evaluate(
    conf: Path, kernel: ConfKernel | None, ctx: Context, name: str = "", version: str = ""
) -> dict[str, dict[int, str]]:
    """Run bash over dkms.conf (and, once name and version are known, the override files).

    Returns every directive that was set: name → {index: value}."""
    conf = conf.absolute()
    files = [conf]
    if name and version:
        files += [ctx.etc_dkms / f"{name}.conf", ctx.etc_dkms / f"{name}-{version}.conf"]
        if kernel is not None:
            files += [
                ctx.etc_dkms / f"{name}-{version}-{kernel.kver}.conf",
                ctx.etc_dkms / f"{name}-{version}-{kernel.kver}-{kernel.arch}.conf",
            ]
    for f in files:
        sourcetree.check_text(f)
    timeout = ctx.timeout
    try:
        res = run.query(
            [
                "bash",
                "-c",
                scripts.define_vars(shell_vars(kernel, ctx, name, version)) + _EVAL,
                "extmod-dkms-conf",
                *map(str, files),
            ],
            cwd=conf.parent,
            timeout=timeout,
            user=ctx.user,
            readonly=kernel.readonly if kernel else (),
            # in the view's paths, but in dkms.conf's dir, as ever
            view=replace(ctx.view, cwd=None) if ctx.view else None,
        )
    except subprocess.TimeoutExpired:
        raise UserError(
            f"{conf}: evaluation took over {timeout} s (a loop that never ends?)"
        ) from None
    if res.returncode == 65:  # bash -n: FILE: line N: syntax error ...
        first = next(
            (ln.strip() for ln in res.stderr.decode("utf-8", "replace").splitlines() if ln.strip()),
            "",
        )
        raise UserError(first or f"{conf}: syntax error")
    if res.returncode != 0:
        raise UserError(
            f"{conf}: bash could not evaluate it: "
            f"{_last_line(res.stderr) or f'exit {res.returncode}'}"
        )
    data = res.stdout
    fields = data.split(b"\0")
    directives: dict[str, dict[int, str]] = {}
    for i in range(0, len(fields) - 2, 3):
        key, idx, value = (f.decode("utf-8", "replace") for f in fields[i : i + 3])
        try:
            directives.setdefault(key, {})[int(idx)] = value
        except ValueError:
            raise UserError(f"{conf}: {key}[{idx}]: index is not a number") from None
    return directives


def _last_line(text: bytes) -> str:
    lines = [ln for ln in text.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


def identify(conf: Path, ctx: Context) -> tuple[str, str]:
    """PACKAGE_NAME and PACKAGE_VERSION of a dkms.conf (evaluated with no kernel)."""
    d = evaluate(conf, None, ctx)
    name = d.get("PACKAGE_NAME", {}).get(0, "")
    version = d.get("PACKAGE_VERSION", {}).get(0, "")
    if not name:
        raise UserError(f"{conf}: PACKAGE_NAME: not set")
    if not version:
        raise UserError(f"{conf}: PACKAGE_VERSION: not set")
    for fld, value in (("PACKAGE_NAME", name), ("PACKAGE_VERSION", version)):
        if not rules.NAME.match(value) or ".." in value:
            raise UserError(
                f"{conf}: {fld}: {value!r} is not a valid name (letters, digits, '_.+-')"
            )
    # /usr/src/NAME-VERSION and the state dirs are names of one path component: 255 bytes
    # (NAME_MAX), less room for extmod's temp-file suffixes.
    if len(name) + 1 + len(version) > MAX_NAME:
        fld = "PACKAGE_NAME" if len(name) > len(version) else "PACKAGE_VERSION"
        raise UserError(
            f"{conf}: {fld}: NAME-VERSION is {len(name) + 1 + len(version)} characters: "
            f"at most {MAX_NAME}"
        )
    return name, version


MAX_NAME = 200


def load(
    source: Path, kernel: ConfKernel, ctx: Context, memo: Path | None = None, key_extra: str = ""
) -> Package:
    """The package in ``source`` (which holds dkms.conf), as it applies to ``kernel``.

    ``memo``: a file keeping the evaluated directives, reused while dkms.conf, the files
    in /etc/dkms, the kernel (its config), the tree variables and ``key_extra`` (the
    caller's digest of the source tree) are all unchanged: a no-op autoinstall runs no
    bash. A dkms.conf whose result depends on anything else (the clock, files outside
    its source tree) is read afresh only when one of those changes, or with --force."""
    conf = source / "dkms.conf"
    sourcetree.require_regular(conf)
    key = _memo_key(conf, kernel, ctx, key_extra) if memo is not None else ""
    cached = _memo_read(memo, key) if memo is not None else None
    if cached is not None:
        name, version, d = cached
    else:
        name, version = identify(conf, ctx)
        d = evaluate(conf, kernel, ctx, name, version)
        if memo is not None:
            _memo_write(memo, key, name, version, d)
    existing = [
        f
        for f in (
            conf,
            ctx.etc_dkms / f"{name}.conf",
            ctx.etc_dkms / f"{name}-{version}.conf",
            ctx.etc_dkms / f"{name}-{version}-{kernel.kver}.conf",
            ctx.etc_dkms / f"{name}-{version}-{kernel.kver}-{kernel.arch}.conf",
        )
        if f.exists()
    ]
    # An override file may rename the package or change its version: DKMS keeps the
    # registered identity, and so do we.
    return _build_package(conf, d, name, version, source, tuple(existing), kernel, ctx)


def _memo_key(conf: Path, kernel: ConfKernel, ctx: Context, extra: str) -> str:
    try:
        overrides = sorted(
            (f.name, f.read_bytes().hex()) for f in ctx.etc_dkms.iterdir() if f.is_file()
        )
    except OSError:
        overrides = []
    return digest.of(
        conf.read_bytes().hex(),
        overrides,
        kernel.kver,
        kernel.arch,
        str(kernel.kernel_source_dir),
        sorted(kernel.kernel_config.items()),
        str(ctx.dkms_tree),
        str(ctx.source_tree),
        str(ctx.install_tree),
        extra,
    )


def _memo_read(memo: Path, key: str) -> tuple[str, str, dict[str, dict[int, str]]] | None:
    data = files.read_cache(memo)
    try:
        if not isinstance(data, dict) or data.get("key") != key:
            return None
        d = {k: {int(i): str(v) for i, v in vals.items()} for k, vals in data["directives"].items()}
        return str(data["name"]), str(data["version"]), d
    except (ValueError, KeyError, AttributeError, TypeError):
        return None


def _memo_write(
    memo: Path, key: str, name: str, version: str, d: dict[str, dict[int, str]]
) -> None:
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json(memo, {"key": key, "name": name, "version": version, "directives": d})
    except OSError:
        pass  # only a cache


def _scalar(d: dict[str, dict[int, str]], key: str) -> str:
    return d.get(key, {}).get(0, "")


def _module(conf: Path, d: dict[str, dict[int, str]], i: int, name: str, n_dest: int) -> Module:
    """Module ``i`` of the arrays, checked: names, a location inside the build dir, a
    destination under /kernel, /updates or /extra; STRIP[i], else STRIP[0], else yes."""
    built = d.get("BUILT_MODULE_NAME", {}).get(i, "")
    if not built and n_dest == 1:
        built = name  # DKMS: a single module defaults to the package name
    if not built:
        raise UserError(f"{conf}: BUILT_MODULE_NAME[{i}]: not set")
    dest = d.get("DEST_MODULE_NAME", {}).get(i, "") or built
    for fld, value in ((f"BUILT_MODULE_NAME[{i}]", built), (f"DEST_MODULE_NAME[{i}]", dest)):
        if value.endswith((".o", ".ko")):
            raise UserError(f"{conf}: {fld}: {value!r} must not end in .o or .ko")
        if not _MODULE_NAME.match(value):
            raise UserError(f"{conf}: {fld}: {value!r} is not a module name")
    loc = d.get("BUILT_MODULE_LOCATION", {}).get(i, "")
    if loc and not loc.endswith("/"):
        loc += "/"
    if loc.startswith("/") or ".." in Path(loc).parts:
        raise UserError(f"{conf}: BUILT_MODULE_LOCATION[{i}]: {loc!r} leaves the build dir")
    dest_loc = d.get("DEST_MODULE_LOCATION", {}).get(i, "")
    if not dest_loc:
        raise UserError(f"{conf}: DEST_MODULE_LOCATION[{i}]: not set")
    if not dest_loc.startswith(_DEST_PREFIXES) or ".." in Path(dest_loc).parts:
        raise UserError(
            f"{conf}: DEST_MODULE_LOCATION[{i}]: {dest_loc!r} must begin "
            f"with /kernel, /updates or /extra and stay below it"
        )
    strips = d.get("STRIP", {})
    raw_strip = strips.get(i, "") or strips.get(0, "") or "yes"
    return Module(
        index=i,
        built_name=built,
        built_location=loc,
        dest_name=dest,
        dest_location=dest_loc,
        strip=not raw_strip.lower().startswith("n"),
    )


def _build_package(
    conf: Path,
    d: dict[str, dict[int, str]],
    name: str,
    version: str,
    source: Path,
    files: tuple[Path, ...],
    kernel: ConfKernel,
    ctx: Context,
) -> Package:
    warnings = rules.deprecations(conf, d)
    rules.check_values(conf, d)
    modules, excluded = _modules(conf, d, name, kernel)
    warnings += [f"{conf}: module {m} not built for {kernel.kver}" for m in excluded]

    make = rules.match(d, "MAKE", "MAKE_MATCH", kernel.kver)
    if not make:
        make = f"make -C {kernel.kernel_source_dir} M={ctx.dkms_tree}/{name}/{version}/build"
    clean = _scalar(d, "CLEAN") or (
        f"make -C {kernel.kernel_source_dir} M={ctx.dkms_tree}/{name}/{version}/build clean"
    )
    patch_list, bad_patch = patches.for_kernel(conf, d, source, kernel.kver)
    autoinstall = _scalar(d, "AUTOINSTALL").lower() == "yes"
    depends = tuple(w for v in d.get("BUILD_DEPENDS", {}).values() for w in v.split())
    return Package(
        name=name,
        version=version,
        source=source,
        conf_files=files,
        modules=tuple(modules),
        make=make,
        clean=clean,
        patches=tuple(patch_list),
        bad_patch=bad_patch,
        pre_build=_scalar(d, "PRE_BUILD"),
        post_build=_scalar(d, "POST_BUILD"),
        post_add=_scalar(d, "POST_ADD"),
        pre_install=_scalar(d, "PRE_INSTALL"),
        post_install=_scalar(d, "POST_INSTALL"),
        post_remove=_scalar(d, "POST_REMOVE"),
        autoinstall=autoinstall,
        build_depends=depends,
        no_weak_modules=_scalar(d, "NO_WEAK_MODULES").lower() == "yes",
        excluded=exclusion(d, kernel, index=0)
        or ("every module is excluded" if not modules else None),
        directives=tuple(sorted((k, tuple(sorted(v.items()))) for k, v in d.items())),
        warnings=tuple(warnings),
    )


def _modules(
    conf: Path, d: dict[str, dict[int, str]], name: str, kernel: ConfKernel
) -> tuple[list[Module], list[str]]:
    """The modules for this kernel, and those BUILD_EXCLUSIVE_*[i] leave out (with why)."""
    count = max(
        (max(d.get(k, {0: ""}).keys(), default=-1) + 1 if k in d else 0)
        for k in (
            "BUILT_MODULE_NAME",
            "BUILT_MODULE_LOCATION",
            "DEST_MODULE_NAME",
            "DEST_MODULE_LOCATION",
        )
    )
    if count == 0:
        raise UserError(f"{conf}: BUILT_MODULE_NAME: no module listed")
    n_dest = len(d.get("DEST_MODULE_LOCATION", {}))
    modules: list[Module] = []
    excluded: list[str] = []
    seen: dict[str, set[str]] = {"BUILT_MODULE_NAME": set(), "DEST_MODULE_NAME": set()}
    for i in range(count):
        m = _module(conf, d, i, name, n_dest)
        # two modules of one name would be built, or installed, over each other (dkms 3.2
        # refuses them too: run_test.sh's dkms_duplicate_test)
        for fld, value in (
            ("BUILT_MODULE_NAME", m.built_location + m.built_name),
            ("DEST_MODULE_NAME", m.dest_name),
        ):
            if value in seen[fld]:
                raise UserError(f"{conf}: {fld}[{i}]: duplicate module {value!r}")
            seen[fld].add(value)
        why = exclusion(d, kernel, index=i) if i > 0 else None
        if why:
            excluded.append(f"{m.built_name}: {why}")
        else:
            modules.append(m)
    return modules, excluded


def exclusion(d: dict[str, dict[int, str]], kernel: ConfKernel, index: int) -> str | None:
    """Why BUILD_EXCLUSIVE_* (entry ``index``) or OBSOLETE_BY excludes this kernel."""

    def get(key: str) -> str:
        return d.get(key, {}).get(index, "")

    kernel_re = get("BUILD_EXCLUSIVE_KERNEL")
    if kernel_re and not re.search(rules.ere(kernel_re), kernel.kver):
        return f"BUILD_EXCLUSIVE_KERNEL {kernel_re!r} does not match {kernel.kver}"
    arch_re = get("BUILD_EXCLUSIVE_ARCH")
    if arch_re and not re.search(rules.ere(arch_re), kernel.arch):
        return f"BUILD_EXCLUSIVE_ARCH {arch_re!r} does not match {kernel.arch}"
    # dkms 3.2.2 read_conf: MIN and MAX bound the release by dkms_ver (MAX="6.1" rules out
    # 6.1.y: "4.12" excludes "4.12-rc1", says dkms(8)); OBSOLETE_BY is the MAX when no MAX
    # is set
    low, high = get("BUILD_EXCLUSIVE_KERNEL_MIN"), get("BUILD_EXCLUSIVE_KERNEL_MAX")
    if low and rules.dkms_ver(kernel.kver) < rules.dkms_ver(low):
        return f"BUILD_EXCLUSIVE_KERNEL_MIN {low} > {kernel.kver}"
    if high and rules.dkms_ver(kernel.kver) > rules.dkms_ver(high):
        return f"BUILD_EXCLUSIVE_KERNEL_MAX {high} < {kernel.kver}"
    obsolete = _scalar(d, "OBSOLETE_BY") if index == 0 and not high else ""
    if obsolete and rules.dkms_ver(kernel.kver) > rules.dkms_ver(obsolete):
        return f"OBSOLETE_BY {obsolete}: {kernel.kver} has it built in"
    for opt in get("BUILD_EXCLUSIVE_CONFIG").split():
        negate = opt.startswith("!")
        key = opt.lstrip("!")
        enabled = kernel.kernel_config.get(key) in ("y", "m")
        if enabled == negate:
            return (
                f"BUILD_EXCLUSIVE_CONFIG {opt}: {key} is "
                f"{'set' if enabled else 'not set'} in this kernel"
            )
    return None
