"""End to end with Transformers: the same random weights loaded with attn_implementation = eager, sdpa,
flex_attention and triton (ours), on the cases of /work/shared/PEERS.md "End to end", plus a right-padded
training step; ``--impls`` may add triton_skip_padding (ours, leaving out the right padding's query rows).

    PYTHONPATH=. python benchmarks/bench_models.py --out results/

Each model is built from its config with a fixed seed, saved once with ``save_pretrained`` to a temporary
folder and loaded back with ``from_pretrained(path, attn_implementation=impl, dtype=...)``, so every
implementation runs the same weights. Times are CUDA-event medians after warm-up (compilation and autotuning
stay out); peak memory is ``torch.cuda.max_memory_allocated`` over one call, weights included. An
implementation that fails to load or run is reported with its reason and the run goes on.
"""
import argparse
import dataclasses
import os
import sys
import tempfile
import time
import zlib
from typing import Callable, Optional

import torch
import transformers

from common import (add_common_arguments, environment_info, format_table, free_cuda_memory, median,
                    print_environment, random_lengths, require_cuda, selected, short_error, time_cuda_ms,
                    write_json)

# sdpa first: the reference for ratios and outputs. triton_skip_padding runs only when asked for (--impls): it
# differs from triton only on right-padded decoder cases.
IMPLEMENTATIONS = ("sdpa", "triton", "flex_attention", "eager", "triton_skip_padding")
DEFAULT_IMPLEMENTATIONS = IMPLEMENTATIONS[:4]
TABLE_COLUMNS = ("eager", "sdpa", "flex_attention", "triton", "triton_skip_padding")  # PEERS.md's order, then ours'
OURS = ("triton", "triton_skip_padding")
PAD_ID, FIRST_ORDINARY_ID = 0, 3  # ids 0-2 are pad/bos/eos in both configs; inputs draw from the rest
GIB = 2**30
DEVICE = "cuda"  # one constant, so that the logic can be exercised on a CPU by patching it


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    model_class: str  # a transformers class name
    dtype: torch.dtype
    make_config: Callable[[bool], "transformers.PretrainedConfig"]  # argument: quick


def llama_config(quick: bool) -> transformers.LlamaConfig:
    """The ~0.7B Llama-style model of PEERS.md (hidden 2048, 12 layers, 32 q / 8 kv heads); smaller if quick."""
    sizes = (dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=4, num_attention_heads=16,
                  num_key_value_heads=4) if quick else
             dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=12, num_attention_heads=32,
                  num_key_value_heads=8))
    return transformers.LlamaConfig(vocab_size=32000, max_position_embeddings=8192, pad_token_id=PAD_ID,
                                    bos_token_id=1, eos_token_id=2, **sizes)


def bert_config(quick: bool) -> transformers.BertConfig:
    """BERT-base sizes (the config defaults); fewer layers if quick."""
    return transformers.BertConfig(pad_token_id=PAD_ID, **({"num_hidden_layers": 4} if quick else {}))


MODELS = {
    "llama": ModelSpec("LlamaForCausalLM", torch.bfloat16, llama_config),
    "bert": ModelSpec("BertModel", torch.float16, bert_config),
    # BERT-base fine-tuning: masked-LM head, attention dropout at BERT's default 0.1 (the model is in train mode).
    "bert-mlm": ModelSpec("BertForMaskedLM", torch.bfloat16, bert_config),
}


@dataclasses.dataclass(frozen=True)
class ModelCase:
    name: str
    model: str  # a key of MODELS
    kind: str  # "forward", "generate" or "train"
    batch: int
    max_len: int
    padding: Optional[str]  # "left", "right" or None (every sequence max_len long)
    warmup: int
    reps: int
    max_seconds: float = 20.0  # wall time the timed repetitions may take (at least one runs)
    new_tokens: int = 0  # generate only
    cache: Optional[str] = None  # generate only: Transformers' cache_implementation ("static" compiles the step)

    @property
    def unit(self) -> str:
        return "tok/s" if self.kind == "generate" else "ms"

    @property
    def lengths(self) -> list[int]:
        if self.padding is None:
            return [self.max_len] * self.batch
        return random_lengths(self.batch, self.max_len, self.seed)

    @property
    def seed(self) -> int:
        return zlib.crc32(self.name.encode())


