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
import stat
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from extmod.core import atomic, digest, files, run
from extmod.core.errors import UserError

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
# Read by old DKMS versions, ignored by 3.x with a warning; so here.
DEPRECATED = (
    "REMAKE_INITRD",
    "MODULES_CONF",
    "MODULES_CONF_OBSOLETES",
    "MODULES_CONF_ALIAS_TYPE",
    "MODULES_CONF_OBSOLETE_ONLY",
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
    *DEPRECATED,
)
assert sorted(_ALL) == sorted(SCALARS + ARRAYS + DEPRECATED)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+~-]*$")
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
#   DKMS 3.4 also strips one trailing CR per value (%$CR); extmod refuses CRLF files.
# What the files print on stdout is dropped; stdout then carries name, index, value triples,
# NUL-separated. The loop variables keep DKMS's names, as a file that sets them would clash
# with DKMS's too.
_EVAL_TEMPLATE = r"""
unset %(all)s
for __f in "$@"; do
  [ -e "$__f" ] || continue
  __err=$(bash -n "$__f" 2>&1) || { printf '%%s\n' "$__err" >&2; exit 65; }
  __out=$( . "$__f" >/dev/null
    for _export_env in %(all)s; do
      for _i in $(eval echo \${!$_export_env[@]}); do
        eval echo '$_export_env[$_i]=\"${'$_export_env'[$_i]}\"'
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
    CLEAN and scripts: the one place they are made (README "DKMS's variables" lists them
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
        _check_text(f)
    timeout = ctx.timeout
    try:
        res = run.query(
            [
                "bash",
                "-c",
                define_vars(shell_vars(kernel, ctx, name, version)) + _EVAL,
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


_MAX_CONF = 1 << 20


def _check_text(f: Path) -> None:
    """Refuse what bash would misread or choke on, with the file and line named."""
    try:
        size = f.stat().st_size
    except FileNotFoundError:
        return
    except OSError as e:
        raise UserError(f"{f}: cannot read: {e.strerror}") from None
    if size > _MAX_CONF:
        raise UserError(f"{f}: {size} bytes: larger than {_MAX_CONF} bytes, not a dkms.conf")
    try:
        data = f.read_bytes()
    except OSError as e:
        raise UserError(f"{f}: cannot read: {e.strerror}") from None
    if b"\r\n" in data:
        line = data[: data.index(b"\r\n")].count(b"\n") + 1
        raise UserError(f"{f}: line {line}: CRLF line end (a DOS file): convert it with dos2unix")
    if b"\0" in data:
        line = data[: data.index(b"\0")].count(b"\n") + 1
        raise UserError(f"{f}: line {line}: a NUL byte: not a text file")


def check_links(src: Path) -> None:
    """Every file of a source tree must be a regular one this process can read. Symlinks
    are not checked here: one that stays in the tree is copied as what it points to, one
    that leads out of it (Debian 13's iptables-netflow-dkms has README.gz ->
    /usr/share/doc/…, present wherever docs are installed) stays a link, never followed
    or read, as DKMS's ``cp -a`` keeps it (files.tree_entries)."""
    top = src.resolve()
    conf = src / "dkms.conf"  # read by extmod itself: it must be the package's own
    if conf.is_symlink() and conf.exists() and not files.inside(conf, top):
        raise UserError(f"{conf}: symlink leads outside the source tree (to {conf.resolve()})")
    for dirpath, dirnames, filenames in os.walk(top):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            if p.is_symlink():
                continue
            if not (p.is_file() or p.is_dir()):
                # A FIFO would hang the copy; a device would copy its content.
                raise UserError(
                    f"{p}: not a regular file or dir (a FIFO, socket or "
                    f"device has no place in a source tree)"
                )
            if not os.access(p, os.R_OK | (os.X_OK if p.is_dir() else 0)):
                raise UserError(f"{p}: cannot read it (permission denied)")


def define_vars(values: dict[str, str]) -> str:
    """Bash assignments for ``values``, each quoted so that no value is ever evaluated."""
    return "".join(f"{k}={_bash_quote(v)}\n" for k, v in values.items())


