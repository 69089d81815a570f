"""Blind rating of features across SAEs: the pairs, the key that unblinds them, and the scores.

Protocol. For every compared SAE other than the baseline, `dashboard.rating_pairs` pairs each put
one of its sampled features (a seeded random sample of alive latents, `dashboard.n_features`) beside
one of the baseline's, the i-th beside the i-th. The pairs are shuffled and each pair's sides drawn
at random, so neither the position on the page nor the side says which SAE a feature comes from.
The page (`dashboard/rate.html`) shows contexts only; the key (which SAE and latent is behind each
side) stays in `analysis/blind_rating_key.json`, outside the dashboard folder a rater opens.

A rater gives each feature a monosemanticity rating from 1 (no pattern) to 5 (one clear concept),
an optional label, and for each pair which feature is clearer. `tsae ratings RUN FILE...` unblinds
the downloaded files (several raters pool) and reports, per SAE, the mean rating with a 95%
bootstrap interval over rated features and the share rated 4 or 5, and per variant against the
baseline the mean paired difference (variant − baseline, over pairs with both sides rated) with its
95% bootstrap interval and the preference counts with a Wilson 95% interval on the variant's share
of decided pairs.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

KEY_FILE = "blind_rating_key.json"
FORMAT = "tsae-blind-ratings-1"
BOOTSTRAP = 10_000


class RatingsError(ValueError):
    """A ratings file that cannot be scored against the run's key; the message names the fix."""


def make_pairs(baseline: str, samples: dict[str, list[int]], n_pairs: int, seed: int) -> list[dict[str, Any]]:
    """[{"id", "number", "variant", "A": {"sae", "latent"}, "B": {...}}], shuffled, sides random."""
    rng = np.random.default_rng(seed)
    pairs = []
    for name, sample in samples.items():
        if name == baseline:
            continue
        for i in range(min(n_pairs, len(sample), len(samples[baseline]))):
            sides = [{"sae": name, "latent": int(sample[i])}, {"sae": baseline, "latent": int(samples[baseline][i])}]
            if rng.random() < 0.5:
                sides.reverse()
            pairs.append({"variant": name, "A": sides[0], "B": sides[1]})
    order = rng.permutation(len(pairs))
    out = []
    for number, j in enumerate(order, 1):
        out.append({"id": f"item-{number:03d}", "number": number, **pairs[j]})
    return out


def make_key(run: str, baseline: str, pairs: list[dict[str, Any]], weights: dict[str, str | None]) -> dict[str, Any]:
    """The unblinding key; its `set` id (a hash of the pairs and the SAEs' weights) ties a ratings
    file to these exact features."""
    body = {"run": run, "baseline": baseline, "pairs": pairs, "sae_weights_sha256": weights}
    set_id = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]
    return {"format": FORMAT, "set": set_id, **body}


def load_key(run_dir: str | Path) -> dict[str, Any]:
    """The run's unblinding key, checked: `RatingsError` naming the file and the command that rebuilds it
    (the run's own dashboard stage) when it is missing, not JSON, or not a key."""
    from tsae_core.repair import repair_command

    path = Path(run_dir) / "analysis" / KEY_FILE
    rebuild = repair_command(run_dir, "dashboard", force=True)  # forced: a key whose set id still matches is not redone otherwise
    try:
        key = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RatingsError(f"{path} not found: RUN must be a run directory whose dashboard stage has run ({rebuild})") from None
    except (OSError, ValueError) as e:
        raise RatingsError(f"{path} is damaged ({type(e).__name__}: {e}); rebuild it with {rebuild}") from None
    if problem := _key_problem(key):
        raise RatingsError(f"{path} is damaged ({problem}); rebuild it with {rebuild}")
    return key


def _key_problem(key: Any) -> str | None:
    if not isinstance(key, dict) or key.get("format") != FORMAT:
        return f"not a {FORMAT} key"
    if not all(isinstance(key.get(k), str) for k in ("set", "run", "baseline")) or not isinstance(key.get("pairs"), list):
        return "no set, run, baseline or pairs"
    for p in key["pairs"]:
        if not (isinstance(p, dict) and isinstance(p.get("id"), str) and isinstance(p.get("variant"), str)
                and all(isinstance(p.get(s), dict) and isinstance(p[s].get("sae"), str) for s in ("A", "B"))):
            return f"a pair that is not {{id, variant, A: {{sae, latent}}, B: {{...}}}}: {str(p)[:80]}"
    return None


