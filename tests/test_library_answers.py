"""How the literature assistant decides and quotes, on a small library of reference-manual pages and Chinese
news written here: a question about a name the library never mentions is "not found" even when its passages
share most of the question's words; a passage deep in a section is found through the heading it falls under;
a "how long" question is answered with the sentence that states the length; a signature line is quoted with
the description below it; a question that asks for a number the evidence does not state (or a Chinese "多少X"
whose evidence counts no X), or for the 馆长 of a thing whose passages name none, is "not found", and so is one
that names something ("Android") the library never uses nor says in other words, or asks about "the X module"
from another module's page, or asks for a thing (a noun, "path") that other documents use and the quoted one
never names in any form WordNet knows, or asks for the default of a setting of a function no quoted sentence
states, or about a transliterated name (祖宾·梅塔) the evidence never names; every answer is verified and cites
the library's own passages."""
from __future__ import annotations

import pytest

from alignchat.library import Library
from alignchat.library.answer import Answerer
from alignchat.library.retrieve import NOT_FOUND_THRESHOLD
from alignchat.library.text import key_terms, wordnet_available

# A reference-manual page in the layout of the Python documentation: a signature line, then its description,
# long enough that the passage which answers a question about b64decode never names it.
CODEC_PAGE = """codec — Base16 and Base64 data encodings

This module provides functions for encoding binary data to printable ASCII characters and decoding such encodings back to binary data. It provides the encodings specified in RFC 4648.

codec.b64encode(s, altchars=None)

Encode the bytes-like object s using Base64 and return the encoded bytes. Optional altchars must be a bytes-like object of length 2 which specifies an alternative alphabet for the + and / characters. This allows an application to generate URL or filesystem safe Base64 strings. The default is None, for which the standard Base64 alphabet is used.

codec.b64decode(s, altchars=None, validate=False)

Decode the Base64 encoded bytes-like object or ASCII string s and return the decoded bytes. Optional altchars must be a bytes-like object or ASCII string of length 2 which specifies the alternative alphabet used instead of the + and / characters. If validate is False, characters that are neither in the normal alphabet nor the alternative alphabet are discarded before the padding check. If validate is True, these characters in the input result in an error. For more information about the strict check, see the binascii module.

A binascii.Error exception is raised if s is incorrectly padded. The padding check runs after the characters outside the alphabet are discarded. Decoding is strict about the length of the input, which must be a multiple of four characters after padding.

codec.b16encode(s)

Encode the bytes-like object s using Base16 and return the encoded bytes. Every byte becomes two hexadecimal digits in upper case.
"""

FILES_PAGE = """tmpfiles — temporary files and directories

This module creates temporary files and directories that are removed when they are closed. Files are deleted from the file system when they are closed, including read-only files that the module created itself.

tmpfiles.remove_tree(path)

Delete the directory at path and all the files in it. On Windows, read-only files are first made writable and then deleted, so that the whole tree is removed.
"""

STREET = """南京路步行街见闻

游客沿着南京路步行街慢慢前行，两旁的商店挂满了节日的彩灯。这条步行街全长1033米，是上海最繁华的商业街之一。夜幕降临后，街上的人流更加密集，许多商店营业到深夜。

据了解，南京路步行街于1999年建成开放，每天接待的游客超过一百万人次。步行街管理部门增加了清洁人员和志愿者，为游客提供问路和寄存服务。
"""


MUSEUM = """上海博物馆新馆开放

上海博物馆新馆位于人民广场，建筑面积3.9万平方米。馆长汪庆正介绍，新馆共有十一个专馆，陈列青铜器、陶瓷、书画等文物。开馆第一天，参观者达到一万多人次。
"""


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    return library_of(tmp_path_factory.mktemp("library"), codec=CODEC_PAGE, tmpfiles=FILES_PAGE,
                      nanjing_road=STREET, museum=MUSEUM)


def library_of(path, **documents: str) -> Library:
    """A library at `path` holding each text as the file NAME.txt."""
    library = Library(path)
    for name, text in documents.items():
        library.add_file(f"{name}.txt", data=text.encode(), name=f"{name}.txt")
    return library


def close_but_not_found(ans, reason: str = "") -> bool:
    """The evidence passes the retrieval threshold (the right passage or a close one), yet the answer is "not
    found", with no citation and, when `reason` is given, a note that says it."""
    return (max(h.evidence for h in ans.hits) >= NOT_FOUND_THRESHOLD and ans.not_found and not ans.citations
            and (not reason or any(reason in n for n in ans.notes)))


