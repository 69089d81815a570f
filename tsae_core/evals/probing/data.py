"""The contexts and binary tasks of sparse probing, built once per run (SAEBench's protocol).

A `ProbeSet` holds one labelled set as model contexts — raw activations (N, T, D) with the mask of
tokens that count (not BOS, not padding), document starts and positions — and its binary tasks.

Tasks. A set's classes are its `max_classes` most frequent labels (ties by name). Each class gives
one one-vs-rest task (a set of two classes gives one task: the second is the first's mirror):

  positives  up to size/2 contexts of the class on that side (train or test), drawn at random;
  negatives  as many contexts of the *other kept classes*, spread evenly over them (SAEBench:
             ceil(n/(classes-1)) from each, then n at random).

The probe-train side holds `train_size` contexts per task, the probe-test side `test_size`; sides
come from a hash of the document (`labelled_sets.split_by_group`), so a document's contexts all lie
on one side. A task with fewer than MIN_PER_CLASS positives or negatives on a side is an error that
names the set, the class and the fix.

Sources:
  language model  texts -> `text_contexts` (one context per text, BOS first) -> `hook_activations`;
  synthetic       fresh sequences of the synthetic source (splits "probe_train" and "probe_test",
                  never harvested) with their true codes; a context is positive for slow feature g
                  when g fires at any of its tokens. The classes are the `max_classes` slow features
                  whose share of positive contexts on the probe-train side is closest to 1/2 (ties
                  by feature index), each its own binary task (positives: g on; negatives: g off).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from tsae_core.evals.probing.labelled_sets import LabelledTexts, split_by_group
from tsae_core.seeds import derive_seed

MIN_PER_CLASS = 4
"""Fewest positives (and negatives) a task may have on either side."""
SYNTHETIC_POOL_FACTOR = 4
"""Synthetic contexts generated per side: this many times the task size (room for balanced draws)."""


@dataclass
class BinaryTask:
    """One probe: `class_name` against the rest; indices into the set's contexts, labels 1 = positive."""

    class_name: str
    train_idx: torch.Tensor
    train_y: torch.Tensor
    test_idx: torch.Tensor
    test_y: torch.Tensor


@dataclass
class ProbeSet:
    """A labelled set as model contexts: raw activations and the tasks that index them."""

    name: str
    acts_NTD: torch.Tensor
    mask_NT: torch.Tensor
    doc_start_NT: torch.Tensor
    position_NT: torch.Tensor
    tasks: list[BinaryTask]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_contexts(self) -> int:
        return int(self.acts_NTD.shape[0])


def _generator(seed: int, *names: Any) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, *names))


