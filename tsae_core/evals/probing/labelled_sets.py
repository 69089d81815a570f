"""Labelled text for sparse probing: offline sets cut from Python's own documentation, and a loader
for hub (or local) datasets.

Every set is a list of texts, each with a class label and a group: the document it was cut from.
Several texts may come from one document, and the probe-train / probe-test split is made per group
(`split_by_group`), so no document has texts on both sides.

Offline sets (from `python_docs_documents()`, the corpus the tiny model is trained on):

  python_docs.kind     "topic" (a pydoc documentation page) or "docstring" (a stdlib docstring):
                       the first `max_per_document` full chunks of `chunk_chars` characters of each
                       document.
  python_docs.package  the top-level stdlib package a docstring comes from ("email", "tkinter", ...),
                       chunked the same way; the probe keeps the most frequent packages as classes.
  python_docs.code     "code" or "prose": a document is split into blocks at blank lines and each block
                       dedented; a block is code when it starts with a doctest prompt `>>>` (the prompt
                       lines and their output), prose when no line is indented or starts with `>>>` or
                       `...`, at least 85% of its characters are letters or spaces and it holds a
                       sentence break (". "); other blocks are left out. Each block gives its full
                       chunks of `chunk_chars` characters (so both classes have texts of one length),
                       at most `max_per_document` per class and document.

Only full chunks are kept, so the contexts of every class hold the same number of characters (the
mean over a context cannot tell classes apart by length alone).
"""

from __future__ import annotations

import itertools
import re
import textwrap
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PYTHON_DOCS_SETS = ("python_docs.kind", "python_docs.package", "python_docs.code")
"""Offline sets of text, for language-model sources."""
SYNTHETIC_SETS = ("synthetic.slow",)
"""Offline sets of the synthetic source (built by `tsae_core.evals.probing.data` from its true codes)."""
OFFLINE_SETS = PYTHON_DOCS_SETS + SYNTHETIC_SETS
PROSE_LETTER_SHARE = 0.85
"""A prose block has at least this share of letters and spaces."""


@dataclass(frozen=True)
class LabelledTexts:
    """Texts with a class label each and the document (group) each was cut from."""

    name: str
    texts: list[str]
    labels: list[str]
    groups: list[str]

    def __post_init__(self) -> None:
        if not len(self.texts) == len(self.labels) == len(self.groups):
            raise ValueError(f"{self.name}: texts, labels and groups must have one entry each per text")

    def class_counts(self) -> list[tuple[str, int]]:
        """(class, number of texts), most frequent first, ties by name."""
        return sorted(Counter(self.labels).items(), key=lambda kv: (-kv[1], kv[0]))


def chunks(text: str, size: int, limit: int) -> list[str]:
    """The first `limit` non-overlapping full chunks of `size` characters of `text`."""
    return [text[i : i + size] for i in range(0, len(text) - size + 1, size)][:limit]


def _documents(max_documents: int) -> list[Any]:
    """The corpus documents with their origin; the first `max_documents` (0: all) read lazily."""
    from tsae_core.sources.corpus import _iter_corpus, python_docs_documents

    return list(itertools.islice(_iter_corpus(), max_documents)) if max_documents else python_docs_documents()


def _from_pieces(name: str, pieces: Iterable[tuple[str, str, str]]) -> LabelledTexts:
    texts, labels, groups = [], [], []
    for text, label, group in pieces:
        texts.append(text)
        labels.append(label)
        groups.append(group)
    return LabelledTexts(name, texts, labels, groups)


def python_docs_kind(chunk_chars: int, max_per_document: int, max_documents: int = 0) -> LabelledTexts:
    """Chunks of pydoc topics ("topic") and of stdlib docstrings ("docstring")."""
    return _from_pieces("python_docs.kind", ((c, d.kind, d.text) for d in _documents(max_documents)
                                              for c in chunks(d.text, chunk_chars, max_per_document)))


def python_docs_package(chunk_chars: int, max_per_document: int, max_documents: int = 0) -> LabelledTexts:
    """Chunks of stdlib docstrings, labelled by the top-level package they come from."""
    return _from_pieces("python_docs.package", ((c, d.package, d.text) for d in _documents(max_documents)
                                                 if d.kind == "docstring"
                                                 for c in chunks(d.text, chunk_chars, max_per_document)))


