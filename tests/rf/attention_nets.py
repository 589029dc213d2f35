"""Small replicas of attention models for the receptive-field tests: ViT, Swin, Segformer, attention in a CNN.

Each keeps the tensor plumbing of the original (token sequences, class token, window partition and reverse,
cyclic shift with its attention mask, patch merging, spatial-reduction attention, Mix-FFN) at a size where the
gradient oracle runs in milliseconds. GELU and no ReLU: a ReLU after a norm can zero a gradient at a pixel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SelfAttention(nn.Module):
    """Multi-head self-attention over tokens (B, N, C), through SDPA or ``nn.MultiheadAttention``."""

    def __init__(self, dim: int, heads: int = 2, mha: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.mha = nn.MultiheadAttention(dim, heads, batch_first=True) if mha else None
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.mha is not None:
            return self.mha(x, x, x, need_weights=False)[0]
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v)
        else:  # Swin's explicit form: scores + mask, softmax, values
            scores = (q * (C // self.heads) ** -0.5) @ k.transpose(-2, -1)
            nw = mask.shape[0]
            scores = scores.view(B // nw, nw, self.heads, N, N) + mask[None, :, None]
            out = torch.softmax(scores.view(B, self.heads, N, N), dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H * W, C): a token sequence is the flattened spatial grid."""
    return x.flatten(2).transpose(1, 2)


def grid(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, h * w, C) -> (B, C, h, w)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


class ViT(nn.Module):
    """Patch embedding, class token, position embedding, pre-norm blocks; the patch tokens back to a map."""

    def __init__(
        self, patch: int = 4, dim: int = 8, depth: int = 1, size: int = 16, mha: bool = False
    ) -> None:
        super().__init__()
        self.patch = patch
        self.embed = nn.Conv2d(2, dim, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 1, dim))
        self.blocks = nn.ModuleList(
            nn.ModuleList(
                [nn.LayerNorm(dim), SelfAttention(dim, mha=mha), nn.LayerNorm(dim), Mlp(dim, 2 * dim)]
            )
            for _ in range(depth)
        )
        self.head = nn.Conv2d(dim, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2] // self.patch, x.shape[3] // self.patch
        t = tokens(self.embed(x))
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
        for norm1, attn, norm2, mlp in self.blocks:
            t = t + attn(norm1(t))
            t = t + mlp(norm2(t))
        return self.head(grid(t[:, 1:], h, w))


class ClassTokenHead(ViT):
    """The class token read out after the blocks: global because attention mixed every patch into it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = tokens(self.embed(x))
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
        for norm1, attn, norm2, mlp in self.blocks:
            t = t + attn(norm1(t))
            t = t + mlp(norm2(t))
        return t[:, 0]


def window_partition(x: torch.Tensor, w: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * H/w * W/w, w * w, C), Swin's layout."""
    B, H, W, C = x.shape
    x = x.view(B, H // w, w, W // w, w, C).permute(0, 1, 3, 2, 4, 5).contiguous()
    return x.view(-1, w * w, C)


def window_reverse(windows: torch.Tensor, w: int, H: int, W: int) -> torch.Tensor:
    C = windows.shape[-1]
    x = windows.view(-1, H // w, W // w, w, w, C).permute(0, 1, 3, 2, 4, 5).contiguous()
    return x.view(-1, H, W, C)


class SwinBlock(nn.Module):
    """(Shifted) window attention + MLP on (B, H * W, C) tokens; the shift mask built in forward as Swin does."""

    def __init__(self, dim: int, window: int, shift: int) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1, self.attn = nn.LayerNorm(dim), SelfAttention(dim)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, 2 * dim)

    def mask(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        img = x.new_zeros(1, H, W, 1)
        w, s, cnt = self.window, self.shift, 0
        for hs in (slice(0, -w), slice(-w, -s), slice(-s, None)):
            for ws in (slice(0, -w), slice(-w, -s), slice(-s, None)):
                img[:, hs, ws, :] = cnt
                cnt += 1
        m = window_partition(img, w).squeeze(-1)
        m = m.unsqueeze(1) - m.unsqueeze(2)
        return m.masked_fill(m != 0, -100.0).masked_fill(m == 0, 0.0)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, L, C = x.shape
        y = self.norm1(x).view(B, H, W, C)
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), (1, 2))
        mask = (
            self.mask(x, H, W) if self.shift else torch.zeros((H // self.window) * (W // self.window), 1, 1)
        )
        y = window_reverse(self.attn(window_partition(y, self.window), mask), self.window, H, W)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), (1, 2))
        x = x + y.reshape(B, L, C)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 neighbouring tokens concatenated along channels, then a Linear: the Swin downsampling."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm, self.reduce = nn.LayerNorm(4 * dim), nn.Linear(4 * dim, 2 * dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, _, C = x.shape
        x = x.view(B, H, W, C)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduce(self.norm(x.view(B, -1, 4 * C)))


