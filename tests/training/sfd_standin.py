"""A stand-in SFD objective for the trainer tests, until `Transport.training_losses` takes
`repa_target=` itself: the rectified-flow terms plus

    repa_loss = 0.5 * mean((pred - repa_target[:, :C])^2)   (a gradient that depends on the target)
    probe     = 1000 * (1 + mean(pred^2))                   (log-only: its name does not end in loss)

Run as a script it is train.py with this objective (the launcher can start it on 2 processes):

    python tests/training/sfd_standin.py CONFIG [key=value ...]
"""
import sys

import training.dit
from transport.transport import mean_flat


class RepaStandIn:
    """Wraps a Transport: the same draws and terms, plus the two above."""

    def __init__(self, base, use_target: bool = True):
        self.base, self.use_target = base, use_target

    def sample_t(self, *args, **kwargs):
        return self.base.sample_t(*args, **kwargs)

    def lognorm_active(self, step):
        return self.base.lognorm_active(step)

    def training_losses(self, model, x1, model_kwargs=None, t=None, x0=None, *, repa_target, **kwargs):
        terms = self.base.training_losses(model, x1, model_kwargs, t, x0, **kwargs)
        pred = terms["pred"]
        target = repa_target[:, :pred.shape[1]].to(pred)
        if not self.use_target:
            target = target.mean() * 0
        terms["repa_loss"] = 0.5 * mean_flat((pred - target) ** 2)
        terms["probe"] = 1000 * (1 + mean_flat(pred.float() ** 2))
        return terms


def install(use_target: bool = True):
    """Make training.dit build the stand-in; returns the original builder."""
    original = training.dit.build_transport
    training.dit.build_transport = lambda cfg: RepaStandIn(original(cfg), use_target)
    return original


if __name__ == "__main__":
    import train

    install()
    train.main(sys.argv[1:])
