"""Models with attn_implementation="triton" against eager on the same weights (float32: max abs diff <= 1e-4)."""
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers
from conftest import DEVICE, ON_GPU
from helpers import LONG_ROWS, SKIP_WITHOUT_GLUON, count_calls, hopper_with_gluon, take_gluon_as_at
from tiny_models import (COMMON, DECODER_CONFIGS, VOCAB, bert_config, left_padded_batch, load, right_padded_batch,
                         saved_model)
from transformers import AutoModelForCausalLM, BertModel

import hf_triton_attn
from hf_triton_attn import ops, triton_attention_forward, triton_attention_mask

TOL = 1e-4


@pytest.fixture(scope="module", params=list(DECODER_CONFIGS))
def decoder(request, tmp_path_factory):
    config = DECODER_CONFIGS[request.param]()
    return request.param, saved_model(tmp_path_factory, AutoModelForCausalLM.from_config, config)


@pytest.fixture(scope="module")
def bert_path(tmp_path_factory):
    return saved_model(tmp_path_factory, BertModel, bert_config())


def logits_by_impl(path, ids, mask, impls=("eager", "triton"), **kwargs):
    out = {}
    for impl in impls:
        model = load(AutoModelForCausalLM, path, impl, DEVICE)
        with torch.no_grad():
            out[impl] = model(input_ids=ids, attention_mask=mask, **kwargs).logits
    return out


def max_diff_on(mask, a, b):
    return (a - b)[mask.bool()].abs().max().item()


def test_registered_in_both_interfaces():
    assert transformers.AttentionInterface._global_mapping["triton"] is triton_attention_forward
    assert transformers.masking_utils.AttentionMaskInterface._global_mapping["triton"] is triton_attention_mask
    hf_triton_attn.register()  # idempotent
    assert transformers.AttentionInterface._global_mapping["triton"] is triton_attention_forward
    skipping = transformers.AttentionInterface._global_mapping["triton_skip_padding"]
    assert skipping.func is triton_attention_forward and skipping.keywords == {"skip_padding_rows": True}
    mask_functions = transformers.masking_utils.AttentionMaskInterface._global_mapping
    assert mask_functions["triton_skip_padding"] is triton_attention_mask


@pytest.mark.parametrize("padding", ["left", "right"])
def test_decoder_padded_logits_match_eager(decoder, padding):
    name, path = decoder
    ids, mask = (left_padded_batch if padding == "left" else right_padded_batch)(DEVICE)
    out = logits_by_impl(path, ids, mask)
    assert max_diff_on(mask, out["eager"], out["triton"]) <= TOL, name


def test_skip_padding_decoder_logits_match_eager_on_valid_positions(decoder, monkeypatch):
    """The rows are left out wherever the layers get the key-padding mask; sliding-window models get dense masks,
    where every row is computed."""
    name, path = decoder
    left_out = []
    attention_bshd = hf_triton_attn.hf.attention_bshd
    monkeypatch.setattr(hf_triton_attn.hf, "attention_bshd", lambda *args, **kwargs: left_out.append(
        kwargs["seqused_q"] is not None) or attention_bshd(*args, **kwargs))
    ids, mask = right_padded_batch(DEVICE)
    out = logits_by_impl(path, ids, mask, impls=("eager", "triton_skip_padding"))
    assert max_diff_on(mask, out["eager"], out["triton_skip_padding"]) <= TOL, name
    assert all(left_out) != ("sliding" in name or "gemma2" in name) and len(left_out) > 0


