"""PyTorch reference of HF transformers' CLIPSegForImageSegmentation, for segml's CLIPSeg fixtures and peers.

`transformers` is not installable here, so this module re-implements the model from the semantics of HF's
modeling_clipseg.py / configuration_clipseg.py (read, not copied; see docs/reference-model.md, "CLIPSeg").

Guarantees:
  * the module tree, hence every state-dict key and shape, is HF's (`clip.text_model…`, `clip.vision_model…`,
    `clip.{visual,text}_projection.weight`, `clip.logit_scale`, `decoder.…`); the `position_ids` index
    buffers are non-persistent as in current HF, and `load_hf_state_dict` drops them when an older
    checkpoint carries them;
  * `CLIPSegConfig.from_dict` reads an HF config.json dict (nested text_config / vision_config, HF's
    defaults for absent fields, the legacy text_config_dict / vision_config_dict merged as HF does,
    unknown fields kept and written back by `to_dict`);
  * the forward follows HF's order: pre-norm CLIP layers with quick_gelu; causal + padding masks in the
    text tower (additive, finfo(dtype).min as HF); EOS pooling by HF's two rules (text eos_token_id == 2:
    argmax of input_ids; otherwise the first position equal to eos_token_id); the vision position table
    resized bicubic (align_corners=False, class row kept) to the input's patch grid unless the grid equals
    the stored one and the input is square (then the table is used as is, as HF; the resize would be the
    identity anyway); hidden_states[i + 1] for i in extract_layers; the decoder over the activations in
    reverse order with `reduces`, FiLM at `conditional_layer`, POST-norm decoder layers whose MLP uses ReLU
    whatever the config says (HF overrides the copied vision config), the class token dropped, the square
    reshape, the transposed-convolution head, `.squeeze(1)`; conditional embeddings = text_projection of the
    pooled text output (not normalised);
  * beyond HF, `non_square=True` reshapes the decoder tokens to the (H // patch, W // patch) grid, so
    non-square inputs work; on square inputs it gives exactly HF's result (checked by the self-test).
Differences from HF that do not change float32 results: the attention softmax runs in the input dtype (HF
runs it in float32 and casts back), so a float64 model stays float64 throughout (the fixtures need that).
Does not implement: image prompts (conditional_pixel_values), the contrastive CLIPSegModel.forward, the
BCE loss, attention outputs, gradient checkpointing, dropout (every dropout rate is 0 in the checkpoints).

`forward` returns every stage (vision hidden states, extract-layer activations, pooled and projected
outputs of both towers, each decoder layer's output, logits). `hf_way` runs prompts one (image, prompt)
pair per call with the vision tower rerun each time, as HF's pipeline does; bench/peers uses it.

Run with Debian's interpreter (torch 1.13): /usr/bin/python3.
"""
import copy
import json
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------

TEXT_DEFAULTS = dict(  # CLIPSegTextConfig (and PretrainedConfig's token ids as CLIPSegTextConfig sets them)
    vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
    max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, attention_dropout=0.0,
    initializer_range=0.02, initializer_factor=1.0, pad_token_id=1, bos_token_id=49406, eos_token_id=49407)
VISION_DEFAULTS = dict(  # CLIPSegVisionConfig
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, num_channels=3,
    image_size=224, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5, attention_dropout=0.0,
    initializer_range=0.02, initializer_factor=1.0)
TOP_DEFAULTS = dict(  # CLIPSegConfig
    projection_dim=512, logit_scale_init_value=2.6592, extract_layers=[3, 6, 9], reduce_dim=64,
    decoder_num_attention_heads=4, decoder_attention_dropout=0.0, decoder_hidden_act="quick_gelu",
    decoder_intermediate_size=2048, conditional_layer=0, use_complex_transposed_convolution=False)


class SubConfig:
    """Attribute view of one tower's config dict (defaults filled in; unknown keys kept)."""

    def __init__(self, values: dict, defaults: dict, model_type: str):
        self.__dict__.update(copy.deepcopy(defaults))
        self.__dict__.update(copy.deepcopy(values))
        self.model_type = model_type

    def to_dict(self) -> dict:
        return dict(sorted(self.__dict__.items()))


