#!/usr/bin/python3
"""Self-checks of tools/clipseg_ref.py (run: /usr/bin/python3 tools/test_clipseg_ref.py; ~10 s).

Checks what can be checked without `transformers`:
  * the full CIDAS/clipseg-rd64-refined key list and shapes (462 tensors) against an enumeration written
    from HF's module tree, and its parameter count (150,747,746, the 150.75 M of the model card's 603 MB
    fp32 file) against a closed-form count;
  * config.json: HF defaults for absent fields, the legacy text_config_dict / vision_config_dict merge,
    unknown fields kept, round trip;
  * the module forward against an independent float64 functional oracle that reads only the state dict
    (own LayerNorm, masked attention, quick_gelu, explicit bicubic A = -0.75 with clamped taps, FiLM,
    post-norm ReLU decoder, transposed convolutions as einsums), on square inputs (with and without the
    position-table resize) and on a non-square input with non_square=True;
  * stage shapes at 352 x 352 on the real geometry (patch 16, table 14 x 14 -> 22 x 22, 485 tokens,
    refined head 22 -> 88 -> 352), with narrow widths so that it runs in a second;
  * non_square=True equals HF's path on square inputs, and HF's path refuses non-square inputs;
  * both EOS pooling rules, and that padding never changes the pooled output;
  * hf_way (one pair per call), the batched call and the module forward agree;
  * tools/make_clipseg_checkpoint.py's folder: HF keys, {"format": "pt"}, a config that rebuilds the
    model, rd64-refined's preprocessor_config.json, the tokenizer files copied from --vocab-dir.
"""
import json
import math
import os
import sys
import tempfile
import unittest

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clipseg_ref import (RD64_REFINED, CLIPSegConfig, CLIPSegForImageSegmentation, batched,  # noqa: E402
                         count_parameters, eos_positions, hf_way, load_hf_state_dict, randomize_nontrivial)

TINY = dict(
    text_config=dict(hidden_size=32, num_attention_heads=2, num_hidden_layers=2, intermediate_size=64,
                     vocab_size=100, max_position_embeddings=16, bos_token_id=98, eos_token_id=2, pad_token_id=1),
    vision_config=dict(hidden_size=32, num_attention_heads=2, num_hidden_layers=4, intermediate_size=64,
                       patch_size=16, image_size=64),
    projection_dim=24, reduce_dim=16, decoder_num_attention_heads=2, decoder_intermediate_size=32,
    extract_layers=[1, 2, 3], use_complex_transposed_convolution=True)


def tiny_model(seed=1, **overrides):
    cfg = json.loads(json.dumps(TINY))
    cfg.update(overrides)
    model = CLIPSegForImageSegmentation(CLIPSegConfig.from_dict(cfg)).double().eval()
    randomize_nontrivial(model, seed)
    return model


def prompts():
    """3 prompts, bos 98 ... eos 99, padded with 99 (HF pads with EOS), attention mask 0 on padding."""
    ids = torch.tensor([[98, 10, 11, 12, 99, 99, 99], [98, 50, 99, 99, 99, 99, 99], [98, 5, 6, 7, 8, 9, 99]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1]])
    return ids, mask


# ---- independent functional oracle (float64, state dict only) -------------------------------------

