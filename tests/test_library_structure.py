"""Document structure in the literature assistant, on five survey-style papers (tests/library_papers.py): reference
lists in GB/T 7714, APA and numbered styles parsed into structured entries; reference entries, captions and author
lines never cited as evidence by answers, extraction or reviews; title, authors, year, abstract and keywords read
from Chinese and English text, Markdown and PDF; the citation graph; the migration of a library written before
passages had roles; Boolean strings for ten research questions; and the synthesising review."""
from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from library_papers import write_papers  # noqa: E402

from alignchat.library import Library  # noqa: E402
from alignchat.library.answer import Answerer  # noqa: E402
from alignchat.library.structure import parse_reference  # noqa: E402


@pytest.fixture(scope="module")
def papers(tmp_path_factory):
    return write_papers(tmp_path_factory.mktemp("papers"))


@pytest.fixture(scope="module")
def lib(tmp_path_factory, papers):
    library = Library(tmp_path_factory.mktemp("library"))
    library.ids = {k: library.add_file(p)[0].doc_id for k, p in papers.items()}
    return library


def _refs(lib, key):
    return lib.references(lib.ids[key])


def test_gbt7714_references_are_parsed(lib):
    refs = _refs(lib, "A")
    assert len(refs) == 5 and [r["label"] for r in refs] == ["1", "2", "3", "4", "5"]
    ouyang, tamkin, zhang, zhao, zhou = refs
    assert ouyang["style"] == "gbt7714" and ouyang["type"] == "conference paper"
    assert ouyang["authors"] == ["Ouyang L", "Wu J", "Jiang X"] and ouyang["year"] == 2022
    assert ouyang["title"] == "Training language models to follow instructions with human feedback"
    assert ouyang["venue"] == "Advances in Neural Information Processing Systems 35"
    assert tamkin["type"] == "journal article" and tamkin["authors"][0] == "Tamkin A" and tamkin["year"] == 2021
    assert (zhang["authors"], zhang["title"], zhang["venue"], zhang["year"]) == (
        ["张智雄", "于改红", "刘熠"], "ChatGPT对文献情报工作的影响", "数据分析与知识发现", 2023)
    assert zhao["title"] == "大语言模型在高校图书馆参考咨询中的应用"
    assert (zhou["type"], zhou["authors"], zhou["title"], zhou["venue"], zhou["year"]) == (
        "book", ["周志华"], "机器学习", "清华大学出版社", 2016)
    thesis = parse_reference("[6] 王伟. 基于深度学习的图书推荐方法研究[D]. 武汉: 武汉大学, 2020.")
    assert (thesis.type, thesis.title, thesis.year) == ("thesis", "基于深度学习的图书推荐方法研究", 2020)


def test_apa_references_are_parsed(lib):
    refs = _refs(lib, "C")
    assert len(refs) == 4 and {r["style"] for r in refs} == {"apa"}
    cox, garcia, lewis, lund = refs
    assert cox["authors"] == ["Cox, A. M", "Mazumdar, S"] and cox["year"] == 2022
    assert cox["title"] == "Defining artificial intelligence for librarians"
    assert cox["venue"] == "Journal of Librarianship and Information Science" and cox["type"] == "journal article"
    assert cox["doi"] == "10.1177/09610006221142029"
    assert garcia["doi"] == "10.5555/raglib.2023.4"
    assert lewis["authors"][:3] == ["Lewis, P", "Perez, E", "Piktus, A"]
    assert lund["title"] == "Chatting about ChatGPT: How may AI and GPT impact academia and libraries"
    e = _refs(lib, "E")
    assert [r["year"] for r in e] == [2017, 2022, 2017] and e[2]["type"] == "preprint"


def test_numbered_references_in_a_pdf_are_parsed(lib):
    refs = _refs(lib, "D")
    assert [r["label"] for r in refs] == ["1", "2", "3"] and {r["style"] for r in refs} == {"numbered"}
    lewis, karpukhin, bm25 = refs
    assert lewis["title"] == "Retrieval-augmented generation for knowledge-intensive NLP tasks"
    assert (lewis["venue"], lewis["year"], lewis["type"]) == ("Proc. NeurIPS", 2020, "conference paper")
    assert karpukhin["doi"] == "10.18653/v1/2020.emnlp-main.550"
    assert bm25["authors"] == ["S. Robertson", "H. Zaragoza"] and bm25["year"] == 2009
    assert bm25["title"] == "The probabilistic relevance framework: BM25 and beyond"
    assert all(lib.passage(r["passage_id"]).page == 2 for r in refs)


