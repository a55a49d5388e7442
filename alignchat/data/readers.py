"""Read the user's own text: .txt, .jsonl with a text field, parquet, and a `datasets` directory on disk.

Notable choices:
- Every reader yields `Document`s carrying where they came from (`file`, `line` or row), so any later
  stage can point at the exact record.
- A bad record (invalid JSON, no text field, a non-string text) is reported once as a `BadRecord`
  naming file and line, then skipped; it never stops the other records or files. A missing file or an
  unreadable format is a `UserError`, because nothing can be read from it at all.
- .txt: one document per blank-line-separated block by default (`txt_mode="paragraph"`), or the whole
  file, or one per line. Files are decoded as UTF-8; invalid bytes are reported, not guessed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..errors import UserError


@dataclass
class Document:
    text: str
    source: str  # file path
    line: int  # 1-based line (txt/jsonl) or 0-based row (parquet/datasets)
    id: str = ""
    meta: dict | None = None


@dataclass
class BadRecord:
    source: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}"


@dataclass
class ReadOptions:
    text_field: str = "text"
    txt_mode: str = "paragraph"  # "paragraph" | "file" | "line"


def _default_report(bad: BadRecord) -> None:
    import sys
    print(f"warning: skipped bad record {bad}", file=sys.stderr)


def read_txt(path: Path, opts: ReadOptions, on_bad: Callable[[BadRecord], None]) -> Iterator[Document]:
    buf: list[str] = []
    start = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                on_bad(BadRecord(str(path), lineno, f"not valid UTF-8 ({e.reason} at byte {e.start})"))
                continue
            line = line.rstrip("\r\n")
            if opts.txt_mode == "line":
                if line.strip():
                    yield Document(line, str(path), lineno, f"{path.name}:{lineno}")
                continue
            if opts.txt_mode == "paragraph" and not line.strip():
                if buf:
                    yield Document("\n".join(buf), str(path), start, f"{path.name}:{start}")
                    buf = []
                continue
            if not buf:
                start = lineno
            buf.append(line)
    if buf:
        text = "\n".join(buf).strip("\n")
        if text.strip():
            yield Document(text, str(path), start, f"{path.name}:{start}")


def read_jsonl(path: Path, opts: ReadOptions, on_bad: Callable[[BadRecord], None]) -> Iterator[Document]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                on_bad(BadRecord(str(path), lineno, f"invalid JSON ({e})"))
                continue
            if not isinstance(rec, dict):
                on_bad(BadRecord(str(path), lineno, "a JSON object was expected"))
                continue
            text = rec.get(opts.text_field)
            if not isinstance(text, str):
                reason = (f"no {opts.text_field!r} field" if text is None
                          else f"field {opts.text_field!r} is {type(text).__name__}, not a string")
                on_bad(BadRecord(str(path), lineno, reason))
                continue
            rid = rec.get("id")
            meta = {k: v for k, v in rec.items() if k not in (opts.text_field, "id")}
            yield Document(text, str(path), lineno, str(rid) if rid is not None else f"{path.name}:{lineno}", meta)


def _rows(path: Path, table_iter, opts: ReadOptions, on_bad) -> Iterator[Document]:
    row = 0
    for batch in table_iter:
        if opts.text_field not in batch.schema.names:
            raise UserError(f"{path}: no column {opts.text_field!r} (columns: {', '.join(batch.schema.names)})")
        for value in batch.column(opts.text_field).to_pylist():
            if isinstance(value, str):
                yield Document(value, str(path), row, f"{path.name}:{row}")
            else:
                on_bad(BadRecord(str(path), row, f"column {opts.text_field!r} is {type(value).__name__}, "
                                                 f"not a string"))
            row += 1


def read_parquet(path: Path, opts: ReadOptions, on_bad) -> Iterator[Document]:
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise UserError(f"{path}: not a readable parquet file ({e})") from e
    yield from _rows(path, pf.iter_batches(batch_size=1024), opts, on_bad)


def read_datasets_dir(path: Path, opts: ReadOptions, on_bad) -> Iterator[Document]:
    """A directory written by `datasets.Dataset.save_to_disk` (or a DatasetDict: every split in turn)."""
    import datasets
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise UserError(f"{path}: not a `datasets` directory ({e})") from e
    splits = ds.items() if isinstance(ds, datasets.DatasetDict) else [("", ds)]
    for name, split in splits:
        label = path / name if name else path
        yield from _rows(label, split.with_format("arrow").iter(batch_size=1024), opts, on_bad)


def _is_datasets_dir(p: Path) -> bool:
    return p.is_dir() and ((p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists()
                           or (p / "state.json").exists())


def expand_inputs(paths: Iterable[str | Path]) -> list[Path]:
    """Files and `datasets` directories named by the user; plain directories are searched recursively."""
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"{p}: no such file or directory")
        if p.is_file() or _is_datasets_dir(p):
            out.append(p)
        else:
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix in READERS)
            if not found:
                raise UserError(f"{p}: no .txt, .jsonl or .parquet files inside")
            out.extend(found)
    return out


READERS = {".txt": read_txt, ".md": read_txt, ".jsonl": read_jsonl, ".json": read_jsonl,
           ".parquet": read_parquet}


def read_documents(paths: Iterable[str | Path], opts: ReadOptions | None = None,
                   on_bad: Callable[[BadRecord], None] | None = None) -> Iterator[Document]:
    """Yield documents from every input in order; bad records go to `on_bad` (default: a warning)."""
    opts = opts or ReadOptions()
    on_bad = on_bad or _default_report
    for p in expand_inputs(paths):
        if _is_datasets_dir(p):
            yield from read_datasets_dir(p, opts, on_bad)
            continue
        reader = READERS.get(p.suffix.lower())
        if reader is None:
            raise UserError(f"{p}: unsupported file type {p.suffix!r} (use .txt, .jsonl, .parquet or a "
                            f"`datasets` directory)")
        yield from reader(p, opts, on_bad)
