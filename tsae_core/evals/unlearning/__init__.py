"""Unlearning with SAE latents: an offline analogue of SAEBench's unlearning eval.

SAEBench (after Farrell et al. 2024, "Applying sparse autoencoders to unlearn knowledge in language
models") clamps the latents that fire on WMDP-bio's forget corpus and rarely on a retain corpus, and
scores the largest drop of WMDP-bio accuracy while MMLU accuracy stays within 1%. That needs gated
data and an instruct model; here the same protocol runs on what ships with Python.

**Sets (language models).** forget = the corpus docstrings (`corpus.python_docs_documents`) of the
stdlib packages `unlearning.forget_packages` (by default internet data handling, markup and protocols:
email, xml, http, urllib, json, ...); retain = every other docstring (pydoc topics belong to
neither: they are a different genre, and the contrast should be the subject, not the kind of text).
Each set is split into a *selection* half (latents are chosen there) and a *test* half (CE is measured
there) by the hash of the text: selection iff `_unit_hash(text, split_seed) < 0.5`; within each half
texts are ordered by a second hash of the text and the first `unlearning.max_contexts` kept. A text
is one context (`text_contexts`, BOS first, cut at harvest.context_size, padded with specials), and
the activation at the hook is read once.

**Selection.** On the selection data, over non-special tokens, each latent's firing frequency on
forget tokens p_f and on retain tokens p_r (a latent fires where its code is > 0). For a retain
threshold τ a latent is *eligible* iff p_r ≤ τ and p_f > 0. Eligible latents are ranked by

    ratio = p_f / (p_r + 1 / n_r)            n_r the number of retain-selection tokens,

i.e. as if each had fired once more on the retain set, so that latents that never fire on retain get
a finite ratio proportional to p_f; ties (equal ratio) go to the larger p_f, then the lower index.
The top n are clamped (fewer when fewer are eligible; the count used is recorded). SAEBench ranks by
p_f alone among latents with p_r < τ.

**Clamp.** With a_i the code of selected latent i at a non-special test token where a_i > 0:

    a'_i = −multiplier · scale_i,     x' = x + Σ_i (a'_i − a_i) W_dec[i] / s

scale_i the latent's mean value where it is active on the selection data (forget and retain tokens
together, so that a random control latent has one too), s the SAE's activation scaling factor. So a
multiplier means the same for SAEs of different activation scales; SAEBench clamps to −multiplier
in absolute units (25…200). Everything else is left as it was: inactive latents and tokens, special
tokens, and the SAE's error term x − x̂ (the edit is the decoder's change, added to x). Temporal
variants are encoded with their documents' boundaries and positions (`doc_start`, `position`); the
code of the predictive variant is its sparse novel code. The crosscoder is skipped: its code at token t
reads later tokens of its window, which a causal language model must not see.

**Measure (language models).** Next-token CE in nats on forget-test and retain-test, clean and edited,
over positions t < T − 1 whose input and target tokens are both non-special (as in
`tsae_core.metrics.model`), log-softmax in float32 and sums in float64. A context whose edit is zero
keeps its clean loss (nothing is recomputed for it).

**Sweep and score.** Every (retain threshold, n latents, multiplier) is a point. A point is admissible
iff (CE_retain' − CE_retain) / CE_retain ≤ `max_retain_increase` (1%). The score, under SAEBench's
key name `unlearning_score`, is the largest forget-CE increase CE_forget' − CE_forget (nats) over
admissible points, and 0 when none increases it (doing nothing is always admissible);
`unlearning_score_relative` is the same divided by the clean forget CE. SAEBench's score is
1 − the lowest WMDP-bio accuracy under its constraint; both say how much the forget set can be damaged
while the retain set is spared.

**Control.** The same sweep with random latents instead of the ranked ones: for each control seed and
threshold, a seeded permutation of the *alive* (firing on some selection token) latents with p_r ≤ τ;
a point takes as many from its front as the ranked selection used. Same scales, same clamp. If the
control scores as well, the ranking by forget/retain ratio is not what does the forgetting.

**Synthetic analogue (no language model).** forget = the `synthetic_forget_features` most frequent
slow true features; a token is a forget token where one of them is on, a retain token otherwise.
Selection and test data are the source's splits "unlearning-select" and "unlearning-test"
(`max_contexts` sequences each), the selection rule and clamp the same. Then

    forget damage = Σ_{(t,g): c_tg > 0, g forget} ⟨x_t − x'_t, d_g⟩ / Σ_{same} c_tg
    retain damage = Σ_{t retain} ‖x'_t − x_t‖² / Σ_{t retain} ‖x_t − x̄‖²        (x̄ their mean)

the fraction of the forget features' signal (its projection on their true directions d_g) removed at
their tokens, and the edit's energy on the other tokens against theirs. A point is admissible iff the
retain damage ≤ `max_retain_increase`; the score is the largest admissible forget damage (≥ 0). It is
an analogue: it measures what the edit does to the representation, not to a model's loss.

Modules: `config` (the `unlearning:` section), `data` (the sets), `selection` (the latents and the clamp),
`sweep` (the sweep and its score), `run` (one SAE, a run, the JSON files).
"""
