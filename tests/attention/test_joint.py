"""MM-DiT capture (SD3, Flux) on tiny pipelines: bit-identical images, and maps equal to the probabilities of an
explicit softmax over the full joint sequence, recorded in a separate run without capture."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from freeatm_hf.attention import AttentionStore
from freeatm_hf.generate import FreeATMGenerator
from freeatm_hf.generate.tiny import tiny_flux_pipeline, tiny_sd3_pipeline
from freeatm_hf.prompts import Prompt

PROMPTS = [
    Prompt.from_nouns("a golden retriever with a tennis ball is playing in a park", ["golden retriever", "tennis ball"]),
    Prompt.from_nouns("a red car parked on a city street", ["car", "street"]),
]
KW = dict(num_inference_steps=3, max_sequence_length=32, height=64, width=64)


@pytest.fixture(scope="module", params=["sd3", "flux"])
def pipe(request):
    return (tiny_sd3_pipeline if request.param == "sd3" else tiny_flux_pipeline)()


class ExplicitJointReference:
    """Patches F.scaled_dot_product_attention; inside the joint blocks it records softmax(q kᵀ·scale) over all
    keys in float64 (checking rows sum to 1) and returns the stock output."""

    def __init__(self, transformer, text_first: bool, blocks: str = "double"):
        self.records, self.text_first, self.inside = [], text_first, False
        self.handles, self.single_text_len = [], None
        for name, m in transformer.named_modules():
            double = name.startswith("transformer_blocks.") and blocks in ("double", "all")
            single = name.startswith("single_transformer_blocks.") and blocks in ("single", "all")
            if (double or single) and name.endswith(".attn"):
                self.handles.append(m.register_forward_pre_hook(
                    lambda mod, a, kw, name=name: self._enter(mod, a, kw, name), with_kwargs=True))
                self.handles.append(m.register_forward_hook(lambda *a: setattr(self, "inside", False)))
            if single and name.count(".") == 1:  # the block: it splits [text, image] by its text input
                self.handles.append(m.register_forward_pre_hook(self._single_block, with_kwargs=True))
        self.original = F.scaled_dot_product_attention

    def _single_block(self, module, args, kwargs):
        self.single_text_len = kwargs["encoder_hidden_states"].shape[1]

    def _enter(self, module, args, kwargs, name=None):
        self.name = name
        hs = kwargs.get("hidden_states", args[0] if args else None)
        enc = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        if enc is None:  # single-stream: one [text, image] sequence
            self.inside = True
            self.n_txt, self.n_img = self.single_text_len, hs.shape[1] - self.single_text_len
        else:
            self.inside = True
            self.n_img, self.n_txt = hs.shape[1], enc.shape[1]

    def sdpa(self, query, key, value, *args, **kwargs):
        q, k = query, key
        if self.inside:
            p = (q.double() @ k.double().transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1)
            assert torch.allclose(p.sum(-1), torch.ones((), dtype=p.dtype))
            img = slice(self.n_txt, None) if self.text_first else slice(0, self.n_img)
            txt0 = 0 if self.text_first else self.n_img
            self.records.append((p[:, :, img], txt0, self.name))
        return self.original(query, key, value, *args, **kwargs)

    def __enter__(self):
        F.scaled_dot_product_attention = self.sdpa
        return self

    def __exit__(self, *exc):
        F.scaled_dot_product_attention = self.original
        for h in self.handles:
            h.remove()

    def token_maps(self, batch: int, token_index: torch.Tensor, weight=lambda name: 1.0):
        total, weights = 0, 0.0
        for p, txt0, name in self.records:
            cond = p[-batch:].mean(1)  # (b, N, S_joint)
            sel = torch.stack([cond[b][:, token_index[b] + txt0] for b in range(batch)]).transpose(1, 2)
            total, weights = total + weight(name) * sel, weights + weight(name)
        return total / weights


def test_images_bit_identical_and_maps_equal_the_explicit_joint_softmax(pipe):
    gen = FreeATMGenerator(pipe)
    out = gen(PROMPTS, seeds=[0, 1], output_type="np", **KW)
    got = gen.store.token_maps()[2]
    guidance = 7.5  # what the generator passes; Flux-schnell-like tiny models have no guidance embedding
    with ExplicitJointReference(pipe.transformer, text_first=gen.kind == "flux") as ref:
        plain = pipe([p.text for p in PROMPTS], generator=[torch.Generator().manual_seed(s) for s in (0, 1)],
                     guidance_scale=guidance, output_type="np", **KW).images
    assert np.array_equal(np.stack(out.images), plain)
    expected = ref.token_maps(2, gen.store.token_index).view_as(got)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-7)
    assert out.objects[0][0].soft_map.shape == (32, 32)


def test_half_precision_probabilities_are_exact_for_the_kernels_inputs():
    """In bf16 the kernel's LSE is fp32-exact for its rounded inputs; the captured probabilities must be too
    (rounding the logits to bf16 first was off by percents at logits of this size)."""
    from freeatm_hf.attention.joint import JointCaptureProcessor

    class Sink:
        batch_size, token_index = 1, torch.tensor([[0, 2]])

        def add_selected(self, factor, probs, weight=1.0):
            self.factor, self.probs = factor, probs

    sink = Sink()
    proc = JointCaptureProcessor(None, sink, text_first=True)
    proc.n_txt, proc.n_img = 4, 16
    g = torch.Generator().manual_seed(0)
    q, k = (3 * torch.randn(2, 2, 20, 16, generator=g)).bfloat16(), (3 * torch.randn(2, 2, 20, 16, generator=g)).bfloat16()
    scale = 16 ** -0.5
    lse = (q.float() @ k.float().transpose(-1, -2) * scale).logsumexp(-1)
    proc.record(q, k, lse, scale)
    p = (q[-1:].double() @ k[-1:].double().transpose(-1, -2) * scale).softmax(-1)
    assert sink.factor == 2
    torch.testing.assert_close(sink.probs.double(), p[:, :, 4:, [0, 2]].mean(1), rtol=1e-5, atol=1e-7)


def test_token_columns_per_model(pipe):
    gen = FreeATMGenerator(pipe)
    dog, ball = gen.object_tokens(PROMPTS[0], 32)
    if gen.kind == "sd3":  # CLIP positions and T5 positions (offset 77), averaged into one map
        assert dog.token_indices == (2, 3, 78, 79) and ball.token_indices == (6, 7, 82, 83)
    else:  # Flux: T5 only, no start token
        assert dog.token_indices == (1, 2) and ball.token_indices == (5, 6)
    long = Prompt.from_nouns("a " + " ".join(["red"] * 80) + " cat", ["cat"])
    (cat,) = gen.object_tokens(long, 128)
    if gen.kind == "sd3":  # cut from CLIP (77), still in T5 (128): the T5 columns remain
        assert cat.token_indices == (77 + 81,) and not cat.truncated  # T5 has no start token: 'cat' is its 82nd
    assert gen.object_tokens(long, 64)[0].truncated  # past both limits: no map rather than a wrong one


def test_sd3_t5_columns_start_where_the_pipeline_appends_t5_after_clip():
    """SD3 pads CLIP to its tokenizer's length and appends T5: with a shorter CLIP tokenizer the T5 columns move."""
    from diffusers import StableDiffusion3Pipeline

    from freeatm_hf.generate.clip_vocab import load_tokenizer

    short = load_tokenizer(model_max_length=24)
    pipe = StableDiffusion3Pipeline(**{**tiny_sd3_pipeline().components, "tokenizer": short, "tokenizer_2": short})
    (dog, ball) = FreeATMGenerator(pipe).object_tokens(PROMPTS[0], 32)
    with torch.no_grad():
        joint = pipe.encode_prompt(PROMPTS[0].text, None, None, do_classifier_free_guidance=False,
                                   max_sequence_length=32)[0]
        t5 = pipe._get_t5_prompt_embeds(PROMPTS[0].text, max_sequence_length=32)
    assert joint.shape[1] == 24 + 32
    for obj, t5_cols in ((dog, (1, 2)), (ball, (5, 6))):  # T5 pieces of 'golden retriever', 'tennis ball'
        assert obj.token_indices == tuple(i for i in obj.token_indices if i < 24) + tuple(24 + i for i in t5_cols)
        torch.testing.assert_close(joint[0, [24 + i for i in t5_cols]], t5[0, list(t5_cols)])


