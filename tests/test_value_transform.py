"""MuZero's value transform and categorical support, against hand computations."""

import math

import numpy as np
import pytest
import torch

from agents.muzero.value_transform import h, h_inverse, scalar_to_support, support_to_scalar


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
