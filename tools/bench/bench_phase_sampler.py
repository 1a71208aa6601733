"""Benchmark: accuracy per network evaluation of SFD's samplers on a smooth toy velocity field.

SFD samples with dopri5 (atol 1e-6, rtol 1e-3) across the two jumps of its masked drift
(tau = delta and 1, docs/reference_behaviour.md §12.4.1). This compares, on a random smooth field
with SFD's latent shape (32 texture + 16 semantic channels, 16 x 16) and schedule (delta 0.3):

- dopri5 at the released tolerances;
- euler / heun2 on SFD's grid (steps straddle the jumps);
- euler_phase / heun2_phase (grid nodes on the jumps, §12.4.2);

against a float64 heun2_phase solve with many steps. Prints one JSON line per (method, steps):
network evaluations, the max abs error of the final state, wall seconds. A toy field, not a
trained network: the timing of a trained SFD model comes with its checkpoint.

    python tools/bench/bench_phase_sampler.py --steps 10 20 40 80
"""
import argparse
import json
import time

import torch

from transport import Sampler, TimeSchedule, create_transport


class ToyField:
    """v = tanh(W x + a t) (1 + t) - x t / 2 per channel, t the channel's group time; W couples
    every channel (1x1 mixing), so a frozen group still steers the moving one."""

    def __init__(self, schedule: TimeSchedule, channels: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.schedule = schedule
        self.w = torch.randn(channels, channels, generator=g) / channels ** 0.5
        self.a = torch.randn(channels, generator=g)
        self.calls = 0

    def __call__(self, x: torch.Tensor, s: float) -> torch.Tensor:
        self.calls += 1
        times = self.schedule.group_times(torch.full((x.shape[0],), s, dtype=x.dtype))
        t = self.schedule.channel_times(times, x)                  # (B, C, 1, 1)
        h = torch.einsum("bchw,cd->bdhw", x, self.w.to(x.dtype)) + self.a.to(x.dtype)[:, None, None] * t
        return torch.tanh(h) * (1 + t) - 0.5 * x * t


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20, 40, 80])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--delta", type=float, default=0.3)
    p.add_argument("--reference-steps", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    schedule = TimeSchedule.semantic_first(32, 16, args.delta)
    sampler = Sampler(create_transport(schedule=schedule))
    field = ToyField(schedule, 48, args.seed)
    x = torch.randn(args.batch, 48, 16, 16, generator=torch.Generator().manual_seed(args.seed + 1))
    exact = sampler.sample_ode("heun2_phase", num_steps=args.reference_steps)(x.double(), field)[-1]
    runs = [("dopri5", 2)] + [(m, n) for n in args.steps for m in ("euler", "heun2", "euler_phase", "heun2_phase")]
    for method, steps in runs:
        field.calls = 0
        t0 = time.perf_counter()
        out = sampler.sample_ode(method, num_steps=steps, atol=1e-6, rtol=1e-3)(x, field)[-1]
        seconds = time.perf_counter() - t0
        print(json.dumps({"bench": "bench_phase_sampler", "method": method,
                          "grid_points": steps if method != "dopri5" else None, "evaluations": field.calls,
                          "max_abs_error": (out.double() - exact).abs().max().item(),
                          "seconds": round(seconds, 3)}))


if __name__ == "__main__":
    main()
