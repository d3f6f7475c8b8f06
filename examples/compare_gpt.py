"""Compare attn_implementation="triton" with "eager" (and "sdpa" for reference) on decoder-only models.

A GPT-2 and a Llama-style model with grouped-query attention, random weights (seeded), each saved with
save_pretrained and loaded back with from_pretrained(..., attn_implementation=...). Compares the logits of a
left-padded batch, then greedy generation (20 new tokens) with the default dynamic cache and with a static
cache. Tokenizer-free: random ids and an attention mask with a different pad length per row.

    TRITON_INTERPRET=1 python examples/compare_gpt.py
    python examples/compare_gpt.py --device cuda --size large
"""
import argparse
import tempfile

import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import _common

IMPLEMENTATIONS = ("eager", "sdpa", "triton")
CACHES = ("dynamic", "static")
NEW_TOKENS = 20
PAD, BOS, EOS = 0, 1, 2
SIZES = {
    "small": dict(hidden=128, layers=2, heads=4, kv_heads=2, vocab=1000, batch=4, seq=32),
    "large": dict(hidden=512, layers=4, heads=8, kv_heads=2, vocab=32000, batch=8, seq=128),
}


def gpt2(size: dict) -> GPT2LMHeadModel:
    return GPT2LMHeadModel(GPT2Config(
        n_layer=size["layers"], n_head=size["heads"], n_embd=size["hidden"], vocab_size=size["vocab"],
        n_positions=size["seq"] + NEW_TOKENS, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
    ))


def llama_gqa(size: dict) -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig(
        hidden_size=size["hidden"], intermediate_size=2 * size["hidden"], num_hidden_layers=size["layers"],
        num_attention_heads=size["heads"], num_key_value_heads=size["kv_heads"], vocab_size=size["vocab"],
        max_position_embeddings=size["seq"] + NEW_TOKENS, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
    ))


def left_padded_batch(size: dict, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    batch, seq = size["batch"], size["seq"]
    input_ids = torch.randint(EOS + 1, size["vocab"], (batch, seq))
    pad_lengths = torch.linspace(0, seq // 2, batch).long()
    attention_mask = (torch.arange(seq) >= pad_lengths[:, None]).long()
    input_ids = input_ids.masked_fill(attention_mask == 0, PAD)
    return input_ids.to(device), attention_mask.to(device)


def run(path: str, implementation: str, dtype: torch.dtype, input_ids, attention_mask) -> dict:
    """Logits of the padded batch and the greedily generated tokens for each cache."""
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=implementation, dtype=dtype)
    model.to(input_ids.device).eval()
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        result = {"logits": model(input_ids, attention_mask=attention_mask, position_ids=position_ids).logits.float()}
    for cache in CACHES:
        generated = model.generate(
            input_ids, attention_mask=attention_mask, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
            do_sample=False, pad_token_id=PAD, cache_implementation="static" if cache == "static" else None,
        )
        result[cache] = generated[:, input_ids.shape[1]:]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="small", help=f"model and batch sizes: {SIZES}")
    parser.add_argument("--seed", type=int, default=0)
    _common.add_device_arguments(parser)
    args = parser.parse_args()
    dtype = _common.setup(parser, args, cuda_dtype="bfloat16")
    size = SIZES[args.size]
    print(f"size {args.size}: {size}")

    torch.manual_seed(args.seed)
    input_ids, attention_mask = left_padded_batch(size, args.device)
    real_tokens = attention_mask.bool()
    print(f"left padding per row: {(attention_mask == 0).sum(dim=1).tolist()}")
    rows, failures = [], []
    for model_name, build in (("gpt2", gpt2), ("llama-gqa", llama_gqa)):
        with tempfile.TemporaryDirectory() as path:
            build(size).save_pretrained(path)
            results = {name: run(path, name, dtype, input_ids, attention_mask) for name in IMPLEMENTATIONS}
        eager_logits = results["eager"]["logits"][real_tokens]
        diffs = {name: (r["logits"][real_tokens] - eager_logits).abs().max().item() for name, r in results.items()}
        limit = _common.diff_limit(dtype, diffs["sdpa"], eager_logits.abs().max().item())
        for name in IMPLEMENTATIONS[1:]:
            matches = {cache: (results[name][cache] == results["eager"][cache]).sum().item() for cache in CACHES}
            rows.append([model_name, name, f"{diffs[name]:.2e}", f"{limit:.2e}",
                         *(f"{matches[cache]}/{results['eager'][cache].numel()}" for cache in CACHES)])
        if diffs["triton"] > limit:
            failures.append(f"{model_name}: logits differ from eager by {diffs['triton']:.2e} > {limit:.2e}")
        for cache in CACHES:
            # In half precision near-tied logits may flip a greedy choice, so tokens are only required in float32.
            if dtype == torch.float32 and not torch.equal(results["triton"][cache], results["eager"][cache]):
                failures.append(f"{model_name}: greedy tokens with the {cache} cache differ from eager's")

    _common.print_table(["model", "vs eager", "max|diff| logits (real tokens)", "limit",
                         "tokens = eager (dynamic)", "tokens = eager (static)"], rows)
    print(_common.tolerance_text(dtype) + (", generated tokens identical" if dtype == torch.float32 else ""))
    _common.finish(failures)


if __name__ == "__main__":
    main()
