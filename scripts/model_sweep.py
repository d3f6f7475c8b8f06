"""Every text architecture of the installed Transformers under attn_implementation="triton", against eager.

For each model type of Transformers' causal-LM and masked-LM auto mappings, builds a tiny random model from its
default config shrunk (two layers, hidden size 64, four heads over two key/value heads), runs a padded batch (left
and right padding for decoders, right padding for encoders) through it under "eager" and under "triton" on the
same weights, and reports the largest difference on the valid positions, relative to the largest eager logit.
Decoders also generate a few greedy tokens from the left-padded batch with the dynamic cache. Each model runs in a
child process with a time limit, so one that hangs or crashes does not stop the sweep. Without a GPU the kernels
run in the Triton interpreter (float32).

    PYTHONPATH=. python scripts/model_sweep.py [--types llama bert ...] [--jobs 2] [--head-dim 40] [--out sweep.json]

``--head-dim`` sets the tiny models' head dim (hidden size four times it): 16 by default; 40, say, to run the
kernels' two head-dim tiles (32 + 16, ``configs.head_dim_tiles``) through every architecture.

Statuses: ``ok`` (within --tol), ``DIFF`` (outputs differ), ``ERROR`` (triton raised where eager did not; the
message says whether it is one of the backend's deliberate refusals), ``skip`` (the tiny model could not be built or
run under eager, or the model never calls the attention function of its ``attn_implementation`` and its outputs
match; where they do not, its own attention code reads the mask made for "triton": DIFF).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

TINY = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
    head_dim=16, vocab_size=97, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    num_experts=4, num_local_experts=4, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
)
# Where the shrunk default config does not build or run: the model types' own sizes, shrunk too.
INKLING2 = dict(unpadded_vocab_size=97, swa_num_attention_heads=4, swa_num_key_value_heads=2, swa_head_dim=16,
                sliding_window_size=6, rel_extent=16)
# Multi-head latent attention: keys of 24 dims (16 + 8 rotary), values of 16, as many kv heads as query heads.
MLA = dict(qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16, kv_lora_rank=32, q_lora_rank=32, head_dim=8,
           num_key_value_heads=4, n_group=1, topk_group=1, first_k_dense_replace=1)
# Hybrids whose attention layers come every fourth: with two layers they would have none.
HYBRID = dict(num_hidden_layers=4)
OVERRIDES = {"inkling2_text": INKLING2, "inkling2_loop_text": INKLING2,
             **{name: MLA for name in ("deepseek_v2", "deepseek_v3", "minicpm3", "glm4_moe_lite")},
             **{name: HYBRID for name in ("qwen3_5_text", "qwen3_5_moe_text", "qwen3_next", "kimi_linear")}}
VOCAB = TINY["vocab_size"]
BATCH, SEQLEN, NEW_TOKENS = 3, 14, 4
PADS = [0, 3, 7]
TRITON_STAGE = "STAGE triton"


def model_types():
    from transformers.models.auto import modeling_auto
    causal = dict(modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    masked = {t: c for t, c in modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES.items() if t not in causal}
    return [(t, "causal") for t in causal] + [(t, "masked") for t in masked]


def tiny_config(model_type, head_dim=TINY["head_dim"]):
    from transformers import CONFIG_MAPPING
    sizes = dict(head_dim=head_dim, hidden_size=TINY["num_attention_heads"] * head_dim)
    return CONFIG_MAPPING[model_type](**{**TINY, **sizes, **OVERRIDES.get(model_type, {})})


def padded_batch(device, side):
    import torch
    ids = torch.randint(3, VOCAB, (BATCH, SEQLEN), device=device)
    mask = torch.ones(BATCH, SEQLEN, dtype=torch.long, device=device)
    for row, pad in enumerate(PADS):
        mask[row, :pad] = 0
        ids[row, :pad] = 0
    return (ids, mask) if side == "left" else (ids.flip(-1), mask.flip(-1))


def check_one(model_type, kind, tol, head_dim=TINY["head_dim"]):
    """Runs in the child process: the model's result as a dict."""
    import transformers

    import hf_triton_attn

    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return hf_triton_attn.triton_attention_forward(*args, **kwargs)

    transformers.AttentionInterface.register("triton", counted)
    try:
        return _compare(model_type, kind, tol, head_dim, calls)
    finally:
        hf_triton_attn.register()