@pytest.mark.parametrize("causal, seqlen_k", [(True, 12), (False, 12), (True, 15)])
def test_skip_padding_rows_only_where_queries_are_the_keys(causal, seqlen_k):
    """Right padding is left out (zero rows) in causal self-attention without a cache offset; an encoder's or a
    cross-attention's call, or one continuing from a cache, computes every row as eager does."""
    q = torch.randn(2, 4, 12, 16, device=DEVICE)
    k = torch.randn(2, 2, seqlen_k, 16, device=DEVICE)
    mask = torch.arange(seqlen_k, device=DEVICE)[None, :] < torch.tensor([[seqlen_k], [5]], device=DEVICE)
    skipping = transformers.AttentionInterface._global_mapping["triton_skip_padding"]
    out, _ = skipping(torch.nn.Module(), q, k, k, mask, is_causal=causal)
    plain, _ = triton_attention_forward(torch.nn.Module(), q, k, k, mask, is_causal=causal)
    skipped = causal and seqlen_k == 12
    assert (out[1, 5:] == 0).all() == skipped and plain[1, 5:].abs().sum() > 0
    assert torch.equal(out[:, :5], plain[:, :5]) and (skipped or torch.equal(out, plain))


def test_bert_right_padded_matches_eager(bert_path):
    ids, mask = right_padded_batch(DEVICE)
    hidden = {}
    for impl in ("eager", "triton"):
        with torch.no_grad():
            model = load(BertModel, bert_path, impl, DEVICE)
            hidden[impl] = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert max_diff_on(mask, hidden["eager"], hidden["triton"]) <= TOL


def test_padding_is_not_lost(bert_path):
    """Each padded row must equal the same sentence run alone: fails if the mask never reaches the kernel."""
    ids, mask = right_padded_batch(DEVICE)
    model = load(BertModel, bert_path, "triton", DEVICE)
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask).last_hidden_state
        for row in range(ids.shape[0]):
            length = int(mask[row].sum())
            alone = model(input_ids=ids[row:row + 1, :length]).last_hidden_state[0]
            assert (batched[row, :length] - alone).abs().max() <= TOL


def test_layers_share_one_key_range_launch_per_forward(bert_path, monkeypatch):
    """The padding mask's kept-key ranges are computed once per forward and handed to every layer."""
    launches = count_calls(monkeypatch, ops, "_launch_key_ranges")
    ids, mask = right_padded_batch(DEVICE)
    model = load(BertModel, bert_path, "triton", DEVICE)
    assert model.config.num_hidden_layers > 1
    with torch.no_grad():
        for forward in (1, 2):
            model(input_ids=ids, attention_mask=mask)
            assert len(launches) == forward


def test_encoder_decoder_padding_matches_eager_with_one_key_range_launch_per_mask(tmp_path_factory, monkeypatch):
    """BART with padded encoder and decoder inputs: its decoder layers alternate between the self-attention and
    the cross-attention mask, and each mask's kept-key ranges are still computed once per forward."""
    config = transformers.BartConfig(d_model=64, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
                                     decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                                     max_position_embeddings=64, **COMMON)
    path = saved_model(tmp_path_factory, transformers.BartModel, config)
    ids, mask = right_padded_batch(DEVICE)
    decoder_ids, decoder_mask = right_padded_batch(DEVICE, seqlen=10)
    launches = count_calls(monkeypatch, ops, "_launch_key_ranges")
    hidden = {}
    for impl in ("eager", "triton"):
        with torch.no_grad():
            hidden[impl] = load(transformers.BartModel, path, impl, DEVICE)(
                input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids,
                decoder_attention_mask=decoder_mask).last_hidden_state
    assert max_diff_on(decoder_mask, hidden["eager"], hidden["triton"]) <= TOL
    assert len(launches) == 3  # the encoder's mask, the decoder's and the cross-attention's


@pytest.mark.parametrize("padded", [True, False])
def test_encoder_whose_attention_does_not_say_it_is_bidirectional_matches_eager(padded):
    """Splinter's self-attention (like ALIGN's and CLAP's text towers) has no is_causal, and Transformers' default is
    causal; its mask comes from a bidirectional mask function, which eager follows, and so do we (padded or not)."""
    config = transformers.SplinterConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=128, question_token_id=5, **COMMON)
    torch.manual_seed(0)
    model = transformers.SplinterModel(config).to(DEVICE).eval()
    assert not hasattr(model.encoder.layer[0].attention.self, "is_causal")
    ids, mask = right_padded_batch(DEVICE)
    if not padded:
        mask = torch.ones_like(mask)
    hidden = {}
    for impl in ("eager", "triton"):
        model.set_attn_implementation(impl)
        with torch.no_grad():
            hidden[impl] = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert max_diff_on(mask, hidden["eager"], hidden["triton"]) <= TOL


