"""``roiops.gpu.launch.Kernel``: a launch it makes directly runs the compiled kernel that
Triton's own ``kernel[grid](...)`` would run, with the same arguments (Triton's driver
and compiler replaced by stand-ins: ``benchmarks/launch_overhead.fake_gpu``)."""

import itertools
import math

import pytest
import torch
import triton
import triton.language as tl
from conftest import load_benchmark
from triton.runtime.jit import JITFunction

from roiops.gpu import launch
from roiops.gpu.launch import Kernel

pytestmark = pytest.mark.skipif(
    not launch.fast_launch_supported(), reason="Triton's launch convention not mirrored"
)


def _body(X, Y, n, size, scale, flag, BLOCK: tl.constexpr, MODE: tl.constexpr = 0):
    pass


def fingerprint(value, specialised=True) -> tuple:
    """What ``launch.fingerprinter`` is to give for one argument, written out: of an int
    its value mod 16, whether it is 1 and its width (its width only where Triton does
    not specialise it); of a tensor its dtype and address mod 16; of a float, bool or
    None nothing; of anything else its value."""
    if type(value) is int:
        width = (-(2**31) <= value <= 2**31 - 1, value <= 2**63 - 1)
        return (value & 15, value == 1, *width) if specialised else width
    if isinstance(value, torch.Tensor):
        return value.dtype, value.data_ptr() & 15
    if type(value) in (float, bool, type(None)):
        return ()
    return (value,)


def direct(triton_s: tuple, addresses: bool = False) -> tuple:
    """What a direct launch passes the compiled kernel where Triton passes ``triton_s``
    (grid, stream, function, packed metadata, launch metadata, enter hook, exit hook,
    arguments...): no launch metadata and no hooks where Triton's hook chains are empty
    (``launch.launch_hooks``); with ``addresses``, each tensor's address for the tensor."""
    head, hooks, arguments = triton_s[:6], triton_s[6:9], triton_s[9:]
    if launch.launch_hooks() == (None, None):
        hooks = (None, None, None)
    if addresses:
        arguments = tuple(a.data_ptr() if isinstance(a, torch.Tensor) else a for a in arguments)
    return (*head, *hooks, *arguments)


@pytest.fixture
def kernel():
    # a compiled-kernel JITFunction whatever TRITON_INTERPRET says (triton.jit would make
    # an interpreted one in this test process); ``size`` unspecialised, as tiles.kernel does
    return Kernel(JITFunction(_body, do_not_specialize=["size"]))


INTS = (0, 1, 2, 15, 16, 17, 48, -16, -17, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1,
        2**32, 2**63 - 1, 2**63)  # fmt: skip


def test_direct_launches_run_the_kernel_triton_would_with_its_arguments(kernel):
    fake = load_benchmark("launch_overhead")
    base = torch.zeros(64)
    half = torch.zeros(64, dtype=torch.float16)
    # 16-byte aligned or not (Triton specialises on it), float32 or float16
    tensors = (base, base[1:], base[2:], base[4:], half, half[1:], half[8:])
    calls = []
    for x, n, size in itertools.product(tensors, INTS, (5, 2**31, 1)):
        calls.append(((x, base[2:], n, size, 0.5, True), {"BLOCK": 32}))
    calls += [((base, base, 16, 7, 2.0, False), {"BLOCK": 64, "MODE": 2, "num_warps": 2}),
              ((base, base, 16, 7, 2.0, False), {"MODE": 2, "BLOCK": 64, "num_warps": 2}),
              ((base, base, 16, 7, 2.0, False), {"BLOCK": 64, "num_warps": 4})]  # fmt: skip
    # ints by name, in any order (the key then holds their values)
    calls += [((base, base), dict(n=17, size=7, scale=2.0, flag=True, BLOCK=64)),
              ((base, base), dict(BLOCK=64, flag=True, scale=2.0, size=7, n=1))]  # fmt: skip
    with fake.fake_gpu():
        for round_ in range(2):  # the first sees each call once (Triton's path), then direct
            for args, kwargs in calls:
                grid = (3, 1, 2)
                entries = len(kernel.table)
                ours = kernel[grid](*args, **kwargs)
                launched = ours.launches[-1]
                theirs = kernel.jit[grid](*args, **kwargs)
                assert ours is theirs, (round_, args[2:4], kwargs)
                if len(kernel.table) > entries:  # a call not seen: Triton's own launch
                    assert launched == theirs.launches[-1]  # grid, stream, ..., every argument
                else:
                    assert launched == direct(theirs.launches[-1])
                assert launched[:3] == grid and len(launched) == 9 + 8
    # Triton's specialisations, each once: 1 is a constant, 16 | n, i32 / i64 / u64
    assert 10 < len(kernel.table) <= launch.MAX_ENTRIES
    compiled = {entry[0].key for entry in kernel.table.values()}
    assert len(compiled) < len(kernel.table)  # entries finer than Triton's choices


