"""The DiP network: a DiT backbone on PxP patches and the Patch Detailer Head.

State-dict names are those of the authors' release, so their checkpoint loads with strict
matching. Everything here exports to ONNX: RoPE in real arithmetic, patchify by reshape/permute.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dip_export.config import DiPConfig

RMS_EPS = 1e-6
TIME_FREQ_DIM = 256  # sinusoidal timestep features
TIME_MAX_PERIOD = 10.0  # the release's max period (not DiT's 10000): t lives in [0, 1]
ROPE_THETA = 10000.0
ROPE_SPAN = 16.0  # RoPE positions are linspace(0, 16, grid side), whatever the grid


def patchify(x: Tensor, p: int) -> Tensor:
    """(B, C, H, W) -> (B, N, C, P, P), patches in row-major grid order."""
    _, c, height, width = x.shape
    h, w = height // p, width // p
    x = x.reshape(-1, c, h, p, w, p)  # (B, C, h, P, w, P)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, h, w, C, P, P)
    return x.reshape(-1, h * w, c, p, p)


def unpatchify(patches: Tensor, h: int, w: int) -> Tensor:
    """(B, N, C, P, P) -> (B, C, h*P, w*P), the inverse of `patchify`."""
    _, _, c, p, _ = patches.shape
    x = patches.reshape(-1, h, w, c, p, p)  # (B, h, w, C, P, P)
    x = x.permute(0, 3, 1, 4, 2, 5)  # (B, C, h, P, w, P)
    return x.reshape(-1, c, h * p, w * p)


class RMSNorm(nn.Module):
    """RMSNorm whose statistics are always computed in float32 (half precision overflows)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + RMS_EPS)
        return xf.to(x.dtype) * self.weight.to(x.dtype)


