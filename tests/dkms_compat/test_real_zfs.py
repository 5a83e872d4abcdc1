"""zfs-dkms, the most used DKMS package, from the Debian archive: built, installed, loaded.

bookworm-backports' zfs-dkms (2.3) on Debian's 6.12 headers from bookworm-backports here;
bookworm's zfs-dkms (2.1) on Debian's 6.1 headers (and the clang tree) in the parity test,
side by side with Debian's dkms, whose installed modules it then loads in qemu the same way.

Each is added from its /usr/src dir as apt's zfs-dkms leaves it, and installed into a staged
root whose /lib/modules/KVER/build and /source lead to Debian's split headers, as on a
system. zfs's dkms.conf is the hard case of issue 13: PRE_BUILD (configure), POST_BUILD and
STRIP spread over many lines, and the kernel's source tree derived with
``${kernel_source_dir/%build/source}``. Then the matching Debian kernel boots in qemu and
loads the installed modules in dependency order (spl first, zfs last) and unloads them.
"""

from __future__ import annotations

import lzma
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import LaneJob, boot, check_console, extmod, make_root

pytestmark = pytest.mark.slow

# The modules each zfs-dkms's dkms.conf names (BUILT_MODULE_NAME): 2.1 builds nine, 2.3
# folded them into two.
MODULES = {
    "bookworm": ["icp", "spl", "zavl", "zcommon", "zfs", "zlua", "znvpair", "zunicode", "zzstd"],
    "backports": ["spl", "zfs"],
}
# suite -> the trees.json entry of the Debian kernel it is built for, and the installed
# modules' suffix (Debian's 6.12 has CONFIG_MODULE_COMPRESS_XZ, as dkms honours too)
KERNEL = {"bookworm": ("gcc", ".ko"), "backports": ("debian612", ".ko.xz")}


def _root(trees: dict[str, Any], work: Path, suite: str) -> tuple[Path, Path, str]:
    """(staged root, the package's /usr/src dir in it, kver)."""
    kver = trees[KERNEL[suite][0]]["kver"]
    return work / "root", work / "root/usr/src" / Path(trees["zfs"][suite]["src"]).name, kver


def start_backports(trees: dict[str, Any], work: Path) -> list[str | Path]:
    """The lane job (conftest.lane_job, started with the session): a staged root whose
    /lib/modules/KVER/build and /source lead to Debian's split headers, zfs copied into its
    /usr/src as apt leaves it, and ``extmod install`` of it."""
    root, src, kver = _root(trees, work, "backports")
    kernel = trees[KERNEL["backports"][0]]
    source = kernel.get("source") or str(Path("/lib/modules", kver, "source").resolve())
    make_root(root, kver, kernel["build"], source=source)
    shutil.copytree(trees["zfs"]["backports"]["src"], src, symlinks=True)
    return [sys.executable, "-m", "extmod", "--root", root, "install", src, "-k", kver]


@pytest.mark.lane("start_backports")
def test_zfs_builds_installs_and_loads(
    trees: dict[str, Any], tmp_path: Path, lane_job: LaneJob
) -> None:
    suite = "backports"
    kernel = trees[KERNEL[suite][0]]
    suffix = KERNEL[suite][1]
    root, src, kver = _root(trees, lane_job.work, suite)
    version = src.name.removeprefix("zfs-")

    assert lane_job.wait(timeout=3600) == 0, lane_job.log()[-3000:]

    installed = root / "lib/modules" / kver / "updates/dkms"
    assert sorted(p.name for p in installed.iterdir()) == sorted(m + suffix for m in MODULES[suite])
    assert f"updates/dkms/zfs{suffix}:" in (root / "lib/modules" / kver / "modules.dep").read_text()
    # zfs's dkms.postbuild copied its config header where DKMS keeps a build's results
    # ($dkms_tree/zfs/VERSION/KVER/ARCH/), which exists because extmod makes it as DKMS does
    post = list((root / "var/lib/extmod").rglob(f"zfs/{version}/{kver}/x86_64/zfs_config.h"))
    assert post, "POST_BUILD did not leave zfs_config.h"
    status = extmod(["--root", root, "status", "zfs", "-k", kver])
    assert status.rc == 0 and "installed" in status.out, status.out + status.err

    # modprobe decompresses in user space before it hands the module to the kernel; the
    # initramfs's busybox insmod gets it already decompressed.
    mods = []
    for f in sorted(installed.iterdir()):
        ko = tmp_path / "load" / f.name.removesuffix(".xz")
        ko.parent.mkdir(exist_ok=True)
        ko.write_bytes(
            lzma.decompress(f.read_bytes()) if f.name.endswith(".xz") else f.read_bytes()
        )
        mods.append(ko)
    console = boot(Path(kernel["vmlinuz"]), mods, trees["busybox"], tmp_path / "qemu", memory=1024)
    check_console(console, kver, MODULES[suite], [f"ZFS: Loaded module v{version}"])
