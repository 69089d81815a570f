"""A target L0 for SAEs whose sparsity comes from a penalty (ReLU + L1, JumpReLU's L0 penalty).

ReLU's L1 penalty pushes one way: a larger coefficient, a sparser SAE. JumpReLU's can fall short:
over a short run (500 steps on Gemma 3 270M) its thresholds rose while the codes were still noisy and
it sat at L0 16 of a target 32 with a coefficient near zero. With a target its penalty is therefore
c (L0 / N - 1)^2, which pulls from both sides and vanishes at the target, and the rule below adapts
c in its two-sided form. The rest of this docstring is the one-sided rule (ReLU).

A penalty coefficient does not transfer across models, layers or dictionary sizes: the L1
coefficient that gives L0 17 on the tiny default model gives L0 543 on Gemma 3 270M. With
`target_l0: N` the coefficient is adapted during training instead, by an integral controller on
the logarithm of the running L0:

    m_t     = beta * m_{t-1} + (1 - beta) * L0_t        (bias-corrected; L0_t the batch's L0)
    e_t     = log(m_t / N) + H * (log m_t - log m_{t-LAG}) / LAG,   H = RESPONSE / lr
    log c  <- log c + gain * rate * clip(e_t, -1, 1)    gain SPARSE_GAIN where e_t < -log 2, else 1
    c      <- clip(c, c_0 / BOUND, c_0 * BOUND)

The error e_t is the log miss predicted H steps ahead from L0's recent trend (a PD rule in log
space): an SAE's L0 answers a new coefficient only after tens to hundreds of steps, and a rule on
the present miss alone keeps pushing while L0 is already on its way, overshoots and, for ReLU,
drives L0 to zero (or, on the tiny default, read the ReLU SAE's own slow sparsification over its
first thousand steps as a call for more penalty and ended at 2.5x the coefficient it needed, EV
0.61 at L0 13.4). H is that response time: under Adam a weight moves about lr per step, so it is
RESPONSE / lr steps (300 for the default's ReLU at lr 2.5e-4, 38 at the CI benchmark's 2e-3). Log space makes 2x too dense and 2x too sparse weigh the same; the clip bounds a
step to a factor e^rate. Far too sparse (under half the target) is corrected faster because it is
the costly side: a ReLU latent pushed below zero on every input gets no gradient and stays dead,
while a dense SAE still learns. Near the target the rule is symmetric: a larger gain on one side
turns batch noise into a bias (JumpReLU landed 10% over its target with it). BOUND keeps a long one-sided stretch (every latent dead, which no coefficient revives
quickly) from winding c without limit.

Two-sided rule (JumpReLU): log c <- log c + rate * clip(|log(m_t / N)| / TOLERANCE - 1, -1, 1): the
weight grows while the miss exceeds TOLERANCE (5%) and relaxes inside it, so the penalty is as weak
as hitting the target allows. (No trend term here: with |.| batch noise would only ratchet c up.)

Either rule acts from the end of the learning-rate warm-up (before it the weights hardly move, and L0
says nothing about the coefficient; the sparsity warm-up still multiplies c over its first steps)
until the learning rate has decayed to half, the middle of the decay phase. From there c is
frozen, so the last part of training, and the SAE saved, has a fixed objective. (Freezing at the
start of the decay let JumpReLU's thresholds, which learn at 10x the SAE's rate, drift 10-25% off
the target.) The final c is what cfg.json, and so the eval JSON's `sae_cfg`, record.

Start from a coefficient too small rather than too large where you can: from 10x too large a ReLU
SAE still reaches the target but loses latents on the way (53% dead on the CI benchmark).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

EMA_DECAY = 0.9
"""beta: the running L0 averages about the last ten batches."""
RESPONSE = 0.075
"""The SAE's response time to its coefficient, in steps times learning rate (H = RESPONSE / lr)."""
LAG = 100
"""Steps over which L0's trend is measured. The trend is multiplied by H (187 steps for ReLU at lr 4e-4),
so its noise is amplified H / LAG times: over 25 steps, the heavy-tailed batch L0 of the L1 SAE on
Gemma 3 270M (a sixth of the tokens carry every active latent) drove the coefficient by noise."""
SPARSE_GAIN = 4.0
"""How much faster the coefficient falls when L0 is under half its target than it moves otherwise."""
BOUND = 100.0
"""The coefficient stays within a factor BOUND of its start value."""
TOLERANCE = 0.05
"""Two-sided rule: the penalty's weight grows while the running L0 misses its target by more than this."""
DEFAULT_RATE = {"relu": 0.01, "jumprelu": 0.02}
"""Gain per activation when the variant gives none: a ReLU SAE's L0 answers its L1 coefficient
strongly and with a lag of ~100 steps (a faster gain oscillates and kills latents); JumpReLU's
thresholds answer within tens of steps and less steeply."""


@dataclass
class SparsityController:
    target: float
    coefficient: float
    rate: float
    start_step: int
    freeze_step: int
    horizon: float = 100.0
    """H: steps ahead the miss is predicted from L0's trend."""
    two_sided: bool = False
    """The penalty pulls L0 towards the target from both sides (JumpReLU's c (L0 / N - 1)^2): its weight
    grows while the miss exceeds TOLERANCE and relaxes within it."""
    start_coefficient: float = 0.0
    _ema: float = 0.0
    _ema_weight: float = 0.0
    _history: list[float] = field(default_factory=list)
    """log m over the last LAG + 1 steps."""

    @classmethod
    def for_training(cls, target: float, coefficient: float, rate: float, steps: int, decay_fraction: float,
                     lr: float, warmup_steps: int, two_sided: bool = False) -> SparsityController:
        return cls(target=target, coefficient=coefficient, start_coefficient=coefficient, rate=rate, two_sided=two_sided,
                   horizon=RESPONSE / lr, start_step=min(warmup_steps, steps),
                   freeze_step=math.floor(steps * (1.0 - decay_fraction / 2)))

    @property
    def running_l0(self) -> float | None:
        return self._ema / self._ema_weight if self._ema_weight > 0 else None

    def update(self, step: int, batch_l0: float) -> None:
        """After optimizer step `step` (0-based), whose batch had mean L0 `batch_l0` per token."""
        self._ema = EMA_DECAY * self._ema + (1 - EMA_DECAY) * batch_l0
        self._ema_weight = EMA_DECAY * self._ema_weight + (1 - EMA_DECAY)
        log_m = math.log(max(self.running_l0, 1e-3))
        self._history = (self._history + [log_m])[-(LAG + 1):]
        if not self.start_step <= step < self.freeze_step:
            return
        if self.two_sided:
            step_size = self.rate * max(-1.0, min(1.0, abs(log_m - math.log(self.target)) / TOLERANCE - 1.0))
        else:
            trend = (log_m - self._history[0]) / (len(self._history) - 1) if len(self._history) > 1 else 0.0
            error = log_m - math.log(self.target) + self.horizon * trend
            step_size = (SPARSE_GAIN if error < -math.log(2) else 1.0) * self.rate * max(-1.0, min(1.0, error))
        moved = self.coefficient * math.exp(step_size)
        self.coefficient = min(max(moved, self.start_coefficient / BOUND), self.start_coefficient * BOUND)

    def state_dict(self) -> dict[str, Any]:
        return {"coefficient": self.coefficient, "ema": self._ema, "ema_weight": self._ema_weight, "history": list(self._history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.coefficient = float(state["coefficient"])
        self._ema, self._ema_weight = float(state["ema"]), float(state["ema_weight"])
        self._history = [float(h) for h in state.get("history", [])]
