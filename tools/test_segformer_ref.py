#!/usr/bin/python3
"""Self-checks of tools/segformer_ref.py (run: /usr/bin/python3 tools/test_segformer_ref.py).

Checks what can be checked without `transformers`:
  * parameter counts of b0 ... b5 against the totals derived from HF's module tree;
  * the b0 state-dict key list and shapes against the enumeration in hf_segformer_semantics.md §1.3;
  * config.json round trip and reading an HF-style config with extra keys;
  * the module forward (eval and train BatchNorm), loss and BCE variant against an independent functional
    re-implementation in float64 that reads only the state dict (own LayerNorm, attention, erf GELU,
    bilinear index formula and cross-entropy);
  * drop-path rates and randomize_nontrivial touching every tensor.
"""
import json
import math
import os
import sys
import unittest

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from segformer_ref import (SegformerConfig, SegformerForSemanticSegmentation, count_parameters,  # noqa: E402
                           init_weights_like_hf, randomize_nontrivial, semantic_segmentation_loss)

TINY = dict(hidden_sizes=[8, 16, 24, 32], depths=[1, 2, 1, 1], num_attention_heads=[1, 2, 3, 4],
            decoder_hidden_size=16, num_labels=5, classifier_dropout_prob=0.0, drop_path_rate=0.0)


# ---- independent functional oracle (float64, state dict only) -------------------------------------

def layer_norm(x, w, b, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w + b


def bilinear(x, out_h, out_w):
    """align_corners=False resize by the explicit source-index formula."""
    def axis(n_in, n_out):
        src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * n_in / n_out - 0.5).clamp(min=0)
        i0 = src.floor().long().clamp(max=n_in - 1)
        i1 = (i0 + 1).clamp(max=n_in - 1)
        return i0, i1, src - i0
    y0, y1, fy = axis(x.shape[2], out_h)
    x0, x1, fx = axis(x.shape[3], out_w)
    rows = x[:, :, y0] * (1 - fy)[:, None] + x[:, :, y1] * fy[:, None]
    return rows[..., x0] * (1 - fx) + rows[..., x1] * fx


