"""Every cleaning filter, with real examples (English and Chinese) of what it must remove and keep."""
import json
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alignchat.data.clean import (CleanConfig, Cleaner, clean_files, cn_id_checksum_ok, dup_line_char_fraction,
                                  dup_ngram_fraction, scrub_pii, symbol_ratio)

REPO = Path(__file__).resolve().parents[1]

# Real prose and verse that every filter must keep
KEEP_EN = ("The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary election "
           "produced \"no evidence\" that any irregularities took place. The jury further said in term-end "
           "presentments that the City Executive Committee deserves the praise and thanks of the city.")
KEEP_ZH = ("１２月３１日，中共中央总书记、国家主席江泽民发表１９９８年新年讲话《迈向充满希望的新世纪》。"
           "新华社记者兰红光摄。同胞们、朋友们、女士们、先生们：在一九九八年来临之际，我十分高兴地通过"
           "中国国际广播电台、中央人民广播电台和中央电视台，向全国各族人民，向香港特别行政区同胞、澳门和台湾同胞、"
           "海外侨胞，向世界各国的朋友们，致以新年的祝贺！")
KEEP_POEM = ("静夜思\n李白\n床前看月光，疑是地上霜。\n举头望山月，低头思故乡。\n\n"
             "春晓\n孟浩然\n春眠不觉晓，处处闻啼鸟。\n夜来风雨声，花落知多少。")
KEEP_PLAY = ("Ham.\nTo be, or not to be,--that is the question:--\nWhether 'tis nobler in the mind to suffer\n"
             "The slings and arrows of outrageous fortune\n\nOph.\nGood my lord,\nHow does your honour for this many "
             "a day?\n\nHam.\nI humbly thank you; well, well, well.")


def _id(body17: str) -> str:
    w = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
    return body17 + "10X98765432"[sum(int(c) * x for c, x in zip(body17, w)) % 11]


VALID_ID = _id("11010519491231002")  # the GB 11643 standard's own example, 11010519491231002X


def test_cn_id_checksum():
    assert VALID_ID == "11010519491231002X" and cn_id_checksum_ok(VALID_ID)
    assert not cn_id_checksum_ok("110105194912310021")


@pytest.mark.parametrize("text,kind", [
    ("Contact me at jane.doe+news@example.co.uk for details.", "email"),
    ("有问题请发邮件至 zhang_san@mail.tsinghua.edu.cn 联系。", "email"),
    ("我的手机号是13812345678，欢迎来电。", "phone"),
    ("联系电话：+86 138-1234-5678", "phone"),
    ("办公室电话 010-62751234 转 8", "phone"),
    ("Call our office at (212) 555-0123 or 212.555.0199.", "phone"),
    ("Reach the London desk on +44 20 7946 0958.", "phone"),
    (f"身份证号：{VALID_ID}，请妥善保管。", "id_number"),
    (f"ID {_id('44030419900307123')} was submitted.", "id_number"),
    ("His SSN is 123-45-6789.", "id_number"),
])
def test_pii_removed(text, kind):
    cleaned, counts = scrub_pii(text)
    assert counts[kind] >= 1, (text, cleaned)
    placeholder = {"email": "<EMAIL>", "phone": "<PHONE>", "id_number": "<ID>"}[kind]
    assert placeholder in cleaned
    assert cleaned[:3] == text[:3]  # the surrounding text stays
    assert not re.search(r"\d{4}", cleaned.replace("010-", "")) or kind == "email"


@pytest.mark.parametrize("text", [
    "In 1998 the population was 1,262,645,000 and GDP grew 7.8%.",
    "订单号 20230115123456 已发货，预计 2023-01-20 送达。",
    "ISBN 978-7-02-008553-0; version 3.10.12; see pages 120-135.",
    "一九九八年一月一日，北京气温零下5度。",
    "The meeting is at 10:30 on 2023-05-04 in room 1203.",
    "身份证号码共18位，最后一位是校验码。",
    "Account 110105194912310021 (fails the ID check digit) is an order number.",
    "Email me @ the office; prices are 5-10 dollars.",
    KEEP_EN, KEEP_ZH,
])
def test_pii_keeps_ordinary_numbers(text):
    cleaned, counts = scrub_pii(text)
    assert cleaned == text and not counts


def test_length_filter():
    c = Cleaner(CleanConfig(min_chars=50, dedup_near=False))
    assert c.check("Click here.")[0] is None
    assert c.check("好的。")[0] is None
    assert c.check(KEEP_EN)[0] == KEEP_EN and c.check(KEEP_POEM)[0] == KEEP_POEM
    long = Cleaner(CleanConfig(max_chars=100, dedup_near=False))
    assert long.check(KEEP_ZH)[1] == "length"
    assert c.report.removed["length"] == 2


