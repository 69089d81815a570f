"""Parameters of the activation sources: the synthetic benchmark, the tiny offline model, hub models,
and real pretrained models shipped as GGUF files inside registry packages.

Part of the experiment config (`tsae_core.config`), split out because each source has its own
knobs; every field has a doc line and every range is checked at construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tsae_core.typed import check as _check


@dataclass(frozen=True)
class SyntheticConfig:
    """The synthetic temporal benchmark: known feature directions with known temporal statistics."""

    d_model: int = 64
    """Dimension of the generated activations."""
    n_fast: int = 160
    """Features firing i.i.d. per token with Zipf-like frequencies."""
    n_slow: int = 64
    """Features following a two-state Markov chain within a document (persistent runs)."""
    n_positional: int = 32
    """Features whose firing probability depends on the position within the document."""
    fast_max_rate: float = 0.03
    """Firing probability of the most frequent fast feature."""
    fast_min_rate: float = 0.0015
    """Firing probability of the rarest fast feature (Zipf-like between the two)."""
    slow_min_run: float = 8.0
    """Shortest mean run length (tokens) of a slow feature."""
    slow_max_run: float = 64.0
    """Longest mean run length (tokens) of a slow feature."""
    slow_max_rate: float = 0.04
    """Stationary firing probability of the most frequent slow feature."""
    slow_min_rate: float = 0.003
    """Stationary firing probability of the rarest slow feature."""
    positional_width: int = 4
    """Width (tokens) of the position window in which a positional feature fires."""
    positional_rate: float = 0.5
    """Firing probability of a positional feature inside its window."""
    positional_max_position: int = 96
    """Positional windows start anywhere in [0, positional_max_position)."""
    hierarchy_boost: float = 0.0
    """If > 0, each slow feature multiplies the rate of a few fast 'children' by (1 + boost) while on."""
    magnitude_mean: float = 1.0
    """Mean firing magnitude (magnitudes are log-normal, positive)."""
    magnitude_spread: float = 0.3
    """Standard deviation of log-magnitude."""
    noise_std: float = 0.02
    """Standard deviation per dimension of isotropic Gaussian noise."""
    mean_doc_length: int = 96
    """Mean document length in tokens (geometric lengths, at least 4)."""
    rare_rate: float = 0.01
    """Features with stationary rate below this are reported as 'rare'."""

    def __post_init__(self) -> None:
        for name in ("d_model", "mean_doc_length", "positional_width", "positional_max_position"):
            _check(getattr(self, name) > 0, f"source.synthetic.{name}", "must be > 0")
        for name in ("n_fast", "n_slow", "n_positional"):
            _check(getattr(self, name) >= 0, f"source.synthetic.{name}", "must be >= 0")
        _check(self.n_features > 0, "source.synthetic", "needs at least one feature")
        for name in ("fast_max_rate", "fast_min_rate", "slow_max_rate", "slow_min_rate", "positional_rate"):
            v = getattr(self, name)
            _check(0.0 < v <= 1.0, f"source.synthetic.{name}", f"must be in (0, 1], got {v}")
        _check(self.fast_min_rate <= self.fast_max_rate, "source.synthetic.fast_min_rate", "must be <= fast_max_rate")
        _check(self.slow_min_rate <= self.slow_max_rate, "source.synthetic.slow_min_rate", "must be <= slow_max_rate")
        _check(1.0 <= self.slow_min_run <= self.slow_max_run, "source.synthetic.slow_min_run", "need 1 <= slow_min_run <= slow_max_run")
        _check(self.magnitude_mean > 0, "source.synthetic.magnitude_mean", "must be > 0")
        for name in ("magnitude_spread", "noise_std", "hierarchy_boost"):
            _check(getattr(self, name) >= 0, f"source.synthetic.{name}", "must be >= 0")

    @property
    def n_features(self) -> int:
        return self.n_fast + self.n_slow + self.n_positional


@dataclass(frozen=True)
class TinyLMConfig:
    """The tiny byte-level model the repo trains itself on Python's own documentation (kind: tinylm).

    Its hash names the cache entry; the defaults train in a few minutes on 2 CPU cores and reach a
    held-out loss far below the unigram baseline (recorded in the run's manifest).
    """

    n_layers: int = 2
    """Transformer blocks."""
    d_model: int = 128
    """Residual stream width (the SAE's d_in when hooking the residual stream)."""
    n_heads: int = 4
    """Attention heads per block (d_head = d_model / n_heads)."""
    d_mlp: int = 512
    """MLP hidden width."""
    n_ctx: int = 128
    """Context length, BOS included; also the longest context the model can be harvested at."""
    train_steps: int = 600
    """Optimiser steps (600 x 32 x 128 = 2.5M bytes, about 1.6 passes over the training text)."""
    batch_size: int = 32
    """Contexts per step."""
    lr: float = 6e-3
    """Peak learning rate."""
    warmup: int = 60
    """Steps of linear warmup before the cosine decay."""
    weight_decay: float = 0.01
    """AdamW weight decay (matrices and embeddings alike)."""
    heldout_fraction: float = 0.1
    """Share of documents held out (by a hash of their text) for the held-out loss and eval harvest."""
    seed: int = 0
    """Seed of initialisation, batch order and the document split."""
    max_documents: int | None = None
    """Use only the first this many corpus documents (None: all of them)."""
    eval_contexts: int = 384
    """Held-out contexts the held-out loss is measured on."""

    def __post_init__(self) -> None:
        for name in ("n_layers", "d_model", "n_heads", "d_mlp", "train_steps", "batch_size", "eval_contexts"):
            _check(getattr(self, name) > 0, f"source.tinylm.{name}", "must be > 0")
        _check(self.d_model % self.n_heads == 0, "source.tinylm.d_model", f"must be divisible by n_heads ({self.n_heads})")
        _check(self.n_ctx >= 2, "source.tinylm.n_ctx", "must be at least 2")
        _check(0.0 < self.heldout_fraction < 1.0, "source.tinylm.heldout_fraction", "must be in (0, 1)")
        _check(self.lr > 0, "source.tinylm.lr", "must be > 0")
        _check(self.weight_decay >= 0, "source.tinylm.weight_decay", "must be >= 0")
        _check(0 <= self.warmup < self.train_steps, "source.tinylm.warmup", "must be in [0, train_steps)")


@dataclass(frozen=True)
class HFConfig:
    """A transformer-lens model and a text dataset from the Hugging Face hub (or local files)."""

    model_name: str = "gpt2"
    """transformer-lens model name, e.g. gpt2, pythia-70m-deduped, gemma-2-2b."""
    dataset: str = "Skylion007/openwebtext"
    """Hub dataset name, streamed (ignored when text_files is set)."""
    text_files: list[str] = field(default_factory=list)
    """Local .txt (one document per line) or .jsonl files to use instead of a hub dataset."""
    dataset_split: str = "train"
    """Dataset split to read."""
    text_column: str = "text"
    """Column holding the text (jsonl and hub datasets)."""
    max_documents: int = 20_000
    """Documents read (enough to fill the harvest's contexts; about 1k tokens each on OpenWebText)."""
    model_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Model weights dtype; auto = bfloat16 on GPU, float32 on CPU."""

    def __post_init__(self) -> None:
        _check(bool(self.model_name), "source.hf.model_name", "must be set")
        _check(bool(self.dataset) or bool(self.text_files), "source.hf.dataset", "set a dataset or text_files")
        _check(self.max_documents > 0, "source.hf.max_documents", "must be > 0")


@dataclass(frozen=True)
class GGUFConfig:
    """A real pretrained model whose GGUF file ships inside registry packages (kind: gguf).

    The file is found through the packages' installed file lists (their code is never imported),
    checked against `sha256`, dequantized to float32 by `transformers` and wrapped by
    transformer-lens; chunks spread over several packages are joined once into the tsae cache.
    """

    packages: list[str] = field(default_factory=list)
    """Distributions holding the file, in order: one package with the whole file, or one per chunk (`<file>.partNN`)."""
    file: str = ""
    """File name of the GGUF model (the chunks are named `<file>.part00`, `<file>.part01`, ...)."""
    sha256: str = ""
    """SHA-256 of the whole GGUF file (64 hex digits), checked before anything is loaded."""
    transformer_lens_name: str = ""
    """Official transformer-lens name of the architecture (HookedTransformer); empty: TransformerBridge."""
    text_files: list[str] = field(default_factory=list)
    """Local .txt/.jsonl files to harvest on; empty: an offline corpus that ships with Python (`corpus`)."""
    corpus: Literal["python_docs", "python_source"] = "python_docs"
    """Without text_files: python_docs (pydoc topics and stdlib docstrings, ~0.4M tokens of Gemma's
    tokenizer) or python_source (the topics and the stdlib's source files whole, ~3M tokens)."""
    text_column: str = "text"
    """Column holding the text in .jsonl files."""
    max_documents: int | None = None
    """Read at most this many documents (None: all of them)."""
    eval_fraction: float = 0.1
    """Share of documents held out (by a hash of their text) for the eval split."""
    bos_token: str = ""
    """Token that starts every context; empty: the tokenizer's BOS (else its EOS)."""

    def __post_init__(self) -> None:
        _check(len(set(self.packages)) == len(self.packages), "source.gguf.packages", "must not repeat a package")
        _check(len(self.sha256) in (0, 64) and all(c in "0123456789abcdef" for c in self.sha256),
               "source.gguf.sha256", "must be 64 lowercase hex digits")
        _check(self.max_documents is None or self.max_documents > 0, "source.gguf.max_documents", "must be > 0")
        _check(0.0 < self.eval_fraction < 1.0, "source.gguf.eval_fraction", "must be in (0, 1)")

    def check_complete(self) -> None:
        """Raise if the model is not fully named (called when kind is gguf)."""
        _check(bool(self.packages), "source.gguf.packages", "name the package(s) holding the GGUF file")
        _check(bool(self.file) and "/" not in self.file, "source.gguf.file", "must be a file name, e.g. model.Q4_K_M.gguf")
        _check(bool(self.sha256), "source.gguf.sha256", "give the file's SHA-256, so a damaged file is refused")


@dataclass(frozen=True)
class SourceConfig:
    kind: Literal["synthetic", "tinylm", "hf", "gguf"] = "synthetic"
    """Where activations come from: the synthetic benchmark, the tiny offline model, a hub model, or a packaged GGUF model."""
    hook_name: str = "blocks.1.hook_resid_post"
    """transformer-lens hook whose activations are harvested (language-model sources)."""
    model_batch_size: int = 32
    """Sequences per forward pass of the language model (harvest and model-preservation metrics)."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    """Settings of the synthetic benchmark (kind: synthetic)."""
    tinylm: TinyLMConfig = field(default_factory=TinyLMConfig)
    """The tiny offline model (kind: tinylm)."""
    hf: HFConfig = field(default_factory=HFConfig)
    """Hub model and dataset (kind: hf)."""
    gguf: GGUFConfig = field(default_factory=GGUFConfig)
    """A pretrained model from a GGUF file shipped in registry packages (kind: gguf)."""
    random_init: bool = False
    """The random-transformer control: harvest (and evaluate against) a randomly initialised copy of
    the model instead of the model itself, with the same architecture, tokenizer and text. tinylm: the
    initial weights of `tinylm.seed`, untrained (the trained model's cache entry is neither read nor
    written); hf and gguf: the architecture re-initialised by transformer-lens (`init_weights`), seeded
    by `run.seed` (a gguf model without `transformer_lens_name`: the Hugging Face model re-initialised
    from its config). Recorded in the store's manifest and in the harvest hash."""

    def __post_init__(self) -> None:
        _check(self.model_batch_size > 0, "source.model_batch_size", "must be > 0")
        _check(not self.random_init or self.kind != "synthetic", "source.random_init",
               "applies to a language model (kind tinylm, hf or gguf); the synthetic source has no model to re-initialise")
        parts = self.hook_name.split(".")
        _check(
            len(parts) >= 3 and parts[0] == "blocks" and parts[1].isdigit(),
            "source.hook_name",
            f"must look like blocks.<layer>.hook_resid_post, got {self.hook_name!r}",
        )
        if self.kind == "gguf":
            self.gguf.check_complete()