def _answer_problem(answer: Any) -> str | None:
    """Why one item's answer is not what the rating page saves (None: it is)."""
    if not isinstance(answer, dict):
        return f"the answer is {answer!r}, not an object like {{\"A\": {{\"rating\": 4}}, \"B\": {{...}}, \"prefer\": \"A\"}}"
    for side in ("A", "B"):
        given = answer.get(side)
        if given is None:
            continue
        if not isinstance(given, dict):
            return f"side {side} is {given!r}, not an object like {{\"rating\": 4, \"label\": \"...\"}}"
        rating = given.get("rating")
        if rating is not None and (type(rating) is not int or not 1 <= rating <= 5):
            return f"side {side}: rating {rating!r} is not one of 1..5 (a whole number)"
        if given.get("label") is not None and not isinstance(given["label"], str):
            return f"side {side}: label {given['label']!r} is not text"
    if answer.get("prefer") not in (None, "A", "B", "same"):
        return f"preference {answer.get('prefer')!r} is not A, B or same"
    return None


def _answered(data: dict[str, Any]) -> bool:
    return any((a.get(s) or {}).get("rating") is not None or a.get("prefer") is not None
               for a in data["items"].values() for s in ("A", "B"))


def _read_ratings(path: Path, key: dict[str, Any]) -> dict[str, Any]:
    """One ratings file, checked: the right format, made on this key's page, answers as the page saves them."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RatingsError(f"{path}: no such file; give the JSON the rating page's 'Download ratings' saved") from None
    except (OSError, ValueError) as e:
        raise RatingsError(f"{path}: not a ratings file ({type(e).__name__}: {e}); give the JSON the rating page saved") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("items"), dict):
        raise RatingsError(f"{path}: not a tsae ratings file (format {FORMAT!r} with 'items' expected)")
    if data.get("set") != key["set"]:
        raise RatingsError(f"{path}: rated on another dashboard (set {data.get('set')!r}; this run's is {key['set']!r}): the "
                           f"run's SAEs or its dashboard changed since; rate the current rate.html of run {key['run']!r}")
    known = {p["id"] for p in key["pairs"]}
    for item, answer in data["items"].items():
        if item not in known:
            raise RatingsError(f"{path}: item {item!r} is not on this run's rating page")
        if problem := _answer_problem(answer):
            raise RatingsError(f"{path}: item {item!r}: {problem}; give the file the rating page saved")
    if not _answered(data):
        raise RatingsError(f"{path}: no answers (no rating and no preference): rate pairs on rate.html, then "
                           "'Download ratings' again; nothing was scored or saved")
    return data


def load_ratings(paths: list[Path], key: dict[str, Any], warn: Any = None) -> list[dict[str, Any]]:
    """The ratings files, checked (`_read_ratings`), one per rater: a file given twice, or a copy of
    another (the same rater and answers), counts once, with a warning; two different files of one
    named rater are refused (the page's latest download holds all of a rater's answers)."""
    warn = warn or (lambda text: print(f"tsae: warning: {text}", file=sys.stderr))
    files: list[dict[str, Any]] = []
    seen: dict[str, Path] = {}
    raters: dict[str, Path] = {}
    for path in paths:
        data = _read_ratings(path, key)
        same = hashlib.sha256(json.dumps([data.get("rater"), data["items"]], sort_keys=True).encode()).hexdigest()
        if same in seen:
            warn(f"{path} repeats {seen[same]} (the same rater and answers): counted once")
            continue
        rater = str(data.get("rater") or "").strip()
        if rater and rater in raters:
            raise RatingsError(f"{path} and {raters[rater]} are both from rater {rater!r} with different answers: give one "
                               "file per rater (the page's latest download holds all of that rater's answers)")
        seen[same] = Path(path)
        if rater:
            raters[rater] = Path(path)
        files.append(data)
    return files


def bootstrap_interval(values: np.ndarray, seed: int = 0, level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean (None with fewer than two values)."""
    if len(values) < 2:
        return None
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(BOOTSTRAP, len(values)), replace=True).mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    if n == 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def score(key: dict[str, Any], files: list[dict[str, Any]]) -> dict[str, Any]:
    """Per SAE: n, mean rating and interval, share ≥ 4; per variant: paired difference and preference."""
    by_id = {p["id"]: p for p in key["pairs"]}
    ratings: dict[str, list[float]] = {}
    labels: dict[str, list[dict[str, Any]]] = {}
    diffs: dict[str, list[float]] = {}
    prefer: dict[str, dict[str, int]] = {}
    for data in files:
        for item, answer in data["items"].items():
            pair = by_id[item]
            got = {}
            for side in ("A", "B"):
                a = answer.get(side) or {}
                who = pair[side]
                if a.get("rating") is not None:
                    got[who["sae"]] = a["rating"]
                    ratings.setdefault(who["sae"], []).append(float(a["rating"]))
                if a.get("label"):
                    labels.setdefault(who["sae"], []).append({"latent": who["latent"], "label": a["label"], "rating": a.get("rating")})
            variant, baseline = pair["variant"], key["baseline"]
            if variant in got and baseline in got:
                diffs.setdefault(variant, []).append(got[variant] - got[baseline])
            choice = answer.get("prefer")
            if choice is not None:
                counts = prefer.setdefault(variant, {"variant": 0, "baseline": 0, "same": 0})
                counts["same" if choice == "same" else "variant" if pair[choice]["sae"] == variant else "baseline"] += 1
    per_sae = {}
    for name, values in sorted(ratings.items()):
        v = np.asarray(values)
        per_sae[name] = {"n": len(v), "mean": float(v.mean()), "interval": bootstrap_interval(v),
                         "share_4_or_5": float((v >= 4).mean()), "labels": labels.get(name, [])}
    per_variant = {}
    for variant in sorted(set(diffs) | set(prefer)):
        d = np.asarray(diffs.get(variant, []))
        counts = prefer.get(variant, {"variant": 0, "baseline": 0, "same": 0})
        decided = counts["variant"] + counts["baseline"]
        per_variant[variant] = {
            "pairs_rated": len(d), "mean_difference": float(d.mean()) if len(d) else None, "interval": bootstrap_interval(d),
            "preferred": counts, "variant_share_of_decided": counts["variant"] / decided if decided else None,
            "variant_share_interval": wilson_interval(counts["variant"], decided),
        }
    return {"set": key["set"], "run": key["run"], "baseline": key["baseline"], "raters": [f.get("rater") or "" for f in files],
            "per_sae": per_sae, "per_variant": per_variant,
            "definitions": "ratings 1..5; interval: 95% percentile bootstrap of the mean over rated features "
                           f"({BOOTSTRAP} resamples); difference: variant − baseline within pairs with both sides rated; "
                           "preference share: of pairs decided for one side, Wilson 95% interval"}