def test_without_mask_registration_padding_would_be_lost(bert_path, monkeypatch):
    """Guards the test above: with only the attention function registered, Transformers drops the mask."""
    monkeypatch.delitem(transformers.masking_utils.AttentionMaskInterface._global_mapping, "triton")
    ids, mask = right_padded_batch(DEVICE)
    with torch.no_grad():
        broken = load(BertModel, bert_path, "triton", DEVICE)(input_ids=ids, attention_mask=mask).last_hidden_state
        eager = load(BertModel, bert_path, "eager", DEVICE)(input_ids=ids, attention_mask=mask).last_hidden_state
    assert max_diff_on(mask, broken, eager) > 1e-2


def test_from_config_and_set_attn_implementation(bert_path):
    config = bert_config()
    model = BertModel._from_config(config, attn_implementation="triton")
    assert model.config._attn_implementation == "triton"
    eager = load(BertModel, bert_path, "eager", DEVICE)
    eager.set_attn_implementation("triton")
    assert eager.config._attn_implementation == "triton"
    auto = transformers.AutoModel.from_config(config, attn_implementation="triton")
    assert auto.config._attn_implementation == "triton"


GENERATE_KWARGS = dict(max_new_tokens=20, min_new_tokens=20, do_sample=False, pad_token_id=0)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("padded", [True, False])
def test_greedy_generation_matches_eager(decoder, cache, padded):
    name, path = decoder
    ids, mask = left_padded_batch(DEVICE)
    if not padded:
        mask = torch.ones_like(mask)
    kwargs = dict(GENERATE_KWARGS, cache_implementation="static") if cache == "static" else GENERATE_KWARGS
    tokens = {}
    for impl in ("eager", "triton"):
        model = load(AutoModelForCausalLM, path, impl, DEVICE)
        tokens[impl] = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    assert tokens["triton"].shape[1] == ids.shape[1] + 20
    assert torch.equal(tokens["eager"], tokens["triton"]), name


@pytest.mark.parametrize("cache", ["static", "dynamic"])
def test_right_padding_written_into_a_cache_matches_eager(tmp_path_factory, cache):
    """A right-padded prompt written into an empty static cache (more keys than queries: the unwritten tail), and a
    right-padded second chunk continuing from a dynamic cache: query i sees the keys up to its own cache position,
    as in eager's mask, not up to its row's last valid key (which right padding moves). Logits on valid positions."""
    config = DECODER_CONFIGS["llama"]()
    path = saved_model(tmp_path_factory, AutoModelForCausalLM.from_config, config)
    ids, mask = right_padded_batch(DEVICE)
    logits = {}
    for impl in ("eager", "triton"):
        model = load(AutoModelForCausalLM, path, impl, DEVICE)
        with torch.no_grad():
            if cache == "static":
                past = transformers.StaticCache(config=model.config, max_cache_len=ids.shape[1] + 6)
                logits[impl] = model(input_ids=ids, attention_mask=mask, past_key_values=past).logits
            else:
                past = model(input_ids=ids[:, :5], attention_mask=mask[:, :5], use_cache=True).past_key_values
                logits[impl] = model(input_ids=ids[:, 5:], attention_mask=mask, past_key_values=past).logits
    valid = mask if cache == "static" else mask[:, 5:]
    assert max_diff_on(valid, logits["eager"], logits["triton"]) <= TOL


