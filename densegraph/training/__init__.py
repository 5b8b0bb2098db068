"""The parts of :func:`densegraph.train.train`, one job per module:

- :mod:`.recipe`       the paper's recipe (SGD, the lr schedule, the default epochs) and the checks of its numbers
- :mod:`.checkpoint`   the checkpoint's format and RNG states, and what a resumed run checks and restores
- :mod:`.run_folder`   ``last.pt``, ``best.pt``, ``metrics.csv``: what a run may replace, the metrics table
- :mod:`.splits`       train / val / test from a source or datasets, checked against the model
- :mod:`.distributed`  the ``torchrun`` context, the all-reduce, the device, the state digest
- :mod:`.loop`         one epoch: augmentation, precision, SGD steps, evaluation, the test figure

:mod:`densegraph.train` puts them together; import the public names from there.
"""
