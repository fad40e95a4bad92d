"""Training: the public API.

    from reslab.train import resolve, fit, resume_run
    result = fit(resolve("fast", overrides={"model": "resnet56", "data": "cifar10", "epochs": 40}))

``resolve`` builds a ``TrainConfig`` (defaults < recipe < YAML file < overrides); ``fit`` trains it
into a run folder and returns a ``RunResult``; ``resume_run`` continues a stopped run from its folder.
How the pieces fit: docs/architecture.md.
"""

from .config import TrainConfig, parse_overrides, resolve
from .loop import RunResult, fit, resume_run

__all__ = ["RunResult", "TrainConfig", "fit", "parse_overrides", "resolve", "resume_run"]