def test_generation_under_inference_mode_matches_eager(tmp_path_factory):
    """Pipelines generate under torch.inference_mode(), whose tensors have no version counter (the layers share
    one cached keys_in_use per mask)."""
    path = saved_model(tmp_path_factory, AutoModelForCausalLM.from_config, DECODER_CONFIGS["llama"]())
    ids, mask = left_padded_batch(DEVICE)
    tokens = {}
    for impl in ("eager", "triton"):
        model = load(AutoModelForCausalLM, path, impl, DEVICE)
        with torch.inference_mode():
            tokens[impl] = model.generate(input_ids=ids, attention_mask=mask, **GENERATE_KWARGS)
    assert torch.equal(tokens["eager"], tokens["triton"])


def test_generation_launches_key_ranges_for_the_prompt_only(tmp_path_factory, monkeypatch):
    """Decoding steps (one query) read the key mask in the split-KV kernel: no key-range launch after the prompt."""
    path = saved_model(tmp_path_factory, AutoModelForCausalLM.from_config, DECODER_CONFIGS["llama"]())
    ids, mask = left_padded_batch(DEVICE)
    model = load(AutoModelForCausalLM, path, "triton", DEVICE)
    launches = count_calls(monkeypatch, ops, "_launch_key_ranges")
    model.generate(input_ids=ids, attention_mask=mask, **dict(GENERATE_KWARGS, max_new_tokens=4, min_new_tokens=4))
    assert len(launches) == 1


def test_compiled_static_cache_generation_matches_eager(decoder):
    """generate() with a static cache through a compiled forward (fullgraph: no graph break around our op)."""
    name, path = decoder
    ids, mask = left_padded_batch(DEVICE)
    kwargs = dict(GENERATE_KWARGS, max_new_tokens=8, min_new_tokens=8, cache_implementation="static")
    expected = load(AutoModelForCausalLM, path, "eager", DEVICE).generate(input_ids=ids, attention_mask=mask, **kwargs)
    model = load(AutoModelForCausalLM, path, "triton", DEVICE)
    # A clean Dynamo cache per case: without it the parametrized cases together hit Dynamo's recompile limit
    # (Transformers' wrappers are code shared by every model).
    torch._dynamo.reset()
    model.forward = torch.compile(model.forward, fullgraph=True, backend="inductor" if ON_GPU else "aot_eager")
    tokens = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    assert torch.equal(tokens, expected), name


def test_custom_4d_masks_match_eager(tmp_path_factory):
    path = saved_model(tmp_path_factory, AutoModelForCausalLM.from_config, DECODER_CONFIGS["llama"]())
    ids, _ = left_padded_batch(DEVICE)
    seqlen = ids.shape[1]
    keep = torch.tril(torch.ones(seqlen, seqlen, dtype=torch.bool, device=DEVICE))
    keep[5:, :3] = False  # a custom pattern: late tokens ignore the first three
    additive = torch.zeros(3, 1, seqlen, seqlen, device=DEVICE).masked_fill(~keep, torch.finfo(torch.float32).min)
    out = logits_by_impl(path, ids, additive)
    assert (out["eager"] - out["triton"]).abs().max() <= TOL


def test_packed_sequences_match_eager(tmp_path_factory):
    """No mask + position_ids restarting at 0: Transformers builds a packed-sequence mask (training collators)."""
    path = saved_model(tmp_path_factory, AutoModelForCausalLM.from_config, DECODER_CONFIGS["llama"]())
    ids = torch.randint(3, 90, (1, 15), device=DEVICE)
    position_ids = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3, 4, 5, 6]], device=DEVICE)
    out = logits_by_impl(path, ids, None, position_ids=position_ids, use_cache=False)
    assert (out["eager"] - out["triton"]).abs().max() <= TOL
    unpacked = logits_by_impl(path, ids[:, 5:8], None, impls=("triton",), use_cache=False)["triton"]
    assert (out["triton"][:, 5:8] - unpacked).abs().max() <= TOL