def test_symbol_filter():
    spam = "★★★ $$$ >>> ¥¥¥ <<< ### ||| 限时 ★★★ $$$ @@@ ### ~~~ ^^^ {{{ }}} SALE ★★★ ==== ++++ ***"
    markup = "<div><span>{{x}}</span><img src=#/></div><div>|||</div><a href=#>@@@</a> {{{ }}} ### ** ~~ ^^ __"
    assert symbol_ratio(spam) > 0.25 and symbol_ratio(markup) > 0.25
    assert symbol_ratio(KEEP_EN) < 0.05 and symbol_ratio(KEEP_ZH) < 0.05 and symbol_ratio(KEEP_POEM) < 0.05
    c = Cleaner(CleanConfig(min_chars=10, dedup_near=False))
    assert c.check(spam)[1] == "symbols" and c.check(markup)[1] == "symbols"
    assert c.check(KEEP_ZH)[1] == "kept" and c.check(KEEP_PLAY)[1] == "kept"


def test_repetition_filter():
    loop_en = "Buy cheap watches now! Best price guaranteed. " * 12
    loop_zh = "点击这里领取优惠券，全场五折包邮！" * 12
    lines = "\n".join(["欢迎光临本店"] * 8 + ["联系客服", "订阅我们"] + ["Free shipping on all orders today"] * 6)
    assert dup_ngram_fraction(loop_en) > 0.8 and dup_ngram_fraction(loop_zh) > 0.8
    assert dup_line_char_fraction(lines) > 0.5
    for keep in (KEEP_EN, KEEP_ZH, KEEP_POEM, KEEP_PLAY):
        assert dup_ngram_fraction(keep) < 0.2 and dup_line_char_fraction(keep) < 0.3
    c = Cleaner(CleanConfig(min_chars=10, dedup_near=False))
    assert [c.check(t)[1] for t in (loop_en, loop_zh, lines)] == ["repetition"] * 3
    assert [c.check(t)[1] for t in (KEEP_EN, KEEP_ZH, KEEP_POEM, KEEP_PLAY)] == ["kept"] * 4


def test_exact_duplicates_ignore_case_and_spacing():
    c = Cleaner(CleanConfig(dedup_near=False))
    assert c.check(KEEP_EN)[1] == "kept"
    assert c.check("  " + KEEP_EN.upper().replace(" ", "   ") + "\n")[1] == "exact_duplicate"
    assert c.check(KEEP_ZH)[1] == "kept"
    assert c.check(KEEP_ZH.replace("，", "，"))[1] == "exact_duplicate"  # NFKC folds the full-width comma
    assert c.check(KEEP_POEM)[1] == "kept"
    assert c.report.removed["exact_duplicate"] == 2 and c.report.kept_documents == 3


def test_near_duplicates():
    c = Cleaner()
    assert c.check(KEEP_EN)[1] == "kept"
    # the same story with one word changed and a trailing sentence: a near duplicate
    variant = KEEP_EN.replace("Friday", "Thursday") + " Reported by AP."
    assert c.check(variant)[1] == "near_duplicate"
    assert c.check(KEEP_ZH)[1] == "kept"
    zh_variant = KEEP_ZH.replace("１２月３１日", "１２月３０日").replace("新华社记者兰红光摄。", "")
    assert c.check(zh_variant)[1] == "near_duplicate"
    # different texts on the same topic stay
    other = ("A grand jury in Fulton County met on Monday to hear evidence about the state highway department "
             "and the purchasing of equipment, according to the clerk of the superior court.")
    assert c.check(other)[1] == "kept"
    assert c.check(KEEP_POEM)[1] == "kept"
    assert c.report.removed["near_duplicate"] == 2


def test_clean_files_report_and_bad_records(tmp_path):
    src = tmp_path / "in.jsonl"
    rows = [{"id": "a", "text": KEEP_EN, "lang": "en"}, {"id": "b", "text": KEEP_EN},
            {"id": "c", "text": KEEP_ZH + " 联系人手机 13912345678。", "lang": "zh"},
            {"id": "d", "text": "短"}]
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    lines.insert(2, "{not json")
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "more.txt").write_text(KEEP_POEM + "\n", encoding="utf-8")
    out = tmp_path / "out" / "clean.jsonl"
    r = subprocess.run([sys.executable, "-m", "alignchat.cli", "data", "clean", str(src), str(tmp_path / "more.txt"),
                        "--out", str(out), "--no-progress", "--min-chars", "20"],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "in.jsonl:3" in r.stderr
    kept = [json.loads(line) for line in out.open(encoding="utf-8")]
    assert [k["id"] for k in kept] == ["a", "c", "more.txt:1", "more.txt:6"]  # one document per paragraph
    assert kept[0]["lang"] == "en" and "<PHONE>" in kept[1]["text"] and "13912345678" not in kept[1]["text"]
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert report["input_documents"] == 6 and report["kept_documents"] == 4
    assert report["removed"]["exact_duplicate"] == 1 and report["removed"]["length"] == 1
    assert report["pii_replaced"]["phone"] == 1 and report["bad_record_count"] == 1
    assert report["bad_records"][0].endswith("in.jsonl:3: invalid JSON (Expecting property name enclosed in "
                                             "double quotes: line 1 column 2 (char 1))")