def text_blocks(text: str) -> list[str]:
    """Blank-line separated blocks of a document, each dedented."""
    return [textwrap.dedent(b).strip("\n") for b in re.split(r"\n[ \t]*\n", text) if b.strip()]


def block_kind(block: str) -> str | None:
    """"code" (a doctest block), "prose" (plain sentences) or None (anything else); see the module doc."""
    if block.lstrip().startswith(">>>"):
        return "code"
    lines = block.split("\n")
    if any(line.startswith((" ", "\t")) or line.lstrip().startswith((">>>", "...")) for line in lines):
        return None
    letters = sum(c.isalpha() or c == " " for c in block)
    return "prose" if letters >= PROSE_LETTER_SHARE * len(block) and ". " in block + " " else None


def python_docs_code(chunk_chars: int, max_per_document: int, max_documents: int = 0) -> LabelledTexts:
    """Chunks of doctest blocks ("code") and of prose paragraphs ("prose") of every document."""

    def pieces():
        for d in _documents(max_documents):
            taken = Counter()
            for block in text_blocks(d.text):
                kind = block_kind(block)
                if kind is None:
                    continue
                for c in chunks(block, chunk_chars, max_per_document - taken[kind]):
                    taken[kind] += 1
                    yield c, kind, d.text

    return _from_pieces("python_docs.code", pieces())


def python_docs_set(name: str, chunk_chars: int, max_per_document: int, max_documents: int = 0) -> LabelledTexts:
    """The offline text set called `name` (one of PYTHON_DOCS_SETS)."""
    makers = {"python_docs.kind": python_docs_kind, "python_docs.package": python_docs_package,
              "python_docs.code": python_docs_code}
    if name not in makers:
        raise ValueError(f"unknown offline text set {name!r}; known: {', '.join(makers)}")
    if chunk_chars < 1:
        raise ValueError(f"chunk_chars must be >= 1, got {chunk_chars}")
    return makers[name](chunk_chars, max_per_document, max_documents)


def hub_labelled_texts(name: str, spec: Any, cache_dir: str | Path | None = None) -> LabelledTexts:
    """A `probing.hub` entry (`tsae_core.config.HubProbeDataset`) read with `datasets.load_dataset`:
    one text per row (its own group), its label the row's `label_column` (an integer is named by the
    dataset's class names where it has them). Rows with an empty text are left out. `cache_dir`:
    where `datasets` caches what it reads (None: its default)."""
    import datasets  # heavy: imported only where a hub set is asked for

    from tsae_core.params_file import resolve_path

    files = [spec.data_files] if isinstance(spec.data_files, str) else list(spec.data_files)
    data_files = [str(resolve_path(f)) for f in files] or None
    try:
        ds = datasets.load_dataset(spec.path, spec.name, data_files=data_files, split=spec.split,
                                  cache_dir=None if cache_dir is None else str(cache_dir))
    except Exception as e:  # the library raises many kinds (no network, missing file, bad split)
        raise ValueError(f"probing.hub.{name}: cannot load {spec.path!r} (split {spec.split!r}): {e}; offline, "
                         "give a local file (path: json, data_files: <file>.jsonl)") from e
    for column in (spec.text_column, spec.label_column):
        if column not in ds.column_names:
            raise ValueError(f"probing.hub.{name}: no column {column!r}; columns are {', '.join(ds.column_names)}")
    ds = ds.select(range(min(spec.max_rows, len(ds))))
    names = getattr(ds.features[spec.label_column], "names", None)
    texts, labels = ds[spec.text_column], ds[spec.label_column]
    rows = [(str(t), names[y] if names and isinstance(y, int) else str(y)) for t, y in zip(texts, labels)
            if isinstance(t, str) and t.strip()]
    return LabelledTexts(f"{name}", [t for t, _ in rows], [y for _, y in rows], [t for t, _ in rows])


def split_by_group(groups: Sequence[str], test_fraction: float, seed: int) -> list[bool]:
    """Whether each text is on the probe-test side: its group's hash (with `seed`) < `test_fraction`.
    Depends on the group's text only, so one document never lands on both sides."""
    from tsae_core.sources.corpus import _unit_hash

    side: dict[str, bool] = {}
    return [side.setdefault(g, _unit_hash(g, seed) < test_fraction) for g in groups]