def test_what_triton_s_path_takes(kernel, monkeypatch):
    fake = load_benchmark("launch_overhead")
    x = torch.zeros(8)
    with fake.fake_gpu():
        kernel[(1,)](x, x, 3, 4, 1.0, False, BLOCK=8)
        assert len(kernel.table) == 1
        kernel[(1,)](x, Y=x, n=3, size=4, scale=1.0, flag=False, BLOCK=8)  # a tensor by name
        assert len(kernel.table) == 1
        # switched off, a grid function, an argument that cannot be hashed: Triton's path
        monkeypatch.setenv(launch.ENV_VAR, "0")
        kernel[(1,)](x, x, 5, 4, 1.0, False, BLOCK=8)
        monkeypatch.delenv(launch.ENV_VAR)
        kernel[lambda meta: (1,)](x, x, 6, 4, 1.0, False, BLOCK=8)
        hooked = []
        kernel.jit.add_pre_run_hook(lambda *args, **kwargs: hooked.append(args[2]))
        kernel[(1,)](x, x, 3, 4, 1.0, False, BLOCK=8)  # (a call the table has)
        assert hooked == [3]
        kernel.jit.pre_run_hooks.clear()
        with pytest.raises(TypeError, match="failed to specialize"):  # Triton's error
            kernel[(1,)](x, x, [7], 4, 1.0, False, BLOCK=8)
        assert len(kernel.table) == 1
        # a full table starts again
        monkeypatch.setattr(launch, "MAX_ENTRIES", 2)
        for n in (16, 17, 18):
            kernel[(1,)](x, x, n, 4, 1.0, False, BLOCK=8)
        # (device, switches, kwargs, types, (X's 2, Y's 2, n's 4, size's width, ...))
        ns = [key[4][4:10] for key in kernel.table]
        expected = [(*fingerprint(n), *fingerprint(4, False)) for n in (17, 18)]
        assert ns == expected
        with pytest.raises(TypeError):  # too many arguments: Triton's path, Triton's error
            kernel[(1,)](x, x, 3, 4, 1.0, False, 8, 0, 9)


def test_a_changed_global_takes_triton_s_path(kernel, monkeypatch):
    # Triton records the globals a kernel read when it compiles it (here by hand: the
    # stand-in compiler does not) and refuses a launch once one has changed; the direct
    # launch checks the same, the same object first (comparing tl.constexpr objects is slow)
    fake = load_benchmark("launch_overhead")
    x = torch.zeros(8)
    scope = {"PARTS": tl.constexpr(128)}
    through_triton = []
    run = kernel.jit.run
    monkeypatch.setattr(kernel.jit, "run", lambda *a, **k: through_triton.append(1) or run(*a, **k))
    with fake.fake_gpu():
        kernel[(1,)](x, x, 3, 4, 1.0, False, BLOCK=8)
        kernel.jit.used_global_vals[("PARTS", id(scope))] = (scope["PARTS"], scope)
        kernel[(1,)](x, x, 3, 4, 1.0, False, BLOCK=8)
        scope["PARTS"] = tl.constexpr(128)  # another object of the same value
        kernel[(1,)](x, x, 3, 4, 1.0, False, BLOCK=8)
        assert len(through_triton) == 1  # the first call only
        scope["PARTS"] = tl.constexpr(64)
        with pytest.raises(RuntimeError, match="PARTS has changed"):
            kernel[(1,)](x, x, 3, 4, 1.0, False, BLOCK=8)


