"""The offline Python-docs corpus: non-trivial, deterministic, and split by text, not position."""

from __future__ import annotations

from tsae_core.sources import corpus
from tsae_core.sources.corpus import (
    MIN_DOCSTRING_CHARS,
    corpus_fingerprint,
    pydoc_topics,
    python_docs_corpus,
    split_documents,
    stdlib_docstrings,
)


def test_corpus_is_substantial_and_unique():
    docs = python_docs_corpus()
    n_bytes = sum(len(d.encode()) for d in docs)
    # CPython 3.11 gives ~2,300 documents and ~1.7 MB; the floors leave room for other versions.
    assert len(docs) >= 1000
    assert n_bytes >= 800_000
    assert len(set(docs)) == len(docs)
    assert all(d.strip() == d and d for d in docs)


def test_corpus_starts_with_topics_then_long_docstrings():
    topics = list(dict.fromkeys(pydoc_topics()))  # a few topics share one text
    docs = python_docs_corpus()
    assert len(topics) >= 50
    assert docs[: len(topics)] == topics
    assert all(len(d) >= MIN_DOCSTRING_CHARS for d in docs[len(topics) :])


def test_corpus_is_deterministic_and_prefix_truncated():
    full = python_docs_corpus()
    assert python_docs_corpus(100) == full[:100]
    assert corpus_fingerprint(python_docs_corpus()) == corpus_fingerprint(full)


def test_stdlib_docstrings_skip_tests_and_never_import(tmp_path):
    (tmp_path / "test").mkdir()
    (tmp_path / "pkg").mkdir()
    long_doc = "Kept. " + "x" * 300
    (tmp_path / "test" / "t.py").write_text(f'"""{long_doc} test"""\n')
    (tmp_path / "pkg" / "m.py").write_text(
        f'"""{long_doc} module"""\nraise SystemExit("imported!")\n'
        f'class C:\n    """{long_doc} class"""\n    def f(self):\n        """short"""\n'
        f'    async def g(self):\n        """{long_doc} method"""\n'
    )
    (tmp_path / "broken.py").write_text("def (:\n")
    docs = stdlib_docstrings(tmp_path)
    assert [d.rsplit(" ", 1)[1] for d in docs] == ["module", "class", "method"]


def test_split_is_disjoint_stable_and_by_text():
    docs = python_docs_corpus()
    train, heldout = split_documents(docs, 0.1, seed=0)
    assert set(train).isdisjoint(heldout)
    assert len(train) + len(heldout) == len(docs)
    assert 0.05 < len(heldout) / len(docs) < 0.15
    assert split_documents(docs, 0.1, seed=0) == (train, heldout)
    # Reversing the order (or dropping documents) does not move a document across the split.
    train_r, heldout_r = split_documents(docs[::-1][: len(docs) // 2], 0.1, seed=0)
    assert set(heldout_r) <= set(heldout) and set(train_r) <= set(train)
    # A different seed gives a different split.
    assert split_documents(docs, 0.1, seed=1)[1] != heldout


def test_documents_carry_their_origin_in_corpus_order():
    docs = corpus.python_docs_documents()
    assert [d.text for d in docs] == corpus.python_docs_corpus()
    kinds = [d.kind for d in docs]
    assert kinds == sorted(kinds, key=lambda k: k != "topic")  # topics first, then docstrings
    by_module = {d.module for d in docs if d.kind == "docstring"}
    assert {"email.message", "argparse", "json"} <= by_module  # dotted module names, packages' __init__ dropped
    assert not any(m.endswith("__init__") for m in by_module)
    email = next(d for d in docs if d.module.startswith("email."))
    assert email.package == "email"


def test_the_source_corpus_holds_the_topics_then_whole_stdlib_files_and_is_larger():
    from tsae_core.sources.corpus import pydoc_topics, python_docs_corpus, python_source_corpus

    source, docs = python_source_corpus(), python_docs_corpus()
    topics = list(dict.fromkeys(pydoc_topics()))  # topics sharing one text (aliases) count once
    assert source[: len(topics)] == topics
    assert len(set(source)) == len(source), "each distinct text once"
    assert sum(map(len, source)) > 5 * sum(map(len, docs)), "several times the docstring corpus's text"
    assert any(text.startswith(("#", '"""', "'''", "import", "from")) for text in source[len(topics):][:50]), "source files, whole"
    assert python_source_corpus(max_documents=len(topics) + 3) == source[: len(topics) + 3]
