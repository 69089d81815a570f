"""HTML of the dashboard pages, from the feature data `tsae_core.dashboard.build` gathers.

Every page is one self-contained file: the style sheet and scripts are inlined from `static/`, the
charts are inline SVG, and nothing refers to another host, so the pages open from disk offline.
"""

from __future__ import annotations

import math
from html import escape
from importlib import resources
from typing import Any

from tsae_core.dashboard.charts import COLOURS, Series, chart


def asset(name: str) -> str:
    return resources.files("tsae_core.dashboard").joinpath("static", name).read_text(encoding="utf-8")


def page(title: str, body: str, nav: str = "", scripts: tuple[str, ...] = (), body_attrs: str = "") -> str:
    js = "".join(f"<script>\n{asset(s)}\n</script>" for s in scripts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>\n{asset('dashboard.css')}\n</style></head>"
            f"<body{body_attrs}>{nav}{body}{js}</body></html>\n")


def fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e-3 and v != 0 else f"{v:.{digits}f}"
    return str(v)


def num(v: Any) -> str:
    """A sortable data-v attribute value."""
    return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else repr(float(v))


# -- contexts ------------------------------------------------------------------------------------

def context_html(ctx: dict[str, Any], scale: float) -> str:
    """One context as text, every token shaded by the latent's activation relative to `scale`, the
    marked token outlined; on a synthetic source (no tokens) an activation trace instead."""
    acts = ctx["activations"]
    if "tokens" not in ctx:
        series = [Series("latent", acts, "line", COLOURS["data"])]
        if "truth" in ctx:
            series.append(Series("true feature (scaled)", ctx["truth"], "dashed", COLOURS["truth"]))
        x = ctx["positions"]
        return (f'<div class="ctx"><span class="v">{fmt(ctx["activation"])}</span> at position {x[ctx["marked"]]} of the context'
                f'<br>{chart(x, series, "", "position", "activation", width=420, height=110)}</div>')
    spans = []
    for i, (tok, a) in enumerate(zip(ctx["tokens"], acts)):
        alpha = max(0.0, min(1.0, a / scale)) if scale > 0 else 0.0
        cls = "tok" + (" mark" if i == ctx["marked"] else "") + (" sp" if ctx["special"][i] else "")
        style = f' style="background:rgba(31,111,178,{alpha * 0.75:.2f})"' if alpha > 0.01 else ""
        spans.append(f'<span class="{cls}"{style} title="{a:.3f}">{escape(tok)}</span>')
    return f'<div class="ctx"><span class="v">{fmt(ctx["activation"])}</span>{"".join(spans)}</div>'


def contexts_html(contexts: list[dict[str, Any]], scale: float, empty: str = "none") -> str:
    return "".join(context_html(c, scale) for c in contexts) or f'<p class="muted">{empty}</p>'


# -- one feature -----------------------------------------------------------------------------------

def _link(sae: str, latent: int, pages: dict[str, set[int]], prefix: str = "../") -> str:
    text = f"{escape(sae)} #{latent}"
    return f'<a href="{prefix}{escape(sae)}/{latent}.html">{text}</a>' if latent in pages.get(sae, set()) else text


def _stats_html(sae: str, f: dict[str, Any], pages: dict[str, set[int]]) -> str:
    """The statistics block of a feature page: one line per statistic, its control beside it."""
    truth = f.get("truth")
    stats = [
        ("cluster", f["cluster"] if f["cluster"] is not None else "–"),
        ("firing rate", fmt(f["frequency"], 4)),
        ("lag-1 autocorrelation", f'{fmt(f["lag1"])} <span>(control {fmt(f["lag1_control"])})</span>'),
        ("run length / i.i.d.", f'{fmt(f["run_ratio"])} <span>(control {fmt(f["run_ratio_control"])})</span>'),
        ("position dependence η²", f'{fmt(f["position_dependence"])} <span>(control {fmt(f["position_dependence_control"])})</span>'),
        ("redundancy", f'{fmt(f["redundancy"])} <span>(control {fmt(f["redundancy_control"])})</span>'
                       + (f' <span>with #{f["redundancy_partner"]} at lag {f["redundancy_lag"]}</span>' if f["redundancy_partner"] >= 0 else "")),
        ("max decoder cosine", f'{fmt(f["max_decoder_cos"])} <span>with {_link(sae, f["max_decoder_cos_partner"], pages, "")}</span>'),
    ]
    if truth is not None:
        word = "matches" if truth["matched"] else "closest (below the match threshold):"
        stats.append(("true feature", f'{word} #{truth["feature"]} ({escape(truth["kind"])}, cosine {fmt(truth["cosine"])})'))
    return "".join(f"<div><span>{k}:</span> {v}</div>" for k, v in stats)