class CLIPSegConfig:
    """HF `CLIPSegConfig`: top-level fields, `text_config`, `vision_config` (SubConfig each)."""

    def __init__(self, **kwargs):
        kwargs = copy.deepcopy(kwargs)
        text = kwargs.pop("text_config", None) or {}
        vision = kwargs.pop("vision_config", None) or {}
        # Legacy files carry text_config_dict / vision_config_dict; HF lets their values win.
        text = {**text, **(kwargs.pop("text_config_dict", None) or {})}
        vision = {**vision, **(kwargs.pop("vision_config_dict", None) or {})}
        self.text_config = SubConfig(text, TEXT_DEFAULTS, "clipseg_text_model")
        self.vision_config = SubConfig(vision, VISION_DEFAULTS, "clipseg_vision_model")
        values = {**TOP_DEFAULTS, **kwargs}
        for k, v in values.items():
            setattr(self, k, v)
        self.extract_layers = list(self.extract_layers)
        self.validate()

    def validate(self):
        t, v = self.text_config, self.vision_config
        for name, c in (("text_config", t), ("vision_config", v)):
            if c.hidden_size % c.num_attention_heads:
                raise ValueError(f"{name}.hidden_size {c.hidden_size} is not a multiple of "
                                 f"num_attention_heads {c.num_attention_heads}")
        if self.reduce_dim % self.decoder_num_attention_heads:
            raise ValueError(f"reduce_dim {self.reduce_dim} is not a multiple of decoder_num_attention_heads "
                             f"{self.decoder_num_attention_heads}")
        for i in self.extract_layers:
            if not 0 <= i < v.num_hidden_layers:
                raise ValueError(f"extract_layers entry {i} is outside [0, {v.num_hidden_layers}) "
                                 f"(vision_config.num_hidden_layers)")
        if self.use_complex_transposed_convolution and v.patch_size // 4 < 1:
            raise ValueError(f"use_complex_transposed_convolution needs vision_config.patch_size >= 4, "
                             f"got {v.patch_size}")

    @classmethod
    def from_dict(cls, d: dict) -> "CLIPSegConfig":
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "CLIPSegConfig":
        return cls.from_dict(json.loads(text))

    def to_dict(self) -> dict:
        """config.json content as HF writes a CLIPSegConfig (every field, nested configs in full)."""
        d = {k: v for k, v in self.__dict__.items() if k not in ("text_config", "vision_config")}
        d["text_config"] = self.text_config.to_dict()
        d["vision_config"] = self.vision_config.to_dict()
        d.setdefault("architectures", ["CLIPSegForImageSegmentation"])
        d["model_type"] = "clipseg"
        d.setdefault("initializer_factor", 1.0)
        d.setdefault("torch_dtype", "float32")
        return dict(sorted(d.items()))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def decoder_layer_config(self) -> SubConfig:
        """HF's decoder layers take a copy of vision_config with these four fields replaced (the
        activation is always ReLU, whatever decoder_hidden_act says)."""
        return SubConfig(dict(self.vision_config.to_dict(), hidden_size=self.reduce_dim,
                              num_attention_heads=self.decoder_num_attention_heads,
                              intermediate_size=self.decoder_intermediate_size, hidden_act="relu"),
                         {}, "clipseg_vision_model")


# Real sizes of CIDAS/clipseg-rd64-refined (ViT-B/16 vision tower, CLIP text tower, rd64, refined head).
# The Hub file keeps text eos_token_id 2 (HF's legacy pooling rule) and bos 0 / pad 1 as PretrainedConfig
# wrote them when the checkpoint was converted.
RD64_REFINED = dict(
    text_config=dict(bos_token_id=0, eos_token_id=2, pad_token_id=1),
    vision_config=dict(patch_size=16),
    use_complex_transposed_convolution=True)


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------

def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def activation(name: str):
    if name == "quick_gelu":
        return quick_gelu
    if name == "relu":
        return F.relu
    if name == "gelu":
        return F.gelu  # erf form
    raise NotImplementedError(f"hidden_act {name!r}: only quick_gelu, relu and gelu are implemented")


