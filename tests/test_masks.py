"""The mask function registered for "triton": Transformers' mask arguments -> the kernel's compact form."""
import torch
from transformers.masking_utils import (bidirectional_mask_function, causal_mask_function,
                                        sliding_window_causal_mask_function)

from hf_triton_attn.masks import (bidirectional_mask_keeps_every_key, keys_in_use, keys_in_use_cached,
                                  triton_attention_mask)


def mask_for(**kwargs):
    args = dict(batch_size=2, q_length=4, kv_length=4, q_offset=0, kv_offset=0, mask_function=causal_mask_function,
                attention_mask=None, device="cpu")
    return triton_attention_mask(**{**args, **kwargs})


def test_no_padding_and_no_cache_gives_none_or_a_bidirectional_mask_of_every_key():
    """Causal: None. Bidirectional: an all-True mask recorded as such, which layers hand the kernels as None, so that a
    module that does not say whether it is causal still learns that its mask is bidirectional."""
    assert mask_for() is None
    assert mask_for(attention_mask=torch.ones(2, 4, dtype=torch.bool)) is None
    for attention_mask in (None, torch.ones(2, 4, dtype=torch.bool)):
        every_key = mask_for(mask_function=bidirectional_mask_function, attention_mask=attention_mask)
        assert every_key.shape == (2, 4) and every_key.all()
        assert bidirectional_mask_keeps_every_key(every_key) is True


def test_only_bidirectional_masks_are_recorded_as_such():
    padding = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)
    assert bidirectional_mask_keeps_every_key(mask_for(mask_function=bidirectional_mask_function,
                                                       attention_mask=padding)) is False
    assert bidirectional_mask_keeps_every_key(mask_for(attention_mask=padding)) is None
    assert bidirectional_mask_keeps_every_key(padding) is None


def test_padding_gives_key_validity():
    padding = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask_for(attention_mask=padding), padding)


def test_static_cache_tail_is_masked_without_a_2d_mask():
    """generate() may drop an all-ones mask (Transformers >= 5.18): the unwritten slots come from the offsets."""
    out = mask_for(q_length=1, kv_length=8, q_offset=torch.tensor(4))
    assert out.shape == (2, 8)
    assert torch.equal(out[0], torch.tensor([True] * 5 + [False] * 3))


def test_static_cache_tail_is_masked_with_a_2d_mask():
    seen = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    out = mask_for(q_length=1, kv_length=8, q_offset=torch.tensor(4), attention_mask=seen)
    assert torch.equal(out, torch.cat([seen, torch.zeros(2, 3, dtype=torch.bool)], dim=1))
    assert torch.equal(keys_in_use(out), torch.tensor([5, 5], dtype=torch.int32))


def test_idempotent_on_its_own_output():
    """With a static cache generate() feeds the mask function its own output a second time."""
    first = mask_for(q_length=1, kv_length=8, q_offset=torch.tensor(4))
    again = mask_for(q_length=1, kv_length=8, q_offset=torch.tensor(4), attention_mask=first)
    assert torch.equal(first, again)


def test_composed_masks_become_dense():
    out = mask_for(q_length=6, kv_length=6, mask_function=sliding_window_causal_mask_function(3))
    assert out.shape == (2, 1, 6, 6) and out.dtype == torch.bool
    q, k = torch.arange(6)[:, None], torch.arange(6)[None, :]
    assert torch.equal(out[0, 0], (k <= q) & (k > q - 3))


def test_keys_in_use():
    valid = torch.tensor([[0, 0, 1, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert keys_in_use(valid).tolist() == [4, 0, 5]


def test_keys_in_use_cached_per_mask_object():
    valid = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    first = keys_in_use_cached(valid)
    assert first.tolist() == [4, 3]
    assert keys_in_use_cached(valid) is first  # the same mask again (the next layer): no recomputation
    valid[1, 4] = True  # changed in place: recomputed
    assert keys_in_use_cached(valid).tolist() == [4, 5]
    assert keys_in_use_cached(valid.clone()).tolist() == [4, 5]
