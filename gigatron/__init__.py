"""gigatron: distributed pretraining on DeepSpeed and megatron-core."""

import os

# MKL (torch's CPU BLAS) otherwise picks its thread count per call from the machine's load, so the
# same matmul sums in a different order on a busy machine and a run stops being bitwise
# reproducible (a resumed run then drifts from an uninterrupted one by ~1e-7). Fixed thread counts
# keep CPU runs exact; a value the user set is kept.
os.environ.setdefault("MKL_DYNAMIC", "FALSE")

__version__ = "0.1.0"