def test_a_launch_repeats_what_triton_would_launch(kernel, monkeypatch):
    # a launcher's ``Launch``: the first call through ``Kernel``, the next ones directly,
    # each what Triton's own path launches for the same arguments; a call whose tensors
    # Triton would specialise otherwise goes through ``Kernel`` again
    fake = load_benchmark("launch_overhead")
    base = torch.zeros(64)
    half = torch.zeros(64, dtype=torch.float16)
    through_kernel = []
    via = kernel._launch
    monkeypatch.setattr(kernel, "_launch", lambda *a, **k: through_kernel.append(1) or via(*a, **k))
    repeat = launch.Launch(kernel, (3, 1, 2), (17, 2**31, 0.5, True), BLOCK=32, num_warps=2)
    calls = [  # (X, Y), and whether the call goes through Kernel
        ((base, base[4:]), True),
        ((base[8:], base[12:]), False),  # other tensors, the same dtype and alignment
        ((base[1:], base[4:]), True),  # X not 16-byte aligned: another compiled kernel
        ((base[1:], base[8:]), False),
        ((half, base), True),  # another dtype
        ((base, base[4:]), True),  # back
        ((base[2:], base[4:]), True),  # X 8-byte aligned, not 16: another compiled kernel
        ((base, base[4:]), True),
    ]
    with fake.fake_gpu():
        for i, (tensors, via_kernel) in enumerate(calls):
            entries = len(kernel.table)
            ours = repeat(*tensors)
            launched = ours.launches[-1]
            assert len(through_kernel) == sum(f for _, f in calls[: i + 1]), i
            theirs = kernel.jit[(3, 1, 2)](*tensors, 17, 2**31, 0.5, True, BLOCK=32, num_warps=2)
            assert ours is theirs, i
            # grid, stream, ..., every argument: Triton's own launch where Kernel had not
            # seen the call; the tensors' addresses where Launch launched directly
            if len(kernel.table) > entries:
                assert launched == theirs.launches[-1], i
            else:
                assert launched == direct(theirs.launches[-1], addresses=not via_kernel), i
        # switched off, or a pre-run hook: Triton's path, every call
        monkeypatch.setenv(launch.ENV_VAR, "0")
        repeat(base, base[4:])
        monkeypatch.delenv(launch.ENV_VAR)
        hooked = []
        kernel.jit.add_pre_run_hook(lambda *args, **kwargs: hooked.append(1))
        repeat(base, base[4:])
        assert len(through_kernel) == 6 and hooked == [1]
        kernel.jit.pre_run_hooks.clear()
        # a changed global: Triton's refusal, as a direct launch through Kernel gets it
        scope = {"PARTS": tl.constexpr(128)}
        kernel.jit.used_global_vals[("PARTS", id(scope))] = (scope["PARTS"], scope)
        repeat(base, base[4:])
        assert len(through_kernel) == 6
        scope["PARTS"] = tl.constexpr(64)
        with pytest.raises(RuntimeError, match="PARTS has changed"):
            repeat(base, base[4:])