def command_argv(
    shell_vars: dict[str, str],
    cwd: Path,
    command: str,
    directives: Sequence[tuple[str, Sequence[tuple[int, str]]]] = (),
) -> list[str]:
    """bash evaluating a MAKE/CLEAN line in ``cwd``, as DKMS's invoke_command does (``eval``,
    a third evaluation after the two of safe_source): ``&&``, ``;`` and a late
    ``\\$kernelver`` all work. The shell has DKMS's variables and the directives as read_conf
    left them (``$PACKAGE_NAME``, ``${MAKE[1]}``), nothing else of the file: its own
    variables (``BDIR``) died with safe_source's subshell, as in DKMS."""
    arrays = "".join(
        f"{name}=(" + " ".join(f"[{i}]={_bash_quote(v)}" for i, v in values) + ")\n"
        for name, values in directives
    )
    body = define_vars(shell_vars) + arrays + 'cd "$1" || exit 1\neval "$2"\n'
    return ["bash", "-c", body, "extmod-make", str(cwd), command]


def script_argv(shell_vars: dict[str, str], cwd: Path, script: str) -> list[str]:
    """A PRE_BUILD/POST_BUILD/POST_ADD/... script, run as DKMS's run_build_script does: the
    path is relative to ``cwd``, its first word must be executable, the rest are split."""
    body = define_vars(shell_vars) + (
        'cd "$1" || exit 1\n'
        'run="$PWD/$2"\n'
        'if [ -x "${run%% *}" ]; then exec $run; fi\n'
        'echo "extmod: warning: script ${run%% *} is not executable: skipped" >&2\n'
    )
    return ["bash", "-c", body, "extmod-script", str(cwd), script]


def _bash_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


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
        if not _NAME.match(value) or ".." in value:
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


def require_regular(conf: Path) -> None:
    """dkms.conf exists and is a regular file (a FIFO would hang bash, /dev/zero never
    ends)."""
    if not conf.is_file():
        if conf.exists() or conf.is_symlink():
            raise UserError(f"{conf}: not a regular file")
        raise UserError(f"{conf}: no such file")
    if not stat.S_ISREG(conf.stat().st_mode):
        raise UserError(f"{conf}: not a regular file")


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
    require_regular(conf)
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


def _patches(conf: Path, d: dict[str, dict[int, str]], source: Path, kver: str) -> list[str]:
    """PATCH[i] whose PATCH_MATCH[i] (if any) matches the kernel; each in patches/."""
    patches = []
    for idx, patch in sorted(d.get("PATCH", {}).items()):
        pattern = d.get("PATCH_MATCH", {}).get(idx, "")
        if patch and (not pattern or _search(conf, f"PATCH_MATCH[{idx}]", pattern, kver)):
            if "/" in patch:
                raise UserError(f"{conf}: PATCH[{idx}]: {patch!r}: give a file name in patches/")
            if not (source / "patches" / patch).is_file():
                raise UserError(f"{conf}: PATCH[{idx}]: patches/{patch} does not exist")
            patches.append(patch)
    return patches


_CONFIG_WORD = re.compile(r"!?CONFIG_[A-Za-z0-9_]+")


def _is_regex(conf: Path, fld: str, value: str) -> None:
    _search(conf, fld, value, "")


def _is_version(conf: Path, fld: str, value: str) -> None:
    if value and not re.match(r"\d+(\.\d+)*", value):
        raise UserError(f"{conf}: {fld}: {value!r} is not a kernel version")


def _are_config_words(conf: Path, fld: str, value: str) -> None:
    for word in value.split():
        if not _CONFIG_WORD.fullmatch(word):
            raise UserError(f"{conf}: {fld}: {word!r}: expected CONFIG_NAME or !CONFIG_NAME")


def _is_yes_no(conf: Path, fld: str, value: str) -> None:
    # dkms 3.2.2's check_yes_no_value: "dkms.conf: Error! Unsupported AUTOINSTALL value"
    if value.lower() not in ("", "yes", "no"):
        raise UserError(f"{conf}: {fld}: unsupported value {value!r} (yes, no or empty)")


