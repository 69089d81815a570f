"""The explainer's and the scorer's prompts (SAEBench's structure, in this package's words), how a
window of tokens is shown, and how the answers are read.

Display: a window is its tokens' strings joined (line breaks shown as ↵), with each active token as
`<<token>>` for the explainer and unmarked for the scorer; examples are numbered from 1, one per line.

Explainer (system + user): what a latent is, that activating tokens are marked, examples ordered
from the strongest; answer in one short sentence of at most 20 words, not a list of words; with
`use_demos_in_explanation`, four example explanations. The explanation is what follows the last
"activates on" in the answer, without a final full stop (SAEBench's reading).

Scorer (system + user): the explanation, then the numbered, shuffled sequences; answer with the
numbers of the sequences in which the latent fires on at least one token, comma-separated (an answer
of the form of `example_response`), or "None". An answer reads as: strip, drop a final full stop,
"and" counts as a comma, "None" as nothing; every remaining comma-separated item must be a whole
number, else the answer does not parse (counted and reported, never scored).
"""

from __future__ import annotations

from typing import Any

from tsae_core.evals.autointerp.sampling import Example
from tsae_core.top_contexts import token_strings

Messages = list[dict[str, str]]

SYNTHETIC_TOKEN = "·"
"""How a token of the synthetic source (which has no text) is shown."""

_EXPLAIN_SYSTEM = (
    "We are studying latents of a sparse autoencoder trained on a language model's activations. Each latent "
    "responds to some token, group of tokens, substring or idea within a short text. In every text below, the "
    "tokens on which the latent is active are wrapped in << and >>. The texts are listed from the strongest "
    "activation to the weakest. Read the marked parts and describe, in one sentence, what the latent responds to. "
    "Do not be too specific: some latents respond to one word or substring, others to most words of a passage "
    "about a particular topic, and your description should cover most of the marked tokens rather than one of "
    "them. Mention capitalisation or punctuation where it seems to matter. Keep it short and plain, 20 words at "
    "most, without punctuation or formatting, and avoid long lists of words."
)
_EXPLAIN_DEMOS = (
    ' Examples of good answers: "This latent activates on the word \'knows\' in rhetorical questions", "This latent '
    'activates on verbs about choosing and preferring", "This latent activates on the substring \'Ent\' at the start '
    'of words", "This latent activates on text about taxes and public spending".'
)
_EXPLAIN_FORM = ' Answer in the form "This latent activates on ...".'
_SCORE_SYSTEM = (
    "We are studying latents of a sparse autoencoder trained on a language model's activations. Each latent "
    "responds to some token, group of tokens, substring or idea within a short text. You will get a short "
    "description of what one latent responds to, then {n} texts in random order. Reply with the numbers of the "
    "texts in which you expect the latent to be active on at least one token, separated by commas; for instance "
    'your reply could be "{example}". Do not read the description too narrowly. If you expect it to be active in '
    'none of them, reply "None". Reply with nothing but the comma-separated numbers or the word None; this matters.'
)


def window_text(example: Example, tokens_NT: Any, mark: bool, tokenizer: Any = None) -> str:
    """The window of `example` as one line, active tokens as `<<token>>` when `mark`."""
    n = example.stop - example.start
    if tokens_NT is None:
        strings = [SYNTHETIC_TOKEN] * n
    else:
        ids = tokens_NT[example.sequence, example.start:example.stop].tolist()
        strings = token_strings(tokenizer, ids) if tokenizer is not None else [f"[{i}]" for i in ids]
    active = example.active
    text = "".join(f"<<{s}>>" if mark and a else s for s, a in zip(strings, active))
    return text.replace("\ufffd", "").replace("\n", "↵")


def numbered(texts: list[str]) -> str:
    return "\n".join(f"{i}. {t}" for i, t in enumerate(texts, start=1))


def explain_messages(texts: list[str], use_demos: bool = True) -> Messages:
    """The explainer's messages for the marked example texts (strongest first)."""
    if not texts:
        raise ValueError("the explainer needs at least one example")
    system = _EXPLAIN_SYSTEM + (_EXPLAIN_DEMOS if use_demos else _EXPLAIN_FORM)
    return [{"role": "system", "content": system},
            {"role": "user", "content": f"The texts, with the latent's active tokens marked:\n\n{numbered(texts)}"}]


def score_messages(explanation: str, texts: list[str], example_response: list[int]) -> Messages:
    """The scorer's messages: the explanation and the unmarked, shuffled texts."""
    if not texts:
        raise ValueError("the scorer needs at least one example")
    system = _SCORE_SYSTEM.format(n=len(texts), example=", ".join(map(str, example_response)))
    user = f"The description: this latent activates on {explanation}.\n\nThe texts:\n\n{numbered(texts)}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def parse_explanation(answer: str) -> str:
    """What follows the last "activates on", without a final full stop ("" when nothing is left)."""
    return answer.split("activates on")[-1].strip().rstrip(".").strip()


def parse_predictions(answer: str) -> list[int] | None:
    """The numbers of an answer (see the module docstring); None when it does not parse."""
    items = [p.strip() for p in answer.strip().rstrip(".").replace("and", ",").replace("None", "").split(",")]
    items = [p for p in items if p]
    if not all(p.isdigit() for p in items):
        return None
    return [int(p) for p in items]


def score_predictions(predictions: list[int], labels: list[bool]) -> float:
    """Fraction of the sequences classified correctly: sequence i (from 1) is predicted to fire when
    i is among `predictions`; numbers outside 1..n count for nothing."""
    chosen = set(predictions)
    return sum((i in chosen) == y for i, y in enumerate(labels, start=1)) / len(labels)


def chance_score(n_positive: int, n_predicted: int, n: int) -> float:
    """Expected score of an answer naming `n_predicted` of `n` sequences at random (independent of
    which are positive) when `n_positive` are: (P k/n + (n-P)(n-k)/n) / n. With SAEBench's 14
    sequences, 4 positives and 4 named (the form its prompt shows): (16 + 100) / 196 = 0.592."""
    return (n_positive * n_predicted / n + (n - n_positive) * (n - n_predicted) / n) / n


def estimate_tokens(messages: Messages) -> int:
    """Prompt tokens, estimated as characters / 4 plus 4 per message (English text with the usual
    BPE tokenizers; a byte-level or a small-vocabulary tokenizer counts more)."""
    return sum(len(m["content"]) // 4 + 4 for m in messages)