def test_t5_sub_words_and_repeated_nouns_map_to_their_own_columns(pipe):
    gen = FreeATMGenerator(pipe)
    t5 = 77 if gen.kind == "sd3" else 0  # where T5's columns start in the joint text sequence

    def t5_columns(obj):
        return tuple(i - t5 for i in obj.token_indices if i >= t5)

    # An out-of-vocabulary word splits into pieces ('▁x', 'y', 'l', ...): all of them are the noun's columns.
    (odd, dog) = gen.object_tokens(Prompt.from_nouns("a xylophonist dog", ["xylophonist", "dog"]), 32)
    t5_tokenizer = pipe.tokenizer_3 if gen.kind == "sd3" else pipe.tokenizer_2
    pieces = t5_tokenizer.convert_ids_to_tokens(t5_tokenizer("a xylophonist dog").input_ids)
    assert "".join(pieces[i] for i in t5_columns(odd)) == "▁xylophonist" and len(t5_columns(odd)) == 11
    assert [pieces[i] for i in t5_columns(dog)] == ["▁dog"]
    # The same noun twice: each occurrence its own column, in order.
    first, second = gen.object_tokens(Prompt.from_nouns("a dog chasing a dog", ["dog", "dog"]), 32)
    assert t5_columns(first) == (1,) and t5_columns(second) == (9,)
    if gen.kind == "sd3":  # and CLIP's columns too: the first and the second 'dog' of CLIP's tokens
        ids = pipe.tokenizer("a dog chasing a dog").input_ids
        dogs = [i for i, t in enumerate(ids) if t == pipe.tokenizer.convert_tokens_to_ids("dog</w>")]
        assert len(dogs) == 2 and dogs[0] == 2
        assert [i for i in first.token_indices if i < t5] == dogs[:1]
        assert [i for i in second.token_indices if i < t5] == dogs[1:]


