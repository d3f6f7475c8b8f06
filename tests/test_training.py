"""Training with attn_implementation="triton": optimizer steps against eager, dropout, torch.compile."""
import pytest
import torch
import transformers
from conftest import DEVICE, ON_GPU
from helpers import SKIP_WITHOUT_GLUON, count_calls, hopper_with_gluon
from tiny_models import COMMON, DECODER_CONFIGS, bert_config, right_padded_batch, saved_model
from transformers import AutoModelForCausalLM, BertForSequenceClassification

import hf_triton_attn  # noqa: F401  (registers attn_implementation="triton")
from hf_triton_attn import configs, ops

STEPS = 3


def train(model_class, path, impl, batches, **load_kwargs):
    """A few AdamW steps; returns the losses and the final gradients."""
    model = model_class.from_pretrained(path, attn_implementation=impl, dtype=torch.float32, **load_kwargs).to(DEVICE)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for batch in batches:
        optimizer.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return losses, grads


def assert_same_training(eager, ours, tol):
    (eager_losses, eager_grads), (our_losses, our_grads) = eager, ours
    assert eager_losses == pytest.approx(our_losses, rel=tol, abs=tol)
    assert eager_grads.keys() == our_grads.keys()
    for name in eager_grads:
        scale = eager_grads[name].abs().max().item() + 1e-6
        assert (eager_grads[name] - our_grads[name]).abs().max().item() <= tol * scale, name


def classifier_batches():
    batches = []
    for _ in range(STEPS):
        ids, mask = right_padded_batch(DEVICE)
        batches.append(dict(input_ids=ids, attention_mask=mask, labels=torch.randint(0, 2, (3,), device=DEVICE)))
    return batches


def causal_lm_batches():
    # Right padding, as for training: with left padding the last pad position would predict the first token,
    # and eager gives fully masked rows a uniform average where we (and sdpa) give zeros.
    batches = []
    for _ in range(STEPS):
        ids, mask = right_padded_batch(DEVICE)
        batches.append(dict(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)))
    return batches


def test_bert_classifier_steps_match_eager(tmp_path_factory):
    config = bert_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2)
    path = saved_model(tmp_path_factory, BertForSequenceClassification, config)
    batches = classifier_batches()
    results = [train(BertForSequenceClassification, path, impl, batches) for impl in ("eager", "triton")]
    assert_same_training(*results, tol=1e-4)


@pytest.mark.parametrize("family", ["llama", "qwen2", "deepseek_v3_mla"])
@pytest.mark.parametrize("impl", ["triton", "triton_skip_padding"])
def test_causal_lm_steps_match_eager(tmp_path_factory, family, impl):
    """With "triton_skip_padding" the right padding's rows are left out: its loss terms are ignored (-100), so the
    losses and gradients are eager's."""
    path = saved_model(tmp_path_factory, AutoModelForCausalLM.from_config, DECODER_CONFIGS[family]())
    batches = causal_lm_batches()
    results = [train(AutoModelForCausalLM, path, name, batches) for name in ("eager", impl)]
    assert_same_training(*results, tol=1e-4)


def test_bert_attention_dropout_is_applied_and_seeded(tmp_path_factory):
    config = bert_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.3, num_labels=2)
    path = saved_model(tmp_path_factory, BertForSequenceClassification, config)
    batch = classifier_batches()[0]
    model = BertForSequenceClassification.from_pretrained(path, attn_implementation="triton").to(DEVICE).train()

    def loss_with_seed(seed):
        torch.manual_seed(seed)
        return model(**batch).loss.item()

    train_loss = loss_with_seed(1)
    assert train_loss == loss_with_seed(1)
    assert train_loss != loss_with_seed(2)
    model.eval()
    with torch.no_grad():
        eval_loss = model(**batch).loss.item()
    assert eval_loss != train_loss


@pytest.mark.parametrize("impl, padded", [("triton", False), ("triton_skip_padding", True)])
def test_compiled_model_fullgraph_forward_backward(tmp_path_factory, impl, padded):
    torch._dynamo.reset()
    path = saved_model(tmp_path_factory, AutoModelForCausalLM.from_config, DECODER_CONFIGS["llama"]())
    batch = causal_lm_batches()[0]
    if not padded:
        batch = dict(input_ids=batch["input_ids"], labels=batch["input_ids"])
    batch["use_cache"] = False

    def loss_and_grads(model):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters()]

    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=impl).to(DEVICE).train()
    reference = loss_and_grads(model)
    compiled = torch.compile(model, fullgraph=True, backend="inductor" if ON_GPU else "aot_eager")
    loss, grads = loss_and_grads(compiled)
    assert loss == pytest.approx(reference[0], rel=1e-5)
    for a, b in zip(grads, reference[1]):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("padded", [False, True])
def test_bf16_decoder_gradients_through_the_hopper_backward_kernels(tmp_path_factory, monkeypatch, padded):
    """A bf16 Llama with head_dim 128 and sequences of 1100 tokens (unpadded, or right-padded with the padding labelled
    -100), whose every layer's backward takes the Gluon dQ and dK/dV kernels on Hopper: its parameter gradients are as
    close to float32 eager's as bf16 eager's are (within 2x)."""
    if not (hopper_with_gluon() and ops._attn_bwd_dq_ws is not None and configs.GLUON_DQ and configs.GLUON_DKDV):
        pytest.skip(SKIP_WITHOUT_GLUON)
    config = transformers.LlamaConfig(hidden_size=256, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, head_dim=128, **COMMON)
    path = saved_model(tmp_path_factory, AutoModelForCausalLM.from_config, config)
    ids, mask = right_padded_batch(DEVICE, seqlen=configs.BWD_D128_SHORT_CAUSAL_MAX_KEYS + 76)
    if not padded:
        mask = torch.ones_like(mask)
    batch = dict(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
    calls = count_calls(monkeypatch, ops, "_backward_dq_hopper")
    dkdv_calls = count_calls(monkeypatch, ops, "_backward_dkdv_hopper")
    grads = {}
    for impl, dtype in (("eager", torch.float32), ("eager", torch.bfloat16), ("triton", torch.bfloat16)):
        model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=impl, dtype=dtype).to(DEVICE).train()
        model(**batch).loss.backward()
        grads[impl, dtype] = {name: p.grad.float() for name, p in model.named_parameters()}
    reference = grads["eager", torch.float32]

    def error(impl):
        return max(((grads[impl, torch.bfloat16][name] - ref).abs().max() / (ref.abs().max() + 1e-6)).item()
                   for name, ref in reference.items())
    ours, eager = error("triton"), error("eager")
    assert ours <= 2 * eager + 1e-3, f"bf16 triton {ours:.3e} against bf16 eager {eager:.3e}"
    assert len(calls) == len(dkdv_calls) == config.num_hidden_layers