def test_metadata_from_the_text_of_chinese_and_english_text_markdown_and_pdf(lib):
    docs = {k: lib.document(i) for k, i in lib.ids.items()}
    a, b, c, d, e = (docs[k] for k in "ABCDE")
    assert a.title == "ChatGPT 调研报告" and a.authors == ["张华", "李明", "王芳"] and a.year == 2023
    assert a.meta["affiliations"][0].startswith("北京大学信息管理系")
    assert a.meta["abstract"].startswith("ChatGPT 是经过基于人类反馈的强化学习训练的大语言模型")
    assert a.meta["keywords"] == ["ChatGPT", "人类反馈强化学习", "图书馆服务"]
    assert b.kind == "markdown" and b.title == "大语言模型在高校图书馆参考咨询中的应用"
    assert b.authors == ["赵敏", "陈静"] and b.year == 2023 and b.meta["keywords"][1] == "参考咨询"
    assert c.title == "Large Language Models in Academic Libraries: A Survey"
    assert c.authors == ["Jane Doe", "John Smith", "Ann Lee"] and c.year == 2023
    assert c.doi is None  # the DOIs in its reference list are not its own
    assert c.meta["abstract"].startswith("We survey how academic libraries")
    assert d.kind == "pdf" and d.title == "Retrieval-Augmented Generation for Library Question Answering"
    assert d.authors == ["Maria Garcia", "Wei Chen", "Sam Okafor"] and d.year == 2023
    assert d.doi == "10.5555/raglib.2023.4" and d.meta["keywords"][0] == "retrieval-augmented generation"
    assert d.meta["abstract"].startswith("We build a question answering assistant")
    assert e.title.startswith("Reinforcement Learning from Human Feedback") and "#" not in e.title
    assert e.authors == ["Olivia Brown", "Daniel Kim"] and e.meta["affiliations"] == [
        "Department of Computer Science, Stanford University, USA"]


def test_metadata_and_references_from_a_chinese_pdf(tmp_path):
    """A Chinese PDF in a standard CJK font: its text layer gives title, authors, affiliations, year, abstract
    and keywords; lines are joined back without spaces between Chinese characters; the author and affiliation
    lines are not evidence, while the body on page 2 is found and cited with its page."""
    from library_corpus import make_cjk_pdf
    from library_papers import PAPER_F_PAGES
    path = tmp_path / "rag_digital_library.pdf"
    path.write_bytes(make_cjk_pdf(PAPER_F_PAGES))
    library = Library(tmp_path / "lib")
    doc = library.document(library.add_file(path)[0].doc_id)
    assert doc.kind == "pdf" and doc.meta["n_pages"] == 2
    assert doc.title == "基于检索增强生成的数字图书馆问答系统研究"
    assert doc.authors == ["刘洋", "孙丽"] and doc.year == 2024
    assert doc.meta["affiliations"] == ["南京大学信息管理学院，南京 210023", "上海图书馆研究部，上海 200031"]
    assert doc.meta["abstract"] == ("针对大语言模型回答读者问题时虚构文献的问题，本文构建了一个基于检索增强生成的数字图书馆"
                                    "问答系统，先检索馆藏文献再生成带出处的回答。")
    assert doc.meta["keywords"] == ["检索增强生成", "数字图书馆", "智能问答"]
    refs = library.references(doc.id)
    assert [(r["type"], r["title"], r["year"]) for r in refs] == [
        ("journal article", "ChatGPT对文献情报工作的影响", 2023), ("book", "机器学习", 2016)]
    roles = {p.role for p in library.passages() if "刘洋" in p.text or "南京大学" in p.text}
    assert roles == {"front"}
    intro = [p for p in library.passages() if "虚构的文献，这是本文研究的主要问题" in p.text]
    assert intro and {p.role for p in intro} == {"body"}
    ans = Answerer(library).ask("系统在读者问题上的正确率是多少？", strategy="extractive")
    assert not ans.not_found and "82%" in ans.answer
    assert ans.citations[0].page == 2 and ans.citations[0].doc_id == doc.id


