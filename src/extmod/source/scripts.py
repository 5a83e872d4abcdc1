"""How dkms.conf's commands run, as DKMS runs them: a MAKE or CLEAN line evaluated by bash
with DKMS's variables (``invoke_command``), a PRE_BUILD/POST_BUILD/POST_ADD/... script by
its path (``run_build_script``); values always quoted, never evaluated."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


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
