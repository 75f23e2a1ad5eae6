#!/usr/bin/python3
"""Self-test of tools/convert_weights.py (run: /usr/bin/python3 tools/test_convert_weights.py).

For every layout (HF .bin, bare SegformerModel .bin, NVlabs full and backbone-only, mmseg 1.x),
a tiny checkpoint is fabricated from one reference model (tools/fixtures/convert.py), converted, and
  * the converted state dict loads with strict=True into tools/segformer_ref.py's model (full models),
    or loads all encoder keys with only decode_head.* missing (encoder-only ones);
  * the converted model gives the logits / stage outputs of the checkpoint evaluated in its *own*
    layout by an independent forward (NVlabs: fused kv split by reshape, cat [c4, c3, c2, c1];
    mmseg: torch's nn.MultiheadAttention and 1x1 convs), and the source model's logits.
A tiny HF CLIPSeg pytorch_model.bin folder (tools/make_clipseg_checkpoint.py --format bin, with the
`position_ids` buffers older files carry) converts to a model.safetensors whose tensors equal the
source's bit for bit and whose logits equal the source model's; a misshaped or missing tensor, and a
missing config.json, are refused with the key / file named.
"""
import json
import os
import sys
import tempfile
import unittest

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import convert_weights  # noqa: E402
import st  # noqa: E402
from fixtures import convert as fx  # noqa: E402
from segformer_ref import SegformerConfig, SegformerForSemanticSegmentation  # noqa: E402

ATOL = 1e-5  # float32 forwards with different operation orders (e.g. MultiheadAttention's pre-scaled q)


def load_converted(folder):
    tensors, meta = st.load(os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "config.json")) as f:
        doc = json.load(f)
    return {k: torch.from_numpy(v) for k, v in tensors.items()}, meta, doc


class ConvertWeightsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        torch.set_num_threads(1)
        cls.tmp = tempfile.TemporaryDirectory()
        cls.model = fx.reference_model()
        cls.pixels = fx.pixel_values()
        cls.paths = fx.write_all(cls.tmp.name, cls.model)
        with torch.no_grad():
            out = cls.model(cls.pixels)
        cls.logits, cls.hidden = out.logits, out.hidden_states

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def convert(self, name, *flags):
        out = os.path.join(self.tmp.name, "out_" + name)
        convert_weights.main([self.paths[name], "--output", out, *flags])
        return load_converted(out)

    def strict_model(self, sd, doc):
        config = SegformerConfig.from_dict(doc)
        model = SegformerForSemanticSegmentation(config).eval()
        model.load_state_dict(sd, strict=True)
        return model

    def check_full(self, name, want_logits):
        sd, meta, doc = self.convert(name)
        self.assertEqual(meta, {"format": "pt"})
        self.assertEqual(sd["decode_head.batch_norm.num_batches_tracked"].dtype, torch.int64)
        self.assertEqual(tuple(sd["decode_head.batch_norm.num_batches_tracked"].shape), ())
        model = self.strict_model(sd, doc)
        with torch.no_grad():
            got = model(self.pixels).logits
        diff = (got - want_logits).abs().max().item()
        print(f"\n  {name}: {len(sd)} tensors, strict load OK, max |logits - original| = {diff:.3g}", end="")
        self.assertLessEqual(diff, ATOL)
        return sd, doc

    def test_hf_bin(self):
        sd, doc = self.check_full("hf", self.logits)
        self.assertEqual(doc["hidden_sizes"], fx.CONFIG.hidden_sizes)
        for k, v in self.model.state_dict().items():
            self.assertTrue(torch.equal(sd[k], v), k)

    def test_nvlabs_full_against_the_original_forward(self):
        nv = torch.load(self.paths["nvlabs"])["state_dict"]
        with torch.no_grad():
            _, original = fx.nvlabs_forward(nv, self.pixels)
        self.assertLessEqual((original - self.logits).abs().max().item(), ATOL)  # the fabrication is faithful
        sd, doc = self.check_full("nvlabs", original)
        self.assertEqual(doc["depths"], fx.CONFIG.depths)
        self.assertEqual(doc["sr_ratios"], [8, 4, 2, 1])
        self.assertEqual(doc["decoder_hidden_size"], fx.CONFIG.decoder_hidden_size)
        self.assertEqual(len(doc["id2label"]), fx.CONFIG.num_labels)
        self.assertNotIn("decode_head.conv_seg.weight", sd)

    def test_nvlabs_backbone_is_an_image_classification_checkpoint(self):
        sd, _, doc = self.convert("nvlabs_backbone")
        self.assertEqual(doc["architectures"], ["SegformerForImageClassification"])
        self.assertEqual(len(doc["id2label"]), fx.IMAGENET_CLASSES)
        self.assertEqual(tuple(sd["classifier.weight"].shape), (fx.IMAGENET_CLASSES, fx.CONFIG.hidden_sizes[-1]))
        self.check_encoder(sd, fx.nvlabs_forward(torch.load(self.paths["nvlabs_backbone"]), self.pixels)[0], "nvlabs_backbone")

    def test_mmseg_backbone_against_torch_multihead_attention(self):
        mm = torch.load(self.paths["mmseg"])["state_dict"]
        with torch.no_grad():
            original = fx.mmseg_backbone_forward(mm, self.pixels)
        sd, _, doc = self.convert("mmseg")
        self.assertFalse(any(k.startswith("decode_head.") for k in sd))
        self.assertEqual(doc["architectures"], ["SegformerModel"])
        self.check_encoder(sd, original, "mmseg")

    def test_bare_segformer_model(self):
        sd, _, _ = self.convert("hf_bare")
        self.check_encoder(sd, self.hidden, "hf_bare")

    def test_overrides(self):
        labels = os.path.join(self.tmp.name, "labels.json")
        with open(labels, "w") as f:
            json.dump({str(i): f"class_{i}" for i in range(fx.CONFIG.num_labels)}, f)
        _, _, doc = self.convert("nvlabs", "--id2label", labels)
        self.assertEqual(doc["id2label"]["4"], "class_4")
        with self.assertRaises(SystemExit):  # 7 labels for a 5-class head
            self.convert("nvlabs", "--num-labels", "7")

    def check_encoder(self, sd, want_hidden, name):
        model = SegformerForSemanticSegmentation(fx.CONFIG).eval()
        result = model.load_state_dict({k: v for k, v in sd.items() if not k.startswith("classifier.")}, strict=False)
        self.assertEqual(result.unexpected_keys, [])
        self.assertTrue(all(k.startswith("decode_head.") for k in result.missing_keys), result.missing_keys)
        with torch.no_grad():
            got = model(self.pixels).hidden_states
        diff = max((g - w).abs().max().item() for g, w in zip(got, want_hidden))
        print(f"\n  {name}: {len(sd)} tensors, encoder loads, max |stage outputs - original| = {diff:.3g}", end="")
        self.assertLessEqual(diff, ATOL)


