"""Shared helpers for the transport tests: closed-form Gaussian fields and a tiny CFG stand-in."""
import pytest
import torch
from torch import nn


class GaussianLinearFlow:
    """Exact quantities of the Linear path for data x1 ~ N(m, s^2 I) and noise x0 ~ N(0, I).

    x_t = t x1 + (1 - t) x0 ~ N(t m, V(t) I) with V(t) = t^2 s^2 + (1 - t)^2, and
    E[x1 - x0 | x_t = x] = m + (t s^2 - (1 - t)) / V(t) (x - t m). The flow map z -> m + s z.
    """

    def __init__(self, m: float, s: float):
        self.m, self.s = m, s

    def _t(self, t, x):
        return t.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)

    def var(self, t):
        return t ** 2 * self.s ** 2 + (1 - t) ** 2

    def velocity(self, x, t, **kwargs):
        t = self._t(t, x)
        return self.m + (t * self.s ** 2 - (1 - t)) / self.var(t) * (x - t * self.m)

    def score(self, x, t, **kwargs):
        t = self._t(t, x)
        return -(x - t * self.m) / self.var(t)

    def noise(self, x, t, **kwargs):
        """E[x0 | x_t] = -sigma_t * score."""
        return -(1 - self._t(t, x)) * self.score(x, t)


class TinyCFGModel(nn.Module):
    """Deterministic stand-in with LightningDiT's forward / forward_with_cfg semantics
    (docs/reference_behaviour.md §1.10; cfg_channels=None guides all channels)."""

    def __init__(self, channels: int = 4, num_classes: int = 10, hidden: int = 16, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.inp = nn.Conv2d(channels, hidden, 1)
        self.out = nn.Conv2d(hidden, channels, 1)
        self.emb = nn.Embedding(num_classes + 1, hidden)
        for p in self.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x, t, y):
        h = self.inp(x) + self.emb(y)[:, :, None, None] * (1 + t[:, None, None, None])
        return self.out(torch.tanh(h)) - x

    def forward_with_cfg(self, x, t, y, cfg_scale, cfg_interval=False, cfg_interval_start=0.0,
                         cfg_channels=3):
        half = x[: len(x) // 2]
        out = self.forward(torch.cat([half, half]), t, y)
        k = out.shape[1] if cfg_channels is None else cfg_channels
        eps, rest = out[:, :k], out[:, k:]
        cond, uncond = eps.chunk(2)
        guided = uncond + cfg_scale * (cond - uncond)
        if cfg_interval is True and t[0] < cfg_interval_start:
            guided = cond
        return torch.cat([torch.cat([guided, guided]), rest], dim=1)


def as_denoiser(fn):
    """A denoiser(x, s) (s a host float) from fn(x, t (B,)): t = full((B,), s) in float32, the
    reference's `ones(B) * t`."""
    return lambda x, s: fn(x, torch.full((x.shape[0],), s, dtype=torch.float32, device=x.device))


class CallCounter:
    """Wrap a model callable, recording the batch size of every call."""

    def __init__(self, fn):
        self.fn, self.batch_sizes = fn, []

    def __call__(self, x, t, *args, **kwargs):
        self.batch_sizes.append(x.shape[0])
        return self.fn(x, t, *args, **kwargs)


@pytest.fixture
def tiny_cfg_model():
    return TinyCFGModel().eval()