class CLIPSegAttention(nn.Module):
    """Multi-head self-attention; scores = (q k^T) * head_dim^-0.5 + additive mask."""

    def __init__(self, config: SubConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scale = self.head_dim ** -0.5
        dim = config.hidden_size
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x, mask=None):  # x (B, N, C); mask (B or 1, 1, N, N) additive or None
        b, n, c = x.shape

        def heads(t):  # (B, N, C) -> (B, heads, N, head_dim)
            return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale
        if mask is not None:
            scores = scores + mask
        context = torch.matmul(scores.softmax(dim=-1), v).transpose(1, 2).reshape(b, n, c)
        return self.out_proj(context)


class CLIPSegMLP(nn.Module):
    def __init__(self, config: SubConfig):
        super().__init__()
        self.act = activation(config.hidden_act)
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class CLIPSegEncoderLayer(nn.Module):
    """CLIP layer, PRE-norm: x += attn(ln1(x)); x += mlp(ln2(x))."""

    def __init__(self, config: SubConfig):
        super().__init__()
        self.self_attn = CLIPSegAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CLIPSegMLP(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x, mask=None):
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPSegDecoderLayer(nn.Module):
    """Decoder layer, POST-norm: x = ln1(x + attn(x)); x = ln2(x + mlp(x)); no mask."""

    def __init__(self, config: SubConfig):
        super().__init__()
        self.self_attn = CLIPSegAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CLIPSegMLP(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x):
        x = self.layer_norm1(x + self.self_attn(x))
        return self.layer_norm2(x + self.mlp(x))