def _are_names(conf: Path, fld: str, value: str) -> None:
    for word in value.split():
        if not _NAME.match(word) or ".." in word:
            raise UserError(f"{conf}: {fld}: {word!r} is not a name")


# per-entry arrays: always named with their index
_ARRAYS = ("MAKE_MATCH", "PATCH_MATCH")

_VALUE_CHECKS: dict[str, Callable[[Path, str, str], None]] = {
    "MAKE_MATCH": _is_regex,
    "PATCH_MATCH": _is_regex,
    "BUILD_EXCLUSIVE_KERNEL": _is_regex,
    "BUILD_EXCLUSIVE_ARCH": _is_regex,
    "BUILD_EXCLUSIVE_KERNEL_MIN": _is_version,
    "BUILD_EXCLUSIVE_KERNEL_MAX": _is_version,
    "OBSOLETE_BY": _is_version,
    "BUILD_EXCLUSIVE_CONFIG": _are_config_words,
    "AUTOINSTALL": _is_yes_no,
    "NO_WEAK_MODULES": _is_yes_no,
    "BUILD_DEPENDS": _are_names,
}


def check_values(conf: Path, d: dict[str, dict[int, str]]) -> None:
    """Each directive's value checked against what it means, before anything uses it
    (issue 22): a regex that compiles, a kernel version where one is compared, CONFIG_
    words, yes/no/empty, package names in BUILD_DEPENDS. A bad one is one line naming the
    file and the field (NAME[i] for MAKE_MATCH and PATCH_MATCH and for several entries,
    else NAME)."""
    for key, check in _VALUE_CHECKS.items():
        values = d.get(key, {})
        for idx, value in values.items():
            plain = idx == 0 and len(values) == 1 and key not in _ARRAYS
            check(conf, key if plain else f"{key}[{idx}]", value)


def deprecations(conf: Path, d: dict[str, dict[int, str]]) -> list[str]:
    """DKMS 3.4's words for the deprecated directives a dkms.conf sets (read_conf's
    deprecated calls): the ignored ones, and OBSOLETE_BY (still honoured). Not CLEAN:
    upstream deprecates a CLEAN that is not ``true``, Debian 13's dkms 3.2.2 does not say
    so (most of its -dkms packages set one), and extmod answers as Debian's."""
    out = [f"Deprecated feature: {key} ({conf})" for key in DEPRECATED if key in d]
    if "OBSOLETE_BY" in d:
        out.append(
            f"Deprecated feature: OBSOLETE_BY ({conf}): use BUILD_EXCLUSIVE_KERNEL_MAX instead"
        )
    return out


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
    warnings = deprecations(conf, d)
    check_values(conf, d)
    modules, excluded = _modules(conf, d, name, kernel)
    warnings += [f"{conf}: module {m} not built for {kernel.kver}" for m in excluded]

    make = _match(d, "MAKE", "MAKE_MATCH", kernel.kver)
    if not make:
        make = f"make -C {kernel.kernel_source_dir} M={ctx.dkms_tree}/{name}/{version}/build"
    clean = _scalar(d, "CLEAN") or (
        f"make -C {kernel.kernel_source_dir} M={ctx.dkms_tree}/{name}/{version}/build clean"
    )
    patches = _patches(conf, d, source, kernel.kver)
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
        patches=tuple(patches),
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
    for i in range(count):
        m = _module(conf, d, i, name, n_dest)
        why = exclusion(d, kernel, index=i) if i > 0 else None
        if why:
            excluded.append(f"{m.built_name}: {why}")
        else:
            modules.append(m)
    return modules, excluded


def _match(d: dict[str, dict[int, str]], key: str, match_key: str, kver: str) -> str:
    """DKMS's MAKE/MAKE_MATCH rule: MAKE[0] unless MAKE_MATCH[0] is set; then the last
    MAKE[i] whose MAKE_MATCH[i] regex matches the kernel release."""
    values, patterns = d.get(key, {}), d.get(match_key, {})
    chosen = "" if patterns.get(0) else values.get(0, "")
    for idx in sorted(values):
        pattern = patterns.get(idx, "")
        if values[idx] and pattern and re.search(_ere(pattern), kver):
            chosen = values[idx]
    return chosen


