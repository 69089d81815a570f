"""Typed, validated experiment parameters: one dataclass per section of a params YAML file.

`load_config(path, overrides)` reads a YAML file, applies dotted overrides
(``{"train.steps": 200}``), and builds an `ExperimentConfig`. Unknown keys, wrong types and
out-of-range values raise `ConfigError` naming the key and the file, before any heavy work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tsae_core.params_file import (  # noqa: F401 (part of this module's interface)
    apply_overrides,
    find_params_file,
    parse_override,
    project_root,
    read_params,
    resolve_path,
    system_folder_problem,
)
from tsae_core.source_config import GGUFConfig, HFConfig, SourceConfig, SyntheticConfig, TinyLMConfig  # noqa: F401 (every section importable from here)
from tsae_core.typed import ConfigError, build
from tsae_core.typed import check as _check
from tsae_core.variant_config import VariantConfig  # noqa: F401 (every section importable from here)

# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------

_PLAIN_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def check_plain_name(name: str, key: str) -> None:
    """A name that becomes a file or folder name: letters, digits, `.`, `_`, `-`; not `.` or `..`."""
    _check(bool(_PLAIN_NAME.fullmatch(name)) and name not in (".", ".."), key,
           f"{name!r} must be a plain name (letters, digits, '.', '_', '-'; not '.' or '..'): it names a folder")



@dataclass(frozen=True)
class RunConfig:
    name: str = "default"
    """Run name; every artifact goes to `<out_dir>/<name>/`."""
    seed: int = 0
    """Master seed: every stage derives its own generators from it."""
    seeds: list[int] = field(default_factory=list)
    """Training seeds: every variant is trained once per seed (named `<variant>-seed<N>`) and results
    are reported as mean ± std. Empty: one SAE per variant, with `seed`."""
    out_dir: str = "runs"
    """Directory holding runs, relative to the project root unless absolute."""
    device: str = "auto"
    """`auto` (CUDA when available, else CPU), `cpu`, `cuda` or `cuda:N`."""
    expected_unhealthy: dict[str, str] = field(default_factory=dict)
    """Variants this run expects the health verdict to flag, each with the reason (a known failure kept
    in the comparison on purpose, e.g. the L1 SAE at a low L0 on a model whose token norms vary
    widely, or a control built to smooth). They are still evaluated, flagged and printed as unhealthy,
    with the reason; only they do not make the exit status 3. One that turns out healthy is said so."""

    def __post_init__(self) -> None:
        check_plain_name(self.name, "run.name")
        for name, why in self.expected_unhealthy.items():
            _check(isinstance(why, str) and why.strip() != "", f"run.expected_unhealthy.{name}",
                   "give the reason this SAE is expected to be unhealthy (a sentence), not an empty value")
        _check(len(set(self.seeds)) == len(self.seeds), "run.seeds", f"must not repeat a seed, got {self.seeds}")
        _check(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            "run.device",
            f"must be auto, cpu, cuda or cuda:N, got {self.device!r}",
        )


@dataclass(frozen=True)
class HarvestConfig:
    context_size: int = 128
    """Tokens per sequence (context)."""
    n_train_sequences: int = 4096
    """Sequences in the training split."""
    n_eval_sequences: int = 512
    """Held-out sequences in the eval split (disjoint from training)."""
    sequences_per_shard: int = 512
    """Sequences per shard file."""
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """Storage dtype of activations."""

    def __post_init__(self) -> None:
        for name in ("context_size", "n_train_sequences", "n_eval_sequences", "sequences_per_shard"):
            _check(getattr(self, name) > 0, f"harvest.{name}", "must be > 0")
        _check(self.context_size >= 2, "harvest.context_size",
               "must be >= 2: temporal losses and metrics compare neighbouring positions, and a context of 1 has none")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 3000
    """Optimizer steps per variant."""
    batch_sequences: int = 16
    """Whole sequences per batch (tokens per batch = batch_sequences * context_size)."""
    lr_scale: float = 1.0
    """Multiplies every variant's recipe learning rate (small models tolerate more)."""
    warmup_steps: int = 200
    """Linear learning-rate warmup."""
    decay_fraction: float = 0.2
    """Linear decay of the learning rate to zero over this final fraction of steps."""
    sparsity_warmup_fraction: float = 0.05
    """Linear warmup of the sparsity coefficient over this initial fraction of steps."""
    grad_clip: float = 1.0
    """Global gradient-norm clip."""
    target_l0: float = 0.0
    """The L0 every variant is trained to unless it sets its own `target_l0` or `k`: one number
    for a comparison at matched sparsity (0: each variant's own settings)."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    dead_after_tokens: int = 200_000
    """A latent is dead after this many training tokens without firing."""
    log_every: int = 25
    """Steps between training-curve records."""
    checkpoint_every: int = 500
    """Steps between checkpoints (0 disables)."""
    b_dec_init: Literal["geometric_median", "mean", "zeros"] = "geometric_median"
    """Initial decoder bias."""
    sparse_codes: Literal["auto", "always", "never"] = "auto"
    """TopK / BatchTopK training through the sparse path (decoder and gradients touch only the kept
    codes; the same result as the dense path to float precision): auto takes it where it is faster
    (CPU, from 1024 latents on; benchmarks/train_step.py --both-paths)."""

    def __post_init__(self) -> None:
        _check(self.steps > 0, "train.steps", "must be > 0")
        _check(self.batch_sequences > 0, "train.batch_sequences", "must be > 0")
        _check(self.lr_scale > 0, "train.lr_scale", "must be > 0")
        _check(self.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
        _check(0 <= self.decay_fraction <= 1, "train.decay_fraction", "must be in [0, 1]")
        _check(0 <= self.sparsity_warmup_fraction <= 1, "train.sparsity_warmup_fraction", "must be in [0, 1]")
        _check(self.grad_clip > 0, "train.grad_clip", "must be > 0")
        _check(self.target_l0 >= 0, "train.target_l0", "must be >= 0 (0: each variant's own)")
        _check(all(0 <= b < 1 for b in self.adam_betas), "train.adam_betas", "must be in [0, 1)")
        _check(self.dead_after_tokens > 0, "train.dead_after_tokens", "must be > 0")
        _check(self.log_every > 0, "train.log_every", "must be > 0")
        _check(self.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0")


@dataclass(frozen=True)
class EvalConfig:
    batch_sequences: int = 64
    """Sequences per evaluation batch."""
    max_sequences: int = 0
    """Evaluate at most this many eval-split sequences (0: all)."""
    recovery_threshold: float = 0.9
    """A true feature counts as recovered if some decoder row has cosine >= this."""
    dense_threshold: float = 0.1
    """A latent firing on more than this fraction of tokens counts as dense."""
    model_max_sequences: int = 256
    """Eval sequences for the language-model metrics (CE, KL with the SAE spliced in); 0 skips them."""

    def __post_init__(self) -> None:
        _check(self.batch_sequences > 0, "eval.batch_sequences", "must be > 0")
        _check(self.max_sequences >= 0, "eval.max_sequences", "must be >= 0")
        _check(0 < self.recovery_threshold <= 1, "eval.recovery_threshold", "must be in (0, 1]")
        _check(0 < self.dense_threshold <= 1, "eval.dense_threshold", "must be in (0, 1]")
        _check(self.model_max_sequences >= 0, "eval.model_max_sequences", "must be >= 0")


@dataclass(frozen=True)
class ClusterConfig:
    method: Literal["kmeans", "agglomerative", "gmm"] = "kmeans"
    """How latents are grouped: k-means, Ward agglomerative (memory quadratic in alive latents) or a
    Gaussian mixture with diagonal covariances."""
    n_clusters: int | list[int] = field(default_factory=lambda: list(range(2, 11)))
    """Clusters of learned features: a number, or a list of candidates of which the one with the
    highest silhouette score is kept."""
    max_lag: int = 16
    """Autocorrelation lags used as temporal descriptors of a feature."""
    max_sequences: int = 256
    """Eval sequences used to describe features."""
    coactivation_dims: int = 8
    """Dimensions of the co-activation descriptor (truncated SVD of which latents fire on the same
    tokens); 0 leaves co-activation out."""
    example_latents: int = 2
    """Language-model sources: latents per cluster shown with their top-activating contexts."""
    example_contexts: int = 3
    """Top-activating contexts kept per latent (at most one per sequence)."""
    context_before: int = 16
    """Tokens shown before the activating token (within its document)."""
    context_after: int = 4
    """Tokens shown after the activating token (within its document)."""

    def __post_init__(self) -> None:
        candidates = self.candidate_counts()
        _check(len(candidates) > 0, "cluster.n_clusters", "give a number of clusters or a list of candidates")
        _check(all(k >= 2 for k in candidates), "cluster.n_clusters", f"every count must be >= 2, got {self.n_clusters}")
        _check(len(set(candidates)) == len(candidates), "cluster.n_clusters", f"must not repeat a count, got {self.n_clusters}")
        _check(self.max_lag >= 1, "cluster.max_lag", "must be >= 1")
        _check(self.max_sequences > 0, "cluster.max_sequences", "must be > 0")
        _check(self.coactivation_dims >= 0, "cluster.coactivation_dims", "must be >= 0 (0: no co-activation descriptor)")
        for name in ("example_latents", "example_contexts", "context_before", "context_after"):
            _check(getattr(self, name) >= 0, f"cluster.{name}", "must be >= 0")

    def candidate_counts(self) -> list[int]:
        """The numbers of clusters to try, in the order given."""
        return [self.n_clusters] if isinstance(self.n_clusters, int) else list(self.n_clusters)


@dataclass(frozen=True)
class DashboardConfig:
    """The static HTML feature browser (`runs/<run>/dashboard/`) and its blind-rating page
    (`tsae_core.dashboard`)."""

    enabled: bool = True
    """Write the dashboard (the stage only says how to turn it on when off)."""
    n_features: int = 24
    """Feature pages per SAE: a seeded random sample of its alive latents (unbiased, so the pages and
    the blind rating show what a variant's features are like, not its best ones)."""
    n_concepts: int = 8
    """Concepts on the side-by-side page: the first sampled features of the baseline, each beside the
    feature of every other variant whose decoder direction is closest to it."""
    rating_pairs: int = 6
    """Blind-rating pairs per compared variant: a sampled feature of the variant beside one of its
    baseline, in random order and on random sides, names hidden."""
    baseline: str = ""
    """The SAE the concept page and the rating compare against; empty: the token-wise baseline most
    variants are compared with (`tsae_core.comparison.find_baselines`)."""
    max_sequences: int = 256
    """Eval sequences read for the pages (contexts, histograms, temporal profiles)."""
    top_contexts: int = 8
    """Top-activating contexts per feature (at most one per sequence)."""
    quantile_bins: int = 4
    """Bins of the feature's non-zero activations (by quantile) from which samples are drawn."""
    samples_per_bin: int = 3
    """Contexts drawn at random from each quantile bin."""
    context_before: int = 24
    """Tokens shown before the marked token (within its document)."""
    context_after: int = 8
    """Tokens shown after the marked token (within its document)."""
    max_lag: int = 16
    """Lags of the autocorrelation profile."""

    def __post_init__(self) -> None:
        for name in ("n_features", "max_sequences", "top_contexts", "quantile_bins", "max_lag"):
            _check(getattr(self, name) >= 1, f"dashboard.{name}", "must be >= 1")
        for name in ("n_concepts", "rating_pairs", "samples_per_bin", "context_before", "context_after"):
            _check(getattr(self, name) >= 0, f"dashboard.{name}", "must be >= 0")
        _check(self.rating_pairs <= self.n_features, "dashboard.rating_pairs",
               f"rating pairs are drawn from the {self.n_features} sampled features (dashboard.n_features); "
               f"ask for at most that many")
        _check(self.n_concepts <= self.n_features, "dashboard.n_concepts",
               f"concepts are the baseline's first sampled features; ask for at most dashboard.n_features ({self.n_features})")


INTERNET_PACKAGES = (
    "base64", "cgi", "cgitb", "email", "ftplib", "html", "http", "imaplib", "ipaddress", "json", "mimetypes",
    "nntplib", "poplib", "quopri", "smtpd", "smtplib", "socketserver", "telnetlib", "urllib", "uuid", "webbrowser",
    "wsgiref", "xml", "xmlrpc",
)
"""The stdlib packages of the library reference's chapters "Internet Data Handling", "Structured Markup
Processing Tools" and "Internet Protocols and Support" that have docstrings in the corpus (502 of its
2,246 docstrings with CPython 3.11: email 133, xml 83, http 51, ipaddress 33, urllib 26, ...)."""


@dataclass(frozen=True)
class UnlearningConfig:
    """The offline analogue of SAEBench's unlearning eval (`tsae_core.unlearning`): clamp the latents
    that fire on a "forget" set and not on a "retain" set, and measure what the model loses on each."""

    enabled: bool = True
    """Run the unlearning eval (language-model and synthetic sources; the crosscoder is always skipped)."""
    forget_packages: list[str] = field(default_factory=lambda: list(INTERNET_PACKAGES))
    """Language models: the forget set is the corpus docstrings of these top-level stdlib packages; the
    retain set is every other docstring (pydoc topics are left out of both: a different genre)."""
    retain_thresholds: list[float] = field(default_factory=lambda: [0.001, 0.01])
    """Sweep: a latent is eligible only if it fires on at most this fraction of retain-selection tokens."""
    n_latents: list[int] = field(default_factory=lambda: [4, 12, 32])
    """Sweep: how many eligible latents are clamped (the top ones by forget/retain firing ratio)."""
    multipliers: list[float] = field(default_factory=lambda: [1.0, 4.0, 16.0])
    """Sweep: an active selected latent is clamped to -multiplier x its mean active value on the
    selection data (SAEBench clamps to -multiplier in absolute units: 25, 50, 100, 200)."""
    max_retain_increase: float = 0.01
    """The constraint of the score: retain CE may rise by at most this fraction of the clean retain CE
    (synthetic: retain damage, a fraction of the retain tokens' variance, at most this)."""
    max_contexts: int = 64
    """Contexts in each of the four sets (forget / retain x selection / test); synthetic: sequences in
    each of the selection and test splits."""
    min_contexts: int = 16
    """Fewer forget contexts than this in either half is an error (choose more or other forget_packages)."""
    split_seed: int = 0
    """Seed of the text hash that splits each set into its selection and test halves."""
    control_seeds: list[int] = field(default_factory=lambda: [0])
    """Seeds of the random-latent control (the same sweep with random eligible latents); empty: no control."""
    synthetic_forget_features: int = 8
    """Synthetic source: the forget set is this many slow true features (the most frequent ones)."""

    def __post_init__(self) -> None:
        _check(bool(self.forget_packages), "unlearning.forget_packages", "name at least one stdlib package")
        _check(len(set(self.forget_packages)) == len(self.forget_packages), "unlearning.forget_packages", "must not repeat a package")
        _check(bool(self.retain_thresholds) and all(0 < t <= 1 for t in self.retain_thresholds), "unlearning.retain_thresholds",
               f"give firing frequencies in (0, 1], got {self.retain_thresholds}")
        _check(bool(self.n_latents) and all(n > 0 for n in self.n_latents), "unlearning.n_latents",
               f"give counts > 0, got {self.n_latents}")
        _check(bool(self.multipliers) and all(m > 0 for m in self.multipliers), "unlearning.multipliers",
               f"give multipliers > 0 (the clamp value is -multiplier x scale), got {self.multipliers}")
        _check(0 <= self.max_retain_increase < 1, "unlearning.max_retain_increase", "must be in [0, 1)")
        _check(self.min_contexts >= 1, "unlearning.min_contexts", "must be >= 1")
        _check(self.max_contexts >= self.min_contexts, "unlearning.max_contexts", f"must be >= min_contexts ({self.min_contexts})")
        _check(len(set(self.control_seeds)) == len(self.control_seeds), "unlearning.control_seeds", "must not repeat a seed")
        _check(self.synthetic_forget_features > 0, "unlearning.synthetic_forget_features", "must be > 0")


@dataclass(frozen=True)
class PlotConfig:
    dpi: int = 120
    """Resolution of saved PNG figures."""
    figures_dir: str = "figures"
    """Figures go to `<figures_dir>/<run name>/`, relative to the project root unless absolute."""

    def __post_init__(self) -> None:
        _check(self.dpi > 10, "plot.dpi", "must be > 10")


AUTOINTERP_TRANSPORT_KEYS = ("concurrency", "timeout_s", "retries", "backoff_s", "max_requests", "cache_dir")
"""Settings of `autointerp` that change how requests travel, never what they ask: outside the result's key."""
AUTOINTERP_NOT_ASKED_KEYS = (*AUTOINTERP_TRANSPORT_KEYS, "control_run")
"""Settings of `autointerp` outside the result's key: the transport, and the control run (read by the plot stage)."""


@dataclass(frozen=True)
class AutointerpConfig:
    """Automated interpretability in SAEBench's protocol (`tsae_core.autointerp`): an explainer LLM
    describes each sampled latent from its top and importance-weighted examples, a scorer LLM
    predicts from that description which of 14 shuffled sequences make it fire."""

    backend: Literal["none", "openai", "oracle"] = "none"
    """`none`: off (the stage only says how to turn it on); `openai`: any OpenAI-compatible chat
    endpoint (a hosted API, vLLM, llama.cpp server, Ollama); `oracle`: no LLM, the synthetic
    source's true features explain and score (a check of the pipeline)."""
    base_url: str = ""
    """The endpoint's base URL, up to and including `/v1` (e.g. `https://api.openai.com/v1`,
    `http://127.0.0.1:8000/v1` for vLLM, `http://127.0.0.1:11434/v1` for Ollama)."""
    model: str = ""
    """The judge model's name as the endpoint serves it (explainer and scorer alike)."""
    api_key_env: str = ""
    """Name of the environment variable holding the API key (never the key itself); empty: no key
    is sent (local servers)."""
    temperature: float | None = None
    """Sampling temperature sent with every request; null leaves it out (the endpoint's default,
    as SAEBench does)."""
    n_latents: int = 1000
    """Latents sampled at random among those alive (SAEBench: 1000)."""
    dead_latent_threshold: int = 15
    """A latent is sampled only if it fires on more than this many scanned tokens (SAEBench: 15)."""
    seed: int = 42
    """Seed of the latent sample and of every example draw (SAEBench: 42)."""
    max_tokens: int = 2_000_000
    """Eval-split tokens scanned for examples, at most (SAEBench: 2M tokens at context 128); a
    store with fewer eval tokens is scanned whole."""
    buffer: int = 10
    """Tokens shown on each side of an example's chosen token (SAEBench: 10, windows of 21 tokens)."""
    act_threshold_frac: float = 0.01
    """A token counts as active (marked, and making its sequence a positive) above this fraction of
    the latent's largest top-example activation (SAEBench: 0.01)."""
    n_top_ex_for_generation: int = 10
    """Top-activating examples shown to the explainer (SAEBench: 10)."""
    n_iw_sampled_ex_for_generation: int = 5
    """Importance-weighted examples shown to the explainer (SAEBench: 5)."""
    n_top_ex_for_scoring: int = 2
    """Top-activating examples among the scorer's sequences (SAEBench: 2)."""
    n_iw_sampled_ex_for_scoring: int = 2
    """Importance-weighted examples among the scorer's sequences (SAEBench: 2)."""
    n_random_ex_for_scoring: int = 10
    """Random sequences among the scorer's sequences (SAEBench: 10)."""
    max_tokens_in_explanation: int = 30
    """Completion-token limit of an explanation (SAEBench: 30)."""
    use_demos_in_explanation: bool = True
    """Give the explainer four example explanations (SAEBench: true)."""
    random_example_labels: Literal["activations", "saebench"] = "activations"
    """Whether a random scoring sequence is a positive: `activations` when the latent fires in it
    (above the threshold), as for every other sequence; `saebench` never (SAEBench's shortcut,
    which counts a correct "fires" on a random sequence as wrong)."""
    temporal_window: int = 32
    """The temporal rescoring: the scorer is shown this many tokens before each example's chosen
    token (instead of `buffer`), with the same explanations; 0 skips it."""
    shuffled_control: bool = True
    """Also score each latent with another latent's explanation (a control: what a description
    unrelated to the latent scores)."""
    concurrency: int = 8
    """Requests in flight at once."""
    timeout_s: float = 60.0
    """Seconds a request may take before it counts as failed (and is retried)."""
    retries: int = 4
    """Retries of a request after a 429, a 5xx, a timeout or a dropped connection, with exponential backoff."""
    backoff_s: float = 2.0
    """First backoff in seconds (doubled after each retry; a server's Retry-After wins, up to 60 s)."""
    max_requests: int = 5000
    """A run of one SAE that needs more requests than this (not counting cached ones) stops before
    calling anything (1000 latents cost 4000 with both controls)."""
    cache_dir: str = ""
    """Response cache, keyed by the sha256 of the full request: a rerun costs nothing and scores the
    same; empty: `<run>/autointerp_cache`. Relative to the project root unless absolute."""
    control_run: str = ""
    """The random-transformer control: the name of a run (under the same `run.out_dir`) that trained
    the same variants, with the same autointerp judge and settings, on a randomly initialised copy of
    the model (`source.random_init: true`). The plot stage attaches its `eval/autointerp/<sae>.json`
    to the SAE of the same name as `autointerp_random_transformer` (comparison column and a bar in
    autointerp.png); a run directory that does not exist stops the plot stage with a message saying
    how to make it. Empty: no such control."""

    def __post_init__(self) -> None:
        if self.backend == "openai":
            _check(bool(self.base_url), "autointerp.base_url",
                   "set the endpoint, e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1 (vLLM)")
            _check(self.base_url.startswith(("http://", "https://")), "autointerp.base_url",
                   f"must start with http:// or https://, got {self.base_url!r}")
            _check(bool(self.model), "autointerp.model", "name the judge model the endpoint serves, e.g. gpt-4o-mini")
        _check(not self.api_key_env or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env) is not None,
               "autointerp.api_key_env", "must be the NAME of an environment variable (e.g. OPENAI_API_KEY), never the key itself")
        _check(self.n_latents > 0, "autointerp.n_latents", "must be > 0")
        _check(self.dead_latent_threshold >= 0, "autointerp.dead_latent_threshold", "must be >= 0")
        _check(self.max_tokens > 0, "autointerp.max_tokens", "must be > 0")
        _check(self.buffer >= 1, "autointerp.buffer", "must be >= 1")
        _check(0 < self.act_threshold_frac < 1, "autointerp.act_threshold_frac", "must be in (0, 1)")
        for name in ("n_top_ex_for_generation", "n_iw_sampled_ex_for_generation", "n_top_ex_for_scoring",
                     "n_iw_sampled_ex_for_scoring", "n_random_ex_for_scoring"):
            _check(getattr(self, name) >= 0, f"autointerp.{name}", "must be >= 0")
        _check(self.n_top_ex_for_generation + self.n_iw_sampled_ex_for_generation > 0, "autointerp.n_top_ex_for_generation",
               "the explainer needs at least one example")
        _check(self.max_tokens_in_explanation > 0, "autointerp.max_tokens_in_explanation", "must be > 0")
        _check(self.temporal_window >= 0, "autointerp.temporal_window", "must be >= 0 (0 skips the temporal rescoring)")
        _check(self.concurrency >= 1, "autointerp.concurrency", "must be >= 1")
        _check(self.timeout_s > 0, "autointerp.timeout_s", "must be > 0")
        _check(self.retries >= 0, "autointerp.retries", "must be >= 0")
        _check(self.backoff_s >= 0, "autointerp.backoff_s", "must be >= 0")
        _check(self.max_requests >= 0, "autointerp.max_requests", "must be >= 0")
        if self.control_run:
            check_plain_name(self.control_run, "autointerp.control_run")

    @property
    def n_ex_for_scoring(self) -> int:
        return self.n_top_ex_for_scoring + self.n_iw_sampled_ex_for_scoring + self.n_random_ex_for_scoring

    @property
    def n_correct_for_scoring(self) -> int:
        return self.n_top_ex_for_scoring + self.n_iw_sampled_ex_for_scoring

    @property
    def max_tokens_in_prediction(self) -> int:
        """Completion-token limit of a prediction: comma-separated numbers (SAEBench: 2 n + 5)."""
        return 2 * self.n_ex_for_scoring + 5


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
    """SAEBench-style sparse probing (`tsae_core.sparse_probing`): per labelled set, binary one-vs-rest
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
        from tsae_core.labelled_sets import OFFLINE_SETS  # late: a light module, but it needs no config

        for name in self.datasets:
            _check(name in OFFLINE_SETS or name in self.hub, "probing.datasets",
                   f"unknown set {name!r}: offline sets are {', '.join(OFFLINE_SETS)}; a hub set must be a key of probing.hub")


@dataclass(frozen=True)
class SweepConfig:
    """A grid over one variant's knobs, expanded into named variants trained like any other."""

    variant: str = ""
    """The variant (a key of `variants`) whose copies differ in the swept knobs."""
    grid: dict[str, list[Any]] = field(default_factory=dict)
    """Knob path inside the variant (`k`, `d_sae`, `options.window`, ...) -> values; the grid is their product."""

    def __post_init__(self) -> None:
        _check(bool(self.variant), "variant", "name the variant to sweep")
        _check(bool(self.grid), "grid", "give at least one knob with its values")
        for knob, values in self.grid.items():
            _check(bool(values), f"grid.{knob}", "give at least one value")