def test_a_name_from_code_that_the_library_never_mentions_is_not_found(lib):
    answerer = Answerer(lib)
    question = "Does shutil.rmtree delete read-only files on Windows?"
    assert key_terms(question) == [["shutil"], ["rmtre"]]
    ans = answerer.ask(question, strategy="extractive")
    # the passages about deleting read-only files on Windows are close enough to pass the evidence threshold;
    # what they lack is the name the question is about
    assert max(h.evidence for h in ans.hits) >= NOT_FOUND_THRESHOLD
    assert ans.not_found and not ans.citations and "not found in your library" in ans.answer.lower()
    named = answerer.ask("Does tmpfiles.remove_tree delete read-only files on Windows?", strategy="extractive")
    assert not named.not_found and "read-only files are first made writable" in named.answer


def test_a_passage_is_found_through_the_heading_it_falls_under(lib):
    question = "Which exception does b64decode raise for incorrectly padded input?"
    ans = Answerer(lib).ask(question, strategy="extractive")
    assert not ans.not_found and "binascii.Error" in ans.answer
    cited = [c for c in ans.citations if "binascii.Error exception is raised" in c.text]
    assert cited and "b64decode" not in cited[0].text  # the passage never names the function; its heading does
    assert ans.verification.supported_share == 1.0


def test_a_how_long_question_is_answered_with_the_sentence_that_states_the_length(lib):
    ans = Answerer(lib).ask("南京路步行街有多长？", strategy="extractive")
    assert not ans.not_found and "全长1033米" in ans.answer
    assert all(lib.passage(c.passage_id).text == c.text for c in ans.citations)
    assert ans.answer.index("[1]") > 0 and ans.citations[0].title == "南京路步行街见闻"


def test_a_signature_line_is_quoted_with_the_description_below_it(lib):
    # the description never names the function; the answer to "which function" is the signature above it
    ans = Answerer(lib).ask("Which function encodes bytes using Base16?", strategy="extractive")
    assert not ans.not_found and "codec.b16encode(s): Encode the bytes-like object s using Base16" in ans.answer
    assert "codec.b16encode(s)" in ans.citations[0].text  # the quoted heading is in the cited passage
    assert ans.verification.supported_share == 1.0 and ans.verification.fabricated == 0


def test_a_how_many_question_whose_evidence_states_no_number_is_not_found(lib):
    answerer = Answerer(lib)
    ans = answerer.ask("How many read-only files does remove_tree make writable first?", strategy="extractive")
    assert close_but_not_found(ans, "states no number")  # the right passage, but it counts nothing
    # a number written as a word answers it
    four = answerer.ask("The input of b64decode must be a multiple of how many characters after padding?",
                        strategy="extractive")
    assert not four.not_found and "multiple of four characters" in four.answer


def test_a_chinese_how_many_question_is_answered_only_by_a_number_of_what_it_counts(lib):
    answerer = Answerer(lib)
    # the passage counts 人次, 米 and 年; it counts no 资金
    counted = answerer.ask("南京路步行街每天接待多少人次游客？", strategy="extractive")
    assert not counted.not_found and "一百万人次" in counted.answer
    money = answerer.ask("南京路步行街建成开放时投入了多少资金？", strategy="extractive")
    assert close_but_not_found(money, "no number of 资")


def test_a_chinese_question_about_a_role_the_evidence_does_not_name_is_not_found(lib):
    answerer = Answerer(lib)
    ans = answerer.ask("上海博物馆新馆的馆长是谁？", strategy="extractive")
    assert not ans.not_found and "汪庆正" in ans.answer
    # the library knows the word 馆长 (the museum's); the passages about Nanjing Road name no 馆长
    missing = answerer.ask("南京路步行街的馆长是谁？", strategy="extractive")
    assert missing.not_found and any("does not name what the question asks" in n for n in missing.notes)


def test_a_name_the_library_never_uses_is_not_found_unless_the_evidence_says_it_another_way(lib):
    answerer = Answerer(lib)
    # the tmpfiles page is about deleting read-only files, on Windows; it never names Android, nor anything
    # close to it
    ans = answerer.ask("Does tmpfiles.remove_tree delete read-only files on Android?", strategy="extractive")
    assert close_but_not_found(ans, "never names 'Android'")
    # names the library never writes that way, but whose evidence says them in its own words, are answered
    win = answerer.ask("Does tmpfiles.remove_tree delete read-only files on Win32?", strategy="extractive")
    assert not win.not_found and "read-only files are first made writable" in win.answer
    b64 = answerer.ask("How does codec make URL-safe Base-64 strings?", strategy="extractive")
    assert not b64.not_found and "URL or filesystem safe Base64 strings" in b64.answer