def layer_norm(x, w, b, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w + b


def linear(sd, p, x):
    y = x @ sd[p + ".weight"].T
    return y + sd[p + ".bias"] if p + ".bias" in sd else y


def attention(sd, p, x, heads, allowed=None):
    """allowed: bool (B, N, N) of the keys each query may see, or None."""
    b, n, c = x.shape
    d = c // heads
    q, k, v = (linear(sd, f"{p}.{n_}_proj", x).reshape(b, n, heads, d).permute(0, 2, 1, 3) for n_ in "qkv")
    s = q @ k.transpose(-1, -2) / math.sqrt(d)
    if allowed is not None:
        s = s.masked_fill(~allowed[:, None], float("-inf"))
    o = (s.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(b, n, c)
    return linear(sd, p + ".out_proj", o)


def pre_norm_layer(sd, p, x, heads, allowed=None):
    x = x + attention(sd, p + ".self_attn", layer_norm(x, sd[p + ".layer_norm1.weight"], sd[p + ".layer_norm1.bias"]),
                      heads, allowed)
    h = linear(sd, p + ".mlp.fc1", layer_norm(x, sd[p + ".layer_norm2.weight"], sd[p + ".layer_norm2.bias"]))
    return x + linear(sd, p + ".mlp.fc2", h * torch.sigmoid(1.702 * h))


def cubic_weights(t, a=-0.75):
    def near(x):
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def bicubic_matrix(n_in, n_out):
    """(n_out, n_in) matrix of PyTorch's bicubic resize, align_corners=False, taps clamped to the edges."""
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for o in range(n_out):
        src = (o + 0.5) * n_in / n_out - 0.5
        i0 = math.floor(src)
        for j, w in enumerate(cubic_weights(src - i0)):
            m[o, min(max(i0 - 1 + j, 0), n_in - 1)] += w
    return m


def oracle(sd, cfg, pixel_values, input_ids, attention_mask):
    v, t = cfg["vision_config"], cfg["text_config"]
    p = v["patch_size"]
    b, _, h, w = pixel_values.shape
    gh, gw = h // p, w // p
    # vision: patches as an einsum over p x p blocks
    blocks = pixel_values[:, :, :gh * p, :gw * p].reshape(b, 3, gh, p, gw, p)
    patches = torch.einsum("bciyjx,ocyx->bijo", blocks, sd["clip.vision_model.embeddings.patch_embedding.weight"])
    cls = sd["clip.vision_model.embeddings.class_embedding"].expand(b, 1, -1)
    x = torch.cat([cls, patches.reshape(b, gh * gw, -1)], 1)
    table = sd["clip.vision_model.embeddings.position_embedding.weight"]
    side = int(math.isqrt(table.shape[0] - 1))
    grid = table[1:].reshape(side, side, -1)
    grid = torch.einsum("ys,sxc->yxc", bicubic_matrix(side, gh), grid)
    grid = torch.einsum("xs,ysc->yxc", bicubic_matrix(side, gw), grid)
    x = x + torch.cat([table[:1], grid.reshape(gh * gw, -1)], 0)
    x = layer_norm(x, sd["clip.vision_model.pre_layrnorm.weight"], sd["clip.vision_model.pre_layrnorm.bias"])
    acts = []
    for i in range(v["num_hidden_layers"]):
        x = pre_norm_layer(sd, f"clip.vision_model.encoder.layers.{i}", x, v["num_attention_heads"])
        acts.append(x)
    acts = [acts[i] for i in cfg["extract_layers"]]
    # text: causal AND not padding; pooled at the rule's EOS index
    n = input_ids.shape[1]
    e = sd["clip.text_model.embeddings.token_embedding.weight"][input_ids] \
        + sd["clip.text_model.embeddings.position_embedding.weight"][:n]
    allowed = torch.tril(torch.ones(n, n, dtype=torch.bool))[None] & attention_mask.bool()[:, None, :]
    for i in range(t["num_hidden_layers"]):
        e = pre_norm_layer(sd, f"clip.text_model.encoder.layers.{i}", e, t["num_attention_heads"], allowed)
    e = layer_norm(e, sd["clip.text_model.final_layer_norm.weight"], sd["clip.text_model.final_layer_norm.bias"])
    idx = []
    for row in input_ids.tolist():
        if t["eos_token_id"] == 2:
            idx.append(row.index(max(row)))
        else:
            idx.append(row.index(t["eos_token_id"]) if t["eos_token_id"] in row else 0)
    pooled = e[torch.arange(len(idx)), torch.tensor(idx)]
    cond = pooled @ sd["clip.text_projection.weight"].T
    # decoder: reverse order, FiLM at layer 0, post-norm ReLU layers
    out, layers = None, []
    for i, a in enumerate(acts[::-1]):
        r = linear(sd, f"decoder.reduces.{i}", a)
        out = r if out is None else r + out
        if i == 0:
            out = linear(sd, "decoder.film_mul", cond)[:, None] * out + linear(sd, "decoder.film_add", cond)[:, None]
        q = f"decoder.layers.{i}"
        out = layer_norm(out + attention(sd, q + ".self_attn", out, cfg["decoder_num_attention_heads"]),
                         sd[q + ".layer_norm1.weight"], sd[q + ".layer_norm1.bias"])
        out = layer_norm(out + linear(sd, q + ".mlp.fc2", torch.relu(linear(sd, q + ".mlp.fc1", out))),
                         sd[q + ".layer_norm2.weight"], sd[q + ".layer_norm2.bias"])
        layers.append(out)
    m = out[:, 1:].reshape(b, gh, gw, -1).permute(0, 3, 1, 2)
    m = torch.nn.functional.conv2d(m, sd["decoder.transposed_convolution.0.weight"],
                                   sd["decoder.transposed_convolution.0.bias"], padding=1).relu()

    def up(x, wgt, bias):  # ConvTranspose2d with kernel == stride: every input pixel paints one k x k block
        k = wgt.shape[2]
        y = torch.einsum("bcij,cokl->boikjl", x, wgt)
        return y.reshape(x.shape[0], wgt.shape[1], x.shape[2] * k, x.shape[3] * k) + bias[None, :, None, None]
    m = up(m, sd["decoder.transposed_convolution.2.weight"], sd["decoder.transposed_convolution.2.bias"]).relu()
    m = up(m, sd["decoder.transposed_convolution.4.weight"], sd["decoder.transposed_convolution.4.bias"])
    return dict(acts=acts, pooled=pooled, cond=cond, layers=layers, logits=m[:, 0])


# ---- the checks ----------------------------------------------------------------------------------

def expected_rd64_refined_shapes():
    """Key -> shape, written from HF's module tree for CIDAS/clipseg-rd64-refined."""
    s = {}

    def layer(p, c, mlp):
        for n in "qkvo":
            name = "out_proj" if n == "o" else f"{n}_proj"
            s[f"{p}.self_attn.{name}.weight"] = (c, c)
            s[f"{p}.self_attn.{name}.bias"] = (c,)
        for ln in ("layer_norm1", "layer_norm2"):
            s[f"{p}.{ln}.weight"] = (c,)
            s[f"{p}.{ln}.bias"] = (c,)
        s[f"{p}.mlp.fc1.weight"], s[f"{p}.mlp.fc1.bias"] = (mlp, c), (mlp,)
        s[f"{p}.mlp.fc2.weight"], s[f"{p}.mlp.fc2.bias"] = (c, mlp), (c,)

    s["clip.text_model.embeddings.token_embedding.weight"] = (49408, 512)
    s["clip.text_model.embeddings.position_embedding.weight"] = (77, 512)
    for i in range(12):
        layer(f"clip.text_model.encoder.layers.{i}", 512, 2048)
    s["clip.text_model.final_layer_norm.weight"] = s["clip.text_model.final_layer_norm.bias"] = (512,)
    s["clip.vision_model.embeddings.class_embedding"] = (768,)
    s["clip.vision_model.embeddings.patch_embedding.weight"] = (768, 3, 16, 16)
    s["clip.vision_model.embeddings.position_embedding.weight"] = (197, 768)
    for ln in ("pre_layrnorm", "post_layernorm"):
        s[f"clip.vision_model.{ln}.weight"] = s[f"clip.vision_model.{ln}.bias"] = (768,)
    for i in range(12):
        layer(f"clip.vision_model.encoder.layers.{i}", 768, 3072)
    s["clip.visual_projection.weight"] = (512, 768)
    s["clip.text_projection.weight"] = (512, 512)
    s["clip.logit_scale"] = ()
    for f in ("film_mul", "film_add"):
        s[f"decoder.{f}.weight"], s[f"decoder.{f}.bias"] = (64, 512), (64,)
    s["decoder.transposed_convolution.0.weight"], s["decoder.transposed_convolution.0.bias"] = (64, 64, 3, 3), (64,)
    s["decoder.transposed_convolution.2.weight"], s["decoder.transposed_convolution.2.bias"] = (64, 32, 4, 4), (32,)
    s["decoder.transposed_convolution.4.weight"], s["decoder.transposed_convolution.4.bias"] = (32, 1, 4, 4), (1,)
    for i in range(3):
        s[f"decoder.reduces.{i}.weight"], s[f"decoder.reduces.{i}.bias"] = (64, 768), (64,)
        layer(f"decoder.layers.{i}", 64, 2048)
    return s


class FullConfig(unittest.TestCase):
    def test_keys_shapes_and_count(self):
        model = CLIPSegForImageSegmentation(CLIPSegConfig.from_dict(RD64_REFINED))
        got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        want = expected_rd64_refined_shapes()
        self.assertEqual(sorted(set(got) - set(want)), [])
        self.assertEqual(sorted(set(want) - set(got)), [])
        self.assertEqual(got, want)
        self.assertEqual(len(got), 462)
        n = count_parameters(model)
        self.assertEqual(n, sum(math.prod(v) for v in want.values()))
        self.assertEqual(n, 150_747_746)  # the model card's 150.75 M parameters (603 MB as float32)

    def test_not_refined_head(self):
        model = CLIPSegForImageSegmentation(CLIPSegConfig(vision_config=dict(patch_size=16)))
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if "transposed" in k}
        self.assertEqual(shapes, {"decoder.transposed_convolution.weight": (64, 1, 16, 16),
                                  "decoder.transposed_convolution.bias": (1,)})


class Config(unittest.TestCase):
    def test_defaults_legacy_dicts_and_round_trip(self):
        c = CLIPSegConfig.from_dict({"text_config": {"eos_token_id": 2}, "text_config_dict": {"hidden_size": 64},
                                     "vision_config_dict": {"patch_size": 16}, "reduce_dim": 32, "my_field": [1]})
        self.assertEqual((c.text_config.hidden_size, c.text_config.eos_token_id, c.text_config.vocab_size),
                         (64, 2, 49408))
        self.assertEqual((c.vision_config.patch_size, c.vision_config.hidden_size), (16, 768))
        self.assertEqual((c.reduce_dim, c.extract_layers, c.decoder_intermediate_size), (32, [3, 6, 9], 2048))
        self.assertEqual(c.my_field, [1])
        d = c.to_dict()
        self.assertNotIn("text_config_dict", d)
        self.assertEqual(d["model_type"], "clipseg")
        self.assertEqual(d["architectures"], ["CLIPSegForImageSegmentation"])
        self.assertEqual(CLIPSegConfig.from_json(c.to_json()).to_dict(), d)

    def test_decoder_layers_use_relu(self):
        c = CLIPSegConfig(**TINY, decoder_hidden_act="quick_gelu")
        lc = c.decoder_layer_config()
        self.assertEqual((lc.hidden_act, lc.hidden_size, lc.num_attention_heads, lc.intermediate_size),
                         ("relu", 16, 2, 32))

    def test_bad_configs(self):
        with self.assertRaisesRegex(ValueError, "extract_layers entry 4"):
            CLIPSegConfig(**dict(TINY, extract_layers=[1, 4]))
        with self.assertRaisesRegex(ValueError, "reduce_dim 15"):
            CLIPSegConfig(**dict(TINY, reduce_dim=15))


class Forward(unittest.TestCase):
    def check_against_oracle(self, model, h, w, non_square):
        g = torch.Generator().manual_seed(h * 1000 + w)
        ids, mask = prompts()
        px = torch.randn(1, 3, h, w, generator=g, dtype=torch.float64).expand(3, -1, -1, -1)
        with torch.no_grad():
            s = model(px, ids, mask, non_square=non_square)
        ref = oracle(model.state_dict(), model.config.to_dict(), px, ids, mask)
        for a, b in zip(s.activations, ref["acts"]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
        torch.testing.assert_close(s.text_pooled, ref["pooled"], rtol=0, atol=1e-10)
        torch.testing.assert_close(s.conditional_embeddings, ref["cond"], rtol=0, atol=1e-10)
        for a, b in zip(s.decoder_layers, ref["layers"]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
        torch.testing.assert_close(s.logits, ref["logits"], rtol=0, atol=1e-10)
        return s

    def test_square_stored_grid(self):  # 64 x 64: HF's shortcut, the table as stored
        s = self.check_against_oracle(tiny_model(), 64, 64, False)
        self.assertEqual(tuple(s.logits.shape), (3, 64, 64))

    def test_square_resized_grid(self):  # 80 x 80: the 4 x 4 table resized bicubic to 5 x 5
        s = self.check_against_oracle(tiny_model(), 80, 80, False)
        self.assertEqual(tuple(s.position_embeddings.shape), (1, 26, 32))

    def test_non_square(self):  # 48 x 80: grid 3 x 5
        s = self.check_against_oracle(tiny_model(), 48, 80, True)
        self.assertEqual(tuple(s.logits.shape), (3, 48, 80))
        with self.assertRaisesRegex(ValueError, "non-square"):
            tiny_model()(torch.zeros(3, 3, 48, 80, dtype=torch.float64), *prompts())

    def test_newer_eos_rule(self):
        model = tiny_model(text_config=dict(TINY["text_config"], eos_token_id=3))
        ids = torch.tensor([[98, 40, 3, 60, 3], [98, 3, 3, 3, 3], [1, 70, 80, 90, 3]])
        self.assertEqual(eos_positions(ids, 3).tolist(), [2, 1, 4])
        self.assertEqual(eos_positions(ids, 2).tolist(), [0, 0, 3])  # legacy: first argmax of the ids
        mask = torch.ones_like(ids)
        g = torch.Generator().manual_seed(5)
        px = torch.randn(3, 3, 64, 64, generator=g, dtype=torch.float64)
        with torch.no_grad():
            s = model(px, ids, mask)
        ref = oracle(model.state_dict(), model.config.to_dict(), px, ids, mask)
        torch.testing.assert_close(s.text_pooled, ref["pooled"], rtol=0, atol=1e-10)
        torch.testing.assert_close(s.logits, ref["logits"], rtol=0, atol=1e-10)

    def test_eos_rules_on_real_ids(self):
        ids = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407, 49407, 49407]])
        self.assertEqual(eos_positions(ids, 2).tolist(), [6])
        self.assertEqual(eos_positions(ids, 49407).tolist(), [6])
        self.assertEqual(eos_positions(torch.tensor([[5, 6, 7]]), 49407).tolist(), [0])  # none: 0, as HF

    def test_padding_does_not_change_pooled(self):
        model = tiny_model()
        ids, mask = prompts()
        with torch.no_grad():
            _, full, _ = model.text(ids, mask)
            _, short, _ = model.text(ids[1:2, :3], mask[1:2, :3])
            _, no_mask, _ = model.text(ids, None)
        torch.testing.assert_close(full[1:2], short, rtol=0, atol=1e-12)
        torch.testing.assert_close(full, no_mask, rtol=0, atol=1e-12)  # causal mask hides trailing padding

    def test_non_square_path_equals_hf_on_square(self):
        model = tiny_model()
        ids, mask = prompts()
        px = torch.randn(3, 3, 80, 80, dtype=torch.float64)
        with torch.no_grad():
            self.assertTrue(torch.equal(model.logits(px, ids, mask), model.logits(px, ids, mask, non_square=True)))

    def test_stored_grid_shortcut_is_the_identity_resize(self):
        e = tiny_model().clip.vision_model.embeddings
        table = e.position_embedding.weight.detach()
        grid = table[1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
        same = torch.nn.functional.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False)
        torch.testing.assert_close(same, grid, rtol=0, atol=1e-15)
        self.assertTrue(torch.equal(e.position_table(64, 64)[0], table))
        self.assertFalse(torch.equal(e.position_table(64, 80)[0, 1:5], table[1:5]))  # 4 x 5 grid: resized

    def test_hf_way_and_batched(self):
        model = tiny_model()
        ids, mask = prompts()
        px = torch.randn(1, 3, 64, 64, dtype=torch.float64)
        a = hf_way(model, px, ids, mask)
        b = batched(model, px, ids, mask)
        with torch.no_grad():
            c = model(px.expand(3, -1, -1, -1), ids, mask).logits
        torch.testing.assert_close(a, c, rtol=0, atol=1e-10)
        torch.testing.assert_close(b, c, rtol=0, atol=1e-10)

    def test_stage_shapes_at_352(self):
        cfg = dict(RD64_REFINED, text_config=dict(RD64_REFINED["text_config"], hidden_size=32, num_attention_heads=2,
                                                   intermediate_size=32, vocab_size=49408),
                   vision_config=dict(patch_size=16, hidden_size=32, num_attention_heads=2, intermediate_size=32),
                   decoder_intermediate_size=64)
        model = CLIPSegForImageSegmentation(CLIPSegConfig.from_dict(cfg)).eval()
        randomize_nontrivial(model, 3)
        ids = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407]])
        with torch.no_grad():
            s = model(torch.randn(1, 3, 352, 352), ids)
        self.assertEqual(len(s.vision_hidden_states), 13)
        self.assertEqual([tuple(a.shape) for a in s.activations], [(1, 485, 32)] * 3)
        self.assertEqual(tuple(s.position_embeddings.shape), (1, 485, 32))
        self.assertEqual(tuple(s.text_pooled.shape), (1, 32))
        self.assertEqual(tuple(s.conditional_embeddings.shape), (1, 512))
        self.assertEqual([tuple(a.shape) for a in s.decoder_layers], [(1, 485, 64)] * 3)
        self.assertEqual(tuple(s.logits.shape), (1, 352, 352))
        self.assertTrue(torch.equal(s.text_pooled, s.text_last_hidden_state[:, 6]))

    def test_load_drops_old_position_ids(self):
        model = tiny_model()
        sd = dict(model.state_dict())
        sd["clip.text_model.embeddings.position_ids"] = torch.arange(16)[None]
        sd["clip.vision_model.embeddings.position_ids"] = torch.arange(17)[None]
        other = tiny_model(seed=2)
        load_hf_state_dict(other, sd)
        self.assertTrue(all(torch.equal(a, b) for a, b in zip(other.state_dict().values(),
                                                                model.state_dict().values())))

    def test_randomize_touches_every_tensor(self):
        model = tiny_model(seed=4)
        for k, v in model.state_dict().items():
            self.assertGreater(v.numel() and v.double().std().item() if v.numel() > 1 else abs(v.item()), 0, k)
        lns = [v for k, v in model.state_dict().items() if "norm" in k and k.endswith("weight")]
        self.assertTrue(all(0.5 <= x.min() and x.max() <= 1.5 for x in lns))