@dataclass(frozen=True)
class Instance:
    """One SAE to train: a variant with a seed, under its own name (the variant's, or `<variant>-seed<N>`)."""

    name: str
    variant: str
    seed: int


@dataclass(frozen=True)
class ExperimentConfig:
    run: RunConfig = field(default_factory=RunConfig)
    """Run identity, seed, output location."""
    source: SourceConfig = field(default_factory=SourceConfig)
    """Where activations come from."""
    harvest: HarvestConfig = field(default_factory=HarvestConfig)
    """How activations are stored."""
    variants: dict[str, VariantConfig] = field(default_factory=lambda: {"topk": VariantConfig()})
    """SAEs to train, by name."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Training recipe shared by all variants."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation settings."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """Feature clustering settings."""
    unlearning: UnlearningConfig = field(default_factory=UnlearningConfig)
    """The unlearning eval (offline analogue of SAEBench's): forget/retain sets, the clamp sweep, its score."""
    plot: PlotConfig = field(default_factory=PlotConfig)
    """Figure settings."""
    probing: ProbingConfig = field(default_factory=ProbingConfig)
    """Sparse probing of every SAE on labelled text (or the synthetic source's slow features)."""
    autointerp: AutointerpConfig = field(default_factory=AutointerpConfig)
    """Automated interpretability (SAEBench's protocol with an LLM judge, or the synthetic oracle)."""
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    """The static HTML feature browser and its blind-rating page."""
    sweep: dict[str, SweepConfig] = field(default_factory=dict)
    """Named grids over variants' knobs; each point becomes a variant `<variant>-<knob><value>...`."""

    def __post_init__(self) -> None:
        _check(len(self.variants) > 0, "variants", "list at least one SAE to train")
        for name in self.variants:
            check_plain_name(name, f"variants.{name}")
        for name in self.sweep:
            check_plain_name(name, f"sweep.{name}")
        for name, v in self.variants.items():
            for target in v.controls:
                _check(target in self.variants and target != name, f"variants.{name}.controls",
                       f"{target!r} is not another variant of this run; variants: {', '.join(self.variants)}")
        for name in self.run.expected_unhealthy:
            _check(name in self.variants, f"run.expected_unhealthy.{name}",
                   f"names no variant of this run; variants: {', '.join(self.variants)}")
        _check(self.autointerp.control_run != self.run.name, "autointerp.control_run",
               f"names this run ({self.run.name!r}); name the run trained on the randomly initialised model")
        for what, base, key in (("run", self.run.out_dir, "run.out_dir"), ("figures", self.plot.figures_dir, "plot.figures_dir")):
            default = what if what == "figures" else "runs"
            parent = resolve_path(base).resolve()
            inside = (parent / self.run.name).resolve()
            _check(inside.parent == parent, "run.name",
                   f"the {what} directory {parent / self.run.name} resolves to {inside}, outside {key} ({parent})")
            problem = system_folder_problem(inside) or ("/ is the root folder of the system" if parent == Path("/") else None)
            _check(problem is None, key, f"the {what} directory would be {inside}, but {problem}; "
                                         f"give {key} a folder of your own (e.g. {default})")

    # -- what gets trained --------------------------------------------------------------------
    def instances(self) -> list[Instance]:
        """Every SAE of the run: each variant (sweep points included) once per seed of `run.seeds`."""
        seeds = self.run.seeds or [self.run.seed]
        if len(seeds) == 1:
            return [Instance(name, name, seeds[0]) for name in self.variants]
        return [Instance(f"{name}-seed{s}", name, s) for name in self.variants for s in seeds]

    def instance(self, name: str) -> Instance:
        for inst in self.instances():
            if inst.name == name:
                return inst
        raise KeyError(f"no SAE named {name!r} in this run; known: {', '.join(i.name for i in self.instances())}")

    def compared_instances(self) -> list[Instance]:
        """One SAE per compared variant (sweep points left out): its first seed. What clustering describes."""
        sweep = self.sweep_points()
        first: dict[str, Instance] = {}
        for inst in self.instances():
            if inst.variant not in sweep:
                first.setdefault(inst.variant, inst)
        return list(first.values())

    def sweep_points(self) -> dict[str, dict[str, Any]]:
        """Expanded variant name -> {"sweep", "variant" (the swept base), "knobs" {path: value}}."""
        return {name: point for sweep_name, sw in self.sweep.items() for name, point in _grid_points(sweep_name, sw)}

    # -- derived paths -----------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return resolve_path(self.run.out_dir) / self.run.name

    @property
    def figures_dir(self) -> Path:
        return resolve_path(self.plot.figures_dir) / self.run.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self, *sections: str) -> str:
        """Content hash of the whole config, or of the named sections only."""
        d = self.to_dict()
        if sections:
            d = {s: d[s] for s in sections}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _grid_points(sweep_name: str, sw: SweepConfig):
    """(variant name, point) for each point of a sweep's grid, in grid order."""
    knobs = list(sw.grid)
    for values in itertools.product(*(sw.grid[k] for k in knobs)):
        label = "-".join(f"{k.rsplit('.', 1)[-1]}{v}" for k, v in zip(knobs, values))
        yield f"{sw.variant}-{label}", {"sweep": sweep_name, "variant": sw.variant, "knobs": dict(zip(knobs, values))}


