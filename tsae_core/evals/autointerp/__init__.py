"""Automated interpretability in SAEBench's protocol (`sae_bench/evals/autointerp`), with an LLM
judge behind any OpenAI-compatible endpoint, or the synthetic source's truth as an oracle.

An explainer sees a latent's top-activating and importance-weighted examples with the active tokens
marked `<<tok>>` and describes the latent; a scorer sees the description and 14 shuffled sequences
(2 top, 2 importance-weighted, 10 random) and names those in which the latent fires; the latent's
score is the fraction classified correctly and `autointerp_score` the mean over latents. Beside it:
the shuffled-explanation control (each latent scored with another latent's explanation), the chance
level, and a temporal rescoring with a wider window before each example's chosen token.

Modules: `sampling` (what is shown), `prompts` (how it is asked and read), `client` (the endpoint,
its cache and its errors), `judges` (LLM, oracle, random), `pipeline` (one SAE), `evaluation` (the
JSON file per SAE, the stage); `config` (the params section).
"""
