"""A small bilingual test library that the tests build themselves: real-text PDFs written with a minimal
PDF writer (Helvetica text objects, so pypdf extracts real text), a scan-like PDF with no text layer,
English and Chinese text and Markdown, a BibTeX file and a Chinese RIS record; plus 34 paraphrased
questions, each labelled with the document and a phrase the right passage contains. `make_cjk_pdf` writes
Chinese PDFs the same way, in a standard CJK font."""
from __future__ import annotations

import io
import textwrap
from pathlib import Path


def make_pdf(pages: list[str], title: str | None = None, draw_only: bool = False) -> bytes:
    """A valid PDF with one text page per string (paragraphs split on blank lines), Helvetica 11pt."""
    objects: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>"]
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(len(pages)))
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    for i, page in enumerate(pages):
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
                       f"/Contents {5 + 2 * i} 0 R >>".encode())
        if draw_only:  # a "scan": only graphics, no text layer
            ops = ["0.5 g", "50 400 500 300 re f", "0 g", "60 420 200 20 re f"]
        else:
            ops = ["BT", "/F1 11 Tf", "14 TL", "50 750 Td"]
            for para in page.split("\n\n"):
                for line in textwrap.wrap(para, 95) or [""]:
                    esc = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
                    ops.append(f"({esc}) Tj T*")
                ops.append("T*")
            ops.append("ET")
        stream = "\n".join(ops).encode("latin-1")
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    info = None
    if title:
        objects.append(f"<< /Title ({title}) >>".encode("latin-1"))
        info = len(objects)
    return pdf_file(objects, info)


def make_cjk_pdf(pages: list[str], info: dict[str, str] | None = None, per_line: int = 38) -> bytes:
    """A valid Chinese PDF with one text page per string (paragraphs split on blank lines), in Adobe's
    STSong-Light, one of the standard CJK fonts every PDF reader has (PDF 1.7 §9.7.5.2), as a Type0 font with
    the predefined UniGB-UCS2-H CMap: each character is written as its UTF-16 code, so the text layer is real
    Chinese text that readers and pypdf extract. `info` becomes the document information dictionary."""
    objects: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>"]
    kids = " ".join(f"{6 + 2 * i} 0 R" for i in range(len(pages)))
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type0 /BaseFont /STSong-Light /Encoding /UniGB-UCS2-H "
                   b"/DescendantFonts [4 0 R] >>")
    objects.append(b"<< /Type /Font /Subtype /CIDFontType0 /BaseFont /STSong-Light "
                   b"/CIDSystemInfo << /Registry (Adobe) /Ordering (GB1) /Supplement 4 >> /FontDescriptor 5 0 R "
                   b"/DW 1000 >>")
    objects.append(b"<< /Type /FontDescriptor /FontName /STSong-Light /Flags 6 /FontBBox [-25 -254 1000 880] "
                   b"/ItalicAngle 0 /Ascent 880 /Descent -120 /CapHeight 880 /StemV 93 >>")
    for i, page in enumerate(pages):
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /Font << /F1 3 0 R "
                       f">> >> /Contents {7 + 2 * i} 0 R >>".encode())
        ops = ["BT", "/F1 12 Tf", "17 TL", "50 790 Td"]
        for para in page.split("\n\n"):
            for k in range(0, max(len(para), 1), per_line):
                ops.append(f"<{para[k:k + per_line].encode('utf-16-be').hex().upper()}> Tj T*")
            ops.append("T*")
        ops.append("ET")
        stream = "\n".join(ops).encode("ascii")
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    info_n = None
    if info:  # text strings in UTF-16BE with a byte-order mark (PDF 1.7 §7.9.2.2)
        fields = " ".join(f"/{k} <FEFF{v.encode('utf-16-be').hex().upper()}>" for k, v in info.items())
        objects.append(f"<< {fields} >>".encode("ascii"))
        info_n = len(objects)
    return pdf_file(objects, info_n)