def test_a_direct_launch_gives_addresses_and_a_launch_hook_what_triton_gives(kernel, monkeypatch):
    # Launch's direct launches pass the tensors' addresses and no hooks while Triton's hook
    # chains are empty; with a hook in a chain (a profiler), what Triton passes: the
    # tensors, the launch's metadata and the chains. A tensor on another device than the
    # first call's takes Kernel's path, where Triton's launcher checks its address.
    fake = load_benchmark("launch_overhead")
    x, y = torch.zeros(64), torch.zeros(64)
    through_kernel = []
    via = kernel._launch
    monkeypatch.setattr(kernel, "_launch", lambda *a, **k: through_kernel.append(1) or via(*a, **k))
    repeat = launch.Launch(kernel, (2,), (3, 4, 1.0, False), BLOCK=8)
    metadata = object()
    with fake.fake_gpu():
        repeat(x, y)
        monkeypatch.setattr(fake.FakeCompiled, "launch_metadata", lambda *a: metadata)
        launched = repeat(x, y[4:]).launches[-1]
        assert launched[6:] == (None, None, None, x.data_ptr(), y.data_ptr() + 16, 3, 4, 1.0,
                                False, 8, 0)  # fmt: skip
        assert launch.launch_hooks() == (None, None)
        seen = []
        enter = triton.knobs.runtime.launch_enter_hook
        enter.add(seen.append)
        try:
            assert launch.launch_hooks() == (enter, triton.knobs.runtime.launch_exit_hook)
            launched = repeat(x, y).launches[-1]
            assert launched[6:8] == (metadata, enter) and launched[9:11] == (x, y)
        finally:
            enter.remove(seen.append)
        assert len(through_kernel) == 1
        monkeypatch.setattr(torch.Tensor, "get_device", lambda self: 1)
        repeat(x, y)
        assert len(through_kernel) == 2


def test_a_launch_of_a_stand_in_kernel_calls_it():
    # (benchmarks/host_overhead.py's stand-ins, and any kernel that is not a Kernel)
    calls = []

    class StandIn:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: calls.append((grid, args, kwargs))

    x = torch.zeros(4)
    launch.Launch(StandIn(), (2,), (5,), BLOCK=8)(x)
    assert calls == [((2,), (x, 5), {"BLOCK": 8})]


@pytest.mark.parametrize("specialised", [True, False])
def test_generated_fingerprints_are_the_arguments_fingerprints(specialised):
    base = torch.zeros(8)
    args = (base, base[2:], base[1:].half(), *INTS, 0.5, True, None, "text",
            torch.nn.Parameter(base))  # fmt: skip
    expected = [part for value in args for part in fingerprint(value, specialised)]
    types = tuple(map(type, args))
    assert launch.fingerprinter(types, (specialised,) * len(args))(*args) == tuple(expected)
    assert len(expected) == 2 * 4 + len(INTS) * (4 if specialised else 2) + 1


def test_interpreted_kernels_are_launched_by_triton(monkeypatch):
    # the interpreter (CPU tests) and Triton versions whose launch is not mirrored
    interpreted = triton.runtime.interpreter.InterpretedFunction(_body)
    assert not Kernel(interpreted).fast
    monkeypatch.setattr(launch, "FAST_VERSIONS", ((9, 0), (9, 9)))
    assert not Kernel(JITFunction(_body)).fast


def test_a_kernel_answers_as_its_jit_function(kernel):
    import copy

    assert kernel.__name__ == "_body" and kernel.arg_names[:2] == ["X", "Y"]
    assert [p.name for p in kernel.params if p.do_not_specialize] == ["size"]
    assert copy.copy(kernel).jit is kernel.jit  # (no recursion through __getattr__)


def test_host_cdiv_and_next_power_of_2_are_triton_s():
    # the launchers' grid arithmetic in plain Python (Triton's host-side cdiv and
    # next_power_of_2 are constexpr functions, ~1.45 us a call): the same values
    from roiops.gpu.tiles import cdiv, next_power_of_2

    values = [*range(0, 1100), 2**31 - 1, 2**31, 2**31 + 1, 2**40 + 3]
    for n in values:
        assert next_power_of_2(n) == triton.next_power_of_2(n), n
        for d in (1, 7, 16, 32, 49, 4096):
            assert cdiv(n, d) == triton.cdiv(n, d), (n, d)