def test_output_attentions_is_refused(bert_path):
    model = load(BertModel, bert_path, "triton", DEVICE)
    with pytest.raises(ValueError, match="output_attentions"):
        model(input_ids=torch.randint(3, 90, (1, 5), device=DEVICE), output_attentions=True)


def call_backend(**kwargs):
    q = torch.randn(1, 2, 4, 16, device=DEVICE)
    module = torch.nn.Module()
    return triton_attention_forward(module, q, q, q, None, **kwargs)


def test_backend_contract_and_refusals():
    out, weights = call_backend()
    assert out.shape == (1, 4, 2, 16) and weights is None
    with pytest.raises(NotImplementedError, match="sliding_window"):
        call_backend(sliding_window=2)
    with pytest.raises(NotImplementedError, match="cu_seq_lens"):
        call_backend(cu_seq_lens_q=torch.tensor([0, 2, 4], device=DEVICE))
    with pytest.raises(NotImplementedError, match="paged"):
        call_backend(cache=object())


def test_per_token_sinks_match_eager(tmp_path_factory):
    """Inkling 2 passes its attention sinks as ``sinks``, one per query token ((B, H, Sq, 1), computed from the hidden
    states), with a relative position bias and sliding-window layers."""
    if "inkling2_text" not in transformers.CONFIG_MAPPING:
        pytest.skip(f"Transformers {transformers.__version__} has no Inkling 2")
    config = transformers.AutoConfig.for_model(
        "inkling2_text", hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=4, num_experts_per_tok=2,
        unpadded_vocab_size=VOCAB, swa_num_attention_heads=4, swa_num_key_value_heads=2, swa_head_dim=16,
        sliding_window_size=6, rel_extent=16, **COMMON)
    path = saved_model(tmp_path_factory, AutoModelForCausalLM.from_config, config)
    ids, mask = left_padded_batch(DEVICE)
    out = logits_by_impl(path, ids, mask)
    assert max_diff_on(mask, out["eager"], out["triton"]) <= TOL


def test_head_dim_512_matches_eager(tmp_path_factory, monkeypatch):
    """Gemma 4's full-attention layers have head_dim 512 (its sliding-window layers 16 here)."""
    if "gemma4_text" not in transformers.CONFIG_MAPPING:
        pytest.skip(f"Transformers {transformers.__version__} has no Gemma 4")
    config = transformers.AutoConfig.for_model(
        "gemma4_text", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, global_head_dim=512, sliding_window=6, **COMMON)
    path = saved_model(tmp_path_factory, AutoModelForCausalLM.from_config, config)
    head_dims = []
    attention_bshd = hf_triton_attn.hf.attention_bshd
    monkeypatch.setattr(hf_triton_attn.hf, "attention_bshd",
                        lambda q, *args, **kwargs: head_dims.append(q.shape[3]) or attention_bshd(q, *args, **kwargs))
    ids, mask = left_padded_batch(DEVICE)
    out = logits_by_impl(path, ids, mask)
    assert max_diff_on(mask, out["eager"], out["triton"]) <= TOL
    assert 512 in head_dims


def test_a_model_whose_own_attention_code_reads_the_mask_is_refused():
    """GIT's text layers add the mask to their scores in their own code (they call no attention function): our mask
    is for our kernels, and there it would lose causality and padding silently (2e-2 from eager), so it is refused.
    (Built with "triton", GIT's text layers raise a KeyError of their own; switched to it after, they would run.)"""
    config = transformers.GitConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                    vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                       intermediate_size=64, image_size=32, patch_size=16), **COMMON)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").to(DEVICE).eval()
    model.set_attn_implementation("triton")
    ids, mask = left_padded_batch(DEVICE)
    with pytest.raises(NotImplementedError, match="GIT's text layers .* attn_implementation='eager'"):
        model(input_ids=ids, attention_mask=mask)