def test_flux_dev_guidance_embedding_keeps_images_and_maps_exact():
    """Guidance-distilled Flux (dev) takes the guidance scale as a transformer input: the capture must pass it
    through untouched (one forward per step, no CFG batch), so images stay bit-identical."""
    pipe = tiny_flux_pipeline(guidance_embeds=True)
    gen = FreeATMGenerator(pipe)
    out = gen(PROMPTS, seeds=[0, 1], output_type="np", guidance_scale=3.5, **KW)
    with ExplicitJointReference(pipe.transformer, text_first=True) as ref:
        plain = pipe([p.text for p in PROMPTS], generator=[torch.Generator().manual_seed(s) for s in (0, 1)],
                     guidance_scale=3.5, output_type="np", **KW).images
    other = pipe([p.text for p in PROMPTS], generator=[torch.Generator().manual_seed(s) for s in (0, 1)],
                 guidance_scale=1.0, output_type="np", **KW).images
    assert np.array_equal(np.stack(out.images), plain)
    assert not np.array_equal(plain, other)  # the guidance embedding is live: the scale changes the image
    got = gen.store.token_maps()[2]
    expected = ref.token_maps(2, gen.store.token_index).view_as(got)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-7)


def test_joint_attention_kwargs_the_processors_take_still_reach_them_under_capture():
    """Flux's attention passes its processor only the joint_attention_kwargs the processor's signature names: the
    capture wrapper must name the same ones."""
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

    class Gain(FluxAttnProcessor):
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                     image_rotary_emb=None, gain=1.0):
            out = super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
            return tuple(gain * o for o in out) if isinstance(out, tuple) else gain * out

    pipe = tiny_flux_pipeline()
    pipe.transformer.set_attn_processor(Gain())

    def plain(**extra):
        return pipe([PROMPTS[0].text], generator=[torch.Generator().manual_seed(0)], guidance_scale=7.5,
                    output_type="np", **KW, **extra).images

    out = FreeATMGenerator(pipe)(PROMPTS[:1], seeds=[0], output_type="np", joint_attention_kwargs={"gain": 3.0}, **KW)
    assert np.array_equal(np.stack(out.images), plain(joint_attention_kwargs={"gain": 3.0}))
    assert not np.array_equal(np.stack(out.images), plain())  # the gain is live: it changes the image