def test_the_launchers_cached_launches_are_the_ones_they_would_compute(monkeypatch):
    # a forward launcher keeps its launch by a key of the call's sizes, parameters and
    # settings (tiles.cached): whatever setting changed since it was kept, it launches
    # what it computes afresh (grid, values and keyword arguments; its tensors' shapes)
    from roiops.gpu import multi_scale_roi_align as gpu_pyramid
    from roiops.gpu import prroi_pool as gpu_prroi
    from roiops.gpu import ps_roi_pool as gpu_ps_pool
    from roiops.gpu import roi_align as gpu_align
    from roiops.gpu import roi_align_rotated as gpu_rotated
    from roiops.gpu import roi_pool as gpu_pool
    from roiops.gpu import tiles

    launched = _record_launches(monkeypatch, [
        (gpu_align, "roi_align_forward_kernel"), (gpu_align, "roi_align_forward_nhwc_kernel"),
        (gpu_pool, "roi_pool_forward_kernel"), (gpu_pool, "roi_pool_forward_nhwc_kernel"),
        (gpu_ps_pool, "ps_roi_pool_forward_kernel"),
        (gpu_pyramid, "multi_scale_roi_align_forward_kernel"),
        (gpu_pyramid, "multi_scale_roi_pool_forward_kernel"),
        (gpu_pyramid, "multi_scale_roi_align_rotated_forward_kernel"),
        (gpu_prroi, "prroi_pool_forward_kernel"),
        (gpu_rotated, "roi_align_rotated_forward_kernel"),
    ])  # fmt: skip
    x = torch.zeros(2, 8, 10, 12)
    nhwc = x.contiguous(memory_format=torch.channels_last)
    scores = torch.zeros(1, 2 * 9, 6, 6)
    rois = torch.tensor([[0, 1.0, 1.0, 6.0, 7.0], [1, 0.0, 2.0, 9.0, 5.0]])
    pyramid, levels = [x, torch.zeros(2, 8, 5, 6)], torch.tensor([0, 1])
    rotated = torch.tensor([[0, 4.0, 4.0, 5.0, 6.0, 30.0], [1, 6.0, 3.0, 9.0, 3.0, -45.0]])
    calls = [
        lambda: gpu_align.roi_align_forward(x, rois, 0.5, 3, 3, 2, True, False),
        lambda: gpu_align.roi_align_forward(x, rois, 0.5, 3, 3, 0, False, True),
        lambda: gpu_align.roi_align_forward(nhwc, rois, 0.5, 3, 3, 0, True, False),
        lambda: gpu_align.roi_align_forward(scores, rois, 0.5, 3, 3, 2, True, False, True),
        lambda: gpu_pool.roi_pool_forward(x, rois, 0.5, 3, 3),
        lambda: gpu_pool.roi_pool_forward(x, rois, 0.5, 3, 3, with_argmax=False),
        lambda: gpu_pool.roi_pool_forward(nhwc, rois, 0.5, 3, 3),
        lambda: gpu_pool.roi_pool_forward(x, rois, 0.5, 3, 3, nhwc=True),
        lambda: gpu_ps_pool.ps_roi_pool_forward(scores, rois, 0.5, 3, 3),
        lambda: gpu_pyramid.multi_scale_roi_align_forward(
            pyramid, rois, levels, (0.5, 0.25), 3, 3, 0, True
        ),  # fmt: skip
        lambda: gpu_pyramid.multi_scale_roi_align_forward(
            pyramid, rois, levels, (0.5, 0.25), 3, 3, 2, False
        ),  # fmt: skip
        lambda: gpu_pyramid.multi_scale_roi_pool_forward(
            pyramid, rois, levels, (0.5, 0.25), 3, 3
        ),  # fmt: skip
        lambda: gpu_prroi.prroi_pool_forward(x, rois, 0.5, 3, 3),
        lambda: gpu_rotated.roi_align_rotated_forward(x, rotated, 0.5, 3, 3, 0, True, True, False),
        lambda: gpu_pyramid.multi_scale_roi_align_rotated_forward(
            pyramid, rotated, levels, (0.5, 0.25), 3, 3, 0, True, True, False
        ),  # fmt: skip
    ]
    adaptive = (1, 9, 13, 14)  # (the calls that sample an adaptive grid from an NCHW map)

    def launches():
        launched.clear()
        for call in calls:
            call()
        return list(launched)

    # (REUSE_LOADS also "adaptive", for the adaptive grids alone, and "wide", for rows of
    # REUSE_MIN_POINTS points or more: a fixed grid's 2 with 2, none with 5)
    ratios = {0: 2, 1: 0, 3: 2, 9: 0, 10: 2}  # (the NCHW roi_align calls' sampling ratios)
    settings = {(gpu_align, "REUSE_LOADS"): (False, True, "adaptive", "wide"),
                (gpu_align, "REUSE_MIN_POINTS"): (2, 5),
                (gpu_pool, "VISIT_2X2"): (False, True),
                (tiles, "GATHER_ROIS_INNER"): (False, True),
                (tiles, "ADAPTIVE_ROIS_INNER"): (False, True)}  # fmt: skip
    launches()  # kept under the settings as they are
    seen = set()
    for values in itertools.product(*settings.values()):
        for (module, name), value in zip(settings, values, strict=True):
            monkeypatch.setattr(module, name, value)
        kept = launches()
        tiles.clear_caches()
        fresh = launches()
        assert len(fresh) == len(calls) and kept == fresh, values
        # each setting where it belongs (``adaptive``: its own program order)
        for i, (_, _, _, kwargs) in enumerate(fresh):
            inner = tiles.ADAPTIVE_ROIS_INNER if i in adaptive else tiles.GATHER_ROIS_INNER
            assert kwargs["ROIS_INNER"] == inner, (values, i)
            if i in ratios:
                reuse = gpu_align.reuse_loads(ratios[i])
                assert (kwargs["REUSE"], kwargs["REUSE_MIN"]) == reuse, (values, i)
            assert kwargs.get("VISIT_2X2", gpu_pool.VISIT_2X2) == gpu_pool.VISIT_2X2
        seen.add(repr(fresh))
    # (REUSE_MIN_POINTS matters with "wide" alone: 3 + 2 states of the two)
    assert len(seen) == 5 * math.prod(len(choices) for choices in list(settings.values())[2:])
    monkeypatch.undo()
    tiles.clear_caches()


