"""Test session setup.

Without CUDA the Triton kernels run under the interpreter, which triton enables only if ``TRITON_INTERPRET=1`` is set
before it is imported: set it here, before any test module imports triton, unless the caller chose a value. The
other backends never read it.
"""

import os

import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