def test_a_noun_past_the_text_limit_is_named_with_the_limit_that_cut_it(pipe, caplog):
    gen = FreeATMGenerator(pipe)
    long = Prompt.from_nouns("a " + " ".join(["red"] * 80) + " cat", ["cat"])
    with caplog.at_level("WARNING"):
        out = gen([long], seeds=[0], output_type="np", **{**KW, "max_sequence_length": 16})
    assert out.truncated == [["cat"]] and out.objects == [[]]
    limit = "16-token T5" if gen.kind == "flux" else "77-token CLIP and 16-token T5"
    assert f"cut off by the {limit} limit" in caplog.text


def test_non_square_maps_keep_orientation():
    pipe = tiny_sd3_pipeline()
    gen = FreeATMGenerator(pipe)
    kw = {**KW, "height": 64, "width": 32}
    out = gen(PROMPTS[:1], seeds=[3], output_type="np", **kw)
    assert out.images[0].shape == (64, 32, 3) and out.objects[0][0].soft_map.shape == (32, 16)
    grid = []
    h = pipe.transformer.register_forward_pre_hook(lambda m, a, k: grid.append(k["hidden_states"].shape[-2:]),
                                                   with_kwargs=True)
    with ExplicitJointReference(pipe.transformer, text_first=False) as ref:
        pipe([PROMPTS[0].text], generator=[torch.Generator().manual_seed(3)], guidance_scale=7.5, output_type="np", **kw)
    h.remove()
    gh, gw = (s // 2 for s in grid[0])  # patch size 2 on the latent the transformer received
    expected = ref.token_maps(1, gen.store.token_index).reshape(1, -1, gh, gw)
    torch.testing.assert_close(gen.store.token_maps()[2].double(), expected, rtol=1e-5, atol=1e-7)


def test_processors_and_sdpa_restored_after_an_exception(pipe):
    from freeatm_hf.attention.joint import capture_joint

    before = dict(pipe.transformer.attn_processors)
    sdpa = F.scaled_dot_product_attention
    store = AttentionStore(FreeATMGenerator(pipe).capture)
    with pytest.raises(RuntimeError, match="boom"):
        with capture_joint(pipe.transformer, store, text_first=True):
            assert F.scaled_dot_product_attention is not sdpa
            raise RuntimeError("boom")
    assert F.scaled_dot_product_attention is sdpa
    assert pipe.transformer.attn_processors == before
    assert not pipe.transformer._forward_pre_hooks


@pytest.mark.parametrize("blocks", ["single", "all"])
def test_flux_single_stream_blocks_equal_the_explicit_softmax_too(blocks):
    from freeatm_hf.attention import CaptureConfig

    pipe = tiny_flux_pipeline()
    gen = FreeATMGenerator(pipe, CaptureConfig(down_factors=(2,), mmdit_blocks=blocks))
    out = gen(PROMPTS, seeds=[0, 1], output_type="np", **KW)
    with ExplicitJointReference(pipe.transformer, text_first=True, blocks=blocks) as ref:
        plain = pipe([p.text for p in PROMPTS], generator=[torch.Generator().manual_seed(s) for s in (0, 1)],
                     guidance_scale=7.5, output_type="np", **KW).images
    assert np.array_equal(np.stack(out.images), plain)
    assert len(ref.records) == {"single": 1, "all": 3}[blocks] * KW["num_inference_steps"]
    got = gen.store.token_maps()[2]
    torch.testing.assert_close(got.double(), ref.token_maps(2, gen.store.token_index).view_as(got), rtol=1e-5,
                               atol=1e-7)
    assert not pipe.transformer._forward_pre_hooks and not any(
        m._forward_pre_hooks for m in pipe.transformer.single_transformer_blocks)


def test_block_weights_give_a_weighted_mean_over_the_joint_blocks():
    from freeatm_hf.attention import CaptureConfig

    pipe = tiny_flux_pipeline()
    weights = {"transformer_blocks": 2.0, "transformer_blocks.1": 0.0, "single_transformer_blocks": 0.25}
    gen = FreeATMGenerator(pipe, CaptureConfig(down_factors=(2,), mmdit_blocks="all", layer_weights=weights))
    gen(PROMPTS, seeds=[0, 1], output_type="np", **KW)
    with ExplicitJointReference(pipe.transformer, text_first=True, blocks="all") as ref:
        pipe([p.text for p in PROMPTS], generator=[torch.Generator().manual_seed(s) for s in (0, 1)],
             guidance_scale=7.5, output_type="np", **KW)

    def weight(name):  # by hand: double block 0 counts twice, block 1 not at all, the single block a quarter
        return {"transformer_blocks.0.attn": 2.0, "transformer_blocks.1.attn": 0.0}.get(name, 0.25)

    got = gen.store.token_maps()[2]
    assert gen.store.weights_added()[2] == KW["num_inference_steps"] * 2.25
    torch.testing.assert_close(got.double(), ref.token_maps(2, gen.store.token_index, weight).view_as(got),
                               rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="give every double block weight 0"):
        FreeATMGenerator(pipe, CaptureConfig(down_factors=(2,), layer_weights={"transformer_blocks": 0}))(
            PROMPTS, seeds=[0, 1], output_type="np", **KW)
    # Single-stream weights while only the double blocks are captured: a key that matches nothing captured.
    with pytest.raises(ValueError, match=r"keys \['single_transformer_blocks'\] match none of the captured"):
        FreeATMGenerator(pipe, CaptureConfig(down_factors=(2,), layer_weights={"single_transformer_blocks": 0.5}))(
            PROMPTS, seeds=[0, 1], output_type="np", **KW)


def test_single_stream_blocks_are_refused_where_there_are_none():
    from freeatm_hf.attention import CaptureConfig

    gen = FreeATMGenerator(tiny_sd3_pipeline(), CaptureConfig(down_factors=(2,), mmdit_blocks="single"))
    with pytest.raises(ValueError, match="single-stream"):
        gen(PROMPTS[:1], seeds=[0], output_type="np", **KW)
    with pytest.raises(ValueError, match="mmdit_blocks"):
        CaptureConfig(mmdit_blocks="some")


def test_sizes_off_the_patch_grid_are_refused_by_name(pipe):
    gen = FreeATMGenerator(pipe)
    step = pipe.vae_scale_factor  # a multiple of the VAE factor, but not of the 2×2 patch
    with pytest.raises(ValueError, match=f"multiples of {2 * step}"):
        gen(PROMPTS[:1], seeds=[0], **{**KW, "height": 64 + step})


def test_flux_true_cfg_is_refused_rather_than_mixing_the_negative_prompt_into_the_maps():
    gen = FreeATMGenerator(tiny_flux_pipeline())
    with pytest.raises(ValueError, match="true CFG"):
        gen(PROMPTS[:1], seeds=[0], negative_prompt="blurry", true_cfg_scale=4.0, **KW)


def test_sd3_skip_layer_guidance_is_refused_rather_than_recording_its_extra_transformer_pass():
    pipe = tiny_sd3_pipeline()
    calls = []
    pipe.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match=r"skip-layer guidance \(skip_guidance_layers\) is not supported"):
        FreeATMGenerator(pipe)(PROMPTS[:1], seeds=[0], skip_guidance_layers=[1], skip_layer_guidance_start=0.0, **KW)
    assert calls == []  # refused before the pipeline ran


