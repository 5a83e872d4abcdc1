"""Run extmod's CLI in this process and write this process's own peak RSS (KiB) to a file.

``python bench/selfrss.py OUT ARGS...`` is ``extmod ARGS...``. A parent's wait4() reports the
largest RSS of the whole process tree (a compiler's, during a build); RUSAGE_SELF here is
extmod's Python process alone, its threads included."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

from extmod.ui.cli import main

if __name__ == "__main__":
    out = Path(sys.argv[1])
    try:
        rc = main(sys.argv[2:])
    finally:
        out.write_text(f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}\n")
    sys.exit(rc)