def oracle_forward(sd, cfg, pixels, train):
    """Returns (logits, stage outputs) computed from the state dict `sd` alone."""
    def p(name):
        return sd[name]
    x, stages = pixels, []
    for i in range(cfg.num_encoder_blocks):
        pre = f"segformer.encoder.patch_embeddings.{i}."
        k = cfg.patch_sizes[i]
        x = torch.nn.functional.conv2d(x, p(pre + "proj.weight"), p(pre + "proj.bias"), cfg.strides[i], k // 2)
        B, C, H, W = x.shape
        t = layer_norm(x.reshape(B, C, H * W).permute(0, 2, 1), p(pre + "layer_norm.weight"),
                       p(pre + "layer_norm.bias"))
        heads, d, sr = cfg.num_attention_heads[i], C // cfg.num_attention_heads[i], cfg.sr_ratios[i]
        for j in range(cfg.depths[i]):
            pre = f"segformer.encoder.block.{i}.{j}."
            a = pre + "attention.self."
            h = layer_norm(t, p(pre + "layer_norm_1.weight"), p(pre + "layer_norm_1.bias"))
            kv = h
            if sr > 1:
                img = h.permute(0, 2, 1).reshape(B, C, H, W)
                red = torch.nn.functional.conv2d(img, p(a + "sr.weight"), p(a + "sr.bias"), stride=sr)
                kv = layer_norm(red.flatten(2).permute(0, 2, 1), p(a + "layer_norm.weight"),
                                p(a + "layer_norm.bias"))
            q = h @ p(a + "query.weight").T + p(a + "query.bias")
            kk = kv @ p(a + "key.weight").T + p(a + "key.bias")
            v = kv @ p(a + "value.weight").T + p(a + "value.bias")
            ctx = torch.empty_like(q)
            for hd in range(heads):
                s = slice(hd * d, (hd + 1) * d)
                scores = torch.einsum("bnd,bmd->bnm", q[..., s], kk[..., s]) / math.sqrt(d)
                probs = torch.exp(scores - scores.amax(-1, keepdim=True))
                ctx[..., s] = (probs / probs.sum(-1, keepdim=True)) @ v[..., s]
            t = t + ctx @ p(pre + "attention.output.dense.weight").T + p(pre + "attention.output.dense.bias")
            h = layer_norm(t, p(pre + "layer_norm_2.weight"), p(pre + "layer_norm_2.bias"))
            h = h @ p(pre + "mlp.dense1.weight").T + p(pre + "mlp.dense1.bias")
            img = h.permute(0, 2, 1).reshape(B, -1, H, W)
            img = torch.nn.functional.conv2d(img, p(pre + "mlp.dwconv.dwconv.weight"),
                                             p(pre + "mlp.dwconv.dwconv.bias"), padding=1, groups=img.shape[1])
            h = img.flatten(2).permute(0, 2, 1)
            h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
            t = t + h @ p(pre + "mlp.dense2.weight").T + p(pre + "mlp.dense2.bias")
        pre = f"segformer.encoder.layer_norm.{i}."
        t = layer_norm(t, p(pre + "weight"), p(pre + "bias"))
        x = t.permute(0, 2, 1).reshape(B, C, H, W)
        stages.append(x)

    H1, W1 = stages[0].shape[2:]
    ups = []
    for i, s in enumerate(stages):
        pre = f"decode_head.linear_c.{i}.proj."
        B, C, H, W = s.shape
        tok = s.flatten(2).permute(0, 2, 1) @ p(pre + "weight").T + p(pre + "bias")
        ups.append(bilinear(tok.permute(0, 2, 1).reshape(B, -1, H, W), H1, W1))
    fused = torch.einsum("oc,bchw->bohw", p("decode_head.linear_fuse.weight")[:, :, 0, 0], torch.cat(ups[::-1], 1))
    if train:
        mean = fused.mean((0, 2, 3))
        var = fused.var((0, 2, 3), unbiased=False)
    else:
        mean, var = p("decode_head.batch_norm.running_mean"), p("decode_head.batch_norm.running_var")
    y = (fused - mean[:, None, None]) / torch.sqrt(var[:, None, None] + 1e-5)
    y = y * p("decode_head.batch_norm.weight")[:, None, None] + p("decode_head.batch_norm.bias")[:, None, None]
    y = y.clamp(min=0)
    logits = torch.einsum("oc,bchw->bohw", p("decode_head.classifier.weight")[:, :, 0, 0], y)
    return logits + p("decode_head.classifier.bias")[:, None, None], stages


def oracle_cross_entropy(logits, labels, ignore):
    up = bilinear(logits, *labels.shape[-2:])
    logp = up - torch.logsumexp(up, 1, keepdim=True)
    valid = labels != ignore
    picked = logp.gather(1, labels.clamp(0, logits.shape[1] - 1)[:, None])[:, 0]
    return -(picked * valid).sum() / valid.sum()


# ---- tests ---------------------------------------------------------------------------------------

class TestSegformerRef(unittest.TestCase):
    def test_parameter_counts(self):
        want = {("b0", 150): 3_752_694, ("b1", 150): 13_715_798, ("b2", 150): 27_461_974,
                ("b3", 150): 47_337_814, ("b0", 35): 3_723_139}
        for (variant, labels), n in want.items():
            model = SegformerForSemanticSegmentation(SegformerConfig.variant(variant, num_labels=labels))
            self.assertEqual(count_parameters(model), n, (variant, labels))

    def test_b0_state_dict_keys_and_shapes(self):
        cfg = SegformerConfig.variant("b0", num_labels=150)
        want = {}
        cin = 3
        for i, (c, k, sr) in enumerate(zip(cfg.hidden_sizes, cfg.patch_sizes, cfg.sr_ratios)):
            e = f"segformer.encoder.patch_embeddings.{i}."
            want.update({e + "proj.weight": [c, cin, k, k], e + "proj.bias": [c],
                         e + "layer_norm.weight": [c], e + "layer_norm.bias": [c],
                         f"segformer.encoder.layer_norm.{i}.weight": [c],
                         f"segformer.encoder.layer_norm.{i}.bias": [c],
                         f"decode_head.linear_c.{i}.proj.weight": [256, c],
                         f"decode_head.linear_c.{i}.proj.bias": [256]})
            for j in range(2):
                b = f"segformer.encoder.block.{i}.{j}."
                for n in ("layer_norm_1", "layer_norm_2"):
                    want.update({b + n + ".weight": [c], b + n + ".bias": [c]})
                for n in ("attention.self.query", "attention.self.key", "attention.self.value",
                          "attention.output.dense"):
                    want.update({b + n + ".weight": [c, c], b + n + ".bias": [c]})
                if sr > 1:
                    want.update({b + "attention.self.sr.weight": [c, c, sr, sr], b + "attention.self.sr.bias": [c],
                                 b + "attention.self.layer_norm.weight": [c],
                                 b + "attention.self.layer_norm.bias": [c]})
                want.update({b + "mlp.dense1.weight": [4 * c, c], b + "mlp.dense1.bias": [4 * c],
                             b + "mlp.dwconv.dwconv.weight": [4 * c, 1, 3, 3], b + "mlp.dwconv.dwconv.bias": [4 * c],
                             b + "mlp.dense2.weight": [c, 4 * c], b + "mlp.dense2.bias": [c]})
            cin = c
        want.update({"decode_head.linear_fuse.weight": [256, 1024, 1, 1],
                     "decode_head.classifier.weight": [150, 256, 1, 1], "decode_head.classifier.bias": [150],
                     "decode_head.batch_norm.num_batches_tracked": []})
        for n in ("weight", "bias", "running_mean", "running_var"):
            want[f"decode_head.batch_norm.{n}"] = [256]
        got = {k: list(v.shape) for k, v in SegformerForSemanticSegmentation(cfg).state_dict().items()}
        self.assertEqual(len(got), 208)
        self.assertEqual(got, want)

    def test_config_json(self):
        cfg = SegformerConfig.variant("b2", id2label={0: "road", 1: "sky"}, semantic_loss_ignore_index=0)
        text = cfg.to_json()
        d = json.loads(text)
        self.assertEqual(d["id2label"], {"0": "road", "1": "sky"})
        self.assertEqual(d["label2id"], {"road": 0, "sky": 1})
        self.assertNotIn("num_labels", d)
        self.assertEqual(d["model_type"], "segformer")
        self.assertEqual(SegformerConfig.from_json(text), cfg)
        hub_style = dict(d, transformers_version="4.12.0", downsampling_rates=[1, 4, 8, 16], image_size=224)
        self.assertEqual(SegformerConfig.from_dict(hub_style), cfg)
        self.assertEqual(SegformerConfig(num_labels=3).id2label, {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"})
        with self.assertRaises(ValueError):
            SegformerConfig(hidden_sizes=[32, 64, 161, 256])  # 161 channels, 5 heads

    def test_forward_matches_functional_oracle(self):
        torch.manual_seed(0)
        cfg = SegformerConfig(**TINY)
        model = SegformerForSemanticSegmentation(cfg).double()
        randomize_nontrivial(model, 1)
        sd = model.state_dict()
        pixels = torch.randn(2, 3, 45, 61, dtype=torch.float64)
        labels = torch.randint(0, 5, (2, 45, 61))
        labels[:, :10] = 255
        for train in (False, True):
            model.train(train)
            with torch.no_grad():
                r = model(pixels, labels)
            logits, stages = oracle_forward(sd, cfg, pixels, train)
            self.assertEqual(list(r.logits.shape), [2, 5, 12, 16])
            for got, want in zip(r.hidden_states, stages):
                torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
            torch.testing.assert_close(r.logits, logits, rtol=0, atol=1e-10)
            torch.testing.assert_close(r.loss, oracle_cross_entropy(logits, labels, 255), rtol=0, atol=1e-12)
            self.assertGreater(r.logits.std().item(), 0.3)  # well-scaled, non-degenerate outputs

    def test_binary_loss_averages_over_all_pixels(self):
        logits = torch.randn(2, 1, 4, 5)  # float32: HF casts the labels with .float()
        labels = torch.randint(0, 2, (2, 7, 9))
        labels[0, 0] = 255
        up = bilinear(logits.double(), 7, 9)[:, 0]
        y = labels.double()
        per_pixel = torch.clamp(up, min=0) - up * y + torch.log1p(torch.exp(-up.abs()))
        want = (per_pixel * (labels != 255)).sum() / labels.numel()
        torch.testing.assert_close(semantic_segmentation_loss(logits, labels).double(), want, rtol=0, atol=1e-6)

    def test_drop_path(self):
        cfg = SegformerConfig.variant("b0")
        model = SegformerForSemanticSegmentation(cfg)
        rates = [layer.drop_path.drop_prob for stage in model.segformer.encoder.block for layer in stage[1:]]
        self.assertEqual(len(rates), 4)
        self.assertAlmostEqual(rates[-1], 0.1)
        self.assertIsInstance(model.segformer.encoder.block[0][0].drop_path, torch.nn.Identity)
        dp = model.segformer.encoder.block[3][1].drop_path
        x = torch.ones(1000, 3)
        self.assertTrue(torch.equal(dp.eval()(x), x))
        y = dp.train()(x)
        self.assertTrue(((y == 0) | (y == x / 0.9)).all())
        self.assertTrue(torch.equal(y[:, 0:1].expand(-1, 3), y))  # one draw per sample

    def test_init_and_randomize(self):
        model = SegformerForSemanticSegmentation(SegformerConfig(**TINY))
        init_weights_like_hf(model)
        self.assertAlmostEqual(model.decode_head.classifier.weight.std().item(), 0.02, delta=0.01)
        self.assertEqual(model.segformer.encoder.layer_norm[0].weight.sum().item(), 8)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        randomize_nontrivial(model, 3)
        for k, v in model.state_dict().items():
            self.assertFalse(torch.equal(v, before[k]), k)
        self.assertEqual(model.decode_head.batch_norm.num_batches_tracked.item(), 7)
        self.assertGreater(model.decode_head.batch_norm.running_var.min().item(), 0.4)


if __name__ == "__main__":
    torch.set_num_threads(1)
    unittest.main()
