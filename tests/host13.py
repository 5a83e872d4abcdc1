"""The two README commands on a fresh Debian 13 machine (issue 33), as the lane job of
test_debian13_host.py runs them: a trixie chroot made from the archive (the cached
mmdebstrap base: python3, gcc, make and what every Debian system has; the machine's own
certificate authorities and resolv.conf, as on any machine here), this checkout cloned
into it with git, then ``bash scripts/demo.sh`` and ``bash scripts/test.sh --fast`` as
root, nothing else. Each command's exit status, wall time and output tail go to
``WORK/result.json``.

``python3 tests/host13.py WORK``; the chroot is removed at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from chroot import Chroot

REPO = Path(__file__).resolve().parent.parent
TREES = Path("/var/cache/extmod-tests/trees.json")
COMMANDS = {"demo": "bash scripts/demo.sh", "fast": "bash scripts/test.sh --fast"}


def main(work: Path) -> int:
    trees = json.loads(TREES.read_text())
    c = Chroot(trees, work / "root", "chroot13")
    result: dict[str, dict[str, object]] = {}
    try:
        c.trust_local_cas()
        subprocess.run(["git", "clone", "-q", str(REPO), str(c.root / "root/extmod")], check=True)
        for name, command in COMMANDS.items():
            started = time.monotonic()
            out = c.run(f"cd /root/extmod && {command} 2>&1; echo rc=$?", check=False)
            lines = out.rstrip().splitlines()
            rc = int(lines[-1].removeprefix("rc=")) if lines and lines[-1].startswith("rc=") else -1
            result[name] = {
                "command": command,
                "rc": rc,
                "seconds": round(time.monotonic() - started, 1),
                "tail": "\n".join(lines[-60:-1]),
            }
            print(f"{command}: exit {rc} in {result[name]['seconds']} s", flush=True)
            if rc != 0:
                break
    finally:
        (work / "result.json").write_text(json.dumps(result, indent=1) + "\n")
        c.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
