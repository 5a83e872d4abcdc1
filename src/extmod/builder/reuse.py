"""The build stores' one owner: a finished build looked up by its inputs digest (the local
store, then the shared one), a new build filed (and uploaded), and a stored build made
into this host's modules (stripped, signed, compressed). The builder and the verbs look up,
file and fetch only through here, and nothing else reaches ``store/shared.py`` or
``store/remote.py`` (issue 34; a test keeps it so); ``cache`` and ``clean`` list and prune
the local store with ``store/builds.py`` itself.

Whatever either store holds or answers, it costs speed, never a build (issue 32): a local
object that is damaged is dropped and named in one line; a fetched object that is refused
is named in one line; a shared store that fails is named once per command and not asked
again in it (``shared.Link``). Each is a miss, and the build is made here.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from extmod.core import digest, run
from extmod.core.config import Config
from extmod.core.paths import Paths
from extmod.kernel import finish, signing
from extmod.store import builds, shared
from extmod.store.state import BuiltModule

Note = Callable[[str], None]


def settings(config: Config, paths: Paths) -> shared.Settings | None:
    """The shared build store's settings (store.url), or None when there is none (or no
    local store to file fetched builds in). Uploads are signed with the module signing
    key; fetched builds are checked against store.trust, else the signing certificate."""
    if not config.store_url or not config.store_max_size:
        return None
    key, cert = signing.key_pair(config, paths)
    trust = config.store_trust or (cert,)
    return shared.Settings(
        config.store_url, config.store_mode, config.store_timeout, trust, key, cert
    )


@dataclass
class Stores:
    """One command's build stores: the local one (when ``store.max_size`` keeps one) and
    the shared one (``store.url``), whose failure is said once in the command."""

    paths: Paths
    enabled: bool  # store.max_size is not 0
    link: shared.Link | None

    @classmethod
    def of(cls, config: Config, paths: Paths) -> Stores:
        st = settings(config, paths)
        return cls(paths, bool(config.store_max_size), shared.Link(st) if st else None)

    def lookup(self, inputs: str, note: Note) -> builds.Stored | None:
        """The build filed under ``inputs``: in the local store, else fetched from the
        shared one and filed locally; None (a miss) when neither has a good one."""
        if not self.enabled:
            return None
        stored = self._local(inputs, note)
        if stored is not None or self.link is None:
            return stored
        try:
            if self.link.fetch(self.paths, inputs):
                note(f"fetched build {inputs[:16]} from the shared store")
                return self._local(inputs, note)
        except shared.Refused as e:
            note(f"the shared store's build {inputs[:16]} is refused: {e}; building here")
        except shared.Unusable as e:
            note(f"the shared store cannot be used: {e}; building here")
        return None

    def _local(self, inputs: str, note: Note) -> builds.Stored | None:
        try:
            return builds.get(self.paths, inputs)
        except builds.Damaged as e:
            note(f"the build store's object {inputs[:16]} is dropped: {e}; building here")
            return None

    def file(self, inputs: str, meta: builds.Meta, made: dict[str, Path]) -> list[str]:
        """A finished build into the local store (``made``: DEST_NAME -> the module as make
        left it), then onto the shared one when this host uploads; the notes to show. A
        failure to file or upload costs the next build its speed, never this one."""
        if not inputs or not self.enabled:
            return []
        try:
            builds.put(self.paths, inputs, meta, made)
        except OSError as e:
            return [f"not filed in the build store: {e.strerror}"]
        return self._upload(inputs)

    def _upload(self, inputs: str) -> list[str]:
        if self.link is None or not self.link.settings.uploads or self.link.down is not None:
            return []
        key = self.link.settings.key
        if str(key).startswith("pkcs11:") or not key.is_file():
            return [f"not uploaded to the shared store: no signing key file ({key})"]
        try:
            if self.link.upload(self.paths, inputs):
                return [f"uploaded to the shared store ({inputs[:16]})"]
        except shared.Unusable as e:
            return [f"not uploaded to the shared store: {e}"]
        except (run.CommandFailed, OSError) as e:
            return [f"not uploaded to the shared store: {e}"]
        return []


def materialize(
    stored: builds.Stored,
    tmp: Path,
    strip: str,
    sign: signing.Signer | None,
    compress: tuple[str, list[str]] | None,
) -> list[BuiltModule]:
    """The stored modules finished in ``tmp/module`` as a build finishes its own."""
    records = []
    for m in stored.modules:
        staged = tmp / "module" / f"{m.meta.dest_name}.ko"
        staged.parent.mkdir(exist_ok=True)
        shutil.copyfile(m.path, staged)
        done = finish.finish_module(
            staged, strip=strip if m.meta.strip else None, sign=sign, compress=compress
        )
        records.append(
            BuiltModule(
                m.meta.built_name,
                m.meta.dest_name,
                m.meta.dest_location,
                done.name,
                digest.file(done),
            )
        )
    return records
