"""Kendall's tau against scipy, and the per-layer standardization."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import kendalltau

from encoders.tasks import LayerStandardizer, kendall_tau


@pytest.mark.parametrize("ties", [False, True])
def test_kendall_tau_matches_scipy(ties: bool) -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        x, y = torch.randn(50, generator=g), torch.randn(50, generator=g)
        if ties:
            x, y = x.round(), (y * 2).round()
        assert kendall_tau(x, y) == pytest.approx(kendalltau(x.numpy(), y.numpy()).statistic, abs=1e-9)


def test_kendall_tau_bad_input() -> None:
    with pytest.raises(ValueError, match="1-D"):
        kendall_tau(torch.randn(3), torch.randn(4))
    assert kendall_tau(torch.ones(4), torch.randn(4)) != kendall_tau(torch.ones(4), torch.randn(4))  # NaN


def test_standardizer_per_layer() -> None:
    flat = torch.cat([torch.randn(20, 6) * 3 + 1, torch.randn(20, 2) * 0.1 - 2], dim=1)
    std = LayerStandardizer.fit(flat, [6, 2])
    z = std(flat)
    for chunk in z.split([6, 2], dim=1):
        assert float(chunk.mean()) == pytest.approx(0, abs=1e-5)
        assert float(chunk.std(unbiased=False)) == pytest.approx(1, abs=1e-4)
    torch.testing.assert_close(std.inverse(z), flat)
