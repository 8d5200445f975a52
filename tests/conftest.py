"""Test session setup.

Without CUDA the Triton kernels run under the interpreter, which triton enables only if ``TRITON_INTERPRET=1`` is set
before it is imported: set it here, before any test module imports triton, unless the caller chose a value. The
other backends never read it.
"""

import os

import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

# The experiments and `python -m perceiver` choose their thread count from the free cores (perceiver.threads) unless
# OMP_NUM_THREADS is set; pin it to the session's count so that a test that runs them leaves the count of the tests
# after it as it was.
os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