def _compare(model_type, kind, tol, head_dim, calls):
    import torch
    import transformers

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    auto = transformers.AutoModelForCausalLM if kind == "causal" else transformers.AutoModelForMaskedLM
    try:
        config = tiny_config(model_type, head_dim)
        torch.manual_seed(0)
        model = auto.from_config(config, attn_implementation="eager", dtype=torch.float32).to(device).eval()
    except Exception as error:  # noqa: BLE001  (any failure to build is reported, not raised)
        return dict(status="skip", detail=f"build: {type(error).__name__}: {error}"[:300])

    sides = ["left", "right"] if kind == "causal" else ["right"]
    torch.manual_seed(1)
    batches = {side: padded_batch(device, side) for side in sides}
    outputs = {}
    for impl in ["eager", "triton"]:
        if impl == "triton":
            print(TRITON_STAGE, flush=True)
        try:
            model.set_attn_implementation(impl)
            with torch.no_grad():
                outputs[impl] = {side: model(input_ids=ids, attention_mask=mask).logits
                                 for side, (ids, mask) in batches.items()}
                if kind == "causal":
                    ids, mask = batches["left"]
                    outputs[impl]["generate"] = model.generate(
                        input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False,
                        pad_token_id=0)
        except Exception as error:  # noqa: BLE001
            detail = f"{impl}: {type(error).__name__}: {error}"[:400]
            return dict(status="skip" if impl == "eager" else "ERROR", detail=detail)
    result = dict(status="ok", detail="")
    for side, (ids, mask) in batches.items():
        eager, ours = outputs["eager"][side], outputs["triton"][side]
        # The valid positions, where the outputs are per token (Perceiver's are per latent: all of them).
        valid = (mask.bool() if eager.shape[:2] == mask.shape
                 else torch.ones(eager.shape[:-1], dtype=torch.bool, device=eager.device))
        diff = (eager - ours)[valid].abs().max().item() / max(eager[valid].abs().max().item(), 1e-30)
        result[side] = diff
        if not diff <= tol:
            result["status"] = "DIFF"
    if kind == "causal":
        same = torch.equal(outputs["eager"]["generate"], outputs["triton"]["generate"])
        result["generate"] = "same" if same else "differs"
        if not same:
            result["status"] = "DIFF"
    if not calls:
        # Its own attention code ran under both names; a difference means that code read the mask "triton"'s mask
        # function made, which only our attention function can take.
        if result["status"] == "ok":
            return dict(status="skip", detail="never calls the attention function it is given")
        result["detail"] = "never calls the attention function, yet differs: its own code reads triton's mask"
    return result


def run_child(model_type, kind, tol, head_dim, timeout):
    command = [sys.executable, __file__, "--child", model_type, kind, "--tol", str(tol), "--head-dim", str(head_dim)]
    env = dict(os.environ)
    env.setdefault("TRITON_INTERPRET", "0" if _has_cuda() else "1")
    start = time.time()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as expired:
        return _failed(expired.stdout, f"timed out after {timeout} s")
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        return _failed(done.stdout, f"exited {done.returncode} (-9: killed, often for memory): "
                                    f"{done.stderr.strip()[-300:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    result["seconds"] = round(time.time() - start, 1)
    return result


def _failed(stdout, what: str) -> dict:
    """A child that died: an ERROR once it had reached "triton", else the tiny model itself failed (skip)."""
    if isinstance(stdout, bytes):
        stdout = stdout.decode(errors="replace")
    if TRITON_STAGE in (stdout or ""):
        return dict(status="ERROR", detail=f"under triton: {what}")
    return dict(status="skip", detail=f"building or running it under eager: {what}")


def _has_cuda():
    import torch
    return torch.cuda.is_available()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", nargs="*", help="model types to check (default: all)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--tol", type=float, default=1e-4, help="largest relative difference called ok")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--head-dim", type=int, default=TINY["head_dim"],
                        help="the tiny models' head dim (hidden size: four times it)")
    parser.add_argument("--out", help="write every result as JSON here")
    parser.add_argument("--child", nargs=2, metavar=("TYPE", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(check_one(*args.child, args.tol, args.head_dim)), flush=True)
        return

    todo = model_types()
    if args.types:
        unknown = set(args.types) - {t for t, _ in todo}
        if unknown:
            parser.error(f"not a causal- or masked-LM model type of this Transformers: {sorted(unknown)}")
        todo = [(t, k) for t, k in todo if t in args.types]
    results = {}

    def check(item):
        model_type, kind = item
        result = run_child(model_type, kind, args.tol, args.head_dim, args.timeout)
        results[model_type] = dict(kind=kind, **result)
        figures = " ".join(f"{key}={result[key]:.1e}" if isinstance(result[key], float) else f"{key}={result[key]}"
                           for key in ("left", "right", "generate") if key in result)
        print(f"[{len(results)}/{len(todo)}] {model_type:28s} {result['status']:5s} {figures} {result['detail']}",
              flush=True)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(check, todo))
    counts = {status: sum(r["status"] == status for r in results.values())
              for status in ("ok", "DIFF", "ERROR", "skip")}
    print("summary: " + ", ".join(f"{n} {status}" for status, n in counts.items()))
    if args.out:
        with open(args.out, "w") as file:
            json.dump(results, file, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