class ConvertClipsegTest(unittest.TestCase):
    def setUp(self):
        import make_clipseg_checkpoint as mk
        torch.set_num_threads(1)
        self.tmp = tempfile.TemporaryDirectory()
        self.src = os.path.join(self.tmp.name, "src")
        self.model = mk.build("tiny", 3)
        mk.write(self.model, self.src, "bin")
        with open(os.path.join(self.src, "vocab.json"), "w") as f:
            f.write("{}")
        self.bin = os.path.join(self.src, "pytorch_model.bin")
        sd = torch.load(self.bin)  # older Hub files also carry the position_ids buffers
        sd["clip.text_model.embeddings.position_ids"] = torch.arange(16)[None]
        sd["clip.vision_model.embeddings.position_ids"] = torch.arange(17)[None]
        torch.save(sd, self.bin)

    def tearDown(self):
        self.tmp.cleanup()

    def test_bin_to_safetensors(self):
        from clipseg_ref import CLIPSegConfig, CLIPSegForImageSegmentation
        out = os.path.join(self.tmp.name, "out")
        convert_weights.main([self.bin, "--output", out])
        sd, meta, doc = load_converted(out)
        self.assertEqual(meta, {"format": "pt"})
        want = self.model.state_dict()
        self.assertEqual(sorted(sd), sorted(want))
        for k, v in want.items():
            self.assertTrue(torch.equal(sd[k], v), k)
        with open(os.path.join(self.src, "config.json")) as f:
            self.assertEqual(doc, json.load(f))
        self.assertTrue(os.path.exists(os.path.join(out, "preprocessor_config.json")))
        self.assertTrue(os.path.exists(os.path.join(out, "vocab.json")))
        model = CLIPSegForImageSegmentation(CLIPSegConfig.from_dict(doc)).eval()
        model.load_state_dict(sd, strict=True)
        px, ids = torch.randn(2, 3, 64, 64), torch.tensor([[98, 5, 99], [98, 6, 99]])
        with torch.no_grad():
            self.assertTrue(torch.equal(model.logits(px, ids), self.model.logits(px, ids)))

    def test_refusals(self):
        sd = torch.load(self.bin)
        sd["decoder.film_mul.weight"] = sd["decoder.film_mul.weight"][:, :5]
        del sd["decoder.reduces.2.bias"]
        torch.save(sd, self.bin)
        with self.assertRaises(SystemExit) as e:
            convert_weights.main([self.bin, "--output", os.path.join(self.tmp.name, "bad")])
        self.assertIn("missing decoder.reduces.2.bias", str(e.exception))
        self.assertIn("decoder.film_mul.weight: (16, 5) in the checkpoint, (16, 24)", str(e.exception))
        os.remove(os.path.join(self.src, "config.json"))
        with self.assertRaisesRegex(SystemExit, "needs its config.json"):
            convert_weights.main([self.bin, "--output", os.path.join(self.tmp.name, "bad")])


if __name__ == "__main__":
    unittest.main(verbosity=2)