class Swin(nn.Module):
    """Patch embedding, then blocks given as (window, shift) pairs, with ``merge_after`` blocks then patch merging."""

    def __init__(
        self,
        blocks: tuple[tuple[int, int], ...] = ((4, 0), (4, 2)),
        patch: int = 2,
        dim: int = 8,
        merge: bool = False,
    ) -> None:
        super().__init__()
        self.patch, self.merge = patch, merge
        self.embed = nn.Conv2d(2, dim, patch, patch)
        self.norm = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList(SwinBlock(dim, w, s) for w, s in blocks)
        self.merging = PatchMerging(dim) if merge else None
        self.head = nn.Conv2d(2 * dim if merge else dim, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[2] // self.patch, x.shape[3] // self.patch
        t = self.norm(tokens(self.embed(x)))
        for block in self.blocks:
            t = block(t, H, W)
        if self.merging is not None:
            t = self.merging(t, H, W)
            H, W = H // 2, W // 2
        return self.head(grid(t, H, W))


class SegformerBlock(nn.Module):
    """Overlapping patch embedding, efficient self-attention (keys and values from a strided conv: spatial
    reduction), Mix-FFN (Linear, depthwise 3x3 conv on the map, GELU, Linear)."""

    def __init__(self, dim: int = 8, sr: int = 2, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Conv2d(2, dim, 7, 4, 3)
        self.norm0, self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.sr, self.sr_norm = nn.Conv2d(dim, dim, sr, sr), nn.LayerNorm(dim)
        self.fc1, self.dw, self.fc2 = (
            nn.Linear(dim, 2 * dim),
            nn.Conv2d(2 * dim, 2 * dim, 3, 1, 1, groups=2 * dim),
            nn.Linear(2 * dim, dim),
        )
        self.head = nn.Conv2d(dim, 2, 1)

    def attention(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, C = x.shape
        d = C // self.heads
        q = self.q(x).reshape(B, N, self.heads, d).transpose(1, 2)
        reduced = tokens(self.sr(grid(x, H, W)))
        kv = self.kv(self.sr_norm(reduced)).reshape(B, -1, 2, self.heads, d).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1])
        return self.proj(out.transpose(1, 2).reshape(B, N, C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.embed(x)
        H, W = m.shape[2:]
        t = self.norm0(tokens(m))
        t = t + self.attention(self.norm1(t), H, W)
        ffn = tokens(F.gelu(self.dw(grid(self.fc1(self.norm2(t)), H, W))))
        t = t + self.fc2(ffn)
        return self.head(grid(t, H, W))


class MixFFN(SegformerBlock):
    """The Mix-FFN alone (no attention): a local RF, 3x3 depthwise conv at stride 4 after the 7x7 embedding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.embed(x)
        H, W = m.shape[2:]
        t = tokens(m)
        t = t + self.fc2(tokens(F.gelu(self.dw(grid(self.fc1(self.norm2(t)), H, W)))))
        return self.head(grid(t, H, W))


class NonLocalCNN(nn.Module):
    """A non-local (self-attention) block between two convolutions: global after it."""

    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, dim, 3, 1, 1)
        self.theta, self.phi, self.g = nn.Conv2d(dim, dim, 1), nn.Conv2d(dim, dim, 1), nn.Conv2d(dim, dim, 1)
        self.out = nn.Conv2d(dim, 2, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        H, W = y.shape[2:]
        att = torch.softmax(tokens(self.theta(y)) @ self.phi(y).flatten(2), dim=-1)
        return self.out(y + grid(att @ tokens(self.g(y)), H, W))


class WindowAttentionCNN(nn.Module):
    """Conv, attention within 4x4 windows (SDPA), conv: a window-limited RF with conv margins around it."""

    def __init__(self, dim: int = 4, window: int = 4) -> None:
        super().__init__()
        self.window = window
        self.stem, self.out = nn.Conv2d(2, dim, 3, 1, 1), nn.Conv2d(dim, 2, 3, 1, 1)
        self.attn = SelfAttention(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x).permute(0, 2, 3, 1)
        H, W = y.shape[1:3]
        y = window_reverse(self.attn(window_partition(y, self.window)), self.window, H, W)
        return self.out(y.permute(0, 3, 1, 2))


class PartitionReverse(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.permute(0, 2, 3, 1)
        return window_reverse(window_partition(y, 4), 4, *y.shape[1:3]).permute(0, 3, 1, 2)


class WindowSum(nn.Module):
    """Sum over each 4x4 window, one value per window."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        return x.view(B, C, H // 4, 4, W // 4, 4).sum((3, 5))


class ShiftedWindowSum(nn.Module):
    """Roll, per-window softmax-weighted mix, reverse, roll back: windows that wrap around the border."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.roll(x.permute(0, 2, 3, 1), (-2, -2), (1, 2))
        t = window_partition(y, 4)
        t = torch.softmax(t @ t.transpose(1, 2), dim=-1) @ t
        y = window_reverse(t, 4, *y.shape[1:3])
        return torch.roll(y, (2, 2), (1, 2)).permute(0, 3, 1, 2)


class ShapeMask(nn.Module):
    """A mask made from the input's shape and written by slice assignment: a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[2:]
        mask = x.new_zeros(H, W)
        mask[: H // 2] = 1.0
        mask[:, W // 2 :] += 2.0
        return self.conv(x) + mask