def _interval(iv: tuple[float, float] | None, digits: int = 2) -> str:
    return "–" if iv is None else f"[{iv[0]:.{digits}f}, {iv[1]:.{digits}f}]"


def report(result: dict[str, Any]) -> str:
    lines = [f"blind ratings of run {result['run']} (set {result['set']}), {len(result['raters'])} file(s); "
             f"baseline {result['baseline']}", "", f"{'SAE':24s} {'n':>4s} {'mean':>6s} {'95% interval':>15s} {'rated 4-5':>10s}"]
    for name, s in result["per_sae"].items():
        lines.append(f"{name:24s} {s['n']:4d} {s['mean']:6.2f} {_interval(s['interval']):>15s} {s['share_4_or_5']:10.0%}")
    lines += ["", f"{'variant vs baseline':24s} {'pairs':>5s} {'mean diff':>9s} {'95% interval':>15s} {'prefers var/base/same':>22s}"]
    for name, v in result["per_variant"].items():
        p = v["preferred"]
        diff = "–" if v["mean_difference"] is None else f"{v['mean_difference']:+.2f}"
        lines.append(f"{name:24s} {v['pairs_rated']:5d} {diff:>9s} {_interval(v['interval']):>15s} "
                     f"{p['variant']:>8d}/{p['baseline']}/{p['same']}")
    lines += ["", result["definitions"]]
    return "\n".join(lines)


def ratings_command(run_dir: str, files: list[str]) -> int:
    """`tsae ratings RUN FILE...`: unblind, score, print, and save beside the key (nothing is saved
    when a file or the key is refused)."""
    from tsae_core.io import write_json

    try:
        key = load_key(run_dir)
        result = score(key, load_ratings([Path(f) for f in files], key))
    except RatingsError as e:
        print(f"tsae: {e}", file=sys.stderr)
        return 2
    out = Path(run_dir) / "analysis" / f"blind_ratings_{key['set']}.json"
    write_json(out, result)
    print(report(result))
    print(f"\nsaved: {out}")
    return 0