def _shuffled(idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return idx[torch.randperm(len(idx), generator=g)]


def _task_from(pos: torch.Tensor, neg: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices and labels of a balanced, shuffled task side (as many negatives as positives)."""
    n = min(len(pos), len(neg))
    idx = torch.cat([pos[:n], neg[:n]])
    y = torch.cat([torch.ones(n, dtype=torch.int64), torch.zeros(n, dtype=torch.int64)])
    order = torch.randperm(2 * n, generator=g)
    return idx[order], y[order]


def _check_side(set_name: str, cls: str, side: str, n_pos: int, n_neg: int, size_key: str) -> None:
    if min(n_pos, n_neg) < MIN_PER_CLASS:
        raise ValueError(f"{set_name}: the task of class {cls!r} has {n_pos} positive and {n_neg} negative contexts on the "
                         f"probe-{side} side (at least {MIN_PER_CLASS} of each needed); give the set more documents "
                         f"(probing.max_documents), fewer classes (probing.max_classes) or another probing.test_fraction "
                         f"/ {size_key}")


def exclusive_tasks(set_name: str, labels: Sequence[str], is_test: Sequence[bool], max_classes: int,
                    sizes: tuple[int, int], seed: int) -> tuple[list[str], list[BinaryTask]]:
    """(kept classes, tasks) of a set whose contexts have one class each (module doc: Tasks)."""
    counts: dict[str, int] = {}
    for y in labels:
        counts[y] = counts.get(y, 0) + 1
    classes = sorted(counts, key=lambda c: (-counts[c], c))[:max_classes]
    if len(classes) < 2:
        raise ValueError(f"{set_name}: needs at least two classes, found {classes}")
    label_N = torch.tensor([classes.index(y) if y in classes else -1 for y in labels])
    test_N = torch.tensor(list(is_test), dtype=torch.bool)
    sides = {}
    for side, size, on_test in (("train", sizes[0], False), ("test", sizes[1], True)):
        half = size // 2
        pools = [_shuffled(((label_N == c) & (test_N == on_test)).nonzero().flatten(), _generator(seed, set_name, side, cls))[:half]
                 for c, cls in enumerate(classes)]
        sides[side] = pools
    tasks = []
    for c, cls in enumerate(classes[:1] if len(classes) == 2 else classes):
        parts = []
        for side in ("train", "test"):
            pools = sides[side]
            g = _generator(seed, set_name, side, cls, "negatives")
            others = [p for o, p in enumerate(pools) if o != c]
            per_other = math.ceil(len(pools[c]) / len(others))
            neg = _shuffled(torch.cat([_shuffled(p, g)[:per_other] for p in others]), g)[: len(pools[c])]
            _check_side(set_name, cls, side, len(pools[c]), len(neg), f"probing.{side}_size")
            idx, y = _task_from(pools[c], neg, g)
            parts += [idx, y]
        tasks.append(BinaryTask(cls, *parts))
    return classes, tasks


def multilabel_tasks(set_name: str, on_NC: torch.Tensor, class_names: Sequence[str], is_test: torch.Tensor,
                     sizes: tuple[int, int], seed: int) -> list[BinaryTask]:
    """One task per column of `on_NC` (a context may be positive for several): positives where it is
    on, negatives where it is off, up to size/2 of each per side, drawn at random."""
    tasks = []
    for c, cls in enumerate(class_names):
        parts = []
        for side, size, on_test in (("train", sizes[0], False), ("test", sizes[1], True)):
            g = _generator(seed, set_name, side, cls)
            here = is_test == on_test
            pos = _shuffled((on_NC[:, c] & here).nonzero().flatten(), g)[: size // 2]
            neg = _shuffled((~on_NC[:, c] & here).nonzero().flatten(), g)[: size // 2]
            _check_side(set_name, cls, side, len(pos), len(neg), f"probing.{side}_size")
            idx, y = _task_from(pos, neg, g)
            parts += [idx, y]
        tasks.append(BinaryTask(cls, *parts))
    return tasks


def compact(tasks: list[BinaryTask]) -> tuple[torch.Tensor, list[BinaryTask]]:
    """(the contexts any task uses, in order; the tasks re-indexed into that list)."""
    used = torch.unique(torch.cat([t.train_idx for t in tasks] + [t.test_idx for t in tasks]))
    where = torch.full((int(used.max()) + 1,), -1, dtype=torch.int64)
    where[used] = torch.arange(len(used))
    return used, [BinaryTask(t.class_name, where[t.train_idx], t.train_y, where[t.test_idx], t.test_y) for t in tasks]


def _counts(tasks: list[BinaryTask]) -> dict[str, Any]:
    return {"n_train": {t.class_name: len(t.train_y) for t in tasks}, "n_test": {t.class_name: len(t.test_y) for t in tasks}}


# ------------------------------------------------------------------------------------------------
# Language-model sets
# ------------------------------------------------------------------------------------------------


def text_probe_set(texts: LabelledTexts, model: Any, tokenizer: Any, hook_name: str, context_length: int,
                   probing: Any, batch_sequences: int) -> ProbeSet:
    """A text set as model contexts: only the texts some task uses are run through the model."""
    from tsae_core.sources.lm import hook_layer
    from tsae_core.sources.text_contexts import hook_activations, text_contexts

    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    if n_ctx is not None and context_length > n_ctx:
        raise ValueError(f"probing.context_length {context_length} exceeds the model's context of {n_ctx} tokens; "
                         f"set probing.context_length <= {n_ctx}")
    is_test = split_by_group(texts.groups, probing.test_fraction, probing.seed)
    classes, tasks = exclusive_tasks(texts.name, texts.labels, is_test, probing.max_classes,
                                     (probing.train_size, probing.test_size), probing.seed)
    used, tasks = compact(tasks)
    ctx = text_contexts(tokenizer, [texts.texts[i] for i in used.tolist()], context_length)
    stop = hook_layer(hook_name) + 1
    acts = [hook_activations(model, hook_name, ctx["tokens_NT"][lo : lo + batch_sequences], stop_at_layer=stop)
            for lo in range(0, len(used), batch_sequences)]
    info = {"classes": classes, "n_texts": len(texts.texts), "n_documents": len(set(texts.groups)),
            "n_contexts": len(used), **_counts(tasks)}
    return ProbeSet(texts.name, torch.cat(acts), ~ctx["special_NT"], ctx["doc_start_NT"], ctx["position_NT"], tasks, info)


# ------------------------------------------------------------------------------------------------
# The synthetic source
# ------------------------------------------------------------------------------------------------


def synthetic_probe_set(synthetic_cfg: Any, context_length: int, run_seed: int, probing: Any) -> ProbeSet:
    """`synthetic.slow`: which slow true features fire in a context (module doc: Sources)."""
    from tsae_core.sources.synthetic import SyntheticSource

    source = SyntheticSource(synthetic_cfg, context_length, run_seed)  # the run's ground truth (seeded by run_seed)
    slow = torch.tensor([g for g, k in enumerate(source.ground_truth.kinds) if k == "slow"], dtype=torch.int64)
    if len(slow) < 1:
        raise ValueError("synthetic.slow: the synthetic source has no slow features (source.synthetic.n_slow = 0)")
    train = source.sequences("probe_train", 0, SYNTHETIC_POOL_FACTOR * probing.train_size)
    test = source.sequences("probe_test", 0, SYNTHETIC_POOL_FACTOR * probing.test_size)
    batches = (train, test)
    acts = torch.cat([b.acts_BTD for b in batches])
    mask = ~torch.cat([b.special_BT for b in batches])
    codes = torch.cat([b.true_codes_BTG[:, :, slow] for b in batches])
    on_NS = ((codes > 0) & mask[..., None]).any(dim=1)
    is_test = torch.arange(len(acts)) >= len(train.acts_BTD)
    share_S = on_NS[~is_test].float().mean(0)
    order = sorted(range(len(slow)), key=lambda s: (abs(float(share_S[s]) - 0.5), s))[: probing.max_classes]
    names = [f"slow_{int(slow[s])}" for s in order]
    tasks = multilabel_tasks("synthetic.slow", on_NS[:, order], names, is_test,
                             (probing.train_size, probing.test_size), probing.seed)
    used, tasks = compact(tasks)
    info = {"classes": names, "feature_index": [int(slow[s]) for s in order],
            "positive_share": {n: float(share_S[s]) for n, s in zip(names, order)},
            "n_contexts": len(used), **_counts(tasks)}
    return ProbeSet("synthetic.slow", acts[used], mask[used], torch.cat([b.doc_start_BT for b in batches])[used],
                    torch.cat([b.position_BT for b in batches])[used], tasks, info)
