"""Tiny random models of each family, saved with save_pretrained and loaded back with from_pretrained."""
import torch
import transformers

VOCAB = 97
COMMON = dict(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2)
DECODER_CONFIGS = {
    "gpt2": lambda: transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=128, **COMMON),
    "llama": lambda: transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                              num_attention_heads=4, num_key_value_heads=2, **COMMON),
    "qwen2": lambda: transformers.Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                              num_attention_heads=4, num_key_value_heads=1, **COMMON),
    "mistral_sliding": lambda: transformers.MistralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                          num_attention_heads=4, num_key_value_heads=2,
                                                          sliding_window=6, **COMMON),
    "gemma2_softcap": lambda: transformers.Gemma2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                                        sliding_window=8, attn_logit_softcapping=5.0,
                                                        query_pre_attn_scalar=16, **COMMON),
    # Attention sinks (s_aux) in every layer, sliding-window and full layers alternating.
    "gpt_oss_sliding_sinks": lambda: transformers.GptOssConfig(
        hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, num_local_experts=4, num_experts_per_tok=2, sliding_window=6, **COMMON),
    # Multi-head latent attention: queries and keys of 40 dims (32 + 8 rotary; the kernels' two tiles, 32 + 16), values
    # of 24.
    "deepseek_v3_mla": lambda: transformers.DeepseekV3Config(
        hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, qk_rope_head_dim=8, qk_nope_head_dim=32, v_head_dim=24, kv_lora_rank=32,
        q_lora_rank=32, n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1, first_k_dense_replace=1,
        **COMMON),
}


def bert_config(**overrides):
    return transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=128, max_position_embeddings=128, **{**COMMON, **overrides})


def saved_model(tmp_path_factory, model_class, config, seed=0):
    """Random weights from a seed, written to disk once: every implementation loads the same file."""
    torch.manual_seed(seed)
    path = tmp_path_factory.mktemp(config.model_type)
    model_class(config).save_pretrained(path)
    return path


def load(model_class, path, impl, device, **kwargs):
    return model_class.from_pretrained(path, attn_implementation=impl, dtype=torch.float32, **kwargs).to(device).eval()


def left_padded_batch(device, batch=3, seqlen=14):
    ids = torch.randint(3, VOCAB, (batch, seqlen), device=device)
    mask = torch.ones(batch, seqlen, dtype=torch.long, device=device)
    for row, pad in enumerate([0, 3, 7][:batch]):
        mask[row, :pad] = 0
        ids[row, :pad] = 0
    return ids, mask


def right_padded_batch(device, batch=3, seqlen=14):
    ids, mask = left_padded_batch(device, batch, seqlen)
    return ids.flip(-1), mask.flip(-1)
