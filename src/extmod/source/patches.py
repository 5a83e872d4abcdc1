"""dkms.conf's PATCH entries for one kernel, and what is wrong with one (issue 35).

A PATCH is a path below the package's ``patches/`` (DKMS 3.2.2 takes subdirs). As DKMS
does, a package whose patch is missing or leads out of ``patches/`` is added, and its build
is what refuses it (``Fault``, said when a build is asked for: DKMS 3.2.2 prepare_build,
exit 5), before anything of the build is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from extmod.core.errors import UserError
from extmod.source import rules


@dataclass(frozen=True)
class Fault:
    """PATCH[index] = patch, and what is wrong: "dots" (a '..' component), "outside" (an
    absolute path, or a link out of patches/), "missing"."""

    conf: Path
    index: int
    patch: str
    kind: str

    def error(self) -> PatchError:
        """The one line naming the file and the field."""
        field = f"{self.conf}: PATCH[{self.index}]"
        if self.kind == "missing":
            return PatchError(self, f"{field}: patches/{self.patch} does not exist")
        return PatchError(self, f"{field}: {self.patch!r}: give a path in patches/")


class PatchError(UserError):
    """A build asked for a package whose PATCH cannot be applied (``fault`` says which)."""

    def __init__(self, fault: Fault, message: str):
        super().__init__(message)
        self.fault = fault


def for_kernel(
    conf: Path, d: dict[str, dict[int, str]], source: Path, kver: str
) -> tuple[list[str], Fault | None]:
    """The PATCH entries whose PATCH_MATCH (if any) matches ``kver``, and the first fault
    among them."""
    patches: list[str] = []
    fault = None
    top = (source / "patches").resolve()
    for idx, patch in sorted(d.get("PATCH", {}).items()):
        pattern = d.get("PATCH_MATCH", {}).get(idx, "")
        if not patch or (pattern and not rules.search(conf, f"PATCH_MATCH[{idx}]", pattern, kver)):
            continue
        patches.append(patch)
        if fault is not None:
            continue
        if ".." in Path(patch).parts:
            fault = Fault(conf, idx, patch, "dots")
        elif patch.startswith("/") or not (top / patch).resolve().is_relative_to(top):
            fault = Fault(conf, idx, patch, "outside")
        elif not (source / "patches" / patch).is_file():
            fault = Fault(conf, idx, patch, "missing")
    return patches, fault