def all_cases(quick: bool) -> list[ModelCase]:
    """Most important first (a run cut short keeps them): the training step, whose peak memory must not
    exceed sdpa's, then prefill, BERT, and generation last because sdpa alone takes ~30 s there."""
    if quick:
        return [
            ModelCase("small llama train step B1 S1024 bf16", "llama", "train", 1, 1024, None, 1, 3),
            ModelCase("small llama prefill B4 S<=512 bf16", "llama", "forward", 4, 512, "left", 1, 3),
            ModelCase("4-layer bert forward B16 S<=128 fp16", "bert", "forward", 16, 128, "right", 1, 3),
            ModelCase("small llama generate B2 prompts<=128 +16 bf16", "llama", "generate", 2, 128, "left",
                      1, 2, new_tokens=16),
            ModelCase("small llama generate static cache B2 prompts<=128 +16 bf16", "llama", "generate", 2, 128,
                      "left", 2, 2, new_tokens=16, cache="static"),
            ModelCase("4-layer bert train step dropout 0.1 B8 S<=128 bf16", "bert-mlm", "train", 8, 128, "right",
                      1, 3),
        ]
    return [
        ModelCase("llama-0.7b train step B4 S4096 bf16", "llama", "train", 4, 4096, None, 2, 5),
        # Fine-tuning on a right-padded batch (labels -100 on the padding): not a PEERS.md row.
        ModelCase("llama-0.7b train step right-padded B8 S<=2048 bf16", "llama", "train", 8, 2048, "right", 2, 5),
        ModelCase("bert-base train step dropout 0.1 B32 S<=512 bf16", "bert-mlm", "train", 32, 512, "right", 2, 10),
        ModelCase("llama-0.7b prefill B16 S<=2048 bf16", "llama", "forward", 16, 2048, "left", 2, 5),
        ModelCase("bert-base forward B128 S<=512 fp16", "bert", "forward", 128, 512, "right", 3, 10),
        ModelCase("llama-0.7b generate B8 prompts<=1024 +128 bf16", "llama", "generate", 8, 1024, "left",
                  1, 3, max_seconds=15.0, new_tokens=128),
        # The first call compiles the decoding step (Transformers does, for a static cache): two warm-up calls.
        ModelCase("llama-0.7b generate static cache B8 prompts<=1024 +128 bf16", "llama", "generate", 8, 1024,
                  "left", 2, 3, max_seconds=15.0, new_tokens=128, cache="static"),
    ]


@dataclasses.dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: Optional[torch.Tensor]  # None when unpadded: models then take their mask-free path


def make_batch(case: ModelCase, vocab_size: int) -> Batch:
    generator = torch.Generator(device=DEVICE).manual_seed(case.seed)
    input_ids = torch.randint(FIRST_ORDINARY_ID, vocab_size, (case.batch, case.max_len), device=DEVICE,
                              generator=generator)
    if case.padding is None:
        return Batch(input_ids, None)
    positions = torch.arange(case.max_len, device=DEVICE)[None, :]
    lengths_column = torch.tensor(case.lengths, device=DEVICE)[:, None]
    if case.padding == "left":
        valid = positions >= case.max_len - lengths_column
    else:
        valid = positions < lengths_column
    return Batch(input_ids.masked_fill(~valid, PAD_ID), valid.long())


@dataclasses.dataclass
class Measurement:
    times_ms: list[float]
    value: float  # in the case's unit
    peak_gib: Optional[float]
    check: torch.Tensor  # a small output slice, compared across implementations


def peak_memory_gib(call: Callable[[], object]) -> tuple[float, object]:
    """Peak allocated memory over one call (weights and everything else alive included), and its result."""
    free_cuda_memory()
    torch.cuda.reset_peak_memory_stats()
    result = call()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / GIB, result