def pdf_file(objects: list[bytes], info: int | None = None) -> bytes:
    """A PDF file of the numbered `objects` (object 1 is the catalog; `info` the number of an Info dict), with
    its cross-reference table and trailer."""
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(f"{i} 0 obj\n".encode() + body + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for o in offsets:
        out.write(f"{o:010d} 00000 n \n".encode())
    trailer = f"/Size {len(objects) + 1} /Root 1 0 R" + (f" /Info {info} 0 R" if info else "")
    out.write(f"trailer\n<< {trailer} >>\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


PHOTOSYNTHESIS = [
    """Photosynthesis in Green Plants

Photosynthesis is the process by which green plants, algae and some bacteria turn light energy into chemical energy stored in sugars. It takes place mainly in the chloroplasts of leaf cells. The pigment chlorophyll absorbs red and blue light and reflects green light, which is why leaves look green.

The overall reaction combines six molecules of carbon dioxide and six molecules of water into one molecule of glucose, releasing six molecules of oxygen as a by-product.

The light-dependent reactions happen in the thylakoid membranes. There, water molecules are split, oxygen is released, and the energy carriers ATP and NADPH are produced.""",
    """The Calvin cycle, also called the light-independent reactions, runs in the stroma of the chloroplast. The enzyme RuBisCO fixes carbon dioxide onto a five-carbon sugar, and ATP and NADPH from the light reactions are spent to build three-carbon sugars that the plant later turns into glucose and starch.

C4 and CAM plants such as maize and cacti have evolved ways to concentrate carbon dioxide, which reduces photorespiration in hot and dry climates. CAM plants open their stomata only at night to save water.""",
]

TRANSFORMER = [
    """Attention-Based Sequence Transduction

The Transformer is a neural network architecture for sequence transduction that relies entirely on attention and dispenses with recurrence and convolutions. It was introduced in 2017 for machine translation. Self-attention lets every position of a sequence look at every other position in a single step, so the model can be trained in parallel on GPUs far faster than recurrent networks.

Scaled dot-product attention computes the dot products of a query with all keys, divides each by the square root of the key dimension, and applies a softmax to obtain the weights on the values. Multi-head attention runs several attention functions in parallel on different learned projections.""",
    """Because the model has no recurrence, positional encodings built from sine and cosine functions of different frequencies are added to the input embeddings to give the model information about word order.

On the WMT 2014 English-to-German translation task, the big Transformer model reached a BLEU score of 28.4, improving over the best previous results by more than 2 BLEU.""",
]

RLHF = ["""Learning from Human Preferences

Reinforcement learning from human feedback fine-tunes a language model with preferences collected from people. First, labellers write demonstrations that are used for supervised fine-tuning.

Next, labellers rank several model outputs for the same prompt from best to worst, and these comparisons train a reward model that predicts which answer a human would prefer.

Finally, the policy is optimised against the reward model with proximal policy optimization, while a penalty on the Kullback-Leibler divergence from the supervised model keeps the policy from drifting too far. In the InstructGPT study, outputs from a 1.3 billion parameter model tuned this way were preferred by labellers over outputs from the 175 billion parameter GPT-3."""]

PRINTING = """The Printing Press in Europe

Johannes Gutenberg developed a printing press with movable metal type in Mainz around 1440. His system combined a hand mould for casting uniform letters, an oil-based ink that stuck to metal, and a screw press adapted from wine and olive presses. The Gutenberg Bible, completed around 1455, is the first major book printed in Europe with movable type, and about 49 copies survive today.

Printing spread quickly: by 1500, presses in more than 250 European cities had produced millions of copies of books. Cheaper books raised literacy, helped standardise vernacular languages and allowed the ideas of the Protestant Reformation to circulate widely.

Earlier, in China, Bi Sheng had invented movable type made of baked clay during the Song dynasty, around 1040, and Korean printers cast metal type in the fourteenth century.
"""

CORAL = """---
title: Coral Reef Bleaching Under Ocean Warming
authors: [Maria Lopez, Kenji Sato]
year: 2019
venue: Marine Ecology Notes
doi: 10.5555/coral.2019.7
---
# Coral Reef Bleaching Under Ocean Warming

Reef-building corals live in symbiosis with microscopic algae called zooxanthellae, which supply most of the coral's energy through photosynthesis and give corals their colour. When sea water stays about one degree Celsius above the usual summer maximum for several weeks, the partnership breaks down and corals expel the algae, turning white. This is known as coral bleaching.

Bleached corals are not dead, but they starve and become vulnerable to disease; if temperatures fall quickly, the algae can return and the coral can recover. Mass bleaching events hit the Great Barrier Reef in 1998, 2002, 2016 and 2017.

Ocean acidification, caused by the sea absorbing carbon dioxide, makes it harder for corals to build their calcium carbonate skeletons.
"""

PANDA = """大熊猫

大熊猫是中国特有的熊科动物，主要生活在四川、陕西和甘肃的山区竹林中。大熊猫的食物中99%是竹子，成年大熊猫每天要花十多个小时进食，吃掉12到38公斤竹子。

虽然属于食肉目，大熊猫的消化系统仍然保留了食肉动物的特点，对竹子的消化率很低，所以它们行动缓慢，以节省能量。

大熊猫的繁殖率很低，雌性每年只有两到三天可以受孕，幼崽出生时体重只有100克左右。根据第四次全国大熊猫调查，野生大熊猫数量为1864只。2016年，世界自然保护联盟把大熊猫的受威胁等级从濒危降为易危。
"""

LIBRARY_ZH = """# 高校图书馆的数字化服务

高校图书馆正在从以纸本馆藏为中心转向以数字资源和知识服务为中心。读者可以通过统一检索平台同时检索馆藏目录、电子期刊和学位论文。

学科馆员为科研团队提供嵌入式服务，帮助研究人员进行文献调研、科技查新和科研数据管理。

许多图书馆开始尝试把大语言模型用于参考咨询，但必须对生成的参考文献进行核查，因为模型可能编造并不存在的文献。
"""

BIBTEX = r"""@article{robertson2009,
  title = {The Probabilistic Relevance Framework: {BM25} and Beyond},
  author = {Robertson, Stephen and Zaragoza, Hugo},
  year = {2009},
  journal = {Foundations and Trends in Information Retrieval},
  doi = {10.1561/1500000019},
  abstract = {The probabilistic relevance framework underlies the BM25 ranking function, which scores documents by term frequency saturation and inverse document frequency, with a normalisation for document length.}
}

@inproceedings{karpukhin2020,
  title = {Dense Passage Retrieval for Open-Domain Question Answering},
  author = {Karpukhin, Vladimir and Oguz, Barlas and Min, Sewon},
  year = {2020},
  booktitle = {Proceedings of EMNLP},
  doi = {10.18653/v1/2020.emnlp-main.550},
  abstract = {Dense passage retrieval encodes questions and passages into vectors with two BERT encoders and finds answers by nearest-neighbour search. It outperforms a strong Lucene BM25 system by 9 to 19 percentage points in top-20 passage retrieval accuracy.}
}

@inproceedings{cormack2009,
  title = {Reciprocal Rank Fusion Outperforms Condorcet and Individual Rank Learning Methods},
  author = {Cormack, Gordon V. and Clarke, Charles L. A. and Buettcher, Stefan},
  year = {2009},
  booktitle = {Proceedings of SIGIR},
  abstract = {Reciprocal rank fusion combines several rankings by summing the reciprocal of each document's rank plus a constant of 60, and it beats more complex fusion methods.}
}
"""

RIS = """TY  - JOUR
AU  - 王丽
AU  - 李强
TI  - 生成式人工智能对科研人员信息行为的影响
PY  - 2023
JO  - 图书情报工作
AB  - 本文调查了300名科研人员使用生成式人工智能工具的情况。结果表明，超过六成的受访者用它来润色论文语言，但只有少数人信任它提供的参考文献。
ER  - 
"""


def write_corpus(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    files = {
        "photosynthesis": ("photosynthesis.pdf", make_pdf(PHOTOSYNTHESIS)),
        "transformer": ("attention.pdf", make_pdf(TRANSFORMER, title="Attention-Based Sequence Transduction")),
        "rlhf": ("rlhf.pdf", make_pdf(RLHF)),
        "printing": ("printing_press.txt", PRINTING.encode()),
        "coral": ("coral_reefs.md", CORAL.encode()),
        "panda": ("大熊猫.txt", PANDA.encode()),
        "library_zh": ("数字图书馆.md", LIBRARY_ZH.encode()),
        "bib": ("refs.bib", BIBTEX.encode()),
        "ris": ("genai.ris", RIS.encode()),
    }
    out = {}
    for key, (name, data) in files.items():
        (root / name).write_bytes(data)
        out[key] = root / name
    return out


# (question, source key, phrase the right passage contains); the phrasing avoids copying the passage
QUESTIONS = [
    ("Where inside leaf cells do plants turn sunlight into sugar?", "photosynthesis", "chloroplasts"),
    ("Why do the leaves of plants appear green to us?", "photosynthesis", "reflects green light"),
    ("Which gas is given off as a by-product when plants produce glucose?", "photosynthesis", "six molecules of oxygen"),
    ("In which membranes is water split and ATP made during photosynthesis?", "photosynthesis", "thylakoid"),
    ("Which enzyme attaches CO2 to a sugar in the carbon-fixing cycle?", "photosynthesis", "RuBisCO"),
    ("How do desert cacti avoid losing water while taking in carbon dioxide?", "photosynthesis", "at night"),
    ("Which network design gives up recurrent and convolutional layers and uses only attention?", "transformer",
     "dispenses with recurrence"),
    ("How are the attention weights computed from queries and keys?", "transformer", "square root"),
    ("How does a model without recurrence learn the order of the words?", "transformer", "positional encodings"),
    ("What translation score did the large model reach on English to German?", "transformer", "28.4"),
    ("Why is training faster than with recurrent neural networks?", "transformer", "in parallel"),
    ("How is the reward model trained from people's judgements?", "rlhf", "rank several model outputs"),
    ("What stops the optimised policy from drifting away from the supervised model?", "rlhf", "Kullback-Leibler"),
    ("Did a much smaller tuned model beat GPT-3 in human preference tests?", "rlhf", "1.3 billion"),
    ("Which reinforcement learning algorithm optimises the policy against the learned reward?", "rlhf",
     "proximal policy optimization"),
    ("Who built a press with movable metal letters in Mainz?", "printing", "Johannes Gutenberg developed"),
    ("How many copies of the first major European printed bible still exist?", "printing", "49 copies"),
    ("What did cheaper books do for reading ability and for languages?", "printing", "raised literacy"),
    ("Who made movable type from baked clay before Europeans printed?", "printing", "Bi Sheng"),
    ("Why do corals lose their colour when the ocean gets too warm?", "coral", "expel the algae"),
    ("Is it possible for bleached coral to come back to health?", "coral", "can recover"),
    ("In which years did mass bleaching strike the Great Barrier Reef?", "coral", "1998"),
    ("How does the ocean taking up CO2 damage coral skeletons?", "coral", "acidification"),
    ("Which tiny algae live inside reef-building corals?", "coral", "zooxanthellae"),
    ("大熊猫的食物主要是什么？", "panda", "竹子"),
    ("野外现在大约有多少只大熊猫？", "panda", "1864"),
    ("大熊猫为什么动作慢吞吞的？", "panda", "行动缓慢"),
    ("大熊猫的保护等级后来变成了什么？", "panda", "易危"),
    ("学科馆员可以为科研团队做哪些工作？", "library_zh", "嵌入式服务"),
    ("图书馆用大语言模型回答咨询时有什么风险？", "library_zh", "编造"),
    ("Which ranking function saturates term frequency and normalises for document length?", "bib",
     "term frequency saturation"),
    ("By how much does dense retrieval beat BM25 in top-20 accuracy?", "bib", "9 to 19"),
    ("What constant is added to the rank when fusing rankings reciprocally?", "bib", "constant of 60"),
    ("科研人员主要用生成式人工智能工具来做什么？", "ris", "润色"),
]

NO_EVIDENCE_QUESTIONS = [
    "What is the boiling point of liquid nitrogen at sea level?",
    "Who won the football World Cup in 1966?",
    "量子计算机是如何进行因式分解的？",
]