def _profile_charts(f: dict[str, Any]) -> list[str]:
    """The profile charts of a feature page: histogram, activation along the top contexts (a text
    source only), autocorrelation, run lengths and position profile."""
    K = len(f["autocorr"]["data"])
    hist = f["histogram"]
    centres = [round((a + b) / 2, 3) for a, b in zip(hist["edges"][:-1], hist["edges"][1:])]
    runs = f["runs"]
    position = f["position"]
    bins = len(position)
    charts = [
        chart(centres, [Series("tokens", hist["counts"], "bar")], f"activation histogram ({hist['n_zero']} of {hist['n_tokens']} at 0)",
              "activation", "tokens"),
        chart(list(range(1, K + 1)), [Series("latent", f["autocorr"]["data"]),
                                      Series("control: sequence", f["autocorr"]["control"], "dashed", COLOURS["control"]),
                                      Series("control: document", f["autocorr"]["doc_shuffled"], "dashed", COLOURS["strict"])],
              "autocorrelation by lag", "lag (tokens)", "Pearson r"),
        chart([str(l) if l < runs["lengths"][-1] else f"≥{l}" for l in runs["lengths"]],
              [Series("runs", runs["share"], "bar"), Series("i.i.d., same rate", runs["iid_share"], "dashed", COLOURS["control"])],
              f"run lengths ({runs['n_runs']} runs, mean {fmt(runs['mean'], 2)} vs {fmt(runs['iid_mean'], 2)})",
              "run length (tokens)", "share of runs"),
        chart([f"{i}/{bins}" for i in range(bins)], [Series("share", position, "bar"),
                                                    Series("flat", [1 / bins] * bins, "dashed", COLOURS["control"])],
              "position profile (share of activation)", "position in document (context fraction)", "share"),
    ]
    if f["top"] and "tokens" in f["top"][0]:
        charts.insert(1, _top_contexts_chart(f["top"]))
    return charts


def _top_contexts_chart(top: list[dict[str, Any]]) -> str:
    """The activations along the top 5 contexts, aligned at their marked tokens; the x axis spans those 5 only."""
    top = top[:5]
    offsets = list(range(-max(c["marked"] for c in top), max(len(c["activations"]) - c["marked"] for c in top)))
    series = []
    for i, c in enumerate(top):
        pad = offsets.index(-c["marked"])
        values = [None] * pad + c["activations"] + [None] * (len(offsets) - pad - len(c["activations"]))
        series.append(Series(f"#{i + 1}", values[: len(offsets)], "line",
                             ["#1f6fb2", "#d9822b", "#2f9e44", "#8e44ad", "#c0392b"][i]))
    return chart(offsets, series, "activation along the top 5 contexts", "tokens from the marked one", "activation")


def _neighbours_html(sae: str, f: dict[str, Any], pages: dict[str, set[int]]) -> str:
    """The two decoder-neighbour tables: the closest latents of the same SAE, the closest of every other."""
    neighbours = "".join(f"<tr><td class=l>{_link(sae, i, pages, '')}</td><td>{fmt(c)}</td></tr>" for i, c in f["neighbours"])
    others = "".join(f"<tr><td class=l>{_link(o, i, pages)}</td><td>{fmt(c)}</td></tr>" for o, (i, c) in f["others"].items())
    return (f"<div class=cols><table><tr><th class=l>in {escape(sae)}</th><th>cosine</th></tr>{neighbours}</table>"
            f"<table><tr><th class=l>closest alive feature in every other SAE</th><th>cosine</th></tr>{others}</table></div>")


def _logit_rows(logits: dict[str, Any], side: str) -> str:
    """Table rows of the tokens whose logits a direction raises (`side` "up") or lowers ("down")."""
    return "".join(f"<tr><td class=l><code>{escape(t)}</code></td><td>{v:+.3f}</td></tr>" for t, v in logits[side])


def _logits_html(f: dict[str, Any]) -> str:
    """The logit-effects section of a feature page; empty when the feature has no logits."""
    if not f.get("logits"):
        return ""
    return (f"<h2>Logit effects</h2><p class='muted small'>The unit decoder direction through the unembedding alone (the "
            f"direct path; later blocks and the final normalisation's scale left out).</p>"
            f"<div class=cols><table><tr><th class=l>raised</th><th>logit</th></tr>{_logit_rows(f['logits'], 'up')}</table>"
            f"<table><tr><th class=l>lowered</th><th>logit</th></tr>{_logit_rows(f['logits'], 'down')}</table></div>")