def measure_forward(model, case: ModelCase, batch: Batch) -> Measurement:
    def forward():
        with torch.inference_mode():
            return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)

    times = time_cuda_ms(forward, case.warmup, case.reps, case.max_seconds)
    peak, output = peak_memory_gib(forward)
    # A position that is real text in every row: the last with left padding, the first ([CLS]) with right.
    position = -1 if case.padding == "left" else 0
    final = output.logits if hasattr(output, "logits") else output.last_hidden_state
    check = final[:, position].float().clone()
    return Measurement(times, median(times), peak, check)


def measure_generate(model, case: ModelCase, batch: Batch) -> Measurement:
    def generate():
        return model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                              max_new_tokens=case.new_tokens, min_new_tokens=case.new_tokens, do_sample=False,
                              pad_token_id=PAD_ID, **({"cache_implementation": case.cache} if case.cache else {}))

    generated = []
    times = time_cuda_ms(lambda: generated.append(generate()), case.warmup, case.reps, case.max_seconds)
    tokens = case.batch * case.new_tokens
    check = generated[-1][:, -case.new_tokens:].clone()
    return Measurement(times, tokens / (median(times) * 1e-3), None, check)


def measure_train(model, case: ModelCase, batch: Batch) -> Measurement:
    model.train()

    labels = batch.input_ids
    if batch.attention_mask is not None:
        labels = labels.masked_fill(batch.attention_mask == 0, -100)  # as a trainer's collator does

    def step():
        model.zero_grad(set_to_none=True)
        loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels,
                     use_cache=False).loss
        loss.backward()
        return loss.detach()

    times = time_cuda_ms(step, case.warmup, case.reps, case.max_seconds)
    model.zero_grad(set_to_none=True)  # the peak below then counts this step's gradients once, as a step does
    peak, loss = peak_memory_gib(step)
    model.zero_grad(set_to_none=True)
    return Measurement(times, median(times), peak, loss.float().reshape(1))


MEASURE = {"forward": measure_forward, "generate": measure_generate, "train": measure_train}


def compare_with_reference(case: ModelCase, check: torch.Tensor, reference: torch.Tensor) -> tuple[str, float]:
    """How far an implementation's output is from sdpa's: (label, number)."""
    if case.kind == "generate":
        # Random weights make near-ties common, so greedy paths may part after a rounding difference.
        return "greedy tokens equal to sdpa's", (check == reference).float().mean().item()
    if case.kind == "train":
        return "|loss - sdpa loss|", (check - reference).abs().max().item()
    return "max |output - sdpa|", (check - reference).abs().max().item()


def load_model(spec: ModelSpec, weights_dir: str, impl: str):
    model_class = getattr(transformers, spec.model_class)
    model = model_class.from_pretrained(weights_dir, attn_implementation=impl, dtype=spec.dtype)
    return model.to(DEVICE).eval()


def save_random_weights(spec: ModelSpec, folder: str, quick: bool) -> str:
    """Build the model from its config with a fixed seed (on the GPU: initialising 0.7B on the CPU is slow)
    and save it once, so that every implementation loads the same weights."""
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = getattr(transformers, spec.model_class)(spec.make_config(quick))
    path = os.path.join(folder, spec.model_class)
    model.to(spec.dtype).save_pretrained(path)
    del model
    free_cuda_memory()
    return path


def run_implementation(case: ModelCase, impl: str, weights_dir: str) -> tuple[dict, Optional[torch.Tensor]]:
    """Load one implementation and measure it. Returns its JSON record and its output check (None if failed)."""
    spec = MODELS[case.model]
    # Compiled FlexAttention keeps compiled graphs per shape; clearing Dynamo's cache between runs keeps
    # earlier cases from using up its recompile limit, past which flex would run uncompiled.
    torch._dynamo.reset()
    try:
        model = load_model(spec, weights_dir, impl)
        batch = make_batch(case, model.config.vocab_size)
        measurement = MEASURE[case.kind](model, case, batch)
        record = {"status": "ok", "value": measurement.value, "times_ms": measurement.times_ms,
                  "peak_gib": measurement.peak_gib}
        return record, measurement.check
    except torch.cuda.OutOfMemoryError:
        return {"status": "oom", "reason": "CUDA out of memory"}, None
    except Exception as exc:  # an implementation the model or this torch does not support, or a bug
        return {"status": "failed", "reason": short_error(exc, limit=300)}, None


