"""Fine-tune a BERT sequence classifier (small, or BERT-base sized) with attn_implementation="triton" next to
"eager".

Task (synthetic): are most tokens of the sequence "high" tokens rather than "low" ones? Padded batches of
variable lengths; the padding positions hold high tokens, so a backend that lets queries see padding gets a
biased majority. Both runs start from the same initial weights and see the same batches in the same order.
Attention dropout stays at BERT's default 0.1, so the two loss curves differ step to step: their final losses
(mean of the last 20 steps) must agree within a band. With --no-dropout every dropout is off and the runs must
follow the same trajectory: the first 5 losses agree within 1e-3 relative (1e-2 in bfloat16).

    TRITON_INTERPRET=1 python examples/finetune.py
    TRITON_INTERPRET=1 python examples/finetune.py --no-dropout
    python examples/finetune.py --device cuda
    python examples/finetune.py --device cuda --size base    # BERT-base sizes: 12 layers, hidden 768, 12 heads
"""
import argparse
import copy

import torch
from transformers import BertConfig, BertForSequenceClassification

import _common

PAD, CLS = 0, 1
LOW_TOKENS, HIGH_TOKENS = (3, 17), (17, 32)
VOCAB = HIGH_TOKENS[1]
MIN_LEN, MAX_LEN = 4, 32
EVAL_EXAMPLES = 512
# Measured with eager under different dropout seeds: final losses of correct runs lie within ~0.09 of each
# other, while a run that ignores the padding mask ends >= 0.2 above a correct one.
FINAL_WINDOW, FINAL_LOSS_BAND = 20, 0.15
EARLY_STEPS = 5
EARLY_RELATIVE_TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 1e-2}


def random_tokens(token_range: tuple[int, int], shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    return torch.randint(*token_range, shape, generator=generator)


def make_batch(size: int, generator: torch.Generator, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lengths = torch.randint(MIN_LEN, MAX_LEN + 1, (size,), generator=generator)
    shape = (size, int(lengths.max()))
    high_fraction = torch.where(torch.rand(size, 1, generator=generator) < 0.5, 0.3, 0.7)
    is_high = torch.rand(shape, generator=generator) < high_fraction
    input_ids = torch.where(is_high, random_tokens(HIGH_TOKENS, shape, generator),
                            random_tokens(LOW_TOKENS, shape, generator))
    input_ids[:, 0] = CLS
    attention_mask = torch.arange(shape[1]) < lengths[:, None]
    counted = attention_mask.clone()
    counted[:, 0] = False  # CLS is neither high nor low
    labels = (2 * (is_high & counted).sum(dim=1) > counted.sum(dim=1)).long()
    input_ids = torch.where(attention_mask, input_ids, random_tokens(HIGH_TOKENS, shape, generator))
    return input_ids.to(device), attention_mask.long().to(device), labels.to(device)


def train(model, implementation: str, batches, eval_batch, args, dtype) -> tuple[list[float], float]:
    """Train a copy of ``model`` under ``implementation``: (loss per step, eval accuracy)."""
    model = copy.deepcopy(model)
    model.set_attn_implementation(implementation)
    model.to(args.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    autocast = torch.autocast(torch.device(args.device).type, dtype=dtype, enabled=dtype != torch.float32)
    torch.manual_seed(args.seed + 1)
    losses = []
    for input_ids, attention_mask, labels in batches:
        with autocast:
            loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    input_ids, attention_mask, labels = eval_batch
    with torch.no_grad(), autocast:
        predictions = model(input_ids=input_ids, attention_mask=attention_mask).logits.argmax(dim=-1)
    return losses, (predictions == labels).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, help="default: 60 on CPU; on CUDA 200 (small), 400 (base)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", choices=("small", "base"), default="small",
                        help="small: 1 layer, hidden 64, 2 heads; base: BERT-base (12 layers, hidden 768, 12 heads)")
    parser.add_argument("--lr", type=float, help="default: 1e-3 (small), 3e-5 (base)")
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--no-dropout", action="store_true", help="turn every dropout off: losses must match")
    parser.add_argument("--seed", type=int, default=0)
    _common.add_device_arguments(parser, dtypes=("float32", "bfloat16"))
    args = parser.parse_args()
    dtype = _common.setup(parser, args, cuda_dtype="bfloat16")
    args.steps = args.steps or (60 if torch.device(args.device).type == "cpu" else 200 if args.size == "small" else 400)
    args.lr = args.lr or (1e-3 if args.size == "small" else 3e-5)

    generator = torch.Generator().manual_seed(args.seed)
    batches = [make_batch(args.batch_size, generator, args.device) for _ in range(args.steps)]
    eval_batch = make_batch(EVAL_EXAMPLES, generator, args.device)
    dropout = 0.0 if args.no_dropout else 0.1
    sizes = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128)
    config = BertConfig(
        vocab_size=VOCAB, max_position_embeddings=MAX_LEN, num_labels=2, pad_token_id=PAD,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
        **(sizes if args.size == "small" else {}),  # the defaults are BERT-base's
    )
    torch.manual_seed(args.seed)
    model = BertForSequenceClassification(config)
    print(f"{args.size} BERT ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters), {args.steps} steps "
          f"of {args.batch_size} sequences, lengths {MIN_LEN}-{MAX_LEN}, dropout {dropout}, lr {args.lr:g}")

    results = {name: train(model, name, batches, eval_batch, args, dtype) for name in ("eager", "triton")}
    (eager_losses, eager_accuracy), (triton_losses, triton_accuracy) = results["eager"], results["triton"]
    steps = sorted({*range(args.log_every - 1, args.steps, args.log_every), args.steps - 1})
    _common.print_table(["step", "eager loss", "triton loss"],
                        [[step + 1, f"{eager_losses[step]:.4f}", f"{triton_losses[step]:.4f}"] for step in steps])
    print(f"eval accuracy: eager {eager_accuracy:.3f}, triton {triton_accuracy:.3f}")

    failures = []
    final_eager, final_triton = (sum(losses[-FINAL_WINDOW:]) / len(losses[-FINAL_WINDOW:])
                                 for losses in (eager_losses, triton_losses))
    print(f"final loss (mean of the last {FINAL_WINDOW} steps): eager {final_eager:.4f}, triton {final_triton:.4f}; "
          f"tolerance: |difference| <= {FINAL_LOSS_BAND}")
    if abs(final_triton - final_eager) > FINAL_LOSS_BAND:
        failures.append(f"final losses differ by {abs(final_triton - final_eager):.4f} > {FINAL_LOSS_BAND}")
    if args.no_dropout:
        tolerance = EARLY_RELATIVE_TOLERANCE[dtype]
        early = max(abs(t - e) / e for e, t in zip(eager_losses[:EARLY_STEPS], triton_losses[:EARLY_STEPS]))
        print(f"first {EARLY_STEPS} losses: max relative difference {early:.2e}; tolerance: <= {tolerance:g}")
        if early > tolerance:
            failures.append(f"without dropout the first {EARLY_STEPS} losses differ by {early:.2e} > {tolerance:g}")
    _common.finish(failures)


if __name__ == "__main__":
    main()