def test_reuse_loads_says_which_rows_reuse_their_loads(monkeypatch):
    # (REUSE, REUSE_MIN) of roi_align's NCHW forward launches by REUSE_LOADS and the
    # sampling ratio (0: an adaptive grid, whose rows' points the kernel counts per RoI)
    from roiops.gpu import roi_align as gpu_align

    monkeypatch.setattr(gpu_align, "REUSE_MIN_POINTS", 5)
    expected = {
        False: {0: (False, 0), -1: (False, 0), 2: (False, 0), 6: (False, 0)},
        True: {0: (True, 0), -1: (True, 0), 2: (True, 0), 6: (True, 0)},
        "adaptive": {0: (True, 0), -1: (True, 0), 2: (False, 0), 6: (False, 0)},
        "wide": {0: (True, 5), -1: (True, 5), 2: (False, 0), 4: (False, 0), 5: (True, 0)},
    }
    for setting, by_ratio in expected.items():
        monkeypatch.setattr(gpu_align, "REUSE_LOADS", setting)
        for ratio, answer in by_ratio.items():
            assert gpu_align.reuse_loads(ratio) == answer, (setting, ratio)
    # a setting that is none of these says so (not "always", as a truthy string would)
    monkeypatch.setattr(gpu_align, "REUSE_LOADS", "Wide")
    with pytest.raises(ValueError, match="REUSE_LOADS: 'Wide' is none of"):
        gpu_align.reuse_loads(0)