def _ere(pattern: str) -> str:
    """bash's =~ takes POSIX extended regexes; Python's syntax covers what dkms.conf files
    use, except bracket classes, which are translated."""
    classes = {
        "[:digit:]": r"\d",
        "[:alpha:]": "a-zA-Z",
        "[:alnum:]": "a-zA-Z0-9",
        "[:space:]": r"\s",
        "[:upper:]": "A-Z",
        "[:lower:]": "a-z",
    }
    for k, v in classes.items():
        pattern = pattern.replace(k, v)
    return pattern


def _search(conf: Path, fld: str, pattern: str, text: str) -> bool:
    try:
        return re.search(_ere(pattern), text) is not None
    except re.error as e:
        raise UserError(f"{conf}: {fld}: bad regular expression {pattern!r}: {e}") from None


def dkms_ver(text: str) -> str:
    """DKMS's ``VER`` (dkms.in, 3.0.11 to 3.4): each run of digits padded to at least three
    ("6.1.0-18-amd64" -> "006.001.000-018-amd064"), so that the strings compare as versions;
    BUILD_EXCLUSIVE_KERNEL_MIN/MAX are compared with ``[[ < ]]`` / ``[[ > ]]`` on these (read
    in the C locale: byte order, as Python compares)."""
    spaced = re.sub(r"(\d)(\D)", r"\1 \2", re.sub(r"(\D)(\d)", r"\1 \2", text))
    spaced = re.sub(r" (\d) ", r" 00\1 ", f" {spaced} ")
    spaced = re.sub(r" (\d\d) ", r" 0\1 ", spaced)
    return spaced.replace(" ", "")


def version_tuple(text: str) -> tuple[int, ...]:
    """The leading numeric components of a release: "6.1.0-56-amd64" → (6, 1, 0)."""
    m = re.match(r"\d+(?:\.\d+)*", text.strip())
    return tuple(int(x) for x in m.group(0).split(".")) if m else ()


def exclusion(d: dict[str, dict[int, str]], kernel: ConfKernel, index: int) -> str | None:
    """Why BUILD_EXCLUSIVE_* (entry ``index``) or OBSOLETE_BY excludes this kernel."""

    def get(key: str) -> str:
        return d.get(key, {}).get(index, "")

    kernel_re = get("BUILD_EXCLUSIVE_KERNEL")
    if kernel_re and not re.search(_ere(kernel_re), kernel.kver):
        return f"BUILD_EXCLUSIVE_KERNEL {kernel_re!r} does not match {kernel.kver}"
    arch_re = get("BUILD_EXCLUSIVE_ARCH")
    if arch_re and not re.search(_ere(arch_re), kernel.arch):
        return f"BUILD_EXCLUSIVE_ARCH {arch_re!r} does not match {kernel.arch}"
    # dkms 3.2.2 read_conf: MIN and MAX bound the release by dkms_ver (MAX="6.1" rules out
    # 6.1.y: "4.12" excludes "4.12-rc1", says dkms(8)); OBSOLETE_BY is the MAX when no MAX
    # is set
    low, high = get("BUILD_EXCLUSIVE_KERNEL_MIN"), get("BUILD_EXCLUSIVE_KERNEL_MAX")
    if low and dkms_ver(kernel.kver) < dkms_ver(low):
        return f"BUILD_EXCLUSIVE_KERNEL_MIN {low} > {kernel.kver}"
    if high and dkms_ver(kernel.kver) > dkms_ver(high):
        return f"BUILD_EXCLUSIVE_KERNEL_MAX {high} < {kernel.kver}"
    obsolete = _scalar(d, "OBSOLETE_BY") if index == 0 and not high else ""
    if obsolete and dkms_ver(kernel.kver) > dkms_ver(obsolete):
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