def test_a_users_own_sdpa_serves_the_run_and_is_put_back(pipe):
    """A replacement of F.scaled_dot_product_attention installed before capture (a faster kernel, say) serves
    every call capture does not read, and is what capture restores, not the function of import time."""
    from freeatm_hf.attention.joint import capture_joint

    stock, calls = F.scaled_dot_product_attention, []

    def users_sdpa(*args, **kwargs):
        calls.append(1)
        return stock(*args, **kwargs)

    F.scaled_dot_product_attention = users_sdpa
    try:
        store = AttentionStore(FreeATMGenerator(pipe).capture)
        store.begin(torch.zeros(1, 8, dtype=torch.long), (8, 8), 1)
        with capture_joint(pipe.transformer, store, text_first=True):
            F.scaled_dot_product_attention(*(torch.randn(1, 2, 4, 8),) * 3)  # outside any joint block
        assert calls == [1] and F.scaled_dot_product_attention is users_sdpa
    finally:
        F.scaled_dot_product_attention = stock


def test_a_batch_of_extra_guidance_passes_is_refused_not_recorded():
    """Perturbed-attention guidance runs [uncond, cond, perturbed]: the last rows are not the prompt's."""
    from freeatm_hf.attention.joint import JointCaptureProcessor

    store = AttentionStore(FreeATMGenerator(tiny_sd3_pipeline()).capture)
    store.begin(torch.zeros(1, 8, dtype=torch.long), (8, 8), 1)
    proc = JointCaptureProcessor(lambda *a, **k: None, store, text_first=False)
    proc.n_img, proc.n_txt = 16, 8
    q = torch.randn(3, 2, 24, 4)
    with pytest.raises(RuntimeError, match="attention batch 3 is neither the image batch 1 nor twice it"):
        proc.record(q, q, torch.zeros(3, 2, 24), 0.5)