def describe(record: dict, unit: str) -> str:
    if record["status"] != "ok":
        return f"{record['status']}: {record['reason']}"
    text = f"{record['value']:9.1f} {unit} (median of {len(record['times_ms'])})"
    if record.get("peak_gib") is not None:
        text += f", peak {record['peak_gib']:.2f} GiB"
    if "vs_sdpa" in record:
        text += f", {record['vs_sdpa_label']} {record['vs_sdpa']:.3g}"
    return text


def best_of_rounds(best: Optional[dict], result: dict, unit: str) -> dict:
    """The better of two rounds' records of one implementation (a lower median time, or a higher tok/s), with every
    round's value so far under "rounds" (None for a round that did not run)."""
    rounds = (best or {}).get("rounds", []) + [result.get("value")]
    if best is None or best["status"] != "ok":
        better = True
    elif result["status"] != "ok":
        better = False
    else:
        better = result["value"] < best["value"] if unit == "ms" else result["value"] > best["value"]
    return dict(result if better else best, rounds=rounds)


def run_case(case: ModelCase, implementations, weights_dir: str, on_progress: Callable[[dict], None],
             rounds: int = 1) -> dict:
    """Every implementation once per round, in turn, so that a slow stretch of the host or GPU falls on all of them;
    each keeps its best round (``best_of_rounds``)."""
    record = {"name": case.name, "model": case.model, "kind": case.kind, "unit": case.unit,
              "batch": case.batch, "max_len": case.max_len, "padding": case.padding,
              "new_tokens": case.new_tokens, "lengths": case.lengths, "results": {}}
    reference = None
    for round_ in range(rounds):
        for impl in implementations:
            started = time.perf_counter()
            result, check = run_implementation(case, impl, weights_dir)
            free_cuda_memory()  # here, not inside: the model is released only once that frame is gone
            if impl == "sdpa" and reference is None:
                reference = check
            elif impl != "sdpa" and check is not None and reference is not None:
                result["vs_sdpa_label"], result["vs_sdpa"] = compare_with_reference(case, check, reference)
            record["results"][impl] = best_of_rounds(record["results"].get(impl), result, case.unit)
            label = f"{impl} round {round_ + 1}" if rounds > 1 else impl
            print(f"  {label:<23} {describe(result, case.unit)} [{time.perf_counter() - started:.0f} s]", flush=True)
            on_progress(record)
    return record


def ratio_vs_sdpa(record: dict, impl: str, key: str) -> Optional[float]:
    """Speed-up over sdpa for times and throughputs (>1: faster); plain ratio for peak memory (<=1: no more)."""
    results = record["results"]
    mine, sdpa = results.get(impl, {}), results.get("sdpa", {})
    if mine.get(key) is None or sdpa.get(key) is None:
        return None
    if key == "value" and record["unit"] == "ms":
        return sdpa[key] / mine[key]
    return mine[key] / sdpa[key]


def summary_table(records: list[dict]) -> str:
    rows = []
    for record in records:
        metrics = [("value", record["unit"], ".1f")]
        if any(r.get("peak_gib") is not None for r in record["results"].values()):
            metrics.append(("peak_gib", "peak GiB", ".2f"))
        for key, label, number_format in metrics:
            cells = []
            for impl in TABLE_COLUMNS:
                result = record["results"].get(impl)
                if result is None:
                    cells.append("-")
                elif result["status"] != "ok":
                    cells.append(result["status"])
                else:
                    cells.append(format(result[key], number_format))
            ratios = [ratio_vs_sdpa(record, impl, key) for impl in OURS]
            rows.append([f"{record['name']}, {label}", *cells,
                         *("n/a" if ratio is None else f"{ratio:.2f}" for ratio in ratios)])
    return format_table(["case", *TABLE_COLUMNS, *(f"{impl} vs sdpa" for impl in OURS)], rows)


