"""Variant options are typed: a wrong knob is a ConfigError that names the key and the file."""

from __future__ import annotations

import pytest

from tests.conftest import ci_config
from tsae_core.config import ConfigError
from tsae_core.variants.registry import architectures


def test_every_variant_is_registered():
    assert {"standard", "consistency", "contrastive", "matryoshka", "orthogonal", "relational", "conv", "predictive",
            "crosscoder", "pooled"} <= set(architectures())


@pytest.mark.parametrize("key, value, words", [
    ("variants.consistency.options.window", 0, "options.window"),
    ("variants.consistency.options.wndow", 4, "unknown key options.wndow"),
    ("variants.consistency.options.norm", "l3", "options.norm"),
    ("variants.contrastive.options.temperature", -1.0, "options.temperature"),
    ("variants.contrastive.options.high_level_fraction", 1.5, "options.high_level_fraction"),
    ("variants.matryoshka.options.prefixes", [16, 8], "options.prefixes"),
    ("variants.matryoshka.options.prefixes", [8, 64], "prefixes"),
    ("variants.orthogonal.options.mode", "sometimes", "options.mode"),
    ("variants.orthogonal.options.alpha", 1.0, "options.alpha"),
    ("variants.topk.options.window", 4, "takes no options"),
    ("variants.jumprelu.target_l0", -1, "target_l0"),
    ("variants.conv.options.buffer", 0, "options.buffer"),
    ("variants.pooled.options.window", 0, "options.window"),
    ("variants.conv.options.scales", [4, 2], "options.scales"),
    ("variants.conv.options.scales", [], "options.scales"),
    ("variants.conv.options.coefficient", -1.0, "options.coefficient"),
    ("variants.relational.options.heads", 3, "options.heads"),
    ("variants.relational.options.window", 0, "options.window"),
    ("variants.relational.options.curriculum_steps", -1, "options.curriculum_steps"),
    ("variants.crosscoder.options.T", 0, "options.T"),
    ("variants.crosscoder.activation", "jumprelu", "activation"),
    ("variants.predictive.options.window", 0, "options.window"),
    ("variants.predictive.options.heads", 0, "options.heads"),
    ("variants.predictive.options.collapse_share", 0.5, "options.collapse_share"),
    ("variants.predictive.activation", "relu", "activation"),
])
def test_bad_option_is_a_named_config_error(tmp_path, key, value, words):
    with pytest.raises(ConfigError) as e:
        ci_config(tmp_path, **{key: value})
    msg = str(e.value)
    assert words in msg and "ci.yaml" in msg and key.split(".")[1] in msg
