"""Five survey-style papers for the document-structure, citation-graph and review tests: two Chinese (text with
GB/T 7714 references, Markdown), three English (text with APA references, a PDF with numbered IEEE-style
references, Markdown). Each opens with its title, authors, affiliations, abstract and keywords the way journal
papers do, has a figure or table caption, and ends with a reference list whose entries are real publications.
Paper A cites paper B by title and paper C cites paper D by DOI, so the library has a citation graph.
`PAPER_F_PAGES` is a sixth, Chinese paper for a Chinese PDF (`library_corpus.make_cjk_pdf`), kept out of the
five so the tests of the five see the library they expect."""
from __future__ import annotations

from pathlib import Path

from library_corpus import make_pdf

PAPER_A = """# ChatGPT 调研报告

张华¹，李明²，王芳¹
1. 北京大学信息管理系，北京 100871
2. 中国科学院文献情报中心，北京 100190

摘要：ChatGPT 是经过基于人类反馈的强化学习训练的大语言模型。本文梳理其技术路线，并讨论它对图书馆参考咨询服务的影响。
关键词：ChatGPT；人类反馈强化学习；图书馆服务

收稿日期：2023-03-15

## 1 研究问题

大语言模型生成的答案常常包含虚构的事实和文献，图书馆员难以判断其可靠性，这是本文关注的主要问题。

## 2 研究方法

本文采用文献调研方法，梳理了基于人类反馈的强化学习在 ChatGPT 训练中的作用，即先进行监督微调，再用人类偏好训练奖励模型并优化策略。

图 1 ChatGPT 的三阶段训练流程

## 3 数据来源

本文的数据来自中国知网收录的 86 篇相关论文和 12 份技术报告。

## 4 研究结果

研究发现，基于人类反馈的强化学习显著提高了回答与用户意图的一致性，但没有消除虚构文献的问题。

## 参考文献

[1] Ouyang L, Wu J, Jiang X, et al. Training language models to follow instructions with human feedback[C]//Advances in Neural Information Processing Systems 35. 2022: 27730-27744.
[2] Tamkin A, Brundage M, Clark J, et al. Understanding the capabilities, limitations, and societal impact of large language models[J]. arXiv preprint arXiv:2102.02503, 2021.
[3] 张智雄, 于改红, 刘熠, 等. ChatGPT对文献情报工作的影响[J]. 数据分析与知识发现, 2023, 7(3): 36-42.
[4] 赵敏, 陈静. 大语言模型在高校图书馆参考咨询中的应用[J]. 图书情报工作, 2023, 67(8): 15-22.
[5] 周志华. 机器学习[M]. 北京: 清华大学出版社, 2016.
"""

PAPER_B = """# 大语言模型在高校图书馆参考咨询中的应用

赵敏，陈静
武汉大学信息管理学院，武汉 430072

摘要：本文研究大语言模型在高校图书馆参考咨询服务中的应用。
关键词：大语言模型；参考咨询；高校图书馆
收稿日期：2023-05-10

## 引言

高校图书馆的参考咨询人手不足，读者的问题在夜间和周末得不到及时回答，这是本研究要解决的问题。

## 方法

本研究采用基于人类反馈的强化学习微调的对话模型，并结合馆藏目录检索，为读者生成带出处的回答。

表 1 参考咨询问题的类型分布

## 数据

研究数据为某高校图书馆 2022 年的 1200 条真实咨询记录。

## 结果

结果表明，模型能正确回答 78% 的常见咨询问题，读者满意度提高了 15%。

## 参考文献

[1] Christiano P F, Leike J, Brown T, et al. Deep reinforcement learning from human preferences[C]//Advances in Neural Information Processing Systems 30. 2017: 4299-4307.
[2] 陆伟, 刘家伟, 马永强, 等. ChatGPT为代表的大模型对信息资源管理的影响[J]. 图书情报知识, 2023, 40(2): 6-9.
[3] 初景利. 图书馆参考咨询服务[M]. 北京: 北京图书馆出版社, 2004.
"""

PAPER_C = """Large Language Models in Academic Libraries: A Survey

Jane Doe, John Smith and Ann Lee
Department of Information Science, University of Toronto, Canada
Received 3 February 2023; accepted 20 May 2023

Abstract: We survey how academic libraries use large language models for discovery and reference work.
Keywords: large language models; academic libraries; retrieval-augmented generation

1 Introduction

Librarians lack evidence on whether chatbots give reliable answers to patrons, which is the problem this survey addresses.

2 Method

Our method is a structured review of library assistants that use retrieval-augmented generation over the library catalogue, so that every answer cites a retrieved record.

Table 1: Libraries surveyed by country and size.

3 Data

The survey covers 42 academic libraries in North America and Europe, interviewed between 2022 and 2023.

4 Results

We found that retrieval-augmented assistants answered 81% of catalogue questions correctly, while closed-book chatbots invented sources in 30% of answers.

References

Cox, A. M., & Mazumdar, S. (2022). Defining artificial intelligence for librarians. Journal of Librarianship and Information Science, 56(2), 330-340. https://doi.org/10.1177/09610006221142029
Garcia, M., Chen, W., & Okafor, S. (2023). Retrieval-augmented generation for library question answering. Library Technology Reports, 59(4), 1-12. https://doi.org/10.5555/raglib.2023.4
Lewis, P., Perez, E., Piktus, A., Petroni, F., Karpukhin, V., Goyal, N., et al. (2020). Retrieval-augmented generation for knowledge-intensive NLP tasks. Advances in Neural Information Processing Systems, 33, 9459-9474.
Lund, B. D., & Wang, T. (2023). Chatting about ChatGPT: How may AI and GPT impact academia and libraries? Library Hi Tech News, 40(3), 26-29. https://doi.org/10.1108/LHTN-01-2023-0009
"""

