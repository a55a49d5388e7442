"""How the literature assistant decides and quotes, on a small library of reference-manual pages and Chinese
news written here: a question about a name the library never mentions is "not found" even when its passages
share most of the question's words; a passage deep in a section is found through the heading it falls under;
a "how long" question is answered with the sentence that states the length; every answer is verified and
cites the library's own passages."""
from __future__ import annotations

import pytest

from alignchat.library import Library
from alignchat.library.answer import Answerer
from alignchat.library.retrieve import NOT_FOUND_THRESHOLD
from alignchat.library.text import key_terms

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


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    library = Library(tmp_path_factory.mktemp("library"))
    for name, text in (("codec.txt", CODEC_PAGE), ("tmpfiles.txt", FILES_PAGE), ("nanjing_road.txt", STREET)):
        library.add_file(name, data=text.encode(), name=name)
    return library


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
