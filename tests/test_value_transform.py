"""MuZero's value transform and categorical support, against hand computations."""

import math

import numpy as np
import pytest
import torch

from agents.muzero.value_transform import (
    h,
    h_inverse,
    scalar_to_hl_gauss,
    scalar_to_support,
    support_to_scalar,
)


def test_h_by_hand_and_its_inverse_round_trips():
    assert h(torch.tensor(3.0)).item() == pytest.approx(1.0 + 0.003)  # sqrt(4) - 1 + 0.001 * 3
    assert h(torch.tensor(-8.0)).item() == pytest.approx(-(3.0 - 1.0) - 0.008)
    x = torch.cat([torch.linspace(-1e4, 1e4, 2001, dtype=torch.float64), torch.tensor([0.0, 1e-3, -0.5])])
    torch.testing.assert_close(h_inverse(h(x)), x, rtol=1e-5, atol=1e-5)
    # the search's numpy path (a compiled ufunc) gives the same numbers, float32 input included
    y = h(x).numpy()
    np.testing.assert_allclose(h_inverse(y), h_inverse(h(x)).numpy(), rtol=1e-12, atol=1e-9)
    assert h_inverse(y.astype(np.float32)).dtype == np.float64 and h_inverse(np.zeros(1))[0] == 0.0


def test_two_hot_support_by_hand():
    # h(3) = 1.003: 0.997 on bin +1 and 0.003 on bin +2 of the support -2..2.
    target = scalar_to_support(torch.tensor([3.0]), support_size=2)
    torch.testing.assert_close(target, torch.tensor([[0.0, 0.0, 0.0, 0.997, 0.003]]), rtol=0, atol=1e-6)
    # Beyond the support, all the mass sits on the last bin.
    assert scalar_to_support(torch.tensor([1e6]), 2).tolist() == [[0.0, 0.0, 0.0, 0.0, 1.0]]


def test_scalar_support_round_trip():
    x = torch.tensor([-120.0, -3.5, 0.0, 0.25, 7.0, 99.0, 400.0])
    logits = torch.log(scalar_to_support(x, 300) + 1e-30)
    torch.testing.assert_close(support_to_scalar(logits, 300), x, rtol=1e-4, atol=1e-4)
    assert math.isclose(support_to_scalar(torch.zeros(1, 21), 10).item(), 0.0, abs_tol=1e-4)  # uniform: 0 (float32)


def test_hl_gauss_targets_by_hand():
    """h(3) = 1.003 with sigma 0.75 on the support -2..2: bin i gets Phi((i + 0.5 - 1.003) / 0.75) -
    Phi((i - 0.5 - 1.003) / 0.75), over the mass inside [-2.5, 2.5]. Its mean is pulled towards the middle
    only by the clipping at the support's edges; far from them it is h(x)."""
    phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    y, sigma = 1.003, 0.75
    mass = [phi((i + 0.5 - y) / sigma) - phi((i - 0.5 - y) / sigma) for i in range(-2, 3)]
    expected = torch.tensor([[m / sum(mass) for m in mass]])
    torch.testing.assert_close(scalar_to_hl_gauss(torch.tensor([3.0]), 2, sigma), expected, rtol=0, atol=1e-6)
    x = torch.tensor([-40.0, 0.0, 7.0, 150.0])  # h: -5.4, 0, 1.8, 11.4 on a support of +-20
    target = scalar_to_hl_gauss(x, 20, sigma)
    torch.testing.assert_close(target.sum(-1), torch.ones(4))
    torch.testing.assert_close((target * torch.arange(-20.0, 21.0)).sum(-1), h(x), rtol=0, atol=1e-4)
    # a narrow Gaussian puts everything on h(x)'s own bin, as two-hot does for an integer h(x)
    assert scalar_to_hl_gauss(torch.tensor([3.0]), 2, 0.01).argmax().item() == 3


def test_a_narrower_bin_spreads_a_board_games_outcome_over_many_bins():
    # h(1) = sqrt(2) - 1 + 0.001 = 0.41521: at bin width 1 it sits between bins 0 and 1 (0.585 / 0.415);
    # at width 0.05 it is bin 8.304: 0.696 on bin 8 and 0.304 on bin 9 (index S + 8 and S + 9).
    y = math.sqrt(2) - 1 + 0.001
    wide = scalar_to_support(torch.tensor([1.0]), 20)
    assert wide[0, 20].item() == pytest.approx(1 - y, abs=1e-6) and wide[0, 21].item() == pytest.approx(y, abs=1e-6)
    fine = scalar_to_support(torch.tensor([1.0, -1.0]), 20, bin_width=0.05)
    upper = y / 0.05 - 8
    assert fine[0, 28].item() == pytest.approx(1 - upper, abs=1e-5) and fine[0, 29].item() == pytest.approx(upper, abs=1e-5)
    assert fine[1, 12].item() == pytest.approx(1 - upper, abs=1e-5) and fine[1, 11].item() == pytest.approx(upper, abs=1e-5)
    # the round trip holds at any width, and the support ends at S w: h(x) = 1 is x = 3.0 (+ eps terms)
    x = torch.tensor([-1.0, -0.3, 0.0, 0.6, 1.0])
    for width in (0.05, 0.5):
        logits = torch.log(scalar_to_support(x, 20, width) + 1e-30)
        torch.testing.assert_close(support_to_scalar(logits, 20, width), x, rtol=1e-4, atol=1e-4)
    assert support_to_scalar(torch.log(scalar_to_support(torch.tensor([50.0]), 20, 0.05)), 20, 0.05).item() == pytest.approx(
        h_inverse(torch.tensor(1.0)).item(), rel=1e-5)
    # HL-Gauss: sigma counts in bins of the given width; the mean is h(x) in the support's units
    target = scalar_to_hl_gauss(x, 20, 0.75, bin_width=0.05)
    torch.testing.assert_close((target * 0.05 * torch.arange(-20.0, 21.0)).sum(-1), h(x), rtol=0, atol=1e-4)
