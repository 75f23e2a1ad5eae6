"""PyTorch reference of HF transformers' SegformerForSemanticSegmentation, for segml's model fixtures.

`transformers` is not installable here, so this module re-implements the model from the semantics in
docs/reference-model.md (read from HF's modeling_segformer.py / configuration_segformer.py; no code copied).

Guarantees:
  * the module tree, hence every state-dict key and shape, is HF's: a state dict saved by
    `SegformerForSemanticSegmentation.save_pretrained` loads here with strict=True and vice versa;
  * forward and loss follow HF's computation order (LayerNorm eps 1e-5 everywhere, as in HF, which
    ignores config.layer_norm_eps; exact erf GELU; scores divided by sqrt(head_dim));
  * `SegformerConfig.to_json` writes an HF-style config.json (string id2label keys) that `from_json`
    and HF's `SegformerConfig.from_pretrained` both read.
Does not implement: SegformerForImageClassification, attention outputs, head pruning, gradient
checkpointing, `reshape_last_stage=False` (deprecated in HF), activations other than "gelu".

Run with Debian's interpreter (torch 1.13): /usr/bin/python3.
"""
import dataclasses
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

@dataclass
class SegformerConfig:
    """HF `SegformerConfig` fields and defaults (the defaults are MiT-b0 with 2 labels)."""
    num_channels: int = 3
    num_encoder_blocks: int = 4
    depths: List[int] = field(default_factory=lambda: [2, 2, 2, 2])
    sr_ratios: List[int] = field(default_factory=lambda: [8, 4, 2, 1])
    hidden_sizes: List[int] = field(default_factory=lambda: [32, 64, 160, 256])
    patch_sizes: List[int] = field(default_factory=lambda: [7, 3, 3, 3])
    strides: List[int] = field(default_factory=lambda: [4, 2, 2, 2])
    num_attention_heads: List[int] = field(default_factory=lambda: [1, 2, 5, 8])
    mlp_ratios: List[int] = field(default_factory=lambda: [4, 4, 4, 4])
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    classifier_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    drop_path_rate: float = 0.1
    layer_norm_eps: float = 1e-6  # stored for fidelity; HF's model never reads it (every LayerNorm uses 1e-5)
    decoder_hidden_size: int = 256
    semantic_loss_ignore_index: int = 255
    reshape_last_stage: bool = True
    # PretrainedConfig's label fields: id2label wins over num_labels when given (as in HF).
    num_labels: int = 2
    id2label: Optional[Dict[int, str]] = None

    def __post_init__(self):
        if self.id2label is None:
            self.id2label = {i: f"LABEL_{i}" for i in range(self.num_labels)}
        self.id2label = {int(k): v for k, v in self.id2label.items()}
        self.num_labels = len(self.id2label)
        n = self.num_encoder_blocks
        for name in ("depths", "sr_ratios", "hidden_sizes", "patch_sizes", "strides",
                     "num_attention_heads", "mlp_ratios"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"SegformerConfig.{name} has {len(getattr(self, name))} entries, "
                                 f"num_encoder_blocks is {n}")
        for c, h in zip(self.hidden_sizes, self.num_attention_heads):
            if c % h:
                raise ValueError(f"hidden size {c} is not a multiple of the number of attention heads {h}")
        if not self.reshape_last_stage:
            raise NotImplementedError("reshape_last_stage=False (deprecated in HF) is not implemented")

    @property
    def label2id(self) -> Dict[str, int]:
        return {v: k for k, v in self.id2label.items()}

    @classmethod
    def variant(cls, name: str, **overrides) -> "SegformerConfig":
        """The MiT-b0 ... b5 architectures of HF's conversion script, e.g. variant("b0", num_labels=150)."""
        if name not in VARIANTS:
            raise ValueError(f"unknown SegFormer variant {name!r}; expected one of {sorted(VARIANTS)}")
        return cls(**{**VARIANTS[name], **overrides})

    def to_dict(self) -> dict:
        """The config.json content, HF-style: id2label keyed by strings, label2id, no num_labels."""
        d = dataclasses.asdict(self)
        del d["num_labels"]
        d["id2label"] = {str(k): v for k, v in sorted(self.id2label.items())}
        d["label2id"] = self.label2id
        d["architectures"] = ["SegformerForSemanticSegmentation"]
        d["model_type"] = "segformer"
        d["torch_dtype"] = "float32"
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: dict) -> "SegformerConfig":
        """Reads an HF config dict; keys that are not SegformerConfig fields (architectures, model_type,
        transformers_version, torch_dtype, label2id, legacy downsampling_rates / image_size ...) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_json(cls, text: str) -> "SegformerConfig":
        return cls.from_dict(json.loads(text))


_MIT_LARGE = dict(hidden_sizes=[64, 128, 320, 512], decoder_hidden_size=768)
VARIANTS = {
    "b0": dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "b1": dict(hidden_sizes=[64, 128, 320, 512], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "b2": dict(_MIT_LARGE, depths=[3, 4, 6, 3]),
    "b3": dict(_MIT_LARGE, depths=[3, 4, 18, 3]),
    "b4": dict(_MIT_LARGE, depths=[3, 8, 27, 3]),
    "b5": dict(_MIT_LARGE, depths=[3, 6, 40, 3]),
}


# --------------------------------------------------------------------------------------------------
# Encoder (Mix Transformer)
# --------------------------------------------------------------------------------------------------
# Tokens are (B, N, C) with token index h*W + w; feature maps are NCHW.
# `trace`, when a dict, receives intermediate tensors under the names documented in docs/reference-model.md.

def tokens_to_nchw(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], height, width)


def nchw_to_tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


class SegformerOverlapPatchEmbeddings(nn.Module):
    """Conv2d(kernel k, stride s, padding k//2) to tokens, then LayerNorm."""

    def __init__(self, patch_size: int, stride: int, num_channels: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Conv2d(num_channels, hidden_size, patch_size, stride=stride, padding=patch_size // 2)
        self.layer_norm = nn.LayerNorm(hidden_size)

    def forward(self, pixel_values):
        x = self.proj(pixel_values)
        height, width = x.shape[2], x.shape[3]
        return self.layer_norm(nchw_to_tokens(x)), height, width


class SegformerEfficientSelfAttention(nn.Module):
    """Multi-head attention whose keys/values come from a sequence shrunk by an sr x sr strided conv."""

    def __init__(self, config: SegformerConfig, hidden_size: int, num_attention_heads: int,
                 sequence_reduction_ratio: int):
        super().__init__()
        self.num_attention_heads = num_attention_heads
        self.attention_head_size = hidden_size // num_attention_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.sr_ratio = sequence_reduction_ratio
        if sequence_reduction_ratio > 1:
            # kernel = stride = sr, no padding: the reduced grid is floor(H/sr) x floor(W/sr).
            self.sr = nn.Conv2d(hidden_size, hidden_size, sequence_reduction_ratio, stride=sequence_reduction_ratio)
            self.layer_norm = nn.LayerNorm(hidden_size)

    def split_heads(self, x):  # (B, N, C) -> (B, heads, N, head_dim); heads are contiguous channel slices
        b, n, _ = x.shape
        return x.view(b, n, self.num_attention_heads, self.attention_head_size).permute(0, 2, 1, 3)

    def forward(self, hidden_states, height, width):
        query = self.split_heads(self.query(hidden_states))
        kv_source = hidden_states
        if self.sr_ratio > 1:
            reduced = self.sr(tokens_to_nchw(hidden_states, height, width))
            kv_source = self.layer_norm(nchw_to_tokens(reduced))
        key = self.split_heads(self.key(kv_source))
        value = self.split_heads(self.value(kv_source))

        scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(self.attention_head_size)
        probs = self.dropout(scores.softmax(dim=-1))
        context = torch.matmul(probs, value).permute(0, 2, 1, 3)  # (B, N, heads, head_dim)
        return context.reshape(context.shape[0], context.shape[1], -1)


class SegformerSelfOutput(nn.Module):
    def __init__(self, config: SegformerConfig, hidden_size: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states):
        return self.dropout(self.dense(hidden_states))


class SegformerAttention(nn.Module):
    def __init__(self, config, hidden_size, num_attention_heads, sequence_reduction_ratio):
        super().__init__()
        self.self = SegformerEfficientSelfAttention(config, hidden_size, num_attention_heads,
                                                    sequence_reduction_ratio)
        self.output = SegformerSelfOutput(config, hidden_size)

    def forward(self, hidden_states, height, width):
        return self.output(self.self(hidden_states, height, width))


class SegformerDWConv(nn.Module):
    """Depthwise 3x3 conv (stride 1, padding 1, bias) applied to tokens viewed as an image."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, stride=1, padding=1, groups=dim)

    def forward(self, hidden_states, height, width):
        return nchw_to_tokens(self.dwconv(tokens_to_nchw(hidden_states, height, width)))


class SegformerMixFFN(nn.Module):
    """dense1 (C -> rC), depthwise 3x3 conv, exact GELU, dense2 (rC -> C)."""

    def __init__(self, config: SegformerConfig, in_features: int, hidden_features: int):
        super().__init__()
        if config.hidden_act != "gelu":
            raise NotImplementedError(f"hidden_act {config.hidden_act!r}: only 'gelu' is implemented")
        self.dense1 = nn.Linear(in_features, hidden_features)
        self.dwconv = SegformerDWConv(hidden_features)
        self.intermediate_act_fn = nn.GELU()  # erf form, as HF's "gelu"
        self.dense2 = nn.Linear(hidden_features, in_features)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, height, width):
        x = self.intermediate_act_fn(self.dwconv(self.dense1(hidden_states), height, width))
        return self.dropout(self.dense2(self.dropout(x)))


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: in training, zeroes whole samples with probability drop_prob, rescales the rest."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask = (keep + torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)).floor_()
    return x.div(keep) * mask


class SegformerDropPath(nn.Module):
    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training)


class SegformerLayer(nn.Module):
    """Pre-norm block: x += DropPath(Attn(LN1(x))); x += DropPath(MixFFN(LN2(x)))."""

    def __init__(self, config, hidden_size, num_attention_heads, drop_path_rate, sequence_reduction_ratio,
                 mlp_ratio):
        super().__init__()
        self.layer_norm_1 = nn.LayerNorm(hidden_size)
        self.attention = SegformerAttention(config, hidden_size, num_attention_heads, sequence_reduction_ratio)
        self.drop_path = SegformerDropPath(drop_path_rate) if drop_path_rate > 0.0 else nn.Identity()
        self.layer_norm_2 = nn.LayerNorm(hidden_size)
        self.mlp = SegformerMixFFN(config, hidden_size, int(hidden_size * mlp_ratio))

    def forward(self, hidden_states, height, width, trace=None, name=""):
        attn_out = self.attention(self.layer_norm_1(hidden_states), height, width)
        hidden_states = hidden_states + self.drop_path(attn_out)
        out = hidden_states + self.drop_path(self.mlp(self.layer_norm_2(hidden_states), height, width))
        if trace is not None:
            trace[name + ".attn_out"] = attn_out
            trace[name + ".out"] = out
        return out


class SegformerEncoder(nn.Module):
    def __init__(self, config: SegformerConfig):
        super().__init__()
        rates = torch.linspace(0, config.drop_path_rate, sum(config.depths)).tolist()
        self.patch_embeddings = nn.ModuleList(
            SegformerOverlapPatchEmbeddings(config.patch_sizes[i], config.strides[i],
                                            config.num_channels if i == 0 else config.hidden_sizes[i - 1],
                                            config.hidden_sizes[i])
            for i in range(config.num_encoder_blocks))
        self.block = nn.ModuleList()
        first = 0
        for i in range(config.num_encoder_blocks):
            self.block.append(nn.ModuleList(
                SegformerLayer(config, config.hidden_sizes[i], config.num_attention_heads[i], rates[first + j],
                               config.sr_ratios[i], config.mlp_ratios[i])
                for j in range(config.depths[i])))
            first += config.depths[i]
        self.layer_norm = nn.ModuleList(nn.LayerNorm(c) for c in config.hidden_sizes)

    def forward(self, pixel_values, trace=None):
        """Returns the list of stage outputs, each NCHW after the stage's layer_norm."""
        hidden_states, x = [], pixel_values
        for i, (embed, layers, norm) in enumerate(zip(self.patch_embeddings, self.block, self.layer_norm)):
            x, height, width = embed(x)
            if trace is not None:
                trace[f"embed.{i}"] = x
            for j, layer in enumerate(layers):
                x = layer(x, height, width, trace, f"block.{i}.{j}")
            x = tokens_to_nchw(norm(x), height, width).contiguous()
            hidden_states.append(x)
        return hidden_states


class SegformerModel(nn.Module):
    def __init__(self, config: SegformerConfig):
        super().__init__()
        self.encoder = SegformerEncoder(config)

    def forward(self, pixel_values, trace=None):
        return self.encoder(pixel_values, trace)


# --------------------------------------------------------------------------------------------------
# All-MLP decode head and the segmentation model
# --------------------------------------------------------------------------------------------------

class SegformerMLP(nn.Module):
    """Per-stage Linear to decoder_hidden_size, applied to the stage's tokens."""

    def __init__(self, config: SegformerConfig, input_dim: int):
        super().__init__()
        self.proj = nn.Linear(input_dim, config.decoder_hidden_size)

    def forward(self, feature_map):
        return self.proj(nchw_to_tokens(feature_map))


class SegformerDecodeHead(nn.Module):
    def __init__(self, config: SegformerConfig):
        super().__init__()
        d = config.decoder_hidden_size
        self.linear_c = nn.ModuleList(SegformerMLP(config, c) for c in config.hidden_sizes)
        self.linear_fuse = nn.Conv2d(d * config.num_encoder_blocks, d, 1, bias=False)
        self.batch_norm = nn.BatchNorm2d(d)
        self.activation = nn.ReLU()
        self.dropout = nn.Dropout(config.classifier_dropout_prob)
        self.classifier = nn.Conv2d(d, config.num_labels, 1)

    def forward(self, encoder_hidden_states, trace=None):
        size = encoder_hidden_states[0].shape[2:]
        projected = []
        for i, (feature_map, mlp) in enumerate(zip(encoder_hidden_states, self.linear_c)):
            x = tokens_to_nchw(mlp(feature_map), feature_map.shape[2], feature_map.shape[3])
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            projected.append(x)
            if trace is not None:
                trace[f"decode.linear_c.{i}"] = x
        fused = self.linear_fuse(torch.cat(projected[::-1], dim=1))  # channel order c4, c3, c2, c1
        normed = self.batch_norm(fused)
        if trace is not None:
            trace["decode.fused"] = fused
            trace["decode.batch_norm"] = normed
        return self.classifier(self.dropout(self.activation(normed)))


@dataclass
class SegformerOutput:
    logits: torch.Tensor                      # (B, num_labels, H1, W1), H1 = stage-1 height
    hidden_states: List[torch.Tensor]         # stage outputs, NCHW
    loss: Optional[torch.Tensor] = None
    trace: Optional[Dict[str, torch.Tensor]] = None


def semantic_segmentation_loss(logits, labels, ignore_index: int = 255) -> torch.Tensor:
    """HF's loss: logits upsampled (bilinear, align_corners=False) to the labels' size, then
    cross-entropy averaged over non-ignored pixels, or for one label the masked BCE averaged over ALL pixels."""
    num_labels = logits.shape[1]
    if num_labels < 1:
        raise ValueError(f"Number of labels should be >=0: {num_labels}")
    upsampled = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    if num_labels > 1:
        return F.cross_entropy(upsampled, labels, ignore_index=ignore_index)
    valid = ((labels >= 0) & (labels != ignore_index)).float()
    per_pixel = F.binary_cross_entropy_with_logits(upsampled.squeeze(1), labels.float(), reduction="none")
    return (per_pixel * valid).mean()


class SegformerForSemanticSegmentation(nn.Module):
    def __init__(self, config: SegformerConfig):
        super().__init__()
        self.config = config
        self.segformer = SegformerModel(config)
        self.decode_head = SegformerDecodeHead(config)
        init_weights_like_hf(self)

    def forward(self, pixel_values, labels=None, return_trace=False) -> SegformerOutput:
        """With return_trace, `trace` holds embed.{i}, block.{i}.{j}.{attn_out,out}, decode.linear_c.{i},
        decode.fused, decode.batch_norm (all still attached to the graph)."""
        trace = {} if return_trace else None
        hidden_states = self.segformer(pixel_values, trace)
        logits = self.decode_head(hidden_states, trace)
        loss = None
        if labels is not None:
            loss = semantic_segmentation_loss(logits, labels, self.config.semantic_loss_ignore_index)
        return SegformerOutput(logits=logits, hidden_states=hidden_states, loss=loss, trace=trace)


# --------------------------------------------------------------------------------------------------
# Initialisation
# --------------------------------------------------------------------------------------------------

@torch.no_grad()
def init_weights_like_hf(model: nn.Module, initializer_range: Optional[float] = None) -> None:
    """HF `_init_weights`: Linear/Conv2d weight ~ N(0, initializer_range), bias 0; LayerNorm 1 / 0;
    BatchNorm keeps PyTorch's defaults (weight 1, bias 0, running mean 0 / var 1)."""
    std = model.config.initializer_range if initializer_range is None else initializer_range
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            m.weight.normal_(0.0, std)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, nn.LayerNorm):
            m.weight.fill_(1.0)
            m.bias.zero_()


@torch.no_grad()
def randomize_nontrivial(model: nn.Module, seed: int) -> None:
    """Gives every parameter and buffer a distinct, well-scaled random value, so that a loader which
    skips any tensor, or mixes two up, fails a comparison. Activations stay O(1):
      Linear/Conv weight ~ N(0, 1/fan_in) (std 1/sqrt(fan_in)), bias ~ N(0, 0.1^2);
      LayerNorm / BatchNorm weight ~ U(0.5, 1.5), bias ~ N(0, 0.1^2);
      BatchNorm running_mean ~ N(0, 0.1^2), running_var ~ U(0.5, 2), num_batches_tracked = 7."""
    g = torch.Generator().manual_seed(seed)

    def normal(t, std):
        t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float64) * std)

    def uniform(t, lo, hi):
        t.copy_(torch.rand(t.shape, generator=g, dtype=torch.float64) * (hi - lo) + lo)

    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            normal(m.weight, 1.0 / math.sqrt(m.weight[0].numel()))
            if m.bias is not None:
                normal(m.bias, 0.1)
        elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
            uniform(m.weight, 0.5, 1.5)
            normal(m.bias, 0.1)
            if isinstance(m, nn.BatchNorm2d):
                normal(m.running_mean, 0.1)
                uniform(m.running_var, 0.5, 2.0)
                m.num_batches_tracked.fill_(7)
        elif list(m.parameters(recurse=False)) or list(m.buffers(recurse=False)):
            raise TypeError(f"randomize_nontrivial: no rule for {name} ({type(m).__name__})")


def count_parameters(model: nn.Module) -> int:
    """Learnable parameters (buffers excluded), as HF's num_parameters()."""
    return sum(p.numel() for p in model.parameters())