@pytest.mark.slow
def test_a_compiled_sd3_transformer_is_one_graph_with_capture_inside():
    """torch.compile(transformer) with joint capture: no graph break per block (the kernel-with-LSE is one opaque
    op, the current layer a plain attribute), one graph for every step and prompt, maps as eager."""
    from torch._dynamo.utils import counters

    pipe = tiny_sd3_pipeline()
    gen = FreeATMGenerator(pipe)
    eager = gen(PROMPTS[:1], seeds=[0], **KW)
    pipe.transformer = torch.compile(pipe.transformer)
    graphs, breaks = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
    compiled = gen(PROMPTS[:1], seeds=[0], **KW)
    again = gen(PROMPTS[1:], seeds=[1], **KW)
    assert counters["stats"]["unique_graphs"] == graphs + 1
    assert sum(counters["graph_break"].values()) == breaks
    for a, b in zip(compiled.objects[0], eager.objects[0]):
        np.testing.assert_allclose(a.soft_map, b.soft_map, rtol=1e-4, atol=1e-8)
    assert len(again.objects[0]) == 2


class _Recorder:
    """Stands for the capturing layer: notes what the patched SDPA reports."""

    def __init__(self, n_txt=4, n_img=6):  # the joint sequence the tests' q and k span
        self.calls, self.n_txt, self.n_img = [], n_txt, n_img

    def record(self, q, k, lse, scale):
        self.calls.append((lse, scale))


@pytest.mark.parametrize("v_dim", [8, 6])  # 8: the fused CPU kernel serves it; 6 (≠ the query's 8): the math path
@pytest.mark.parametrize("scale", [None, 0.3])
def test_inside_a_layer_sdpa_gives_the_stock_output_and_each_rows_log_sum_exp(v_dim, scale):
    """Within capture, a joint layer's SDPA call returns what the stock function returns and reports
    logsumexp(q kᵀ·scale) over all keys, with the call's own scale (d^-½ when none is given); a call with a mask
    is passed through unrecorded."""
    from freeatm_hf.attention import CaptureConfig, joint

    stock = F.scaled_dot_product_attention
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 2, 10, 8, generator=g), torch.randn(2, 2, 10, 8, generator=g)
    v = torch.randn(2, 2, 10, v_dim, generator=g)
    mask = torch.zeros(10, 10).masked_fill(torch.rand(10, 10, generator=g) < 0.3, float("-inf")).fill_diagonal_(0)
    store = AttentionStore(CaptureConfig(down_factors=(2,)))
    recorder = _Recorder()
    with joint.capture_joint(tiny_sd3_pipeline().transformer, store, text_first=True):
        joint._CURRENT.layer = recorder
        try:
            out = F.scaled_dot_product_attention(q, k, v, scale=scale)
            masked = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        finally:
            joint._CURRENT.layer = None
    torch.testing.assert_close(out, stock(q, k, v, scale=scale))
    torch.testing.assert_close(masked, stock(q, k, v, attn_mask=mask, scale=scale))
    (lse, used), = recorder.calls  # the masked call is not recorded
    expected_scale = 8 ** -0.5 if scale is None else scale
    assert used == pytest.approx(expected_scale)
    expected = (q.double() @ k.double().transpose(-1, -2) * expected_scale).logsumexp(-1)
    torch.testing.assert_close(lse.double(), expected, rtol=1e-5, atol=1e-5)


def test_capture_inside_capture_still_serves_the_stock_sdpa_and_puts_it_back():
    from freeatm_hf.attention import CaptureConfig
    from freeatm_hf.attention.joint import capture_joint

    stock = F.scaled_dot_product_attention
    transformer = tiny_sd3_pipeline().transformer
    q = torch.randn(1, 2, 4, 8)
    with capture_joint(transformer, AttentionStore(CaptureConfig(down_factors=(2,))), text_first=True):
        with capture_joint(transformer, AttentionStore(CaptureConfig(down_factors=(2,))), text_first=True):
            torch.testing.assert_close(F.scaled_dot_product_attention(q, q, q), stock(q, q, q))
    assert F.scaled_dot_product_attention is stock


