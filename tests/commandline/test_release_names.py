"""A kernel release given on either command line names dirs: one that cannot is refused
first (fast)."""

from __future__ import annotations

import pytest

from extmod.core import paths


@pytest.mark.parametrize("kver", ["..", "../..", "a b", "x" * 65, "", "a\x01b"])
def test_a_kernel_release_that_cannot_name_a_dir_is_refused_by_both_command_lines(
    kver: str,
) -> None:
    """Issue 22: `kernel-prerm ../..` removed every package's build dir. -k and KVER are
    checked before anything reads what they name, in both command lines."""
    from extmod.ui import cli
    from extmod.ui.dkms import args as dkmsargs

    assert paths.release_problem(kver)
    assert paths.release_problem("6.1.0-57-amd64") == ""
    assert cli.main(["--root", "/nonexistent", "kernel-prerm", kver]) == 3
    assert cli.main(["--root", "/nonexistent", "status", "-k", kver]) == 3
    with pytest.raises(dkmsargs.DkmsExit) as e:
        dkmsargs.parse(["kernel_prerm", "-k", kver])
    assert e.value.code == 2
