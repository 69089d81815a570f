"""An offline text corpus that ships with Python itself: documentation topics and stdlib docstrings
(and, larger, `python_source_corpus`: the topics and the stdlib's source files whole).

Two kinds of document, in a fixed order:
  1. every topic of `pydoc_data.topics.topics` (the language reference pages `help()` shows), sorted
     by topic name;
  2. the module, class and function docstrings of the standard library, read by parsing the `.py`
     files under `sysconfig.get_paths()["stdlib"]` with `ast` (nothing is imported, so no module
     runs), files in sorted path order, docstrings in source order within a file.
Test suites, IDLE, site-packages and caches are skipped, docstrings shorter than MIN_DOCSTRING_CHARS
are dropped (mostly one-liners that would teach the model little but boilerplate), and exact
duplicates are kept once (many are copied between e.g. `_pyio` and `io`), so no text can land on
both sides of a train/held-out split.

The content depends on the Python version (its stdlib); `corpus_fingerprint` names it exactly.
With CPython 3.11.7: 2,324 documents (78 distinct topics, 2,246 docstrings), 1.70 MB of UTF-8
text (0.47 MB of it topics); parsing the stdlib takes about 4 s, once per process.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import itertools
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

MIN_DOCSTRING_CHARS = 200
"""Docstrings shorter than this (in characters, after `inspect.cleandoc`) are not documents."""
SKIP_DIRS = frozenset({"test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__", "turtledemo"})
"""Directory names under the stdlib whose files are not read (tests, the IDE, third-party packages)."""


def pydoc_topics() -> list[str]:
    """The pydoc documentation topics, one document each, sorted by topic name."""
    return [d.text for d in _topics()]


def _stdlib_files(root: Path) -> Iterator[Path]:
    """The stdlib's `.py` files in sorted path order, skipping SKIP_DIRS at any depth."""
    for path in sorted(root.rglob("*.py")):
        if not SKIP_DIRS.intersection(path.relative_to(root).parts[:-1]):
            yield path


def _docstrings(tree: ast.Module) -> Iterator[str]:
    """Module, class and function docstrings of a parsed file (nested ones too), in source order."""
    module_doc = ast.get_docstring(tree, clean=True)
    if module_doc:
        yield module_doc
    defs = [n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    for node in sorted(defs, key=lambda n: (n.lineno, n.col_offset)):
        doc = ast.get_docstring(node, clean=True)
        if doc:
            yield doc


@dataclass(frozen=True)
class Document:
    """A corpus document and where it came from: `kind` is "topic" or "docstring"; `module` is the
    dotted module a docstring was read from (e.g. "email.mime.text") or the topic's name."""

    text: str
    kind: str
    module: str

    @property
    def package(self) -> str:
        """The top-level stdlib package or module of a docstring ("email" for "email.mime.text")."""
        return self.module.split(".", 1)[0]


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _iter_stdlib_docstrings(root: Path, min_chars: int) -> Iterator[Document]:
    for path in _stdlib_files(root):
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError):
            continue  # a few stdlib files are templates or deliberately broken; they hold no docs we need
        module = _module_name(path, root)
        yield from (Document(d.strip(), "docstring", module) for d in _docstrings(tree) if len(d.strip()) >= min_chars)


def stdlib_docstrings(stdlib_dir: str | Path | None = None, min_chars: int = MIN_DOCSTRING_CHARS) -> list[str]:
    """Docstrings of at least `min_chars` characters from the stdlib sources, parsed, never imported."""
    return [d.text for d in _iter_stdlib_docstrings(Path(stdlib_dir or sysconfig.get_paths()["stdlib"]), min_chars)]


def _topics() -> Iterator[Document]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        if topics[name].strip():
            yield Document(topics[name].strip(), "topic", name)


def _iter_corpus() -> Iterator[Document]:
    """Topics then stdlib docstrings, each distinct text once (its first source kept), lazily
    (parsing stops when the caller does)."""
    seen: set[str] = set()
    root = Path(sysconfig.get_paths()["stdlib"])
    for doc in itertools.chain(_topics(), _iter_stdlib_docstrings(root, MIN_DOCSTRING_CHARS)):
        if doc.text not in seen:
            seen.add(doc.text)
            yield doc


@functools.lru_cache(maxsize=1)
def _full_corpus() -> tuple[Document, ...]:
    """The whole corpus, built once per process (parsing the stdlib takes a few seconds)."""
    return tuple(_iter_corpus())


def python_docs_documents() -> list[Document]:
    """The whole corpus with each document's origin (kind, module): what labelled sets are cut from.
    Same documents, same order as `python_docs_corpus()`."""
    return list(_full_corpus())


def python_docs_corpus(max_documents: int | None = None) -> list[str]:
    """The pydoc topics then the stdlib docstrings, duplicates removed; the first `max_documents`.

    Deterministic for a given Python installation (sorted names and paths, source order).
    """
    if max_documents is None:
        return [d.text for d in _full_corpus()]
    if max_documents < 0:
        raise ValueError(f"max_documents must be >= 0 or None, got {max_documents}")
    return [d.text for d in itertools.islice(_iter_corpus(), max_documents)]


def python_source_corpus(max_documents: int | None = None) -> list[str]:
    """A larger offline corpus: the pydoc topics, then the whole text of every stdlib source file (code,
    comments and docstrings; the same files and order as the docstrings come from), each distinct text
    once. About 11 MB of text with CPython 3.11 (some 3M tokens of a subword tokenizer, against 0.4M
    for `python_docs_corpus`): enough for an SAE to see each token at most twice over thousands of
    steps. The docstring corpus's documents are inside these files, so the two are not mixed in one run."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts = (p.read_bytes().decode("utf-8", errors="replace").strip() for p in _stdlib_files(root))
    docs = itertools.chain((d.text for d in _topics()), (t for t in texts if t))
    seen: set[str] = set()
    out = []
    for text in docs:
        if text not in seen:
            seen.add(text)
            out.append(text)
            if max_documents is not None and len(out) >= max_documents:
                break
    return out


def _unit_hash(text: str, seed: int) -> float:
    """A number in [0, 1) fixed by the text and the seed (stable across processes, unlike `hash`)."""
    digest = hashlib.sha256(f"{seed}\x00{text}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2.0**64


def split_documents(docs: Sequence[str], heldout_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, heldout): a document is held out when the hash of (seed, its text) < heldout_fraction.

    Assignment depends on the text only, not on its position, so adding or removing other documents
    (a different Python version, `max_documents`) never moves a document across the split.
    Both lists keep the input order.
    """
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    train, heldout = [], []
    for doc in docs:
        (heldout if _unit_hash(doc, seed) < heldout_fraction else train).append(doc)
    return train, heldout


def corpus_fingerprint(docs: Sequence[str]) -> str:
    """sha256 (16 hex digits) of the documents in order, to record exactly which text was used."""
    h = hashlib.sha256()
    for doc in docs:
        h.update(doc.encode())
        h.update(b"\x00")
    return h.hexdigest()[:16]