def _expand_sweeps(data: dict[str, Any], cfg: ExperimentConfig, origin: str) -> dict[str, Any]:
    """The raw params with every sweep point added to `variants` (a copy of the swept variant with its knobs set)."""
    variants = dict(data.get("variants") or {})
    for sweep_name, sw in cfg.sweep.items():
        if sw.variant not in variants:
            raise ConfigError(f"{origin}: sweep.{sweep_name}.variant: {sw.variant!r} is not a variant; "
                              f"variants are {', '.join(variants)}")
        for name, point in _grid_points(sweep_name, sw):
            if not _PLAIN_NAME.fullmatch(name):
                raise ConfigError(f"{origin}: sweep.{sweep_name}: point {name!r} is not a plain name (letters, digits, "
                                  f"'.', '_', '-'): sweep over numbers or plain words")
            if name in variants:
                raise ConfigError(f"{origin}: sweep.{sweep_name}: point {name!r} clashes with an existing variant")
            variants[name] = apply_overrides(variants[sw.variant] or {}, point["knobs"])
    return {**data, "variants": variants}


def _with_common_target(variants: dict[str, Any], target: Any) -> dict[str, Any]:
    """`train.target_l0` given to every variant that sets neither its own `target_l0` nor, for
    the TopK family, its own `k` (a variant's explicit choice wins, so sweeps over k still work)."""
    if not target or not isinstance(target, (int, float)):
        return variants
    out = {}
    for name, spec in variants.items():
        own = isinstance(spec, dict) and ("target_l0" in spec or (spec.get("activation", "topk") in ("topk", "batchtopk") and "k" in spec))
        out[name] = spec if own or not isinstance(spec, dict) else {**spec, "target_l0": target}
    return out


