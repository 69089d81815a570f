"""A run's feature dashboard: static HTML pages that open from disk, offline.

`runs/<run>/dashboard/` holds
- `index.html`: every compared SAE with its headline numbers, and links;
- `<sae>/index.html`: every alive latent in a table sortable by firing rate, cluster, lag-1
  autocorrelation (and its control), run length, position dependence (and its control), redundancy
  and maximum decoder cosine;
- `<sae>/<latent>.html` for a seeded random sample of `dashboard.n_features` alive latents per SAE
  (and those matched on the concept page): statistics, profiles against their controls, top
  contexts, quantile samples, decoder neighbours, logit effects, the true feature it matches;
- `concepts.html`: sampled baseline features beside the closest feature of every other SAE;
- `rate.html`: the blind rating (`tsae_core.dashboard.rating`).

Pages are single files: styles and scripts inline, charts as SVG, no request to any host.
"""

from tsae_core.dashboard.build import build_dashboard, dashboard_dir

__all__ = ["build_dashboard", "dashboard_dir"]
