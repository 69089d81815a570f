"""The `probing:` section of a params file (`tsae_core.evals.probing`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tsae_core.evals.probing.labelled_sets import OFFLINE_SETS
from tsae_core.typed import check as _check
from tsae_core.typed import check_plain_name


@dataclass(frozen=True)
class HubProbeDataset:
    """A labelled text set read with `datasets.load_dataset(path, name, data_files=..., split=...)`:
    a hub dataset on a machine that reaches the hub, or local files (`path: json`, `data_files: x.jsonl`)."""

    path: str = ""
    """First argument of `datasets.load_dataset`: a hub name (e.g. fancyzhx/ag_news) or a builder (json, csv)."""
    name: str | None = None
    """The dataset's configuration name (None: its default)."""
    data_files: str | list[str] = field(default_factory=list)
    """Local files for a builder such as json or csv, relative to the project root unless absolute."""
    split: str = "train"
    """Split to read; probe-train and probe-test contexts are both cut from it (by a hash of the text)."""
    text_column: str = "text"
    """Column holding the text (one context per row: its beginning, truncated to the context)."""
    label_column: str = "label"
    """Column holding the class (a string or an integer; integers are named by the dataset's class names when it has them)."""
    max_rows: int = 20_000
    """Read at most this many rows (the first ones of the split)."""

    def __post_init__(self) -> None:
        _check(bool(self.path), "path", "name the dataset (a hub name, or json / csv with data_files)")
        _check(self.max_rows > 0, "max_rows", "must be > 0")


@dataclass(frozen=True)
class ProbingConfig:
    """SAEBench-style sparse probing (`tsae_core.evals.probing.run`): per labelled set, binary one-vs-rest
    tasks on mean-pooled codes, a logistic regression on the k latents with the largest class-mean
    difference, against the same probe on the raw activations."""

    enabled: bool = True
    """Run sparse probing after the evaluation (false: recorded as skipped)."""
    datasets: list[str] = field(default_factory=list)
    """Labelled sets to probe: offline names (python_docs.kind, python_docs.package, python_docs.code
    for language-model sources, synthetic.slow for the synthetic one) or keys of `hub`; empty: the
    source's offline sets."""
    hub: dict[str, HubProbeDataset] = field(default_factory=dict)
    """Named sets read with `datasets.load_dataset` (hub datasets on machines that reach the hub, or local files)."""
    k_values: list[int] = field(default_factory=lambda: [1, 2, 5, 10, 20, 50])
    """Numbers of latents (or raw dimensions) a sparse probe reads; values above the width are left out."""
    train_size: int = 200
    """Contexts per binary task in its probe-train set, half positive, half negative (fewer where a class has fewer)."""
    test_size: int = 100
    """Contexts per binary task in its probe-test set, balanced the same way."""
    test_fraction: float = 0.25
    """Share of documents (by a hash of their text and `seed`) whose contexts form the probe-test side."""
    max_classes: int = 5
    """One-vs-rest tasks per set: its most frequent classes (a set of two classes gives one task)."""
    context_length: int = 0
    """Tokens per probing context, BOS included (0: harvest.context_size)."""
    chunk_chars: int = 0
    """Characters of text per context cut from a corpus document (0: context_length - 1, a byte each for the tiny model)."""
    max_contexts_per_document: int = 4
    """Contexts cut from one document at most (so that long documents do not dominate a class)."""
    max_documents: int = 0
    """Read at most this many corpus documents (0: all); for tests."""
    batch_sequences: int = 64
    """Contexts per forward pass of the model and of the SAE."""
    seed: int = 42
    """Seed of the document split, the task sampling and the probes (SAEBench's random_seed)."""
    max_iter: int = 1000
    """Iterations of the logistic regression's solver (L2, C = 1, lbfgs)."""

    def __post_init__(self) -> None:
        _check(len(set(self.datasets)) == len(self.datasets), "probing.datasets", f"must not repeat a set, got {self.datasets}")
        for name in self.hub:
            check_plain_name(name, f"probing.hub.{name}")
        _check(bool(self.k_values) and all(k > 0 for k in self.k_values), "probing.k_values", "give positive numbers of latents")
        _check(len(set(self.k_values)) == len(self.k_values), "probing.k_values", "must not repeat a value")
        for name in ("train_size", "test_size"):
            _check(getattr(self, name) >= 8, f"probing.{name}", "must be >= 8 (four positives and four negatives)")
        _check(0 < self.test_fraction < 1, "probing.test_fraction", "must be in (0, 1)")
        _check(self.max_classes >= 2, "probing.max_classes", "must be >= 2")
        _check(self.context_length == 0 or self.context_length >= 2, "probing.context_length", "must be 0 (harvest.context_size) or >= 2")
        for name in ("chunk_chars", "max_documents"):
            _check(getattr(self, name) >= 0, f"probing.{name}", "must be >= 0")
        for name in ("max_contexts_per_document", "batch_sequences", "max_iter"):
            _check(getattr(self, name) > 0, f"probing.{name}", "must be > 0")

        for name in self.datasets:
            _check(name in OFFLINE_SETS or name in self.hub, "probing.datasets",
                   f"unknown set {name!r}: offline sets are {', '.join(OFFLINE_SETS)}; a hub set must be a key of probing.hub")