def train_memory_verdicts(records: list[dict]) -> list[str]:
    """The issue's bar, per training case: peak memory with triton no higher than with sdpa."""
    verdicts = []
    for record in records:
        if record["kind"] != "train":
            continue
        ours, sdpa = record["results"].get("triton", {}), record["results"].get("sdpa", {})
        if ours.get("peak_gib") is None or sdpa.get("peak_gib") is None:
            verdicts.append(f"{record['name']}: peak memory not measured for both triton and sdpa")
            continue
        passed = ours["peak_gib"] <= sdpa["peak_gib"]
        verdicts.append(f"{record['name']}: peak memory triton {ours['peak_gib']:.2f} GiB vs sdpa "
                        f"{sdpa['peak_gib']:.2f} GiB ({(ours['peak_gib'] - sdpa['peak_gib']) * 1024:+.0f} MiB) -> "
                        f"{'PASS' if passed else 'FAIL'} (no higher than sdpa)")
    return verdicts


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--impls", nargs="+", default=list(DEFAULT_IMPLEMENTATIONS), choices=IMPLEMENTATIONS,
                        help="implementations to run (sdpa is the reference for ratios and outputs; "
                             "default: all but triton_skip_padding)")
    parser.add_argument("--train-memory", action="store_true",
                        help="only the training-step cases, only sdpa and triton: is triton's peak memory no "
                             "higher than sdpa's?")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    cases = [c for c in all_cases(args.quick) if selected(c.name, args.cases)]
    implementations = [i for i in IMPLEMENTATIONS if i in args.impls]  # keeps sdpa first
    if args.train_memory:
        cases = [c for c in cases if c.kind == "train"]
        implementations = ["sdpa", "triton"]
    if not cases:
        raise SystemExit("no case matches --cases")
    require_cuda()
    transformers.utils.logging.disable_progress_bar()  # per-file loading bars would bury the progress lines
    try:
        import hf_triton_attn  # noqa: F401 (the import registers attn_implementation="triton" and its variant)
    except Exception as exc:  # the other implementations can still be measured
        print(f"import hf_triton_attn failed, 'triton' will fail to load: {short_error(exc)}", flush=True)
    env = environment_info()
    print_environment(env)
    json_path = os.path.join(args.out, "bench_models.json") if args.out else None
    payload = {"environment": env, "settings": {"quick": args.quick, "implementations": implementations,
                                                "rounds": args.rounds}, "cases": []}

    def save(partial_case: Optional[dict] = None) -> None:
        if json_path:
            write_json(json_path, payload | {"cases": payload["cases"] + ([partial_case] if partial_case else [])})

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_models_") as folder:
        weights = {}
        for index, case in enumerate(cases, 1):
            print(f"[{index}/{len(cases)}] {case.name} ({time.perf_counter() - started:.0f} s)", flush=True)
            if case.model not in weights:
                weights[case.model] = save_random_weights(MODELS[case.model], folder, args.quick)
            payload["cases"].append(run_case(case, implementations, weights[case.model], save, args.rounds))
            save()
    print(f"\ndone in {time.perf_counter() - started:.0f} s\n")
    print("triton vs sdpa: speed-up for ms and tok/s rows (>1: triton faster); "
          "memory ratio for peak GiB rows (<=1: triton uses no more)")
    print(summary_table(payload["cases"]))
    verdicts = train_memory_verdicts(payload["cases"])
    if verdicts:
        payload["train_memory_verdicts"] = verdicts
        save()
        print("\n" + "\n".join(verdicts))
    if json_path:
        print(f"\njson: {json_path}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