def feature_page(sae: str, f: dict[str, Any], pages: dict[str, set[int]], run: str) -> str:
    """The page of one latent: its statistics, contexts, quantile samples and profiles."""
    scale = max([c["activation"] for c in f["top"]] or [1.0])
    quantiles = "".join(
        f'<div class="qbin">activations {fmt(q["lo"])} – {fmt(q["hi"])}</div>{contexts_html(q["contexts"], scale)}'
        for q in reversed(f["quantiles"]))
    nav = (f'<nav><a href="../index.html">{escape(run)}</a><a href="index.html">{escape(sae)}: all latents</a>'
           f'<a href="../concepts.html">concepts side by side</a></nav>')
    body = (f"<h1>{escape(sae)} · latent {f['latent']}</h1><div class=stats>{_stats_html(sae, f, pages)}</div>"
            f"<h2>Profiles</h2><div class=charts>{''.join(_profile_charts(f))}</div>"
            f"<h2>Top-activating contexts</h2><p class='muted small'>The strongest evaluated tokens, at most one per sequence; "
            f"shading: activation relative to the strongest; outlined: the token the number belongs to.</p>"
            f"{contexts_html(f['top'], scale, 'this latent did not fire on the evaluated tokens')}"
            f"<h2>Samples by activation quantile</h2>{quantiles or '<p class=muted>none</p>'}"
            f"<h2>Decoder neighbours</h2>{_neighbours_html(sae, f, pages)}{_logits_html(f)}")
    return page(f"{sae} #{f['latent']} · {run}", body, nav)


# -- indexes ---------------------------------------------------------------------------------------

INDEX_COLUMNS = (
    ("cluster", "cluster", 0), ("firing rate", "frequency", 4), ("lag-1", "lag1", 3), ("lag-1 control", "lag1_control", 3),
    ("run length / i.i.d.", "run_ratio", 2), ("position η²", "position_dependence", 3),
    ("position η² control", "position_dependence_control", 3), ("redundancy", "redundancy", 3),
    ("max decoder cos", "max_decoder_cos", 3),
)


def sae_index(sae: str, rows: list[dict[str, Any]], pages: set[int], summary: str, run: str) -> str:
    """Every alive latent of one SAE in a sortable table; latents with a page link to it."""
    head = "<th class=l>latent</th>" + "".join(f"<th>{escape(h)}</th>" for h, _, _ in INDEX_COLUMNS)
    body_rows = []
    for r in rows:
        has = r["latent"] in pages
        cells = "".join(f'<td data-v="{num(r[k])}">{fmt(r[k], d) if d else fmt(r[k])}</td>' for _, k, d in INDEX_COLUMNS)
        name = f'<a href="{r["latent"]}.html">#{r["latent"]}</a>' if has else f"#{r['latent']}"
        body_rows.append(f'<tr data-page="{int(has)}"><td class=l data-v="{r["latent"]}">{name}</td>{cells}</tr>')
    body = (f"<h1>{escape(sae)}</h1><p>{summary}</p>"
            f"<p class='muted small'>Click a column to sort. Controls: lag-1 with the activations shuffled within each "
            f"document; position η² with them shuffled within each document while positions stay. "
            f"<label><input type=checkbox id=pages-only> only latents with a page ({len(pages)})</label></p>"
            f"<table class=sortable><thead><tr>{head}</tr></thead><tbody>{''.join(body_rows)}</tbody></table>")
    nav = f'<nav><a href="../index.html">{escape(run)}</a><a href="../concepts.html">concepts side by side</a></nav>'
    return page(f"{sae} · {run}", body, nav, scripts=("sort.js",))


def run_index(run: str, source: str, saes: list[dict[str, Any]], baseline: str, n_pairs: int) -> str:
    head = ("<tr><th class=l>SAE</th><th>explained variance</th><th>L0</th><th>alive latents</th><th>mean lag-1</th>"
            "<th>lag-1 control</th><th>healthy</th><th>pages</th></tr>")
    rows = "".join(
        f"<tr><td class=l><a href=\"{escape(s['name'])}/index.html\">{escape(s['name'])}</a></td><td>{fmt(s['ev'])}</td>"
        f"<td>{fmt(s['l0'], 1)}</td><td>{s['alive']}</td><td>{fmt(s['lag1'])}</td><td>{fmt(s['lag1_control'])}</td>"
        f"<td class=\"{'good' if s['healthy'] else 'bad'}\">{'yes' if s['healthy'] else 'no'}</td><td>{s['pages']}</td></tr>"
        for s in saes)
    body = (f"<h1>Feature dashboard · {escape(run)}</h1><p class=muted>{escape(source)}</p>"
            f"<table><thead>{head}</thead><tbody>{rows}</tbody></table>"
            f"<h2>Pages</h2><ul><li>Each SAE's name opens its sortable index of every alive latent; the latents with a page "
            f"are a seeded random sample of its alive latents, plus the ones matched on the concept page.</li>"
            f"<li><a href=\"concepts.html\">Concepts side by side</a>: sampled features of the baseline ({escape(baseline)}) "
            f"beside the closest alive feature (decoder cosine) of every other SAE.</li>"
            f"<li><a href=\"rate.html\">Blind rating</a>: {n_pairs} pairs of features, names hidden; rate, download the "
            f"JSON, then <code>tsae ratings runs/{escape(run)} FILE</code>.</li></ul>"
            f"<h2>Reading a feature page</h2><p class=small>Explained variance, L0 and the mean lag-1 over alive latents are "
            f"the evaluation's (the whole eval split, as in the figures); the lag-1 control shuffles the "
            f"activations within each document. A temporal prior claims persistence beyond that control. Run lengths are "
            f"compared with the geometric law of an i.i.d. latent of the same rate; autocorrelation with the activations "
            f"shuffled within the sequence and, stricter, within the document. Logit effects are direct effects through the "
            f"unembedding (a language-model source only).</p>")
    return page(f"tsae dashboard · {run}", body)


