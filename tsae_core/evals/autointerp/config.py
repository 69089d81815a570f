"""The `autointerp:` section of a params file (`tsae_core.evals.autointerp`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from tsae_core.typed import check as _check
from tsae_core.typed import check_plain_name

AUTOINTERP_TRANSPORT_KEYS = ("concurrency", "timeout_s", "retries", "backoff_s", "max_requests", "cache_dir")
"""Settings of `autointerp` that change how requests travel, never what they ask: outside the result's key."""
AUTOINTERP_NOT_ASKED_KEYS = (*AUTOINTERP_TRANSPORT_KEYS, "control_run")
"""Settings of `autointerp` outside the result's key: the transport, and the control run (read by the plot stage)."""


@dataclass(frozen=True)
class AutointerpConfig:
    """Automated interpretability in SAEBench's protocol (`tsae_core.evals.autointerp`): an explainer LLM
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