PAPER_D_PAGES = [
    """Retrieval-Augmented Generation for Library Question Answering

Maria Garcia, Wei Chen and Sam Okafor

School of Information, University of Michigan, Ann Arbor, USA

Published 2023. DOI: 10.5555/raglib.2023.4

Abstract: We build a question answering assistant for library patrons that retrieves catalogue records before it answers.

Keywords: retrieval-augmented generation; question answering; library catalogue

Introduction. Patrons ask the same catalogue questions again and again, and chatbots without retrieval answer them with invented titles, which is the problem we study.

Method. We propose an assistant that uses retrieval-augmented generation: a BM25 and dense retriever finds catalogue records, and the language model answers only from them.""",
    """Data. We collected 2,000 patron questions from the chat logs of a university library, with answers written by librarians.

Results. The retrieval-augmented assistant answered 84% of the questions correctly and cited a real catalogue record in every answer.

Figure 2: Accuracy of the retrieval-augmented assistant and of a closed-book model on 200 questions.

References

[1] P. Lewis et al., "Retrieval-augmented generation for knowledge-intensive NLP tasks," in Proc. NeurIPS, 2020, pp. 9459-9474.

[2] V. Karpukhin et al., "Dense passage retrieval for open-domain question answering," in Proc. EMNLP, 2020, pp. 6769-6781, doi: 10.18653/v1/2020.emnlp-main.550.

[3] S. Robertson and H. Zaragoza, "The probabilistic relevance framework: BM25 and beyond," Found. Trends Inf. Retr., vol. 3, no. 4, pp. 333-389, 2009, doi: 10.1561/1500000019.""",
]

PAPER_E = """# Reinforcement Learning from Human Feedback for Instruction Following

Olivia Brown, Daniel Kim

Department of Computer Science, Stanford University, USA

Abstract: We study how reinforcement learning from human feedback makes language models follow instructions.

Keywords: reinforcement learning from human feedback; instruction following; reward model

## Problem

Pretrained language models do not follow user instructions reliably, and the challenge is to align them with what users want.

## Method

We use reinforcement learning from human feedback: a reward model is trained on human preference comparisons and the policy is optimised against it with proximal policy optimisation.

Figure 1: The three steps of reinforcement learning from human feedback.

## Results

Human raters preferred the outputs of the tuned 1.3 billion parameter model over those of the 175 billion parameter base model in 71% of comparisons.

## References

Christiano, P. F., Leike, J., Brown, T., Martic, M., Legg, S., & Amodei, D. (2017). Deep reinforcement learning from human preferences. Advances in Neural Information Processing Systems, 30, 4299-4307.
Ouyang, L., Wu, J., Jiang, X., Almeida, D., Wainwright, C., Mishkin, P., et al. (2022). Training language models to follow instructions with human feedback. Advances in Neural Information Processing Systems, 35, 27730-27744.
Schulman, J., Wolski, F., Dhariwal, P., Radford, A., & Klimov, O. (2017). Proximal policy optimization algorithms. arXiv preprint arXiv:1707.06347.
"""


# A Chinese journal paper as a PDF (the way CNKI serves them): title, authors with affiliation marks,
# affiliations, abstract and keywords on page 1 of the text layer, written in a standard CJK font.
PAPER_F_PAGES = [
    """基于检索增强生成的数字图书馆问答系统研究

刘洋¹，孙丽²

1. 南京大学信息管理学院，南京 210023

2. 上海图书馆研究部，上海 200031

摘要：针对大语言模型回答读者问题时虚构文献的问题，本文构建了一个基于检索增强生成的数字图书馆问答系统，先检索馆藏文献再生成带出处的回答。

关键词：检索增强生成；数字图书馆；智能问答

收稿日期：2024-04-18

1 引言

读者在数字图书馆中提出的问题常常得到虚构的文献，这是本文研究的主要问题。""",
    """2 方法

系统用混合检索找到相关段落，再由语言模型根据这些段落回答，并在每句话后标注出处。

3 结果

在 500 个读者问题上，系统正确回答了 82% 的问题，没有出现虚构的文献。

参考文献

[1] 张智雄, 于改红, 刘熠, 等. ChatGPT对文献情报工作的影响[J]. 数据分析与知识发现, 2023, 7(3): 36-42.
[2] 周志华. 机器学习[M]. 北京: 清华大学出版社, 2016.""",
]


def write_papers(root: Path) -> dict[str, Path]:
    files = {"A": ("chatgpt_survey.txt", PAPER_A.encode()), "B": ("llm_reference_desk.md", PAPER_B.encode()),
             "C": ("llm_academic_libraries.txt", PAPER_C.encode()), "D": ("rag_library_qa.pdf", make_pdf(PAPER_D_PAGES)),
             "E": ("rlhf_instructions.md", PAPER_E.encode())}
    out = {}
    for key, (name, data) in files.items():
        (root / name).write_bytes(data)
        out[key] = root / name
    return out