def concepts_page(run: str, baseline: str, order: list[str], concepts: list[dict[str, Any]],
                  features: dict[str, dict[int, dict[str, Any]]], pages: dict[str, set[int]]) -> str:
    """One row per sampled baseline feature, one column per SAE: the closest feature by decoder cosine."""
    head = "".join(f"<th class=l>{escape(n)}</th>" for n in order)
    rows = []
    for c in concepts:
        cells = []
        for n in order:
            latent, cos = c["matches"][n]
            f = features[n][latent]
            scale = max([x["activation"] for x in f["top"]] or [1.0])
            cells.append(f"<td>{_link(n, latent, pages, '')}<br><span class='small muted'>cos {fmt(cos)} · lag-1 "
                         f"{fmt(f['lag1'])} · rate {fmt(f['frequency'], 4)}</span>{contexts_html(f['top'][:2], scale)}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    body = (f"<h1>Concepts side by side</h1><p class=small>Each row starts from a randomly sampled feature of the baseline "
            f"<b>{escape(baseline)}</b>; every other column shows the alive feature of that SAE whose decoder direction is closest "
            f"(cosine given). A high cosine with different contexts means the SAEs split the concept differently.</p>"
            f"<div style='overflow-x:auto'><table class=concepts><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")
    return page(f"concepts · {run}", body, f'<nav><a href="index.html">{escape(run)}</a></nav>')


# -- blind rating ----------------------------------------------------------------------------------

RATING_SCALE = ((1, "1 · no pattern"), (2, "2"), (3, "3 · a pattern with exceptions"), (4, "4"), (5, "5 · one clear concept"))


def rating_page(run: str, set_id: str, items: list[dict[str, Any]]) -> str:
    """The blind-rating page: each item shows two anonymous features (A, B); nothing in the page names
    an SAE or a latent. `items`: [{"id", "A": feature view, "B": feature view}]."""
    blocks = []
    for it in items:
        sides = []
        for side in ("A", "B"):
            f = it[side]
            scale = max([x["activation"] for x in f["top"]] or [1.0])
            radios = "".join(f'<label><input type=radio name="{it["id"]}-{side}" value="{v}" data-side="{side}" '
                             f'data-what="rating"> {escape(t)}</label>' for v, t in RATING_SCALE)
            sides.append(f"<div><h3>Feature {side}</h3>{contexts_html(f['top'], scale)}"
                         f"<div class=qbin>weaker activations</div>{contexts_html(f['samples'], scale)}"
                         f"<div class=rate><p>How monosemantic is feature {side}?<br>{radios}</p>"
                         f'<p><input type=text placeholder="label (optional)" data-side="{side}" data-what="label"></p></div></div>')
        prefer = "".join(f'<label><input type=radio name="{it["id"]}-prefer" value="{v}" data-what="prefer"> {t}</label>'
                         for v, t in (("A", "A"), ("B", "B"), ("same", "about the same")))
        blocks.append(f'<section class=item id="{it["id"]}"><h2>Pair {it["number"]}</h2><div class=cols>{"".join(sides)}</div>'
                      f"<p class=rate>Which is more clearly one concept? {prefer}</p></section>")
    body = (f"<div id=progress><b id=count></b> · <label>rater <input id=rater size=14></label> "
            f"<button id=download>Download ratings</button> <button id=clear>Start over</button></div>"
            f"<h1>Blind rating</h1><p class=small>Each pair shows two features from different SAEs of this run, in random order; "
            f"which SAE a feature comes from is hidden until the ratings are scored. For each feature, read its strongest "
            f"contexts and the weaker samples and rate how well one concept explains where it fires, then say which of the "
            f"two is clearer. Answers are kept in this browser as you go; <b>Download ratings</b> saves them as a JSON file "
            f"for <code>tsae ratings runs/{escape(run)} FILE</code>.</p>{''.join(blocks)}")
    return page(f"blind rating · {run}", body, scripts=("rate.js",), body_attrs=f' data-set="{escape(set_id)}"')
