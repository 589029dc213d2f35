"""A codebook lookup (vector quantisation, as in Encodec and VQ-VAEs): ``F.embedding`` of indices computed from
the input. The gradient oracle cannot see through an argmin (no gradient flows to an index), so the engine is
checked against the hand-computed field and against a value oracle: perturbing the input at ``j`` may change
output ``t`` only where the engine says ``j`` is in ``t``'s field."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from atrous.errors import UnsupportedOpError
from atrous.rf import analyze


class VectorQuantiser(nn.Module):
    """conv (k=3) -> nearest of 8 codes -> the code's vector -> conv (k=3): reach 2 each side."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encode = nn.Conv1d(2, 4, 3, padding=1)
        self.codebook = nn.Embedding(8, 4)
        self.decode = nn.Conv1d(4, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encode(x).transpose(1, 2)  # (B, T, 4)
        distances = ((z[..., None, :] - self.codebook.weight) ** 2).sum(-1)  # (B, T, 8)
        codes = self.codebook(distances.argmin(-1))  # (B, T, 4)
        return self.decode(codes.transpose(1, 2))


def test_a_codebook_lookup_reads_its_index_position_alone() -> None:
    model, n = VectorQuantiser().eval(), 24
    report = analyze(model, (2, n))
    assert report.rf == [5]
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for t in (0, 7, n - 1):
            field = report.support((t,))
            assert np.array_equal(np.flatnonzero(field), np.arange(max(t - 2, 0), min(t + 3, n)))
            seen = np.zeros(n, dtype=bool)
            for _ in range(20):
                x = torch.randn(1, 2, n, generator=gen)
                base = model(x)[0, :, t]
                for j in range(n):
                    y = x.clone()
                    y[0, :, j] += 3 * torch.randn(2, generator=gen)
                    seen[j] |= not torch.equal(model(y)[0, :, t], base)
            assert not (seen & ~field).any(), f"an input outside the engine's field changed output {t}"
            assert np.array_equal(seen, field), f"the field of {t} is exact: every position in it mattered"


def test_a_table_computed_from_the_input_is_refused_by_name() -> None:
    class Lookup(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            table = x.mean(-1).transpose(0, 1)  # (C, B): depends on every position
            return F.embedding(torch.zeros(x.shape[-1], dtype=torch.long), table)

    with pytest.raises(UnsupportedOpError, match=r"aten\.embedding"):
        analyze(Lookup(), (4, 8))