def test_reference_entries_captions_and_author_lines_are_never_evidence(lib):
    roles = {}
    for p in lib.passages():
        roles.setdefault(p.role, []).append(p)
    assert len(roles["reference"]) >= 5 + 3 + 4 + 3 + 3 and len(roles["caption"]) == 5 and roles["front"]
    assert all(not p.text.startswith(("Figure", "Table", "图", "表")) for p in roles["body"])
    not_evidence = {p.id for r, ps in roles.items() if r != "body" for p in ps}
    retriever = lib.retriever()
    for q in ("Understanding the capabilities, limitations, and societal impact of large language models",
              "Training language models to follow instructions with human feedback",
              "Accuracy of the retrieval-augmented assistant and of a closed-book model on 200 questions",
              "智慧图书馆的技术路线 机器学习 清华大学出版社", "Jane Doe John Smith Ann Lee University of Toronto"):
        assert not {h.passage.id for h in retriever.search(q, k=20)} & not_evidence
    ans = Answerer(lib).ask("What did Ouyang and colleagues train language models to do with human feedback?",
                            strategy="extractive")
    assert not {c.passage_id for c in ans.citations} & not_evidence
    for doc_id in lib.ids.values():
        from alignchat.library.tasks import extract_units
        units = extract_units(lib, doc_id).units
        assert not {u.passage_id for u in units.values() if u} & not_evidence
    # a model that cites a reference entry by its id has that citation removed, like a fabricated one
    from alignchat.library.verify import Verifier
    ref_passage = roles["reference"][1]
    _, report = Verifier(lib).verify(f"Language models follow instructions [{ref_passage.id}].", {})
    assert report.fabricated == 1 and "not evidence" in report.removed[0]["reason"]


def test_citation_graph_links_papers_in_the_library(lib):
    a, b, c, d, e = (lib.ids[k] for k in "ABCDE")
    assert lib.citation_graph(a) == {"cites": [b], "cited_by": []}  # by normalised title
    assert lib.citation_graph(b) == {"cites": [], "cited_by": [a]}
    assert lib.citation_graph(c) == {"cites": [d], "cited_by": []}  # by DOI
    assert lib.citation_graph(d) == {"cites": [], "cited_by": [c]}
    assert lib.citation_graph(e) == {"cites": [], "cited_by": []}
    linked = [r for r in lib.references(c) if r["cited_doc_id"]]
    assert [r["title"] for r in linked] == ["Retrieval-augmented generation for library question answering"]


def test_citation_links_follow_additions_and_removals(tmp_path, papers):
    library = Library(tmp_path / "lib")
    c = library.add_file(papers["C"])[0].doc_id
    assert library.citation_graph(c)["cites"] == []
    d = library.add_file(papers["D"])[0].doc_id
    assert library.citation_graph(c)["cites"] == [d]
    library.remove(d)
    assert library.citation_graph(c)["cites"] == []
    assert library._db.execute("SELECT COUNT(*) FROM library_references WHERE doc_id=?", (d,)).fetchone()[0] == 0