class CLIPSegEncoder(nn.Module):
    def __init__(self, config: SubConfig):
        super().__init__()
        self.layers = nn.ModuleList([CLIPSegEncoderLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, x, mask=None):
        """Returns HF's hidden_states tuple: the input, then every layer's output."""
        states = [x]
        for layer in self.layers:
            x = layer(x, mask)
            states.append(x)
        return states


# --------------------------------------------------------------------------------------------------
# Text tower
# --------------------------------------------------------------------------------------------------

class CLIPSegTextEmbeddings(nn.Module):
    def __init__(self, config: SubConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.register_buffer("position_ids", torch.arange(config.max_position_embeddings).expand((1, -1)),
                             persistent=False)

    def forward(self, input_ids):
        n = input_ids.shape[-1]
        if n > self.position_embedding.num_embeddings:
            raise ValueError(f"input_ids has {n} tokens, more than max_position_embeddings "
                             f"{self.position_embedding.num_embeddings}")
        return self.token_embedding(input_ids) + self.position_embedding(self.position_ids[:, :n])


def text_attention_mask(attention_mask, batch: int, n: int, dtype):
    """HF's additive mask: finfo.min above the diagonal (causal) plus finfo.min on padded keys
    (attention_mask == 0); the two add up (to -inf in float32/64) where both apply."""
    lowest = torch.finfo(dtype).min
    causal = torch.full((n, n), lowest, dtype=dtype).triu(1)[None, None].expand(batch, 1, n, n)
    if attention_mask is None:
        return causal
    pad = (1.0 - attention_mask.to(dtype))[:, None, None, :].expand(batch, 1, n, n)
    pad = pad.masked_fill(pad.bool(), lowest)
    return pad + causal


def eos_positions(input_ids, eos_token_id: int):
    """HF's pooling index per sequence: eos_token_id == 2 (configs converted before HF's fix) takes the
    first argmax of the ids; any other value takes the first position equal to eos_token_id (0 if none)."""
    ids = input_ids.to(torch.int)
    if eos_token_id == 2:
        return ids.argmax(dim=-1)
    return (ids == eos_token_id).int().argmax(dim=-1)


class CLIPSegTextTransformer(nn.Module):
    def __init__(self, config: SubConfig):
        super().__init__()
        self.config = config
        self.embeddings = CLIPSegTextEmbeddings(config)
        self.encoder = CLIPSegEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids, attention_mask=None):
        """Returns (last_hidden_state after final_layer_norm (B, L, C), pooled (B, C))."""
        x = self.embeddings(input_ids)
        b, n, _ = x.shape
        mask = text_attention_mask(attention_mask, b, n, x.dtype)
        last = self.final_layer_norm(self.encoder(x, mask)[-1])
        pooled = last[torch.arange(b), eos_positions(input_ids, self.config.eos_token_id)]
        return last, pooled


# --------------------------------------------------------------------------------------------------
# Vision tower
# --------------------------------------------------------------------------------------------------

class CLIPSegVisionEmbeddings(nn.Module):
    def __init__(self, config: SubConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.class_embedding = nn.Parameter(torch.zeros(config.hidden_size))
        self.patch_embedding = nn.Conv2d(config.num_channels, config.hidden_size, config.patch_size,
                                         stride=config.patch_size, bias=False)
        self.num_positions = (config.image_size // config.patch_size) ** 2 + 1
        self.position_embedding = nn.Embedding(self.num_positions, config.hidden_size)
        self.register_buffer("position_ids", torch.arange(self.num_positions).expand((1, -1)), persistent=False)

    def position_table(self, height: int, width: int):
        """(1, 1 + gh*gw, C) for an input of height x width pixels: the stored table when the grid
        matches and the input is square (HF's shortcut), else the class row + the patch rows resized
        bicubic (align_corners=False) from the stored square grid to (height // p, width // p)."""
        table = self.position_embedding.weight
        gh, gw = height // self.patch_size, width // self.patch_size
        if gh * gw == self.num_positions - 1 and height == width:
            return table[None]
        side = int(math.isqrt(self.num_positions - 1))
        dim = table.shape[1]
        grid = table[1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
        return torch.cat([table[None, :1], grid.permute(0, 2, 3, 1).reshape(1, gh * gw, dim)], dim=1)

    def forward(self, pixel_values):
        b, _, h, w = pixel_values.shape
        patches = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)  # (B, gh*gw, C)
        cls = self.class_embedding.expand(b, 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_table(h, w)


class CLIPSegVisionTransformer(nn.Module):
    def __init__(self, config: SubConfig):
        super().__init__()
        self.embeddings = CLIPSegVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # HF's spelling
        self.encoder = CLIPSegEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values):
        """Returns (hidden_states list: pre_layrnorm(embeddings), then each layer's output;
        pooled = post_layernorm(class token of the last layer))."""
        states = self.encoder(self.pre_layrnorm(self.embeddings(pixel_values)))
        return states, self.post_layernorm(states[-1][:, 0, :])


class CLIPSegModel(nn.Module):
    def __init__(self, config: CLIPSegConfig):
        super().__init__()
        self.text_model = CLIPSegTextTransformer(config.text_config)
        self.vision_model = CLIPSegVisionTransformer(config.vision_config)
        self.visual_projection = nn.Linear(config.vision_config.hidden_size, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))


# --------------------------------------------------------------------------------------------------
# Decoder
# --------------------------------------------------------------------------------------------------

class CLIPSegDecoder(nn.Module):
    def __init__(self, config: CLIPSegConfig):
        super().__init__()
        self.conditional_layer = config.conditional_layer
        self.patch_size = config.vision_config.patch_size
        rd = config.reduce_dim
        self.film_mul = nn.Linear(config.projection_dim, rd)
        self.film_add = nn.Linear(config.projection_dim, rd)
        if config.use_complex_transposed_convolution:
            k = config.vision_config.patch_size // 4
            self.transposed_convolution = nn.Sequential(
                nn.Conv2d(rd, rd, kernel_size=3, padding=1), nn.ReLU(),
                nn.ConvTranspose2d(rd, rd // 2, kernel_size=k, stride=k), nn.ReLU(),
                nn.ConvTranspose2d(rd // 2, 1, kernel_size=k, stride=k))
        else:
            p = config.vision_config.patch_size
            self.transposed_convolution = nn.ConvTranspose2d(rd, 1, p, stride=p)
        depth = len(config.extract_layers)
        self.reduces = nn.ModuleList([nn.Linear(config.vision_config.hidden_size, rd) for _ in range(depth)])
        layer_config = config.decoder_layer_config()
        self.layers = nn.ModuleList([CLIPSegDecoderLayer(layer_config) for _ in range(depth)])

    def forward(self, activations, conditional_embeddings, grid=None, trace=None):
        """activations: the extract-layer hidden states in extract_layers order, each (B, 1 + N, C_vision);
        conditional_embeddings (B, projection_dim). grid None: HF's square reshape (side = isqrt(N));
        else (gh, gw). Returns logits (B, gh * s, gw * s); `trace`, a list, receives each layer's output."""
        out = None
        for i, (act, layer, reduce) in enumerate(zip(activations[::-1], self.layers, self.reduces)):
            out = reduce(act) if out is None else reduce(act) + out
            if i == self.conditional_layer:
                out = self.film_mul(conditional_embeddings)[:, None, :] * out \
                    + self.film_add(conditional_embeddings)[:, None, :]
            out = layer(out)
            if trace is not None:
                trace.append(out)
        tokens = out[:, 1:, :].permute(0, 2, 1)  # drop the class token -> (B, rd, N)
        n = tokens.shape[2]
        if grid is None:
            side = int(math.sqrt(n))
            if side * side != n:
                raise ValueError(f"HF's decoder reshapes {n} patch tokens to a square grid, which does not exist "
                                 f"(non-square input); pass non_square=True")
            grid = (side, side)
        maps = tokens.reshape(tokens.shape[0], tokens.shape[1], grid[0], grid[1])
        return self.transposed_convolution(maps).squeeze(1)


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------

@dataclass
class CLIPSegStages:
    """Every stage of one forward. B = batch (one image per prompt, as HF), N = patch tokens."""
    vision_hidden_states: List[torch.Tensor]      # 1 + num_hidden_layers tensors, each (B, 1 + N, C_v)
    activations: List[torch.Tensor]               # hidden_states[i + 1] for i in extract_layers
    position_embeddings: torch.Tensor             # (1, 1 + N, C_v), as added to the embeddings
    vision_pooled: torch.Tensor                   # (B, C_v) post_layernorm(class token)
    image_embeds: torch.Tensor                    # (B, projection_dim) visual_projection(vision_pooled)
    text_last_hidden_state: torch.Tensor          # (B, L, C_t) after final_layer_norm
    text_pooled: torch.Tensor                     # (B, C_t) at the EOS position
    conditional_embeddings: torch.Tensor          # (B, projection_dim) text_projection(text_pooled)
    decoder_layers: List[torch.Tensor] = field(default_factory=list)  # each (B, 1 + N, reduce_dim)
    logits: Optional[torch.Tensor] = None         # (B, gh * patch, gw * patch)


class CLIPSegForImageSegmentation(nn.Module):
    def __init__(self, config: CLIPSegConfig):
        super().__init__()
        self.config = config
        self.clip = CLIPSegModel(config)
        self.decoder = CLIPSegDecoder(config)

    def vision(self, pixel_values):
        """(hidden_states, activations, pooled) of the vision tower."""
        states, pooled = self.clip.vision_model(pixel_values)
        return states, [states[i + 1] for i in self.config.extract_layers], pooled

    def text(self, input_ids, attention_mask=None):
        """(last_hidden_state, pooled, conditional_embeddings)."""
        last, pooled = self.clip.text_model(input_ids, attention_mask)
        return last, pooled, self.clip.text_projection(pooled)

    def decoder_grid(self, pixel_values, non_square: bool):
        p = self.config.vision_config.patch_size
        return (pixel_values.shape[2] // p, pixel_values.shape[3] // p) if non_square else None

    def forward(self, pixel_values, input_ids, attention_mask=None, non_square: bool = False) -> CLIPSegStages:
        """pixel_values (B, 3, H, W), input_ids / attention_mask (B, L): one image per prompt, as HF.
        non_square=False is HF's path (square inputs only); True reshapes to (H // p, W // p)."""
        if pixel_values.shape[0] != input_ids.shape[0]:
            raise ValueError(f"{input_ids.shape[0]} prompts for {pixel_values.shape[0]} images: HF needs one "
                             f"image per prompt (repeat the image)")
        states, acts, pooled = self.vision(pixel_values)
        last, text_pooled, cond = self.text(input_ids, attention_mask)
        trace = []
        logits = self.decoder(acts, cond, self.decoder_grid(pixel_values, non_square), trace)
        h, w = pixel_values.shape[2:]
        return CLIPSegStages(
            vision_hidden_states=states, activations=acts,
            position_embeddings=self.clip.vision_model.embeddings.position_table(h, w),
            vision_pooled=pooled, image_embeds=self.clip.visual_projection(pooled),
            text_last_hidden_state=last, text_pooled=text_pooled, conditional_embeddings=cond,
            decoder_layers=trace, logits=logits)

    def logits(self, pixel_values, input_ids, attention_mask=None, non_square: bool = False):
        """The logits only (the same computation, without keeping the stages)."""
        _, acts, _ = self.vision(pixel_values)
        _, _, cond = self.text(input_ids, attention_mask)
        return self.decoder(acts, cond, self.decoder_grid(pixel_values, non_square))


@torch.no_grad()
def hf_way(model: CLIPSegForImageSegmentation, pixel_values, input_ids, attention_mask=None):
    """HF's usage: one (image, prompt) pair per call, the whole model (vision tower included) run for each
    prompt. pixel_values (1, 3, H, W); input_ids (P, L). Returns logits (P, H', W')."""
    out = []
    for i in range(input_ids.shape[0]):
        mask = None if attention_mask is None else attention_mask[i:i + 1]
        out.append(model.logits(pixel_values, input_ids[i:i + 1], mask))
    return torch.cat(out, dim=0)


@torch.no_grad()
def batched(model: CLIPSegForImageSegmentation, pixel_values, input_ids, attention_mask=None):
    """HF's batched call: the image repeated once per prompt, one forward (vision tower still per prompt)."""
    p = input_ids.shape[0]
    return model.logits(pixel_values.expand(p, -1, -1, -1), input_ids, attention_mask)


# --------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------

def load_hf_state_dict(model: nn.Module, sd: Dict[str, torch.Tensor]) -> None:
    """strict load of an HF state dict; the `*.position_ids` buffers of older checkpoints are dropped."""
    sd = {k: v for k, v in sd.items() if not k.endswith("embeddings.position_ids")}
    model.load_state_dict(sd, strict=True)


@torch.no_grad()
def randomize_nontrivial(model: nn.Module, seed: int) -> None:
    """Distinct, well-scaled random values for every parameter, so a loader that skips or swaps a tensor
    fails a comparison while activations stay O(1):
      Linear / Conv2d weight ~ N(0, 1/fan_in); ConvTranspose2d weight ~ N(0, 1/(C_in * (k/stride)^2));
      biases ~ N(0, 0.1^2); LayerNorm weight ~ U(0.5, 1.5), bias ~ N(0, 0.1^2);
      token embedding ~ N(0, 1), position embeddings ~ N(0, 0.5^2), class embedding ~ N(0, 1);
      logit_scale = 2.6592 + N(0, 0.1^2).
    Drawn in float64 from one generator (the same values whatever the model's dtype)."""
    g = torch.Generator().manual_seed(seed)

    def normal(t, std):
        t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float64) * std)

    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            normal(m.weight, 1.0 / math.sqrt(m.weight[0].numel()))
            if m.bias is not None:
                normal(m.bias, 0.1)
        elif isinstance(m, nn.ConvTranspose2d):
            taps = (m.kernel_size[0] // m.stride[0]) * (m.kernel_size[1] // m.stride[1])
            normal(m.weight, 1.0 / math.sqrt(m.in_channels * max(taps, 1)))
            normal(m.bias, 0.1)
        elif isinstance(m, nn.LayerNorm):
            m.weight.copy_(torch.rand(m.weight.shape, generator=g, dtype=torch.float64) + 0.5)
            normal(m.bias, 0.1)
        elif isinstance(m, CLIPSegTextEmbeddings):
            normal(m.token_embedding.weight, 1.0)
            normal(m.position_embedding.weight, 0.5)
        elif isinstance(m, CLIPSegVisionEmbeddings):
            normal(m.class_embedding, 1.0)
            normal(m.position_embedding.weight, 0.5)
        elif isinstance(m, CLIPSegModel):
            m.logit_scale.copy_(2.6592 + torch.randn((), generator=g, dtype=torch.float64) * 0.1)
    # Every parameter must have been touched by one of the rules above.
    handled = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.LayerNorm, nn.Embedding, CLIPSegTextEmbeddings,
               CLIPSegVisionEmbeddings, CLIPSegModel)
    for name, m in model.named_modules():
        if list(m.parameters(recurse=False)) and not isinstance(m, handled):
            raise TypeError(f"randomize_nontrivial: no rule for {name} ({type(m).__name__})")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
