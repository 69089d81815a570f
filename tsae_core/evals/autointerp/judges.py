"""Who explains and who scores: an LLM behind an OpenAI-compatible endpoint, or the synthetic oracle.

A judge answers tasks with text, as an LLM does, and the pipeline reads every answer with the same
parser (`prompts.parse_explanation`, `prompts.parse_predictions`), so the oracle exercises the
sampling, the marking, the shuffling and the scoring exactly as an LLM run does.

Oracle (synthetic source, no LLM). Explainer: names the true feature whose direction has the largest
cosine with the latent's decoder direction ("true feature 17"). Scorer: reads the feature number from
the explanation and names the sequences in which that feature truly fires on a shown non-special
token. A latent that recovers its feature then scores near 1; a latent matched to no feature scores
what a guess independent of the truth scores (`prompts.chance_score`). `RandomScorer` names
`n_correct_for_scoring` sequences at random: its expected score is exactly that chance level.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from tsae_core.evals.autointerp.client import ChatClient, ResponseCache
from tsae_core.evals.autointerp.prompts import Messages
from tsae_core.evals.autointerp.sampling import Example, Scan


@dataclass
class Task:
    """One question to a judge: explain a latent from `examples`, or score `explanation` on them."""

    latent: int
    column: int
    examples: list[Example]
    messages: Messages
    max_tokens: int
    explanation: str = ""
    """The explanation scored (scoring tasks only)."""
    purpose: str = "explain"
    """`explain`, `score`, `shuffled` or `temporal`."""
    extra: dict[str, Any] = field(default_factory=dict)


class LLMJudge:
    """Explains and scores through an OpenAI-compatible chat endpoint."""

    name = "openai"

    def __init__(self, client: ChatClient) -> None:
        self.client = client

    def bodies(self, tasks: list[Task]) -> list[dict[str, Any]]:
        return [self.client.body(t.messages, t.max_tokens) for t in tasks]

    def uncached(self, tasks: list[Task]) -> int:
        return sum(not self.client.is_cached(b) for b in self.bodies(tasks))

    def answer(self, tasks: list[Task]) -> list[str]:
        return self.client.complete_many(self.bodies(tasks))

    def peek(self, tasks: list[Task]) -> list[str | None]:
        """The cached answers (None where not cached), without counting them as served."""
        return [self.client.cache.get(ResponseCache.key(self.client.base_url, b)) for b in self.bodies(tasks)]


_FEATURE = re.compile(r"true feature (\d+)")


class OracleJudge:
    """The synthetic source's truth as explainer and scorer (see the module docstring)."""

    name = "oracle"

    def __init__(self, scan_: Scan, best_feature: dict[int, int]) -> None:
        if scan_.true_active_NTG is None:
            raise ValueError("the oracle needs the synthetic source's true feature activations (a synthetic source)")
        self.scan, self.best_feature = scan_, best_feature
        self.notes: dict[int, dict[str, Any]] = {}
        """latent -> the feature named and the fraction of the marked tokens on which it fires (a check of the marking)."""

    def uncached(self, tasks: list[Task]) -> int:
        return 0

    def fires(self, feature: int, e: Example) -> bool:
        shown = ~self.scan.special_NT[e.sequence, e.start:e.stop]
        return bool((self.scan.true_active_NTG[e.sequence, e.start:e.stop, feature] & shown).any())

    def answer(self, tasks: list[Task]) -> list[str]:
        out = []
        for t in tasks:
            if t.purpose == "explain":
                g = self.best_feature[t.latent]
                marked = on = 0
                for e in t.examples:
                    for offset, a in enumerate(e.active):
                        if a:
                            marked += 1
                            on += bool(self.scan.true_active_NTG[e.sequence, e.start + offset, g])
                self.notes[t.latent] = {"feature": g, "marked_tokens": marked,
                                        "marked_tokens_on_feature": on / marked if marked else None}
                out.append(f"This latent activates on true feature {g}.")
                continue
            m = _FEATURE.search(t.explanation)
            if m is None:
                out.append("I cannot tell.")  # does not parse: counted as such
                continue
            hits = [i for i, e in enumerate(t.examples, start=1) if self.fires(int(m.group(1)), e)]
            out.append(", ".join(map(str, hits)) if hits else "None")
        return out


class RandomScorer:
    """Names `k` of the shown sequences at random, whatever the explanation: the chance level."""

    name = "random"

    def __init__(self, k: int, seed: int) -> None:
        self.k, self.rng = k, random.Random(seed)

    def uncached(self, tasks: list[Task]) -> int:
        return 0

    def answer(self, tasks: list[Task]) -> list[str]:
        return [", ".join(map(str, sorted(self.rng.sample(range(1, len(t.examples) + 1), k=min(self.k, len(t.examples))))))
                for t in tasks]


def best_true_features(decoder_FD: torch.Tensor, true_GD: torch.Tensor, latents: list[int]) -> dict[int, tuple[int, float]]:
    """latent -> (the true feature with the largest cosine to its decoder direction, that cosine)."""
    dec = torch.nn.functional.normalize(decoder_FD.float()[latents], dim=-1)
    true = torch.nn.functional.normalize(true_GD.float(), dim=-1)
    cos, g = (dec @ true.T).max(-1)
    return {lat: (int(gi), float(ci)) for lat, gi, ci in zip(latents, g.tolist(), cos.tolist())}