def test_sparse_attention_indices_are_refused():
    """DeepSeek sparse attention hands other backends the keys each query keeps, as ``indices``: the kernels
    attend to every key the mask allows, so that must be an error."""
    with pytest.raises(NotImplementedError, match="indices"):
        call_backend(indices=torch.zeros(1, 4, 2, dtype=torch.int32, device=DEVICE))
    with pytest.raises(NotImplementedError, match="block_indices"):
        call_backend(block_indices=torch.zeros(1, 4, 2, dtype=torch.int32, device=DEVICE))
    with pytest.raises(ValueError, match="both s_aux and sinks"):
        call_backend(s_aux=torch.zeros(2, device=DEVICE), sinks=torch.zeros(1, 2, 4, 1, device=DEVICE))


def test_position_bias_matches_t5_eager(tmp_path_factory):
    config = transformers.T5Config(vocab_size=97, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                   decoder_start_token_id=0, pad_token_id=0)
    path = saved_model(tmp_path_factory, transformers.T5ForConditionalGeneration, config)
    ids, mask = right_padded_batch(DEVICE, seqlen=10)
    decoder_ids = torch.randint(3, 90, (3, 6), device=DEVICE)
    logits = {}
    for impl in ("eager", "triton"):
        model = load(transformers.T5ForConditionalGeneration, path, impl, DEVICE)
        with torch.no_grad():
            logits[impl] = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
    assert (logits["eager"] - logits["triton"]).abs().max() <= TOL


@pytest.mark.skipif(DEVICE.type == "cuda", reason="checks the CPU error path")
def test_cpu_tensors_without_interpreter_get_a_clear_error():
    code = textwrap.dedent("""
        import torch, hf_triton_attn
        q = torch.randn(1, 1, 4, 16)
        try:
            hf_triton_attn.attention(q, q, q)
        except ValueError as e:
            print(e)
    """)
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert "CUDA" in result.stdout and "TRITON_INTERPRET=1" in result.stdout, result.stderr


@pytest.mark.gpu
@pytest.mark.parametrize("padding", [None, "left", "right"])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_bf16_decoder_through_the_hopper_forward_matches_eager(tmp_path_factory, monkeypatch, padding, head_dim):
    """A bf16 Llama with head_dim 64, 128 or 256 and prompts of 200 tokens, unpadded or padded (the layers get the
    key-padding mask), where the Gluon forward serves every layer on Hopper (patched to take its long-row
    configuration at rows this short): its logits at the valid positions are as close to float32 eager's as bf16
    eager's are (within 2x)."""
    if not hopper_with_gluon():
        pytest.skip(SKIP_WITHOUT_GLUON)
    take_gluon_as_at(monkeypatch, LONG_ROWS)
    config = transformers.LlamaConfig(hidden_size=256, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=256 // head_dim, num_key_value_heads=1, head_dim=head_dim,
                                      **COMMON)
    path = saved_model(tmp_path_factory, AutoModelForCausalLM.from_config, config)
    if padding is None:
        ids, mask = torch.randint(3, 90, (2, 200), device=DEVICE), torch.ones(2, 200, dtype=torch.long, device=DEVICE)
    else:
        ids, mask = (left_padded_batch if padding == "left" else right_padded_batch)(DEVICE, seqlen=200)
    calls = count_calls(monkeypatch, ops, "_forward_hopper")
    logits = {}
    for impl, dtype in (("eager", torch.float32), ("eager", torch.bfloat16), ("triton", torch.bfloat16)):
        model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=impl, dtype=dtype).to(DEVICE).eval()
        with torch.no_grad():
            logits[impl, dtype] = model(input_ids=ids, attention_mask=mask).logits.float()
    reference = logits["eager", torch.float32]
    ours = max_diff_on(mask, logits["triton", torch.bfloat16], reference)
    eager = max_diff_on(mask, logits["eager", torch.bfloat16], reference)
    assert ours <= 2 * eager + 1e-3, f"bf16 triton {ours:.3e} against bf16 eager {eager:.3e}"
    assert len(calls) == config.num_hidden_layers