def test_joint_capture_refuses_down_factors_other_than_the_patch_grid():
    from freeatm_hf.attention import CaptureConfig
    from freeatm_hf.attention.joint import capture_joint

    with pytest.raises(ValueError, match=r"use down_factors=\(2,\)"):
        with capture_joint(tiny_sd3_pipeline().transformer, AttentionStore(CaptureConfig(down_factors=(2, 4))), True):
            pass


def test_only_calls_inside_the_step_window_are_recorded():
    """SD3 with 4 steps and the window [0.5, 1): the last two transformer calls, each through every joint block."""
    from freeatm_hf.attention import CaptureConfig
    from freeatm_hf.attention.joint import joint_attention_modules

    pipe = tiny_sd3_pipeline()
    gen = FreeATMGenerator(pipe, CaptureConfig(down_factors=(2,), step_window=(0.5, 1.0)))
    gen(PROMPTS[:1], seeds=[0], output_type="np", **{**KW, "num_inference_steps": 4})
    blocks = len(joint_attention_modules(pipe.transformer))
    assert blocks > 0 and gen.store.weights_added() == {2: 2.0 * blocks}


def test_the_single_stream_text_length_is_read_from_a_positional_argument_too():
    from freeatm_hf.attention.joint import JointCaptureProcessor, _text_len_hook

    proc = JointCaptureProcessor(None, None, text_first=True, single=True)
    hook = _text_len_hook(proc)
    hidden, text = torch.zeros(1, 20, 4), torch.zeros(1, 7, 4)
    hook(None, (hidden, text), {})
    assert proc.text_len == 7
    hook(None, (hidden,), {"encoder_hidden_states": torch.zeros(1, 5, 4)})
    assert proc.text_len == 5
    hook(None, (hidden,), {})
    assert proc.text_len is None


def test_a_processor_set_between_batches_is_the_one_that_runs():
    """The generator keeps its capture wrappers between batches; one whose layer got a new processor since must
    wrap the new one, or the image would come from the old."""
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

    class Triple(FluxAttnProcessor):
        def __call__(self, *args, **kwargs):
            out = super().__call__(*args, **kwargs)
            return tuple(3 * o for o in out) if isinstance(out, tuple) else 3 * out

    pipe = tiny_flux_pipeline()
    gen = FreeATMGenerator(pipe)
    gen(PROMPTS[:1], seeds=[0], output_type="np", **KW)
    pipe.transformer.set_attn_processor(Triple())
    out = gen(PROMPTS[:1], seeds=[0], output_type="np", **KW)
    plain = pipe([PROMPTS[0].text], generator=[torch.Generator().manual_seed(0)], guidance_scale=7.5,
                 output_type="np", **KW).images
    assert np.array_equal(np.stack(out.images), plain)


def test_a_noun_is_found_within_the_t5_length_the_pipeline_encodes_by_default(pipe):
    """Without max_sequence_length a pipeline encodes its own default number of T5 tokens (Flux 512, SD3 256): a
    noun within them (past 256 for Flux) has a map and is not reported cut."""
    import inspect

    default = inspect.signature(type(pipe).__call__).parameters["max_sequence_length"].default
    long = Prompt.from_nouns("a " + " ".join(["red"] * (default - 60)) + " cat", ["cat"])
    gen = FreeATMGenerator(pipe)
    (cat,) = gen.object_tokens(long, default)
    assert not cat.truncated
    kw = {k: v for k, v in KW.items() if k != "max_sequence_length"}  # the pipeline's default
    out = gen([long], seeds=[0], output_type="np", **{**kw, "num_inference_steps": 1})
    assert out.truncated == [[]] and [o.token_indices for o in out.objects[0]] == [cat.token_indices]