class Checkpoint(unittest.TestCase):
    def test_tiny_folder(self):
        import make_clipseg_checkpoint as mk
        import st
        with tempfile.TemporaryDirectory() as tmp:
            vocab = os.path.join(tmp, "vocab")
            os.makedirs(vocab)
            for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
                with open(os.path.join(vocab, name), "w") as f:
                    f.write("{}" if name.endswith(".json") else "#version: 0.2\n")
            out = os.path.join(tmp, "model")
            mk.main(["--out", out, "--config", "tiny", "--seed", "5", "--vocab-dir", vocab])
            self.assertEqual(sorted(os.listdir(out)), ["config.json", "merges.txt", "model.safetensors",
                                                       "preprocessor_config.json", "tokenizer_config.json",
                                                       "vocab.json"])
            tensors, meta = st.load(os.path.join(out, "model.safetensors"))
            self.assertEqual(meta, {"format": "pt"})
            with open(os.path.join(out, "config.json")) as f:
                model = CLIPSegForImageSegmentation(CLIPSegConfig.from_json(f.read()))
            load_hf_state_dict(model, {k: torch.from_numpy(v) for k, v in tensors.items()})
            want = mk.build("tiny", 5).state_dict()
            self.assertTrue(all(torch.equal(model.state_dict()[k], v) for k, v in want.items()))
            with open(os.path.join(out, "preprocessor_config.json")) as f:
                pre = json.load(f)
            self.assertEqual((pre["size"], pre["resample"], pre["image_mean"], pre["image_std"]),
                             ({"height": 352, "width": 352}, 2, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))
            self.assertAlmostEqual(pre["rescale_factor"], 1 / 255)


if __name__ == "__main__":
    torch.set_num_threads(1)
    unittest.main()