def _record_launches(monkeypatch, kernels) -> list:
    """Each of ``kernels`` ((module, name) pairs) replaced by a recorder that launches
    nothing and appends ``(name, grid, arguments, keyword arguments)`` to the list
    returned (a tensor argument as its shape, strides and dtype); the launches kept
    (``tiles.cached``) are emptied, which hold the kernels."""
    from roiops.gpu import tiles

    launched = []

    class Recorder:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            def record(*args, **kwargs):
                args = [(a.shape, a.stride(), a.dtype) if torch.is_tensor(a) else a for a in args]
                launched.append((self.name, grid, args, kwargs))

            return record

    for module, name in kernels:
        monkeypatch.setattr(module, name, Recorder(name))
    tiles.clear_caches()
    return launched


def test_the_backward_launches_kept_are_the_ones_they_would_compute(monkeypatch):
    # the backward's launches (the scatters, zeroing and conversion) are kept by keys of
    # the call's sizes, parameters and settings too: after any one setting changes, each
    # launches what it computes afresh, and the setting where it belongs
    from roiops.gpu import fixed_point, tiles
    from roiops.gpu import multi_scale_roi_align as gpu_pyramid
    from roiops.gpu import prroi_pool as gpu_prroi
    from roiops.gpu import ps_roi_pool as gpu_ps_pool
    from roiops.gpu import roi_align as gpu_align
    from roiops.gpu import roi_align_rotated as gpu_rotated
    from roiops.gpu import roi_pool as gpu_pool

    launched = _record_launches(monkeypatch, [
        (gpu_align, "roi_align_backward_kernel"), (gpu_align, "ps_roi_align_backward_kernel"),
        (gpu_pool, "roi_pool_backward_kernel"), (gpu_ps_pool, "ps_roi_pool_backward_kernel"),
        (fixed_point, "zero_and_bound_kernel"), (fixed_point, "fixed_point_to_float_kernel"),
        (fixed_point, "fixed_point_bands_to_float_kernel"),
        (gpu_pyramid, "multi_scale_roi_align_backward_kernel"),
        (gpu_pyramid, "multi_scale_roi_pool_backward_kernel"),
        (gpu_pyramid, "multi_scale_roi_align_rotated_backward_kernel"),
        (gpu_align, "roi_align_regions_kernel"), (gpu_pool, "roi_pool_regions_kernel"),
        (fixed_point, "zero_regions_and_bound_kernel"),
        (gpu_prroi, "prroi_pool_backward_kernel"),
        (gpu_rotated, "roi_align_rotated_backward_kernel"),
    ])  # fmt: skip
    monkeypatch.setattr(fixed_point, "TORCH_BOUND_GRADIENTS", 2**62)  # (the kernel's bound)
    x = torch.zeros(2, 8, 10, 12)
    scores = torch.zeros(1, 2 * 9, 6, 6)
    rois = torch.tensor([[0, 1.0, 1.0, 6.0, 7.0], [1, 0.0, 2.0, 9.0, 5.0]])
    pyramid, levels = [x, torch.zeros(2, 8, 5, 6)], torch.tensor([0, 1])
    rotated = torch.tensor([[0, 4.0, 4.0, 5.0, 6.0, 30.0], [1, 6.0, 3.0, 9.0, 3.0, -45.0]])
    grad, ps_grad = torch.zeros(2, 8, 3, 3), torch.zeros(2, 2, 3, 3)
    argmax = torch.zeros(2, 8, 3, 3, dtype=torch.int32).permute(0, 2, 3, 1)
    calls = [
        lambda: gpu_align.roi_align_backward(
            grad, rois, None, torch.empty_like(x), 0.5, 3, 3, 2, True
        ),  # fmt: skip
        lambda: gpu_align.roi_align_backward(
            grad, rois, argmax, torch.empty_like(x), 0.5, 3, 3, 0, False
        ),  # fmt: skip
        lambda: gpu_align.roi_align_backward(
            ps_grad, rois, None, torch.empty_like(scores), 0.5, 3, 3, 2, True, True
        ),  # fmt: skip
        lambda: gpu_pool.roi_pool_backward(grad, rois, argmax, torch.empty_like(x), 0.5),
        lambda: gpu_ps_pool.ps_roi_pool_backward(ps_grad, rois, torch.empty_like(scores), 0.5),
        lambda: gpu_pyramid.multi_scale_roi_align_backward(
            grad, rois, levels, (0.5, 0.25), [torch.empty_like(p) for p in pyramid], 2, True
        ),
        lambda: gpu_pyramid.multi_scale_roi_pool_backward(
            grad, argmax, rois, levels, [torch.empty_like(p) for p in pyramid]
        ),
        lambda: gpu_prroi.prroi_pool_backward(grad, rois, torch.empty_like(x), 0.5),
        lambda: gpu_rotated.roi_align_rotated_backward(
            grad, rotated, torch.empty_like(x), 0.5, 3, 3, 2, True, True, False
        ),
        lambda: gpu_pyramid.multi_scale_roi_align_rotated_backward(
            grad,
            rotated,
            levels,
            (0.5, 0.25),
            [torch.empty_like(p) for p in pyramid],
            0,
            True,
            True,
            False,
        ),  # fmt: skip
    ]

    def launches():
        launched.clear()
        for call in calls:
            call()
        return list(launched)

    flips = [(gpu_align, "SPAN", 4), (gpu_align, "PS_LANES", False), (gpu_pool, "RUNS", False),
             (tiles, "SCATTER_ROIS_INNER", False), (gpu_ps_pool, "BAND", 2),
             (fixed_point, "BAND_TILE", 16), (gpu_pool, "REGIONS", True),
             (gpu_align, "REGIONS", True)]  # fmt: skip
    launches()  # kept under the settings as they are
    for module, name, value in flips:
        for setting in (value, getattr(module, name)):  # changed, and back
            monkeypatch.setattr(module, name, setting)
            kept = launches()
            tiles.clear_caches()
            fresh = launches()
            assert kept == fresh, (name, setting)
            for kernel, _, _, kwargs in fresh:
                assert kwargs.get("SPAN", gpu_align.SPAN) == gpu_align.SPAN
                assert kwargs.get("RUNS", gpu_pool.RUNS) == gpu_pool.RUNS
                if kernel.endswith("backward_kernel"):
                    assert kwargs["ROIS_INNER"] == tiles.SCATTER_ROIS_INNER
                if kernel == "ps_roi_pool_backward_kernel":
                    assert kwargs["BAND"] == gpu_ps_pool.BAND
                if kernel == "roi_pool_backward_kernel":
                    assert kwargs["REGIONS"] == gpu_pool.REGIONS
            names = [kernel for kernel, *_ in fresh]
            for op in (gpu_align, gpu_pool):  # (their sums in regions, each a kernel)
                regions = f"{op.__name__.split('.')[-1]}_regions_kernel"
                assert (regions in names) == op.REGIONS
            assert ("ps_roi_align_backward_kernel" in names) == gpu_align.PS_LANES
            assert ("fixed_point_bands_to_float_kernel" in names) == (gpu_ps_pool.BAND > 0)
            if gpu_ps_pool.BAND:  # the bands' conversion: BAND_TILE // 8 (cells a row) channels
                ((_, _, _, kwargs),) = (f for f in fresh if f[0].startswith("fixed_point_bands"))
                assert kwargs["BLOCK_C"] == min(32, fixed_point.BAND_TILE // 8)
    monkeypatch.undo()
    tiles.clear_caches()


def test_the_host_time_proxy_runs_every_row():
    # benchmarks/host_overhead.py: every row through the CUDA path's code, the kernels
    # compiled and launched against stand-ins (its own process: compiled kernels)
    import os
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(root / "benchmarks" / "host_overhead.py"),
                          "--calls", "2"], capture_output=True, text=True, env=env,
                         cwd=root, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    rows = run.stdout.splitlines()[1:]
    assert len(rows) == 14 and all(float(row.split()[-1]) > 0 for row in rows), run.stdout