def test_a_question_about_a_module_is_answered_from_its_own_documentation(lib):
    answerer = Answerer(lib)
    # the codec page says which binascii exception b64decode raises; it does not document the binascii module
    ans = answerer.ask("Which exception does the binascii module raise for incorrectly padded input?",
                       strategy="extractive")
    assert ans.not_found and any("not from the documentation of binascii" in n for n in ans.notes)
    own = answerer.ask("Which exception does b64decode of the codec module raise for incorrectly padded input?",
                       strategy="extractive")
    assert not own.not_found and "binascii.Error" in own.answer and own.citations[0].title.startswith("codec")


def test_a_default_question_is_answered_only_by_a_sentence_that_names_that_setting_of_that_function(lib):
    answerer = Answerer(lib)
    own = answerer.ask("What is the default altchars of codec.b64encode?", strategy="extractive")
    assert not own.not_found and "The default is None" in own.answer
    # b64decode's signature states validate=False; b64encode has no validate, and nothing has a wrapcol
    decode = answerer.ask("What is the default validate of codec.b64decode?", strategy="extractive")
    assert not decode.not_found and "validate=False" in decode.answer
    for question, setting in (("What is the default validate of codec.b64encode?", "validate of b64encode"),
                              ("What is the default wrapcol of codec.b64encode?", "wrapcol of b64encode")):
        ans = answerer.ask(question, strategy="extractive")
        assert close_but_not_found(ans, f"states the default {setting}"), question


CONCERT = """维也纳新年音乐会举行

１月１日，第五十九届维也纳新年音乐会在奥地利首都维也纳举行。意大利指挥家里卡尔多·穆蒂指挥维也纳爱乐乐团演奏了施特劳斯家族的圆舞曲和波尔卡。音乐会通过卫星向四十多个国家和地区转播。
"""


def test_a_chinese_question_about_a_foreign_name_the_evidence_never_names_is_not_found(tmp_path):
    answerer = Answerer(library_of(tmp_path / "library", nanjing_road=STREET, museum=MUSEUM, concert=CONCERT))
    named = answerer.ask("指挥第五十九届维也纳新年音乐会的里卡尔多·穆蒂是哪国人？", strategy="extractive")
    assert not named.not_found and "意大利指挥家里卡尔多·穆蒂" in named.answer
    # the same concert, another conductor: the passage is close, but it is about someone else
    other = answerer.ask("指挥第五十九届维也纳新年音乐会的祖宾·梅塔是哪国人？", strategy="extractive")
    assert close_but_not_found(other, "does not name 祖宾·梅塔")
    # a "几X" question with any measure word is a "how many" question: the passage counts no 首 of anything
    waltzes = answerer.ask("维也纳新年音乐会演奏了几首圆舞曲？", strategy="extractive")
    assert close_but_not_found(waltzes, "no number of 首")
    halls = answerer.ask("上海博物馆新馆共有几个专馆？", strategy="extractive")
    assert not halls.not_found and "十一个专馆" in halls.answer


WALK_PAGE = """dirwalk — walking directory trees

This module lists the contents of a directory tree, top down.

dirwalk.walk(top)

Yield the name of every subdirectory below top, and the names of the files in each subdirectory. Symbolic links to a subdirectory are not followed. The walk is a read-only operation: it never changes the tree.
"""


@pytest.mark.skipif(not wordnet_available(), reason="Debian's wordnet-base is not installed (`make system` installs it)")
def test_a_question_about_a_thing_its_document_never_names_is_not_found(tmp_path):
    answerer = Answerer(library_of(tmp_path / "library", codec=CODEC_PAGE, tmpfiles=FILES_PAGE, dirwalk=WALK_PAGE))
    # the codec page documents its functions, not paths: the other pages speak of paths, the codec page never
    # does, nor of anything close to one
    ans = answerer.ask("Which function of codec encodes a path as Base64?", strategy="extractive")
    assert max(h.evidence for h in ans.hits) >= NOT_FOUND_THRESHOLD
    assert ans.not_found and not ans.citations
    assert any("never names 'path'" in n and "other documents" in n for n in ans.notes)
    # the tmpfiles page never says "subdirectory" (the dirwalk page does), but it says "directory", which WordNet
    # gives as the more general word: the paraphrase is answered
    sub = answerer.ask("Does tmpfiles.remove_tree delete the read-only files of a subdirectory on Windows?",
                       strategy="extractive")
    assert not sub.not_found and "read-only files are first made writable" in sub.answer
    # the noun after "which" says what kind of thing the answer is (the dirwalk page speaks of an operation, the
    # tmpfiles page names one): its document need not use that word
    kind = answerer.ask("Which tmpfiles operation deletes a directory and all the files in it?",
                        strategy="extractive")
    assert not kind.not_found and "tmpfiles.remove_tree(path)" in kind.answer
