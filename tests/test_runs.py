"""roiops.cpu.runs: the masked vector add of a short run equals the scalar loop's sums."""

import numpy as np
import pytest
from numba import njit

from roiops.cpu.runs import add_to_run4, add_to_run8


@njit(cache=True)
def _add(flat, start, count, value, lanes):
    if lanes == 4:
        add_to_run4(flat, start, count, value)
    else:
        add_to_run8(flat, start, count, value)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lanes", [4, 8])
def test_adds_to_the_run_only_and_may_end_at_the_array_end(rng, dtype, lanes):
    for count in range(lanes + 1):
        for start in (0, 5, 21 - count):  # the last start ends the run at the array end
            flat = rng.standard_normal(21).astype(dtype)
            value = dtype(rng.standard_normal())
            expected = flat.copy()
            for i in range(start, start + count):
                expected[i] += value  # the scalar loop, cell by cell
            _add(flat, np.uint64(start), count, value, lanes)
            assert np.array_equal(flat.view(np.uint8), expected.view(np.uint8)), (count, start)


def test_lanes_past_the_run_are_untouched():
    # a run at the very end of an array carved out of a larger one: the lanes past it
    # would write the neighbour (adding 0 there would turn -0.0 into +0.0); it keeps
    # its NaNs and signed zero
    backing = np.array([1.0, 2.0, 3.0, np.nan, -0.0, np.nan, np.nan, np.nan], np.float32)
    flat = backing[:3]
    _add(flat, np.uint64(1), 2, np.float32(0.5), 8)
    assert flat.tolist() == [1.0, 2.5, 3.5]
    assert np.array_equal(
        backing[3:].view(np.uint32),
        np.array([np.nan, -0.0, np.nan, np.nan, np.nan], np.float32).view(np.uint32),
    )


def test_strided_arrays_are_refused_at_compile_time():
    # the run is addressed from the array's data pointer: a strided view would be
    # written in the wrong cells, so it does not type
    import numba

    flat = np.zeros(16, np.float32)[::2]
    with pytest.raises(numba.core.errors.TypingError):
        _add(flat, np.uint64(0), 2, np.float32(1.0), 4)