def rope_tables(h: int, w: int, head_dim: int) -> tuple[Tensor, Tensor]:
    """cos/sin of the 2D RoPE angles, each (N, head_dim / 2), float32.

    Pair 2j of the head dim turns by x_pos * f_j, pair 2j+1 by y_pos * f_j.
    """
    quarter = head_dim // 4
    freqs = 1.0 / ROPE_THETA ** (torch.arange(quarter, dtype=torch.float32) * 4 / head_dim)  # (d/4,)
    ys, xs = torch.meshgrid(torch.linspace(0, ROPE_SPAN, h), torch.linspace(0, ROPE_SPAN, w), indexing="ij")  # (h, w) each
    ang_x = xs.reshape(-1, 1) * freqs  # (N, d/4)
    ang_y = ys.reshape(-1, 1) * freqs  # (N, d/4)
    angles = torch.stack([ang_x, ang_y], dim=-1).reshape(h * w, head_dim // 2)  # interleave x, y
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate consecutive pairs of the last dim of x (B, heads, N, d) by the given angles."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)  # (B, heads, N, d/2, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    out = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1)
    return out.flatten(-2).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_norm = RMSNorm(self.head_dim)
        self.k_norm = RMSNorm(self.head_dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim)  # (B, N, 3, H, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, hd)
        q = apply_rope(self.q_norm(q), cos, sin)
        k = apply_rope(self.k_norm(k), cos, sin)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, hd), scale hd^-0.5
        return self.proj(out.transpose(1, 2).reshape(b, n, d))  # (B, N, D)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class DiPBlock(nn.Module):
    def __init__(self, cfg: DiPConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.norm1 = RMSNorm(d)
        self.attn = Attention(d, cfg.num_heads)
        self.norm2 = RMSNorm(d)
        self.mlp = SwiGLU(d, cfg.mlp_hidden)
        self.adaLN_modulation = nn.Sequential(nn.Linear(d, 6 * d))

    def forward(self, x: Tensor, c: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        mods = self.adaLN_modulation(c).chunk(6, dim=-1)  # 6 x (B, 1, D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        h = self.norm1(x) * (1 + scale_msa) + shift_msa
        x = x + gate_msa * self.attn(h, cos, sin)
        h = self.norm2(x) * (1 + scale_mlp) + shift_mlp
        return x + gate_mlp * self.mlp(h)  # (B, N, D)


def timestep_features(t: Tensor) -> Tensor:
    """(B,) t in [0, 1] -> (B, 256) float32 features cat(cos, sin), max period 10."""
    half = TIME_FREQ_DIM // 2
    freqs = torch.exp(-math.log(TIME_MAX_PERIOD) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (B, 128)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(TIME_FREQ_DIM, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        first: nn.Linear = self.mlp[0]  # type: ignore[assignment]
        return self.mlp(timestep_features(t).to(first.weight.dtype))  # (B, D)


class LabelEmbedder(nn.Module):
    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, dim)  # last row: null class

    def forward(self, y: Tensor) -> Tensor:
        return self.embedding_table(y)  # (B, D)


class PatchEmbedder(nn.Module):
    def __init__(self, patch_size: int, in_channels: int, dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(in_channels * patch_size**2, dim)

    def forward(self, x: Tensor) -> Tensor:
        patches = patchify(x, self.patch_size)  # (B, N, C, P, P)
        return self.proj(patches.flatten(2))  # (B, N, D)


def _conv_silu(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2), nn.SiLU())


class PatchDetailer(nn.Module):
    """The per-patch U-Net: noisy PxP patch + its token -> the patch's velocity.

    Level k (1-based) works at P / 2^(k-1) with width * 2^(k-1) channels; for P = 16 and width 64
    this is the release's 3->64->128->256->512 encoder and its mirrored decoder.
    """

    def __init__(self, cfg: DiPConfig) -> None:
        super().__init__()
        self.levels = cfg.detailer_levels
        chans = [cfg.detailer_width * 2**k for k in range(self.levels)]  # per level, 1-based k+1
        cin = cfg.in_channels
        for k, c in enumerate(chans, start=1):
            self.add_module(f"enc{k}", _conv_silu(cin, c, 3))
            cin = c
        self.bottleneck = _conv_silu(chans[-1] + cfg.hidden_size, chans[-1], 1)
        for k in range(self.levels, 0, -1):
            c = chans[k - 1]
            c_out = chans[k - 2] if k > 1 else chans[0]
            self.add_module(f"up{k}", nn.ConvTranspose2d(c, c, kernel_size=2, stride=2))
            self.add_module(f"dec{k}", _conv_silu(2 * c, c_out, 3))
        self.out_conv = nn.Conv2d(chans[0], cfg.in_channels, 1)

    def forward(self, patches: Tensor, tokens: Tensor) -> Tensor:
        """patches (M, C, P, P), tokens (M, D) -> (M, C, P, P)."""
        skips = []
        h = patches
        for k in range(1, self.levels + 1):
            h = getattr(self, f"enc{k}")(h)
            skips.append(h)
            h = F.max_pool2d(h, 2)  # halves the side; 1x1 after the last level
        h = self.bottleneck(torch.cat([h, tokens[:, :, None, None].to(h.dtype)], dim=1))
        for k in range(self.levels, 0, -1):
            h = getattr(self, f"up{k}")(h)
            h = getattr(self, f"dec{k}")(torch.cat([h, skips[k - 1]], dim=1))
        return self.out_conv(h)


class DiP(nn.Module):
    """DiP with the two calls every backend offers: `backbone(x, t, y)` and `detailer(x, tokens)`."""

    def __init__(self, cfg: DiPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        self.s_embedder = PatchEmbedder(cfg.patch_size, cfg.in_channels, d)
        self.t_embedder = TimestepEmbedder(d)
        self.y_embedder = LabelEmbedder(cfg.num_classes, d)
        self.blocks = nn.ModuleList(DiPBlock(cfg) for _ in range(cfg.depth))
        self.local_decoder = PatchDetailer(cfg)
        self._rope_cache: dict[tuple[int, int, str], tuple[Tensor, Tensor]] = {}

    def _rope(self, h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
        key = (h, w, str(device))
        if key not in self._rope_cache:
            cos, sin = rope_tables(h, w, self.cfg.head_dim)
            self._rope_cache[key] = (cos.to(device), sin.to(device))
        return self._rope_cache[key]

    def backbone(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """x (B, 3, H, W), t (B,), y (B,) int -> tokens (B, N, D), the detailer's conditioning."""
        p = self.cfg.patch_size
        h, w = int(x.shape[-2]) // p, int(x.shape[-1]) // p
        cos, sin = self._rope(h, w, x.device)
        tokens = self.s_embedder(x)  # (B, N, D)
        t_emb = self.t_embedder(t)  # (B, D)
        c = F.silu(t_emb + self.y_embedder(y))[:, None, :]  # (B, 1, D)
        for block in self.blocks:
            tokens = block(tokens, c, cos, sin)
        return F.silu(t_emb[:, None, :] + tokens)  # (B, N, D)

    def detailer(self, x: Tensor, tokens: Tensor) -> Tensor:
        """x (B, 3, H, W), tokens (B, N, D) -> velocity v (B, 3, H, W)."""
        p = self.cfg.patch_size
        h, w = int(x.shape[-2]) // p, int(x.shape[-1]) // p
        patches = patchify(x, p).flatten(0, 1)  # (B*N, C, P, P)
        out = self.local_decoder(patches.to(tokens.dtype), tokens.flatten(0, 1))  # (B*N, C, P, P)
        return unpatchify(out.reshape(-1, h * w, *out.shape[1:]), h, w)  # (B, C, H, W)

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        return self.detailer(x, self.backbone(x, t, y))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def flops_per_sample(cfg: DiPConfig, height: int, width: int) -> dict[str, float]:
    """Multiply-add FLOPs (2 per MAC) of one network evaluation of one image: backbone and detailer."""
    n, d, p = cfg.num_tokens(height, width), cfg.hidden_size, cfg.patch_size
    per_block = 2 * n * d * (3 * d + d + 3 * cfg.mlp_hidden) + 4 * n * n * d + 2 * d * 6 * d
    backbone = cfg.depth * per_block + 2 * n * cfg.in_channels * p * p * d + 2 * (TIME_FREQ_DIM * d + d * d)
    detailer = 0.0
    side, cin = p, cfg.in_channels
    widths = [cfg.detailer_width * 2**k for k in range(cfg.detailer_levels)]
    for c in widths:  # encoder convs 3x3 at each level
        detailer += 2 * cin * c * 9 * side * side
        cin, side = c, side // 2
    detailer += 2 * (widths[-1] + d) * widths[-1]  # bottleneck 1x1 at 1x1
    for k in range(cfg.detailer_levels, 0, -1):
        c = widths[k - 1]
        c_out = widths[k - 2] if k > 1 else widths[0]
        detailer += 2 * c * c * 4 * side * side  # transposed conv 2x2 stride 2
        side *= 2
        detailer += 2 * 2 * c * c_out * 9 * side * side  # decoder conv 3x3 on the concat
    detailer += 2 * widths[0] * cfg.in_channels * p * p  # out_conv
    return {"backbone": float(backbone), "detailer": float(detailer * n)}
