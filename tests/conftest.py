import dataclasses
import hashlib
import importlib.util
import os
import pathlib
import sys

import torch

# Without a GPU the Triton kernels run on CPU tensors through Triton's interpreter. Set
# before anything imports triton: it reads the variable once, when kernels are defined.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numba  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# Fixed-seed hypothesis profile: the same examples on every run and machine.
settings.register_profile(
    "roiops",
    derandomize=True,
    max_examples=int(os.environ.get("ROIOPS_HYPOTHESIS_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("roiops")


def patch_the_language_once_a_launch(interpreter, tl):
    """Triton's interpreter patches ``triton.language`` for a kernel's launch
    (``GridExecutor``), and again at every call of a ``@triton.jit`` helper inside it
    (``InterpretedFunction.__call__``): a scan of the language's modules
    (``inspect.getmembers``) that took ~45% of the interpreter's time in the kernels with
    many helper calls (roi_align's backward: 70,000 calls in one test). The modules it
    patches (``triton.language`` and ``triton.language.core``, those the function's module
    names) are the same objects for every function, so once a launch has patched one,
    patching it again for a helper changes nothing. This patches each once a launch (and
    undoes the helpers' patches with the launch's); outside a launch (a helper called from
    Python) and on a Triton whose interpreter differs, everything runs as before."""
    patch_lang = getattr(interpreter, "_patch_lang", None)
    executor = getattr(interpreter, "GridExecutor", None)
    if patch_lang is None or executor is None or getattr(patch_lang, "roiops_once", False):
        return
    launch_code = executor.__call__.__code__
    launches = []  # per launch in progress: the modules patched, the helpers' scopes

    def modules(fn):
        return {v for v in fn.__globals__.values() if v is tl or v is tl.core}

    def once(fn):
        if sys._getframe(1).f_code is launch_code:  # a kernel's launch
            scope = patch_lang(fn)
            launch = {"modules": modules(fn), "helpers": []}
            restore = scope.restore

            def restore_all():
                launches.remove(launch)
                for helper in reversed(launch["helpers"]):
                    helper.restore()
                restore()

            scope.restore = restore_all
            launches.append(launch)
            return scope
        if launches and modules(fn) <= launches[-1]["modules"]:
            return None  # a helper's call (its caller ignores the scope)
        scope = patch_lang(fn)
        if launches:
            launches[-1]["helpers"].append(scope)
            launches[-1]["modules"] |= modules(fn)
        return scope

    once.roiops_once = True
    interpreter._patch_lang = once


def look_up_numpy_dtypes_in_a_table(interpreter, tl):
    """The interpreter's ``_get_np_dtype`` (Triton dtype -> NumPy dtype, ~470,000 calls in
    one test) builds its 19-entry dict, hashing each key, at every call: 11 us against
    0.4 for a lookup in a table kept between calls (~10% of the interpreter's time). The
    same answers: pointers (of blocks or not) are uint64 and a block is its element's."""
    np_dtype = getattr(interpreter, "_get_np_dtype", None)
    if np_dtype is None or getattr(np_dtype, "roiops_table", False):
        return
    table = {}

    def look_up(tt_dtype):
        if isinstance(tt_dtype, tl.block_type):
            tt_dtype = tt_dtype.element_ty
        if isinstance(tt_dtype, tl.pointer_type):
            return np.dtype(np.uint64)
        found = table.get(tt_dtype)
        if found is None:
            found = table[tt_dtype] = np_dtype(tt_dtype)
        return found

    look_up.roiops_table = True
    interpreter._get_np_dtype = look_up


def skip_the_discarded_overflow_checks(interpreter):
    """The interpreter's builder has ``sanitize_overflow`` on and ``debug`` off: every int32
    add, subtract and multiply is redone in int64 and compared with int32's range, and
    the resulting ``device_assert`` is then dropped, as every assert is without ``debug``
    (an int32 product that wraps raises nothing: checked by hand). ~40% of what the
    interpreter spends after the two fixes above, for no check; off, the same kernels and
    results. (Turning ``debug`` on would make the checks real; it might also flag int32
    arithmetic that wraps harmlessly in masked-off lanes: not tried.)"""
    builder = getattr(interpreter, "interpreter_builder", None)
    options = getattr(builder, "options", None)
    if options is None or getattr(options, "debug", True):
        return  # asserts that run: the checks count
    if getattr(options, "sanitize_overflow", False):
        builder.options = dataclasses.replace(options, sanitize_overflow=False)


def speed_up_the_interpreter():
    """The three fixes above, each applied where this Triton's interpreter has what it
    replaces."""
    try:
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:
        return
    patch_the_language_once_a_launch(interpreter, tl)
    look_up_numpy_dtypes_in_a_table(interpreter, tl)
    skip_the_discarded_overflow_checks(interpreter)


if os.environ.get("TRITON_INTERPRET") == "1":
    speed_up_the_interpreter()


def pytest_collection_modifyitems(config, items):
    if os.environ.get("ROIOPS_SLOW") == "1" or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with ROIOPS_SLOW=1 or -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


# ``ROIOPS_TEST_CLAIMS=<folder>``: pytest processes started side by side on the same tests
# share them out as they go, each running the tests it claims first (by creating a file
# named after the test in the folder, which only one process can): how
# ``benchmarks/gpu_report.py`` spreads the compiled tests, whose time is Triton's compiler,
# over a GPU machine's cores without pytest-xdist, which such a machine may lack.
CLAIMS = os.environ.get("ROIOPS_TEST_CLAIMS")


def claim(nodeid: str) -> bool:
    """Whether this process is the first to claim the test ``nodeid``."""
    name = hashlib.sha1(nodeid.encode()).hexdigest()
    try:
        os.close(os.open(os.path.join(CLAIMS, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    if not CLAIMS or claim(item.nodeid):
        return None  # pytest runs it
    # another process runs it: tear down what the next test does not share with the
    # last one run here, as this one's teardown would have
    item.session._setupstate.teardown_exact(nextitem)
    return True


def random_rois(rng, batch_size, count, image_h, image_w, min_size=-4.0, max_size=None):
    """[K, 5] float64 rois: boxes around (and partly beyond) an image of image_h x image_w,
    including degenerate (x2 <= x1) ones when min_size < 0."""
    max_size = max_size if max_size is not None else max(image_h, image_w)
    x1 = rng.uniform(-0.3 * image_w, 1.1 * image_w, count)
    y1 = rng.uniform(-0.3 * image_h, 1.1 * image_h, count)
    w = rng.uniform(min_size, max_size, count)
    h = rng.uniform(min_size, max_size, count)
    batch = rng.integers(0, max(batch_size, 1), count)
    return np.stack([batch, x1, y1, x1 + w, y1 + h], axis=1)


@pytest.fixture(autouse=True)
def roiops_variables_left_as_found():
    """No test leaves a ROIOPS_* environment variable changed: the tests that run after it
    in the same process (pytest-xdist's order varies) would see it (a leaked
    ROIOPS_FAST_LAUNCH=0 once failed tests/test_launch.py)."""
    before = {k: v for k, v in os.environ.items() if k.startswith("ROIOPS_")}
    yield
    after = {k: v for k, v in os.environ.items() if k.startswith("ROIOPS_")}
    assert after == before, f"the test changed ROIOPS_* variables: {before} -> {after}"


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def as_tensor(a, dtype):
    return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)


def results_across_thread_counts(fn):
    """fn() twice with 1 Numba thread and twice with all of them."""
    threads = numba.get_num_threads()
    results = []
    try:
        for t in sorted({1, threads}):
            numba.set_num_threads(t)
            results += [fn(), fn()]
    finally:
        numba.set_num_threads(threads)
    return results


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module (the folder is scripts, not a package)."""
    path = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
