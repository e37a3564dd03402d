"""Triton kernels (CUDA tensors; CPU tensors under TRITON_INTERPRET=1), deterministic backward.

Imported lazily by the ops when the triton backend is selected: ``triton.jit`` decides at
import time whether kernels are compiled or interpreted.

Modules: ``rois`` (reading a RoI safely, IEEE division), ``tiles`` (how the work is split
into programs, and which kernel arguments Triton specialises on), ``fixed_point`` (the
deterministic accumulator of the backward), then one file per op.
"""
