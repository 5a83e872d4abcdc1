"""The harness that runs DKMS's own run_test.sh (tests/dkms_suite.py), fast: on a small
suite of the same shape, every check is recorded (a pass, a failed output with its diff,
a failed status, an inline `exit 1`) and the suite goes on to its end."""

from __future__ import annotations

import subprocess
from pathlib import Path

import dkms_suite

SUITE = """#!/bin/bash
# a suite shaped as run_test.sh
set -eu
run_with_expected_error() {
    local expected_error_code=$1
    local output_log=test_cmd_output.log
    local error_code=0
    shift
    cat > test_cmd_expected_output.log
    "$@" > "${output_log}" 2>&1 || error_code=$?
    if [[ "${error_code}" != "${expected_error_code}" ]] ; then
        echo "Error: command '$*' returned status ${error_code} instead of expected 3"
        cat "${output_log}"
        return 1
    fi
    if ! diff -U3 test_cmd_expected_output.log "${output_log}" ; then
        return 1
    fi
}
run_with_expected_output() {
    run_with_expected_error 0 "$@"
}
echo 'a check that passes'
run_with_expected_output echo hello << END
hello
END
echo 'a check whose output differs'
run_with_expected_output echo hello << END
goodbye
END
echo 'a check whose status differs'
run_with_expected_error 3 false << END
END
echo 'an inline check'
if [[ ! -e /nonexistent ]]; then
    echo >&2 "Error: not there"
    exit 1
fi
echo 'the end'
touch reached-the-end
"""


def test_every_check_is_recorded_and_the_suite_goes_on(tmp_path: Path) -> None:
    script = tmp_path / "run_test.sh"
    script.write_text(dkms_suite.keep_going(SUITE).replace(dkms_suite.RESULTS, "results"))
    res = subprocess.run(["bash", str(script)], cwd=tmp_path, capture_output=True, text=True)
    assert (tmp_path / "reached-the-end").exists(), res.stdout + res.stderr
    checks = dkms_suite.parse((tmp_path / "results").read_text())
    assert [(c.result, c.kind, c.title) for c in checks] == [
        ("PASS", "run_with_expected_error", "a check that passes"),
        ("FAIL", "run_with_expected_error", "a check whose output differs"),
        ("FAIL", "run_with_expected_error", "a check whose status differs"),
        ("FAIL", "inline", "an inline check"),
    ]
    assert "-goodbye\n+hello" in checks[1].diff
    assert "returned status 1 instead of expected 3" in checks[2].diff
    assert dkms_suite.counts(checks) == {
        "checks": 3,
        "passed": 1,
        "failed": 2,
        "inline_failures": 1,
    }