def config_from_dict(data: dict[str, Any], origin: str = "<dict>") -> ExperimentConfig:
    try:
        data = dict(data or {})
        variants = data.get("variants")
        if isinstance(variants, dict):
            data["variants"] = {name: ({} if spec is None else spec) for name, spec in variants.items()}
            train = data.get("train")  # a malformed section is reported by `build` below
            data["variants"] = _with_common_target(data["variants"], train.get("target_l0") if isinstance(train, dict) else None)
        cfg = build(ExperimentConfig, data, "")
        if cfg.sweep:
            cfg = build(ExperimentConfig, _expand_sweeps(data, cfg, origin), "")
    except ConfigError as e:
        raise ConfigError(e if str(e).startswith(origin) else f"{origin}: {e}") from None
    from tsae_core.variants.registry import validate_variant  # late: variants import config

    for name, v in cfg.variants.items():
        try:
            validate_variant(v)
        except (ConfigError, ValueError) as e:
            raise ConfigError(f"{origin}: variants.{name}: {e}") from None
    return cfg


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read, override and validate a params file. Raises `ConfigError` naming the key and file."""
    file = find_params_file(path)
    data = read_params(file)
    return config_from_dict(apply_overrides(data, dict(overrides or {}), schema=ExperimentConfig, origin=str(file)),
                            origin=str(file))
