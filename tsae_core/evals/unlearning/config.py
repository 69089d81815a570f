"""The `unlearning:` section of a params file (`tsae_core.evals.unlearning`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tsae_core.typed import check as _check

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
    """The offline analogue of SAEBench's unlearning eval (`tsae_core.evals.unlearning.run`): clamp the latents
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
