"""Tables and text of a clustering result (`analysis/clusters_<variant>.json`) for notebook 04.

Every cell is a formatted string: a value that does not exist reads "–", never NaN or None.
"""

from __future__ import annotations

import html
from typing import Any

import pandas as pd

MISSING = "–"
_LEVELS = " ▁▂▃▄▅▆▇█"
"""Bar heights from 0 (blank: the latent is silent there) to the full block."""


def _fmt(x: float | None, spec: str) -> str:
    return MISSING if x is None or x != x else format(x, spec)


def descriptor_summary(result: dict[str, Any]) -> str:
    """One line: the descriptor blocks with their widths (columns), as the clustering used them."""
    return "descriptors: " + " | ".join(f"{name} ({width})" for name, width in result["descriptor_blocks"].items() if width)


def variant_summary(result: dict[str, Any]) -> str:
    """One line: alive latents, the clusters and how their number was set, the weight of co-activation."""
    sel = result["selection"]
    how = "as given" if len(sel["candidates"]) == 1 else "best silhouette"
    line = f"{result['n_alive']} of {result['n_latents']} latents alive; {sel['method']}: {result['n_clusters']} clusters ({how})"
    if result["descriptor_blocks"].get("co-activation (SVD)"):
        line += f"; co-activation explains {result['coactivation_share']:.0%} of a latent's firing variance on average"
    return line


def selection_table(results: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Variant × candidate count: the silhouette score of each clustering, the chosen count marked ◀."""
    rows = {}
    for variant, res in results.items():
        sel = res["selection"]
        rows[variant] = {f"k={k}": _fmt(s, ".3f") + (" ◀" if k == sel["chosen"] else "")
                         for k, s in zip(sel["candidates"], sel["silhouette"])}
    return pd.DataFrame.from_dict(rows, orient="index").fillna(MISSING)


def sparkline(shares: list[float]) -> str:
    """One block per bin of a profile that sums to 1: ▄ at the flat share 1/P, █ at twice it or more,
    blank at 0, so a flat profile reads as a level row and a preference as peaks."""
    return "".join(_LEVELS[min(round(4 * v * len(shares)), 8)] for v in shares)


def position_bins(context_size: int, n_bins: int) -> list[str]:
    """Labels of the position bins (tokens since the document's start); the last one is open-ended,
    since documents continue across contexts."""
    edges = [round(i * context_size / n_bins) for i in range(n_bins + 1)]
    return [f"{lo}–{hi - 1}" for lo, hi in zip(edges[:-2], edges[1:-1])] + [f"≥{edges[-2]}"]


def profile_table(result: dict[str, Any]) -> pd.DataFrame:
    """Cluster × property: size, mean firing rate, mean lag-1 autocorrelation, mean run length over
    the i.i.d. expectation, the mean position profile as bars, and its peak bin with the peak's
    height over a flat profile (×1.0: no preference for any position)."""
    prof = result["profile"]
    labels = position_bins(result["context_size"], result["position_bins"])
    peaks = [max(range(len(p)), key=p.__getitem__) for p in prof["position_profile"]]
    return pd.DataFrame({
        "latents": prof["n_latents"],
        "firing rate": [_fmt(r, ".2%") for r in prof["mean_firing_rate"]],
        "lag-1 autocorr.": [_fmt(a, ".2f") for a in prof["mean_autocorr_lag1"]],
        "run length / i.i.d.": [_fmt(r, ".2f") for r in prof["mean_run_length_ratio"]],
        "position profile": [sparkline(p) for p in prof["position_profile"]],
        "peak": [f"{labels[i]} (×{p[i] * len(p):.1f})" for i, p in zip(peaks, prof["position_profile"])],
    }, index=pd.Index(prof["clusters"], name="cluster"))


def context_lines(context: dict[str, Any]) -> tuple[str, str]:
    """The context as one line of text with the activating token in ⟦ ⟧, and under every character a
    bar whose height is the latent's activation on that token relative to the marked token's."""
    text, bars = [], []
    for i, (token, a) in enumerate(zip(context["tokens"], context["activations"])):
        token = f"⟦{token}⟧" if i == context["marked"] else token
        level = min(max(round(8 * a / context["activation"]), 0), 8)
        text.append(token)
        bars.append(_LEVELS[level] * len(token))
    return "".join(text), "".join(bars)


def examples_text(result: dict[str, Any]) -> str:
    """Every cluster's example latents with their top contexts, activation value before each."""
    sizes = dict(zip(result["profile"]["clusters"], result["profile"]["n_latents"]))
    lines = []
    for group in result.get("examples") or []:
        lines.append(f"cluster {group['cluster']} ({sizes.get(group['cluster'], 0)} latents)")
        for latent in group["latents"]:
            lines.append(f"  latent {latent['latent']}")
            for ctx in latent["contexts"]:
                text, bars = context_lines(ctx)
                lines += [f"    {ctx['activation']:7.2f}  {text}", f"    {'':7s}  {bars}"]
            if not latent["contexts"]:
                lines.append("    (no activation on the evaluated tokens)")
    return "\n".join(lines)


def collapsed(title: str, text: str) -> dict[str, str]:
    """A display bundle: preformatted text under a title that opens on a click (HTML), or the plain
    text itself where HTML is not shown. Show it with `IPython.display.display(bundle, raw=True)`."""
    return {"text/html": f"<details><summary>{html.escape(title)}</summary><pre>{html.escape(text)}</pre></details>",
            "text/plain": f"{title}\n{text}"}


def truth_table(result: dict[str, Any]) -> pd.DataFrame:
    """Cluster × true kind: latents matched to a true feature of each kind, unmatched ones, and purity."""
    cont = result["contingency"]
    table = pd.DataFrame(cont["counts"], index=pd.Index(cont["clusters"], name="cluster"), columns=cont["kinds"])
    table["unmatched"] = result["unmatched_per_cluster"]
    table["purity"] = [_fmt(p, ".2f") for p in result["purity_per_cluster"]]
    return table


def truth_summary(result: dict[str, Any]) -> str:
    """One line: ARI, NMI and purity of the clusters against the matched latents' true kinds (or why
    there is nothing to score)."""
    if result["n_matched"] < 2:
        return f"{result['n_matched']} latents match a true feature: too few to score the clusters against the kinds"
    return (f"ARI {_fmt(result['ari'], '.3f')}, NMI {_fmt(result['nmi'], '.3f')}, purity {_fmt(result['purity'], '.2f')} "
            f"over {result['n_matched']} latents that match a true feature ({result['n_unmatched']} match none)")
