"""A speedrun GPT trainer with a staged schedule (``python -m trainer``).

Read top to bottom:
  trainer/config.py  presets, command line + TRAINER_* environment, validation (exit 2)
  trainer/data.py    shard format, the offline tiny byte corpus, ``python -m trainer.data prepare``,
                     the BOS-aligned distributed batch loader
  trainer/model.py   the GPT (rotary, QK-norm, ReLU^2 MLP, logit softcap, sliding windows)
  trainer/optim.py   Muon (Polar Express orthogonalisation, sharded over ranks) + Adam
  trainer/train.py   the training loop, schedule, validation, timers and ``@@metrics`` output

The output contract is fixed in docs/contracts.md; docs/trainer.md describes the rest.
"""

__all__ = ["main"]


def main(argv=None):  # lazy: importing the package must not import torch
    from trainer.train import main as _main

    return _main(argv)