OLD_SCHEMA = """
CREATE TABLE library_documents (
    id TEXT PRIMARY KEY, user_id TEXT NOT NULL, kind TEXT NOT NULL, title TEXT NOT NULL, authors TEXT NOT NULL,
    year INTEGER, venue TEXT, doi TEXT, citekey TEXT, source TEXT, source_sha256 TEXT, text_sha256 TEXT,
    added TEXT NOT NULL, meta TEXT NOT NULL DEFAULT '{}');
CREATE TABLE library_passages (
    id TEXT PRIMARY KEY, doc_id TEXT NOT NULL REFERENCES library_documents(id) ON DELETE CASCADE,
    user_id TEXT NOT NULL, ordinal INTEGER NOT NULL, page INTEGER, char_start INTEGER NOT NULL,
    char_end INTEGER NOT NULL, text TEXT NOT NULL, emb_row INTEGER NOT NULL);
CREATE TABLE library_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def test_a_library_written_before_passage_roles_is_migrated(tmp_path, papers):
    """Schema 1 (no roles, no references, metadata from the file only): opening it reads the structure back."""
    from alignchat.library.text import chunk_pages
    root = tmp_path / "old"
    root.mkdir()
    text = papers["A"].read_text(encoding="utf-8")
    chunks = chunk_pages([(None, text)])  # how older versions cut it: reference entries inside body passages
    db = sqlite3.connect(root / "library.sqlite")
    db.executescript(OLD_SCHEMA)
    db.execute("INSERT INTO library_documents VALUES ('doc-old', 'local', 'text', '# ChatGPT 调研报告', '[]', NULL, "
               "NULL, NULL, NULL, 'chatgpt_survey.txt', 'x', 'y', '2025-01-01T00:00:00Z', '{}')")
    db.executemany("INSERT INTO library_passages VALUES (?,?,?,?,?,?,?,?,?)",
                   [(f"doc-old:p{i}", "doc-old", "local", i, None, c.char_start, c.char_end, c.text, i)
                    for i, c in enumerate(chunks)])
    db.commit()
    db.close()
    library = Library(root)  # embeds the passages (no vectors file) and migrates
    doc = library.document("doc-old")
    assert doc.title == "ChatGPT 调研报告" and doc.authors == ["张华", "李明", "王芳"] and doc.year == 2023
    assert doc.meta["keywords"][0] == "ChatGPT"
    assert [r["title"] for r in library.references("doc-old")][3] == "大语言模型在高校图书馆参考咨询中的应用"
    roles = {p.id: p.role for p in library.passages()}
    assert "reference" in roles.values() and len(roles) == len(chunks)  # same passages, ids kept
    hits = library.retriever().search("Training language models to follow instructions with human feedback", k=10)
    assert all(roles[h.passage.id] == "body" for h in hits)
    version = library._db.execute("SELECT value FROM library_state WHERE key='schema'").fetchone()[0]
    library.close()
    assert version == "2"
    again = Library(root)  # a migrated library is not migrated twice
    assert again.references("doc-old") and again.document("doc-old").authors == ["张华", "李明", "王芳"]


def test_library_show_displays_the_metadata_and_the_citation_graph(lib, papers, tmp_path):
    from conftest import alignchat_cmd
    base = alignchat_cmd() + ["library", "--library", str(tmp_path / "cli")]
    run = lambda *a: subprocess.run(base + list(a), capture_output=True, text=True, timeout=300)  # noqa: E731
    r = run("add", str(papers["C"]), str(papers["D"]))
    assert r.returncode == 0, r.stderr
    docs = json.loads(run("list", "--json").stdout)
    c = next(d for d in docs if d["title"].startswith("Large Language Models"))
    d = next(d for d in docs if d["title"].startswith("Retrieval-Augmented"))
    r = run("show", c["id"])
    assert r.returncode == 0, r.stderr
    for want in ("Large Language Models in Academic Libraries: A Survey", "Jane Doe, John Smith, Ann Lee", "2023",
                 "Department of Information Science", "Abstract: We survey how academic libraries",
                 "Keywords: large language models; academic libraries", "References (4)",
                 "Defining artificial intelligence for librarians", f"Cites in this library: {d['id']}"):
        assert want in r.stdout, (want, r.stdout)
    shown = json.loads(run("show", d["id"], "--json").stdout)
    assert shown["document"]["authors"] == ["Maria Garcia", "Wei Chen", "Sam Okafor"]
    assert shown["citations"] == {"cites": [], "cited_by": [c["id"]]} and len(shown["references"]) == 3


# ---- Boolean search strings ---------------------------------------------------------------------------

# (question, expected concept groups: each a list of terms that must all be in one group, in order of the question)
BOOLEAN_CASES = [
    ("How does RLHF shape ChatGPT, and what does it mean for library services?",
     [["RLHF", "reinforcement learning from human feedback", "基于人类反馈的强化学习"], ["ChatGPT"],
      ["library services", "图书馆服务"]]),
    ("How do large language models affect reference services in academic libraries?",
     [["large language models", "LLM"], ["reference services", "参考咨询"], ["academic libraries", "university libraries"]]),
    ("What is the role of retrieval-augmented generation in question answering for digital libraries?",
     [["retrieval-augmented generation", "retrieval augmented generation", "RAG"], ["question answering", "智能问答"],
      ["digital libraries", "数字图书馆"]]),
    ("Does information literacy instruction improve students' use of generative AI?",
     [["information literacy", "信息素养"], ["instruction"], ["students", "学生"],
      ["generative AI", "AIGC", "生成式人工智能"]]),
    ("Which factors influence patron satisfaction with library chatbots?",
     [["patron satisfaction", "user satisfaction"], ["library"], ["chatbots", "conversational agent", "聊天机器人"]]),
    ("大语言模型对高校图书馆参考咨询服务的影响",
     [["大语言模型", "large language model"], ["高校图书馆", "academic library"], ["参考咨询", "reference services"]]),
    ("ChatGPT在智慧图书馆中的应用与伦理问题",
     [["ChatGPT"], ["智慧图书馆", "smart library"], ["伦理", "ethics"]]),
    ("基于知识图谱的图书推荐方法研究",
     [["知识图谱", "knowledge graph"], ["图书推荐", "recommender system"]]),
    ("人工智能生成内容对学术诚信有什么影响？",
     [["人工智能生成内容", "AIGC", "generative AI"], ["学术诚信", "academic integrity"]]),
    ("深度学习在文献计量中的应用",
     [["深度学习", "deep learning"], ["文献计量", "bibliometrics"]]),
]


def _in_group(term: str, group: list[str]) -> bool:
    t = term.lower()
    return any(g.lower() in (t, t[:-1], t[:-2]) or (g.endswith("*") and t.startswith(g[:-1].lower()) and " " not in t[len(g) - 1:])
               for g in group)


@pytest.mark.parametrize("question,expected", BOOLEAN_CASES, ids=[q[:40] for q, _ in BOOLEAN_CASES])
def test_boolean_strings_have_the_expected_concept_groups_and_parse(question, expected):
    from alignchat.library.boolean import SYNTAXES, check
    from alignchat.library.tasks import boolean_query
    d = boolean_query(question).to_dict()
    groups = d["concepts"]
    assert len(groups) == len(expected), groups
    for want, got in zip(expected, groups):
        assert all(_in_group(t, got) for t in want), (want, got)
    words = {w.lower().strip("*") for g in groups for t in g for w in t.split()}
    assert not words & {"how", "does", "what", "mean", "shape", "which", "the", "of", "is", "影响", "什么"}
    for syntax in (*SYNTAXES, "cnki_tka"):
        check(d["strings"][syntax], syntax)  # raises on any syntax error
        assert d[syntax] == d["strings"][syntax]
    assert d["cnki"].startswith("SU=(") and d["cnki_tka"].startswith("TKA=(") and d["cnki"].count(")*(") == len(groups) - 1
    assert d["pubmed"].count(" AND ") == len(groups) - 1 and "[tiab]" in d["pubmed"]
    assert d["scopus"].startswith("TITLE-ABS-KEY(") and d["wos"].startswith("TS=(")
    assert json.loads(json.dumps(d["groups"]))[0]["terms"][0]["source"] in ("vocabulary", "question", "truncation")


def test_the_checker_refuses_broken_strings():
    from alignchat.library.boolean import SyntaxCheckError, check, strings_for
    for bad, syntax in (('("rlhf" OR chatgpt', "generic"), ('"rlhf OR chatgpt', "generic"), ("rlhf AND", "pubmed"),
                        ("rlhf chatgpt", "generic"), ("TITLE-ABS-KEY(rlhf))", "scopus"),
                        ("SU=('大语言模型'+)*('图书馆')", "cnki"), ("SU=(大语言模型)", "cnki"),
                        ("XX=('图书馆')", "cnki"), ("SU=('图书馆'", "cnki")):
        with pytest.raises(SyntaxCheckError):
            check(bad, syntax)
    # an edited JSON group list gives new strings, still checked
    edited = strings_for([{"terms": [{"term": "RLHF"}, {"term": "reward model*"}]}, ["图书馆", "library"]])
    assert edited["generic"] == '(RLHF OR "reward model*") AND ("图书馆" OR library)'
    assert edited["cnki"] == "SU=('RLHF'+'reward model')*('图书馆'+'library')"  # CNKI: no truncation marks
    hostile = strings_for([["rlhf", 'x") OR ("y', "a') OR ('b"]])
    assert hostile["generic"] == "rlhf" and hostile["cnki"] == "SU=('rlhf')"
    check(edited["pubmed"], "pubmed")


def test_model_synonyms_are_marked_proposed():
    from alignchat.library.boolean import boolean_search

    class Backend:  # a model that proposes a synonym, and an unsafe string that must not join the query
        name, max_context = "stub", None

        def complete(self, messages, max_tokens=256, temperature=0.0):
            return json.dumps({"coral bleaching": ["coral whitening", 'x") OR ("y']})

    d = boolean_search("What is the effect of ocean warming on coral bleaching?", backend=Backend()).to_dict()
    terms = {t["term"]: t for g in d["groups"] for t in g["terms"]}
    assert terms["coral whitening"]["proposed"] and terms["coral whitening"]["source"] == "model"
    assert not terms["coral bleach*"]["proposed"] and not any('"' in t or ")" in t for t in terms)


# ---- the synthesising review ------------------------------------------------------------------------------

def test_review_groups_synthesises_tabulates_and_names_the_gaps(lib):
    from alignchat.library.tasks import review
    ids = lib.ids
    rv = review(lib)
    d = rv.to_dict()
    by_label = {g["label"]: g for g in d["groups"]}
    rlhf = by_label["reinforcement learning from human feedback"]
    assert rlhf["facet"] == "method" and set(rlhf["doc_ids"]) == {ids["A"], ids["B"], ids["E"]}
    assert set(by_label["retrieval-augmented generation"]["doc_ids"]) == {ids["C"], ids["D"]}
    assert rlhf["paragraph"].startswith("3 documents use reinforcement learning from human feedback [")
    assert "## Synthesis by shared method" in rv.text and "## Comparison table" in rv.text and "## Findings" in rv.text
    # every cited passage is body text of a library document, and every quoted claim is supported
    not_evidence = {p.id for p in lib.passages() if p.role != "body"}
    assert rv.citations and not {c.passage_id for c in rv.citations} & not_evidence
    assert rv.verification.fabricated == 0 and rv.verification.supported_share == 1.0
    for p in lib.passages():
        if p.role == "reference":
            assert p.text[:60] not in rv.text
    # the comparison table, as Markdown and CSV
    md_rows = [ln for ln in d["table_markdown"].splitlines() if ln.startswith("| ") and "---" not in ln]
    assert md_rows[0] == "| Document | Problem | Method | Data | Result |" and len(md_rows) == 6
    rows = list(csv.DictReader(io.StringIO(d["table_csv"])))
    assert [r["doc_id"] for r in rows] == list(ids.values())
    e_row = next(r for r in rows if r["doc_id"] == ids["E"])
    assert e_row["data"] == "" and "71%" in e_row["result"]
    assert "84%" in next(r for r in rows if r["doc_id"] == ids["D"])["result"]
    assert d["gaps"].startswith("Gaps: every facet is covered") and "data: Reinforcement Learning" in d["gaps"]
    one = review(lib, doc_ids=[ids["E"]])
    assert one.gaps == "Gaps: no document covers data."


def test_review_of_a_chinese_topic_is_in_chinese(lib):
    from alignchat.library.tasks import review
    rv = review(lib, topic="大语言模型与图书馆参考咨询服务")
    assert rv.language == "zh" and rv.text.startswith("# 文献综述：")
    assert "## 按研究方法综合" in rv.text and "## 对比表" in rv.text and "## 研究空白" in rv.text
    assert "| 文献 | 研究问题 | 研究方法 | 数据 | 研究结果 |" in rv.table_markdown
    assert rv.gaps.startswith("空白：")
    assert any(g.label == "基于人类反馈的强化学习" for g in rv.groups)


@pytest.mark.skipif(not __import__("alignchat.library.boolean", fromlist=["x"]).wordnet_available(),
                    reason="Debian's wordnet-base is not installed (`make system` installs it)")
def test_wordnet_synonyms_join_groups_the_vocabulary_does_not_know():
    from alignchat.library.boolean import boolean_search
    d = boolean_search("How does automobile use relate to urban sprawl?").to_dict()
    auto = next(g for g in d["groups"] if g["concept"] == "automobile")
    assert {"car", "motorcar"} <= {t["term"] for t in auto["terms"] if t["source"] == "wordnet"}


NEWS = """卫星小网落户乡镇

本报记者李明

近几年，农村地区的文化消费首选是电视。然而许多远离城市的村庄仍然看不好电视。

早在去年春节前，华广公司工程技术人员就在太行山区建成了首批试点站，当地农民第一次看上了清晰的电视节目。

公司总经理说，乡镇卫星小网是尽快解决农村信号覆盖的合理选择。
"""


def test_news_paragraphs_that_name_a_company_are_evidence_not_affiliations(tmp_path):
    """Front matter ends at the first paragraph of running text: a news paragraph that names a 公司 further down
    is body text, found and cited by answers, while the byline above it stays an author line."""
    library = Library(tmp_path / "lib")
    doc = library.add_file("news.txt", data=NEWS.encode(), name="news.txt")[0]
    roles = {p.text.strip(): p.role for p in library.passages() if p.doc_id == doc.doc_id}
    assert not any(r == "front" and "华广公司" in t for t, r in roles.items())
    assert library.document(doc.doc_id).meta.get("affiliations", []) == []
    ans = Answerer(library).ask("华广公司在哪里建成了首批试点站？", strategy="extractive")
    assert not ans.not_found and "太行山区" in ans.answer
    assert ans.citations and all(library.passage(c.passage_id).role == "body" for c in ans.citations)