def _projected_joint_probs(attn, kwargs, text_first: bool):
    """softmax(q kᵀ/√d) over the joint sequence in float64, computed from the layer's own projections, q/k norms
    and (Flux) rotary embedding on the block's inputs: image queries × text keys, `(n, heads, N_img, N_txt)`."""
    from diffusers.models.embeddings import apply_rotary_emb

    attn = copy.deepcopy(attn).double()
    hs, enc = kwargs["hidden_states"].double(), kwargs["encoder_hidden_states"].double()
    d = attn.to_q.out_features // attn.heads

    def heads(x, norm):  # (n, S, heads·d) → (n, S, heads, d), normed per head
        x = x.unflatten(-1, (attn.heads, d))
        return x if norm is None else norm(x.transpose(1, 2)).transpose(1, 2)

    q, k = heads(attn.to_q(hs), attn.norm_q), heads(attn.to_k(hs), attn.norm_k)
    eq, ek = heads(attn.add_q_proj(enc), attn.norm_added_q), heads(attn.add_k_proj(enc), attn.norm_added_k)
    q, k = (torch.cat([eq, q], 1), torch.cat([ek, k], 1)) if text_first else (torch.cat([q, eq], 1), torch.cat([k, ek], 1))
    if kwargs.get("image_rotary_emb") is not None:
        rope = tuple(r.double() for r in kwargs["image_rotary_emb"])
        q, k = apply_rotary_emb(q, rope, sequence_dim=1), apply_rotary_emb(k, rope, sequence_dim=1)
    p = (q.transpose(1, 2) @ k.transpose(1, 2).transpose(-1, -2) * d ** -0.5).softmax(-1)
    n_img, n_txt = hs.shape[1], enc.shape[1]
    return p[:, :, n_txt:, :n_txt] if text_first else p[:, :, :n_img, n_img:]


def test_an_ip_adapters_image_attention_in_a_joint_layer_is_not_recorded_as_its_text_attention(pipe):
    """An IP-Adapter's processor runs a second attention inside the joint layer (image queries over its image-prompt
    tokens). Only the joint attention is the prompt's: recorded too, the second call's keys were read as text
    columns (Flux: an index past its few tokens; SD3: image keys taken for text). Reference: the joint softmax from
    the layer's projections on its inputs."""
    from diffusers.models.attention_processor import SD3IPAdapterJointAttnProcessor2_0
    from diffusers.models.transformers.transformer_flux import FluxIPAdapterAttnProcessor

    flux = type(pipe).__name__.startswith("Flux")
    names = [n for n, _ in pipe.transformer.named_modules() if n.startswith("transformer_blocks.") and n.endswith(".attn")]
    originals = {n: pipe.transformer.get_submodule(n).processor for n in names}
    g = torch.Generator().manual_seed(0)
    n = 2 if flux else 4  # SD3 runs [unconditional, conditional] in one batch, each with the image prompt
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for name in names:
            attn = pipe.transformer.get_submodule(name)
            attn.set_processor(FluxIPAdapterAttnProcessor(attn.inner_dim, 8, num_tokens=(4,)) if flux else
                               SD3IPAdapterJointAttnProcessor2_0(attn.inner_dim, 8, attn.inner_dim // attn.heads, 16))
    extra = {"ip_hidden_states": [torch.randn(n, 4, 8, generator=g)]} if flux else {
        "ip_hidden_states": torch.randn(n, 4, 8, generator=g), "temb": torch.randn(n, 16, generator=g)}
    kw = {**KW, "output_type": "np", "guidance_scale": 7.5, "joint_attention_kwargs": extra}
    try:
        gen = FreeATMGenerator(pipe)
        out = gen(PROMPTS, seeds=[0, 1], **{k: v for k, v in kw.items() if k != "guidance_scale"})
        records = []
        handles = [pipe.transformer.get_submodule(name).register_forward_pre_hook(
            lambda m, a, k: records.append(_projected_joint_probs(m, k, flux)[-2:].mean(1)), with_kwargs=True)
            for name in names]
        plain = pipe([p.text for p in PROMPTS], generator=[torch.Generator().manual_seed(s) for s in (0, 1)], **kw)
        for h in handles:
            h.remove()
    finally:
        for name, proc in originals.items():
            pipe.transformer.get_submodule(name).set_processor(proc)
    assert np.array_equal(np.stack(out.images), plain.images)
    got, index = gen.store.token_maps()[2], gen.store.token_index
    assert gen.store.weights_added() == {2: len(records)} == {2: len(names) * KW["num_inference_steps"]}
    probs = torch.stack(records).mean(0)  # (b, N_img, N_txt)
    expected = torch.stack([probs[b][:, index[b]].T for b in range(2)])
    torch.testing.assert_close(got.double().flatten(2), expected, rtol=1e-5, atol=1e-7)
