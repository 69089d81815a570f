"""Hub models and text: transformer-lens models by name, Hugging Face datasets or local text files.

Everything here needs the Hugging Face hub (or its local cache) except `load_texts` on local files.
Hub failures become `SourceUnavailable`, whose message says how to work offline. The
HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE variables are honoured as they are at call time: the hub
libraries read them once at import, so a notebook that sets them later would otherwise still try
the network (and retry for half a minute before failing).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from tsae_core.sources.corpus import split_documents
from tsae_core.sources.lm import LanguageModelSource, pack_contexts
from tsae_core.sources.text_contexts import bos_id, special_ids, tokenize_documents  # noqa: F401 (importable from here)

_TRUE = {"1", "ON", "YES", "TRUE"}
_BUILDERS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json"}
_OFFLINE_HELP = (
    "To run without the hub: `tsae run params/default.yaml` uses the repo's tiny offline model; or download "
    "the model/dataset into the Hugging Face cache where the hub is reachable and set HF_HUB_OFFLINE=1 here."
)


class SourceUnavailable(RuntimeError):
    """A model or dataset could not be obtained: the hub is unreachable or offline, or the name is wrong."""


class MissingTextColumn(ValueError):
    """The rows of a dataset have no column of the configured name."""


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set to a true value now."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in _TRUE


@contextlib.contextmanager
def _offline_as_set_now() -> Iterator[None]:
    """Make huggingface_hub (hence transformers) and datasets follow the offline variable as it is now."""
    if not hub_offline():
        yield
        return
    import datasets.config as ds_config
    import huggingface_hub.constants as hub_constants

    saved = (hub_constants.HF_HUB_OFFLINE, ds_config.HF_HUB_OFFLINE, ds_config.HF_DATASETS_OFFLINE)
    hub_constants.HF_HUB_OFFLINE = ds_config.HF_HUB_OFFLINE = ds_config.HF_DATASETS_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE, ds_config.HF_HUB_OFFLINE, ds_config.HF_DATASETS_OFFLINE = saved


def _is_hub_failure(err: BaseException) -> bool:
    """Whether an exception means 'could not reach or find it on the hub' (not a bug in our call)."""
    names = {cls.__name__ for cls in type(err).__mro__}
    hub_errors = {"HFValidationError", "LocalEntryNotFoundError", "OfflineModeIsEnabled", "RepositoryNotFoundError",
                  "DatasetNotFoundError", "GatedRepoError", "HfHubHTTPError"}  # fmt: skip
    return isinstance(err, (OSError, ConnectionError, TimeoutError)) or bool(names & hub_errors)


def _unavailable(what: str, err: BaseException) -> SourceUnavailable:
    mode = "offline mode is set (HF_HUB_OFFLINE)" if hub_offline() else "the hub is unreachable"
    return SourceUnavailable(
        f"could not load {what}: {mode} and it is not in the local Hugging Face cache, or the name is wrong "
        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). {_OFFLINE_HELP}"
    )


def load_pretrained(model_name: str, device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float32) -> Any:
    """A transformer-lens HookedTransformer by name, with raw weights (`from_pretrained_no_processing`).

    No LayerNorm folding, weight centring or other processing: activations are what the model
    really computes, so SAEs trained on them apply to the unmodified model (as in SAELens).
    Raises SourceUnavailable when the hub cannot be reached (or the model is not cached offline),
    ValueError when transformer-lens does not know the name.
    """
    from transformer_lens import HookedTransformer, loading

    try:
        loading.get_official_model_name(model_name)
    except ValueError:
        raise ValueError(
            f"transformer-lens does not know the model {model_name!r}; use an official name such as 'gpt2', "
            "'pythia-70m-deduped' or 'gemma-2-2b' (the list: transformer_lens.loading.OFFICIAL_MODEL_NAMES)"
        ) from None
    try:
        with _offline_as_set_now(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TL 3.x deprecates HookedTransformer; SAELens uses it
            model = HookedTransformer.from_pretrained_no_processing(
                model_name, device=str(device), dtype=dtype, local_files_only=hub_offline()
            )
    except Exception as err:
        if _is_hub_failure(err):
            raise _unavailable(f"model {model_name!r}", err) from err
        raise
    return model.eval()


def _local_builder(text_files: list[str]) -> str:
    """The `datasets` builder for local files ("text" or "json"), all files having to agree."""
    builders = set()
    for name in text_files:
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"text file {str(path)!r} does not exist")
        if path.suffix.lower() not in _BUILDERS:
            raise ValueError(f"text file {str(path)!r}: expected one of {sorted(_BUILDERS)} (plain text or JSON lines)")
        builders.add(_BUILDERS[path.suffix.lower()])
    if len(builders) != 1:
        raise ValueError(f"text_files mix plain text and JSON files ({text_files}); give one kind at a time")
    return builders.pop()


def load_texts(
    dataset: str | None = None,
    text_files: list[str] | None = None,
    split: str = "train",
    text_column: str = "text",
    max_documents: int = 10_000,
    streaming: bool = True,
    sample_by: str = "paragraph",
) -> list[str]:
    """Up to `max_documents` non-empty texts (stripped) from a hub dataset or local files, via `datasets.load_dataset`.

    dataset     a hub dataset name (e.g. "Skylion007/openwebtext"), streamed unless `streaming=False`
    text_files  local files instead: .txt through the "text" builder (a document per paragraph by
                default: `sample_by` is "line", "paragraph" or "document"), .jsonl/.json through "json"
    Raises SourceUnavailable for hub failures, FileNotFoundError for a missing local file,
    MissingTextColumn when the rows have no `text_column`.
    """
    import datasets

    if (dataset is None) == (text_files is None):
        raise ValueError("give exactly one of `dataset` (a hub name) or `text_files` (local paths)")
    if max_documents <= 0:
        raise ValueError(f"max_documents must be > 0, got {max_documents}")
    if text_files is not None:
        files = [str(f) for f in text_files]
        builder = _local_builder(files)
        kwargs = {"sample_by": sample_by} if builder == "text" else {}
        what = f"local files {files}"
        # Local files are streamed too: nothing is copied into the datasets cache.
        load = lambda: datasets.load_dataset(builder, data_files=files, split="train", streaming=True, **kwargs)  # noqa: E731
    else:
        what = f"dataset {dataset!r} (split {split!r})"
        load = lambda: datasets.load_dataset(dataset, split=split, streaming=streaming)  # noqa: E731
    try:
        with _offline_as_set_now():
            return _take_texts(load(), text_column, max_documents, what)
    except Exception as err:
        if dataset is not None and _is_hub_failure(err):
            raise _unavailable(what, err) from err
        raise


def _take_texts(rows: Any, text_column: str, max_documents: int, what: str) -> list[str]:
    texts: list[str] = []
    for row in rows:  # iterating a streamed dataset is what reaches the hub, so it stays inside the caller's try
        if text_column not in row:
            raise MissingTextColumn(f"{what} has no column {text_column!r}; its columns are {sorted(row)}")
        text = row[text_column].strip() if isinstance(row[text_column], str) else ""
        if text:
            texts.append(text)
            if len(texts) >= max_documents:
                break
    return texts


def hf_source(
    model_name: str,
    hook_name: str,
    context_size: int,
    dataset: str | None = None,
    text_files: list[str] | None = None,
    text_column: str = "text",
    split: str = "train",
    max_documents: int = 10_000,
    eval_fraction: float = 0.1,
    seed: int = 0,
    max_contexts: dict[str, int | None] | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    random_init: bool = False,
) -> LanguageModelSource:
    """A hub model on hub or local text as a harvestable source (the same harvest code as `tinylm`);
    with `random_init`, a randomly initialised copy of it (`random_init.reinitialised_hooked_transformer`,
    seeded from `seed`), the tokenizer unchanged.

    Documents are split into "train" and "eval" by a hash of their text (`corpus.split_documents`
    with `eval_fraction` and `seed`), tokenised without special tokens and packed into
    BOS-prefixed contexts of `context_size`; `max_contexts[split]` caps a split.
    """
    model = load_pretrained(model_name, device, dtype)
    if random_init:
        from tsae_core.sources.random_init import init_seed, reinitialised_hooked_transformer

        model = reinitialised_hooked_transformer(model, init_seed(seed))
    if model.tokenizer is None:
        raise ValueError(f"model {model_name!r} came without a tokenizer; cannot tokenise text for it")
    if context_size > model.cfg.n_ctx:
        raise ValueError(f"context_size {context_size} exceeds {model_name!r}'s n_ctx {model.cfg.n_ctx}")
    texts = load_texts(dataset, text_files, split=split, text_column=text_column, max_documents=max_documents)
    train_texts, eval_texts = split_documents(texts, eval_fraction, seed)
    max_contexts = max_contexts or {}
    bos, specials = bos_id(model.tokenizer), special_ids(model.tokenizer)
    contexts = {
        split: pack_contexts(tokenize_documents(model.tokenizer, docs), context_size, bos, max_contexts.get(split), specials)
        for split, docs in (("train", train_texts), ("eval", eval_texts))
    }
    describe = {
        "kind": "hf",
        "model": model_name,
        "dataset": dataset,
        "text_files": text_files,
        "text_column": text_column,
        "n_documents": {"train": len(train_texts), "eval": len(eval_texts)},
        "dtype": str(dtype),
        "random_init": random_init,
    }
    return LanguageModelSource(model, hook_name, contexts, batch_size, device, describe)
