"""Installed-looking distributions made on the fly, so the GGUF locator is tested without the registry.

`make_distribution(site, "pkg-name", {"pkg_name/data/f.bin": b"..."})` writes the files and a
`<pkg_name>-1.0.0.dist-info/` with METADATA and a RECORD listing each file's size, exactly the
layout pip leaves in site-packages; put `site` on sys.path and `importlib.metadata` finds it.
A tiny GGUF model that `transformers` can load (a 2-block Llama with a character-level BPE
vocabulary) is written by `write_tiny_llama_gguf`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

TINY_TEXTS = [
    "the cat sat on the mat. the dog ran in the park, and the cat saw the dog.",
    "a bird can fly over the river. the fish swim in the cold water all day.",
    "we read the book and then we wrote a long letter to our old friend.",
    "rain fell on the town, and the streets were wet and dark for a week.",
] * 6


def make_distribution(site: Path, name: str, files: dict[str, bytes], record_sizes: dict[str, int] | None = None,
                      init_code: str | None = None) -> None:
    """Write `files` (paths relative to `site`) and the dist-info of distribution `name` 1.0.0.

    `record_sizes` overrides the size RECORD lists for a file (to fake a truncated install);
    `init_code` adds a top-level package `__init__.py` with that code (to check it is never run).
    """
    norm = name.replace("-", "_")
    info = site / f"{norm}-1.0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0.0\n")
    files = dict(files)
    if init_code is not None:
        files[f"{norm}/__init__.py"] = init_code.encode()
    rows = []
    for rel, data in files.items():
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        size = (record_sizes or {}).get(rel, len(data))
        rows.append(f"{rel},sha256={hashlib.sha256(data).hexdigest()},{size}")
    rows.append(f"{info.name}/RECORD,,")
    (info / "RECORD").write_text("\n".join(rows) + "\n")


def write_tiny_llama_gguf(path: Path, n_layers: int = 2, d_model: int = 32, seed: int = 0) -> Path:
    """A random 2-block Llama in GGUF (float32 tensors) with a character-level byte-BPE vocabulary.

    Ids 0, 1, 2 are <s> (BOS), </s> (EOS) and <pad>; then a..z, "Ġ" (space), ".", ",", "ab".
    """
    import gguf
    import numpy as np

    V, H, F = 64, 4, 64
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(128)
    writer.add_embedding_length(d_model)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(F)
    writer.add_head_count(H)
    writer.add_head_count_kv(H)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(V)
    tokens = ["<s>", "</s>", "<pad>"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["Ġ", ".", ",", "ab"]
    tokens += [f"x{i}" for i in range(V - len(tokens))]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 3] + [1] * (V - 3))
    writer.add_token_scores([0.0] * V)
    writer.add_token_merges(["a b"])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    writer.add_pad_token_id(2)
    rng = np.random.default_rng(seed)

    def tensor(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.2).astype(np.float32))

    tensor("token_embd.weight", V, d_model)
    tensor("output_norm.weight", d_model)
    tensor("output.weight", V, d_model)
    for i in range(n_layers):
        for part, shape in (("attn_norm", (d_model,)), ("ffn_norm", (d_model,)), ("attn_q", (d_model, d_model)),
                            ("attn_k", (d_model, d_model)), ("attn_v", (d_model, d_model)), ("attn_output", (d_model, d_model)),
                            ("ffn_gate", (F, d_model)), ("ffn_up", (F, d_model)), ("ffn_down", (d_model, F))):
            tensor(f"blk.{i}.{part}.weight", *shape)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
