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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tsae_core.evals.autointerp.config import AUTOINTERP_NOT_ASKED_KEYS, AUTOINTERP_TRANSPORT_KEYS, AutointerpConfig  # noqa: F401 (every section importable from here)
from tsae_core.evals.cluster.config import ClusterConfig  # noqa: F401 (every section importable from here)
from tsae_core.evals.probing.config import HubProbeDataset, ProbingConfig  # noqa: F401 (every section importable from here)
from tsae_core.evals.unlearning.config import INTERNET_PACKAGES, UnlearningConfig  # noqa: F401 (every section importable from here)
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
from tsae_core.typed import PLAIN_NAME, ConfigError, build, check_plain_name  # noqa: F401 (check_plain_name: part of this module's interface)
from tsae_core.typed import check as _check
from tsae_core.variant_config import VariantConfig  # noqa: F401 (every section importable from here)

# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------

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


@dataclass(frozen=True)
class PlotConfig:
    dpi: int = 120
    """Resolution of saved PNG figures."""
    figures_dir: str = "figures"
    """Figures go to `<figures_dir>/<run name>/`, relative to the project root unless absolute."""

    def __post_init__(self) -> None:
        _check(self.dpi > 10, "plot.dpi", "must be > 10")


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
            if not PLAIN_NAME.fullmatch(name):
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
