"""Training a spec on real data: :func:`train` (:mod:`.run`) and its parts, one job per module:

- :mod:`.recipe`       the paper's recipe (SGD, the lr schedule, the default epochs) and the checks of its numbers
- :mod:`.checkpoint`   the checkpoint's format and RNG states, and what a resumed run checks and restores
- :mod:`.run_folder`   ``last.pt``, ``best.pt``, ``metrics.csv``: what a run may replace, the metrics table
- :mod:`.splits`       train / val / test from a source or datasets, checked against the model
- :mod:`.distributed`  the ``torchrun`` context, the all-reduce, the device, the state digest
- :mod:`.loop`         one epoch: augmentation, precision, SGD steps, evaluation, the test figure

:mod:`.run` puts them together; the public names are exported here.
"""

from .run import (
    AMP_MODES,
    CHECKPOINT_FORMAT,
    DEFAULT_EPOCHS,
    METRICS_COLUMNS,
    RANK_DIGEST_ENV,
    graph_sha256,
    state_dict_sha256,
    train,
)

__all__ = [
    "train",
    "graph_sha256",
    "state_dict_sha256",
    "AMP_MODES",
    "DEFAULT_EPOCHS",
    "CHECKPOINT_FORMAT",
    "METRICS_COLUMNS",
    "RANK_DIGEST_ENV",
]
