"""Compile every Triton kernel for a Hopper GPU (sm_90), no GPU needed: run as a script
(``python tests/triton_compile_check.py [--lean] [fp32 fp16 bf16 fp64]``, all four by
default). ``--lean`` (the default test suite's) compiles float32 in full and, in the other
dtypes, only what their element type changes: aligned boxes (the rois of float16 and
bfloat16 maps are float32, so their box arithmetic is float32's) and the variants the
launchers run by default, not the alternatives that are off (``REUSE_LOADS``,
``REGIONS``, ps_roi_pool's ``BAND``, ``VISIT_2X2``).

Triton's interpreter (how the other tests run the kernels here) accepts code that the
compiler rejects, e.g. a non-constexpr global; this catches it on CPU-only machines.
Each kernel is compiled at its launch configuration, and checked in its PTX and in what
Triton's own ptxas reports:
- no approximate float32 division (``div.full.f32``, ``div.approx.f32``): compiled Triton
  divides float32 approximately unless told otherwise, and a quotient that is floored
  or ceiled would then pick other cells than torchvision's IEEE division;
- half-precision outputs rounded from float32 to nearest (``cvt.rn``), as torch rounds
  (Triton's interpreter truncates to bfloat16, so only the compiled code can show it);
- registers per thread, and the fp32/fp16/bf16 kernels must not spill more than
  ``SPILL_ALLOWANCE`` bytes (a regression guard for speed that needs no GPU; fp64 may);
- where a kernel's point is coalesced memory access, the layouts Triton chose for it
  (the fixed-point conversion's stores, the argmax backward's loads).
"""

import contextlib
import inspect
import io
import os
import re
import subprocess
import sys
import tempfile

os.environ["TRITON_INTERPRET"] = "0"  # before triton.jit runs on the kernels
# Triton runs ptxas -v on every kernel it compiles: its log gives the registers and spills
# (the same figures as a ptxas run of our own, checked on every float32 kernel with Triton
# 3.8), which saves running ptxas twice; a kernel from Triton's cache has no log
os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from roiops.gpu.bezier_align import (  # noqa: E402
    bezier_align_backward_kernel,
    bezier_align_forward_kernel,
)
from roiops.gpu.crop_and_resize import (  # noqa: E402
    crop_and_resize_backward_kernel,
    crop_and_resize_box_backward_kernel,
    crop_and_resize_forward_kernel,
)
from roiops.gpu.deform_ps_roi_pool import (  # noqa: E402
    deform_ps_roi_pool_backward_kernel,
    deform_ps_roi_pool_forward_kernel,
    deform_ps_roi_pool_offset_backward_kernel,
)
from roiops.gpu.deform_roi_pool import (  # noqa: E402
    deform_roi_pool_backward_kernel,
    deform_roi_pool_forward_kernel,
    deform_roi_pool_offset_backward_kernel,
)
from roiops.gpu.fixed_point import (  # noqa: E402
    BAND_TILE,
    CONVERT_CELLS,
    CONVERT_CHANNELS,
    REGION_CELLS,
    REGION_CHANNELS,
    REGION_ROIS,
    REGION_ROWS,
    ZERO_BLOCK,
    ZERO_WARPS,
    amax_block,
    fixed_point_bands_to_float_kernel,
    fixed_point_to_float_kernel,
    zero_and_bound_kernel,
    zero_regions_and_bound_kernel,
)
from roiops.gpu.multi_scale_roi_align import (  # noqa: E402
    multi_scale_roi_align_backward_kernel,
    multi_scale_roi_align_forward_kernel,
    multi_scale_roi_align_rotated_backward_kernel,
    multi_scale_roi_align_rotated_forward_kernel,
    multi_scale_roi_pool_backward_kernel,
    multi_scale_roi_pool_forward_kernel,
)
from roiops.gpu.orientations import turn_orientations_kernel  # noqa: E402
from roiops.gpu.prroi_pool import (  # noqa: E402
    prroi_pool_backward_kernel,
    prroi_pool_box_backward_kernel,
    prroi_pool_forward_kernel,
)
from roiops.gpu.ps_roi_pool import (  # noqa: E402
    BAND,
    ps_roi_pool_backward_kernel,
    ps_roi_pool_forward_kernel,
)
from roiops.gpu.roi_align import (  # noqa: E402
    ONNX_MAX_MODE,
    SPAN,
    ps_roi_align_backward_kernel,
    roi_align_backward_kernel,
    roi_align_box_backward_kernel,
    roi_align_forward_kernel,
    roi_align_forward_nhwc_kernel,
    roi_align_regions_kernel,
)
from roiops.gpu.roi_align_rotated import (  # noqa: E402
    roi_align_rotated_backward_kernel,
    roi_align_rotated_forward_kernel,
)
from roiops.gpu.roi_point_sample import (  # noqa: E402
    roi_point_sample_backward_kernel,
    roi_point_sample_forward_kernel,
)
from roiops.gpu.roi_pool import (  # noqa: E402
    roi_pool_backward_kernel,
    roi_pool_forward_kernel,
    roi_pool_forward_nhwc_kernel,
    roi_pool_regions_kernel,
)
from roiops.gpu.tiles import (  # noqa: E402
    UNSPECIALISED,
    bin_channels_grid,
    bins_grid,
    roi_channels_grid,
    roi_outputs_grid,
)

TARGET = GPUTarget("cuda", 90, 32)
# ps_roi_pool's scatter as differences in bands of rows: the launcher's BAND, or 8 rows
# where the launcher scatters to every cell (BAND 0; the bands' kernels an alternative)
PS_BAND = BAND or 8
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
                "fp64": torch.float64}  # fmt: skip
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
APPROXIMATE_DIVISION = re.compile(r"\bdiv\.(full|approx)(\.ftz)?\.f32\b")
# float32 -> half conversions other than round-to-nearest-even (torch's rounding)
INEXACT_HALF_ROUNDING = re.compile(r"\bcvt\.r[zmp]\.(bf16|f16)(x2)?\.f32\b")
NEAREST_HALF_ROUNDING = re.compile(r"\bcvt\.rn\.(bf16|f16)(x2)?\.f32\b")
# integer arguments that hold 64-bit values
INT64_ARGS = (
    "scale_bits",
    "gamma_bits",
    "trans_std_bits",
    "S0",
    "S1",
    "S2",
    "S3",
    "S4",
    "O1",
    "O2",
    "O3",
    "O4",
)
# the fixed-point sums' regions (``roiops.gpu.fixed_point.Regions``), as launched
REGIONS = {"RECTS": "*i32", "PARTS": "*i64", "FLAGS": "*i8"}


# bytes a kernel may spill: ptxas (Triton 3.8's) keeps the FPN pooler's forward at 40
# registers and spills one word at 8 warps of one output a thread (the split for an
# adaptive sampling grid, roiops.gpu.tiles; the 4 warps of 2 outputs a thread used before
# spilled a word in every NCHW forward): a word in L1 is not the regression this guards
# against (the first forward's 16 outputs a thread took ~180 registers)
SPILL_ALLOWANCE = 4


def registers_and_spills(ptx: str, log: str) -> tuple[int, int]:
    """(registers per thread, bytes spilled) that ptxas reports for sm_90a: read in
    ``log``, Triton's ptxas log of the kernel, or from a ptxas run where it has none."""
    registers = re.search(r"Used (\d+) registers", log)
    spilled = re.search(r"(\d+) bytes spill stores", log)
    if registers and spilled:
        return int(registers.group(1)), int(spilled.group(1))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        done = subprocess.run(
            [PTXAS, "-v", "--gpu-name=sm_90a", path, "-o", os.devnull],
            capture_output=True,
            text=True,
            check=True,
        )
    registers = re.search(r"Used (\d+) registers", done.stderr)
    spilled = re.search(r"(\d+) bytes spill stores", done.stderr)
    return int(registers.group(1)), int(spilled.group(1))


BLOCKED_LAYOUT = re.compile(
    r"^#(blocked\d*) = #ttg\.blocked<\{sizePerThread = \[(\d+), (\d+)\], "
    r"threadsPerWarp = \[(\d+), (\d+)\]"
)
STORE_2D = re.compile(r"tt\.store .*: tensor<\d+x\d+x!tt\.ptr<\w+>, #(blocked\d*)>")
LOAD_2D = re.compile(r"tt\.load .*: tensor<\d+x\d+x!tt\.ptr<(\w+)>, #(blocked\d*)>")


def warp_lanes(ttgir: str) -> dict:
    """{blocked layout: lanes of a warp along the first axis}"""
    return {m.group(1): int(m.group(4)) for m in map(BLOCKED_LAYOUT.match, ttgir.splitlines()) if m}


def warp_run(ttgir: str) -> dict:
    """{blocked layout: consecutive elements a warp covers along the second axis (its
    lanes there times each lane's vector)}"""
    layouts = filter(None, map(BLOCKED_LAYOUT.match, ttgir.splitlines()))
    return {m.group(1): int(m.group(3)) * int(m.group(5)) for m in layouts}


def loads_coalesced(ttgir: str, argmax_channel_major: bool) -> bool:
    """Whether the argmax backward's [bins, channels] loads are coalesced: the output
    gradient (floats, contiguous along bins) with a warp's lanes along bins, the argmax
    (int32) likewise when it lies channel-major, and in runs of at least 8 elements (a
    32-byte sector) along channels when it lies channels last (lanes, or vectors of them:
    Triton loads 4 channels a lane where the argmax is 16-byte aligned)."""
    lanes, run = warp_lanes(ttgir), warp_run(ttgir)
    loads = LOAD_2D.findall(ttgir)
    floats = [layout for element, layout in loads if element.startswith(("f", "bf"))]
    ints = [layout for element, layout in loads if element == "i32"]
    along_bins = [lanes[x] >= 8 for x in floats]
    if argmax_channel_major:
        along_bins += [lanes[x] >= 8 for x in ints]
    else:
        along_bins += [run[x] >= 8 for x in ints]
    return bool(floats and ints) and all(along_bins)


def stores_lanes_along_cells(ttgir: str) -> bool:
    """Whether every 2-D store of the fixed-point conversion has a warp's lanes along the
    tile's first axis (the cells of a row, contiguous in NCHW): coalesced writes, where
    lanes along channels would write one element into each of 32 planes."""
    lanes = warp_lanes(ttgir)
    stores = STORE_2D.findall(ttgir)
    return bool(stores) and all(lanes[layout] >= 8 for layout in stores)


def compile_for_gpu(fn, pointers, constexprs, num_warps):
    dtype = next(pointers[a] for a in ("X", "G", "GX", "ROIS", "ACC") if a in pointers)
    if "ROIS_INNER" in fn.arg_names and "ROIS_INNER" not in constexprs:
        # both program orders (roiops.gpu.tiles); the order's arithmetic does not depend
        # on the dtype: RoIs innermost in float32 only
        for rois_inner in (False, True) if dtype == "*fp32" else (False,):
            compile_for_gpu(fn, pointers, {**constexprs, "ROIS_INNER": rois_inner}, num_warps)
        return
    # a constexpr left out takes its default, as a launch that does not pass it
    defaults = {p.name: p.default for p in getattr(fn, "jit", fn).params
                if p.is_constexpr and p.default is not inspect.Parameter.empty}  # fmt: skip
    constexprs = {**defaults, **constexprs}
    signature = {
        name: pointers.get(
            name,
            "constexpr" if name in constexprs else ("i64" if name in INT64_ARGS else "i32"),
        )
        for name in fn.arg_names
    }
    # size-like arguments are not specialised (one variant for every image size); the
    # channel count and a unit stride are
    unspecialised = {p.name for p in fn.params if p.do_not_specialize}
    assert unspecialised == UNSPECIALISED.intersection(fn.arg_names), fn.__name__
    # as launched: tensors' data 16-byte aligned (torch's allocations are), and the
    # channel count (specialised) a multiple of 16 (256 channels), which Triton
    # specialises on; vector loads and stores depend on it
    aligned = {
        (i,): [["tt.divisibility", 16]]
        for i, name in enumerate(fn.arg_names)
        if signature[name].startswith("*") or name == "C"
    }
    source = ASTSource(getattr(fn, "jit", fn), signature, constexprs, aligned)  # (launch.Kernel's)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # (TRITON_DUMP_PTXAS_LOG prints it)
        kernel = triton.compile(source, target=TARGET, options={"num_warps": num_warps})
    ptx = kernel.asm["ptx"]
    mode = {False: "", True: "max", ONNX_MAX_MODE: "onnx"}[constexprs.get("MAX_MODE", False)]
    mode += " rois inner" if constexprs.get("ROIS_INNER") else ""
    mode += f" band {constexprs['BAND']}" if constexprs.get("BAND") else ""
    mode += " regions" if constexprs.get("REGIONS") else ""
    mode += " runs" if constexprs.get("RUNS") else ""
    mode += " 2x2" if constexprs.get("VISIT_2X2") else ""
    mode += " reuse" if constexprs.get("REUSE") else ""
    mode += f" from {constexprs['REUSE_MIN']} points" if constexprs.get("REUSE_MIN") else ""
    mode += " torch max" if not pointers.get("AMAX", "*i").startswith("*i") else ""
    if fn is fixed_point_bands_to_float_kernel:
        mode += f" {constexprs['BLOCK_W']}x{constexprs['BLOCK_C']}"
    name = f"{fn.__name__} {dtype} {mode}"
    approximate = APPROXIMATE_DIVISION.findall(ptx)
    assert not approximate, f"{name}: {len(approximate)} approximate float32 divisions"
    # (Triton's interpreter truncates float32 -> bfloat16; compiled code must round)
    assert not INEXACT_HALF_ROUNDING.findall(ptx), f"{name}: half conversion not rounded"
    written = ("OUT", "GX") if "forward" in fn.__name__ else ("GX",)  # (box grads read OUT)
    if any(pointers.get(out) in ("*fp16", "*bf16") for out in written):
        assert NEAREST_HALF_ROUNDING.search(ptx), f"{name}: half output not rounded to nearest"
    if fn in (fixed_point_to_float_kernel, fixed_point_bands_to_float_kernel):
        assert stores_lanes_along_cells(kernel.asm["ttgir"]), f"{name}: uncoalesced stores"
    if fn in (roi_pool_backward_kernel, multi_scale_roi_pool_backward_kernel):
        channel_major = constexprs["ARGMAX_CM"]
        assert loads_coalesced(kernel.asm["ttgir"], channel_major), f"{name}: uncoalesced loads"
    if not os.path.exists(PTXAS):  # a Triton without its bundled CUDA tools
        return
    registers, spilled = registers_and_spills(ptx, log.getvalue())
    spills = f", spills {spilled} bytes" if spilled else ""
    print(f"{fn.__name__:30s} {dtype:6s} {mode:15s} {num_warps} warps {registers:3d} registers"
          + spills)  # fmt: skip
    assert spilled <= SPILL_ALLOWANCE or dtype == "*fp64", f"{name} spills {spilled} bytes"


DTYPES = ("fp32", "fp16", "bf16", "fp64")


def main(dtypes=DTYPES, lean=False) -> int:
    """Compile every kernel in each of ``dtypes`` (its inputs' and outputs' element type);
    ``lean``: float32 in full, the others' aligned, default variants only."""
    unknown = set(dtypes) - set(DTYPES)
    assert not unknown, f"dtypes {sorted(unknown)} are not among {DTYPES}"
    # the launch configuration of 256 channels and 7x7 bins
    _, block, fwd_warps = bins_grid(1, 256, 7, 7)
    # (roi_align's kernels with an adaptive sampling grid: one output a thread)
    _, adaptive_block, adaptive_warps = bins_grid(1, 256, 7, 7, adaptive=True)
    sampled = ((block, fwd_warps), (adaptive_block, adaptive_warps))
    _, block_c, bwd_warps = bin_channels_grid(1, 256, 7, 7)
    _, nhwc_c, nhwc_warps = bin_channels_grid(1, 256, 7, 7, forward=True)
    _, block_p, argmax_c, argmax_warps = roi_channels_grid(1, 256, 49)
    _, ps_block, ps_warps = roi_outputs_grid(1, 21 * 49)  # (R-FCN's 21 classes)
    argmax_tile = {"P": 49, "BLOCK_P": block_p, "BLOCK_C": argmax_c}
    for dt in dtypes:
        full = dt == "fp32" or not lean  # (otherwise what the element type changes)
        rois = "*fp64" if dt == "fp64" else "*fp32"
        amax = "*i64" if dt == "fp64" else "*i32"  # (max |grad| in pieces, as bits)
        fwd = {"ROIS": rois, "ARGMAX": "*i32", "X": f"*{dt}", "OUT": f"*{dt}"}
        bwd = {"ROIS": rois, "ARGMAX": "*i32", "G": f"*{dt}", "AMAX": amax, "ACC": "*i64"}
        for aligned in (False, True) if full else (True,):
            for max_mode in (False, True, ONNX_MAX_MODE):
                mode = {"PH": 7, "PW": 7, "ALIGNED": aligned, "MAX_MODE": max_mode, "PS": False}
                for b, warps in sampled:
                    compile_for_gpu(roi_align_forward_kernel, fwd, {**mode, "BLOCK": b}, warps)
                # (the points of a row loading each column once, REUSE_LOADS, off: aligned,
                # RoI-major, in every mode in float32 (what `make gpu-tune` times: both
                # splits, and "wide"'s branch on the RoI's points a row with the
                # adaptive grid's) and the average in float16)
                reuse = full and aligned and (dt == "fp32" or (dt == "fp16" and not max_mode))
                for b, warps in (sampled if dt == "fp32" else sampled[1:]) if reuse else ():
                    compile_for_gpu(
                        roi_align_forward_kernel, fwd,
                        {**mode, "BLOCK": b, "REUSE": True, "ROIS_INNER": False}, warps,
                    )  # fmt: skip
                for b, warps in sampled[1:] if reuse else ():
                    compile_for_gpu(
                        roi_align_forward_kernel, fwd,
                        {**mode, "BLOCK": b, "REUSE": True, "REUSE_MIN": 5, "ROIS_INNER": False},
                        warps,
                    )  # fmt: skip
                compile_for_gpu(
                    roi_align_forward_nhwc_kernel, fwd, {**mode, "BLOCK_C": nhwc_c}, nhwc_warps
                )
                box = {k: v for k, v in mode.items() if k != "PS"}
                # the argmax as the NCHW (channel-major) or the NHWC forward writes it
                for cm in (True, False) if max_mode else (True,):
                    if max_mode != ONNX_MAX_MODE:  # onnx_max has no box gradient
                        compile_for_gpu(
                            roi_align_box_backward_kernel,
                            {**bwd, "X": f"*{dt}", "PARTIAL": rois},
                            {**box, "BLOCK_C": block_c, "ARGMAX_CM": cm},
                            bwd_warps,
                        )
                    compile_for_gpu(
                        roi_align_backward_kernel,
                        bwd,
                        {**mode, "BLOCK_C": block_c, "SPAN": SPAN, "ARGMAX_CM": cm},
                        bwd_warps,
                    )
        # the scatter in blocks of 256 channels on 8 warps and 16 on one (RoIs innermost:
        # what make gpu-tune's program_order part times beside the launchers' 32 on one)
        for channels, warps in ((256, 8), (16, 1)) if dt == "fp32" else ():
            compile_for_gpu(
                roi_align_backward_kernel, bwd,
                {"PH": 7, "PW": 7, "ALIGNED": True, "MAX_MODE": False, "PS": False,
                 "BLOCK_C": channels, "SPAN": SPAN, "ARGMAX_CM": True, "ROIS_INNER": True},
                warps,
            )  # fmt: skip
        # position-sensitive (ps_roi_align): aligned, average
        ps = {"PH": 7, "PW": 7, "ALIGNED": True, "MAX_MODE": False, "PS": True}
        for b, warps in sampled:
            compile_for_gpu(roi_align_forward_kernel, fwd, {**ps, "BLOCK": b}, warps)
        # (REUSE_LOADS, float32: both splits, and the adaptive one's with "wide"'s branch)
        for b, warps in sampled if dt == "fp32" else ():
            compile_for_gpu(
                roi_align_forward_kernel, fwd,
                {**ps, "BLOCK": b, "REUSE": True, "ROIS_INNER": False}, warps,
            )  # fmt: skip
        for b, warps in sampled[1:] if dt == "fp32" else ():
            compile_for_gpu(
                roi_align_forward_kernel, fwd,
                {**ps, "BLOCK": b, "REUSE": True, "REUSE_MIN": 5, "ROIS_INNER": False}, warps,
            )  # fmt: skip
        compile_for_gpu(roi_align_forward_nhwc_kernel, fwd, {**ps, "BLOCK_C": nhwc_c}, nhwc_warps)
        compile_for_gpu(
            roi_align_backward_kernel, bwd,
            {**ps, "BLOCK_C": block_c, "SPAN": SPAN, "ARGMAX_CM": True}, bwd_warps,
        )  # fmt: skip
        # (and with a RoI's (bin, channel) outputs in the lanes: PS_LANES)
        compile_for_gpu(
            ps_roi_align_backward_kernel, {k: v for k, v in bwd.items() if k != "ARGMAX"},
            {"PH": 7, "PW": 7, "ALIGNED": True, "BLOCK": ps_block, "SPAN": SPAN},
            ps_warps,
        )  # fmt: skip
        levels = {f"X{i}": f"*{dt}" for i in range(5)} | {"LEVELS": "*i64"}
        fpn = {"NUM_LEVELS": 4, "PH": 7, "PW": 7, "ALIGNED": False}
        for b, warps in sampled:
            compile_for_gpu(
                multi_scale_roi_align_forward_kernel, {**fwd, **levels}, {**fpn, "BLOCK": b},
                warps,
            )  # fmt: skip
        # (REUSE_LOADS, float32: both splits, and the adaptive one's with "wide"'s branch)
        for b, warps in sampled if dt == "fp32" else ():
            compile_for_gpu(
                multi_scale_roi_align_forward_kernel, {**fwd, **levels},
                {**fpn, "BLOCK": b, "REUSE": True, "ROIS_INNER": False}, warps,
            )  # fmt: skip
        for b, warps in sampled[1:] if dt == "fp32" else ():
            compile_for_gpu(
                multi_scale_roi_align_forward_kernel, {**fwd, **levels},
                {**fpn, "BLOCK": b, "REUSE": True, "REUSE_MIN": 5, "ROIS_INNER": False},
                warps,
            )  # fmt: skip
        compile_for_gpu(
            multi_scale_roi_align_backward_kernel, {**bwd, "LEVELS": "*i64"},
            {**fpn, "BLOCK_C": block_c, "SPAN": SPAN}, bwd_warps,
        )  # fmt: skip
        rotations = ((True, True, False), (False, False, True))
        for aligned, degrees, clockwise in rotations if full else rotations[:1]:
            rot = {"PH": 7, "PW": 7, "ALIGNED": aligned, "DEGREES": degrees, "CLOCKWISE": clockwise}
            for b, warps in sampled:
                compile_for_gpu(roi_align_rotated_forward_kernel, fwd, {**rot, "BLOCK": b}, warps)
            compile_for_gpu(
                roi_align_rotated_backward_kernel, bwd, {**rot, "BLOCK_C": block_c}, bwd_warps
            )
            # (over a pyramid: detectron2's ROIAlignRotated pooler)
            for b, warps in sampled:
                compile_for_gpu(
                    multi_scale_roi_align_rotated_forward_kernel, {**fwd, **levels},
                    {**rot, "NUM_LEVELS": 4, "BLOCK": b}, warps,
                )  # fmt: skip
            compile_for_gpu(
                multi_scale_roi_align_rotated_backward_kernel, {**bwd, "LEVELS": "*i64"},
                {**rot, "NUM_LEVELS": 4, "BLOCK_C": block_c}, bwd_warps,
            )  # fmt: skip
        # (ReDet's riroi_align_rotated: a half map's rotated RoIAlign summed into float32,
        # mmcv's legacy convention; then the orientation turn, forward and backward, in
        # the compute dtype: 8 orientations of 7 x 7 bins)
        compute = "fp64" if dt == "fp64" else "fp32"
        if dt in ("fp16", "bf16"):
            legacy = {"PH": 7, "PW": 7, "ALIGNED": False, "DEGREES": False, "CLOCKWISE": True}
            for b, warps in sampled:
                compile_for_gpu(roi_align_rotated_forward_kernel, {**fwd, "OUT": "*fp32"},
                                {**legacy, "BLOCK": b}, warps)  # fmt: skip
        for direction in (1, -1):
            compile_for_gpu(
                turn_orientations_kernel,
                {"X": f"*{dt}", "ANGLES": f"*{compute}", "OUT": f"*{compute}"},
                {"NO": 8, "D": direction, "BLOCK": 512}, 4,
            )  # fmt: skip
        # (BezierAlign: each bin centred between two Bézier curves)
        for aligned in (True, False) if full else (True,):
            bezier = {"PH": 8, "PW": 32, "ALIGNED": aligned}
            for b, warps in sampled:
                compile_for_gpu(bezier_align_forward_kernel, fwd, {**bezier, "BLOCK": b}, warps)
            compile_for_gpu(
                bezier_align_backward_kernel, bwd, {**bezier, "BLOCK_C": block_c}, bwd_warps
            )
        # (PointRend's points in RoIs, zero-padded samples: 196 a RoI, their own or one set
        # for every RoI, which SimpleRoIAlign's bins' centres are)
        for shared, aligned in ((False, True), (True, True), (True, False)) if full else (
                (False, True),):  # fmt: skip
            points = {"P": 196, "SHARED": shared, "ALIGNED": aligned}
            compile_for_gpu(roi_point_sample_forward_kernel, {**fwd, "POINTS": rois},
                            {**points, "BLOCK": block}, fwd_warps)  # fmt: skip
            compile_for_gpu(roi_point_sample_backward_kernel, {**bwd, "POINTS": rois},
                            {**points, "BLOCK_C": block_c}, bwd_warps)  # fmt: skip
        # (deformable RoI pooling: aligned RoIAlign with every bin moved by its offset)
        deform = {"PH": 7, "PW": 7}
        for b, warps in sampled:
            compile_for_gpu(
                deform_roi_pool_forward_kernel, {**fwd, "OFFSET": rois}, {**deform, "BLOCK": b},
                warps,
            )  # fmt: skip
        compile_for_gpu(
            deform_roi_pool_backward_kernel, {**bwd, "OFFSET": rois},
            {**deform, "BLOCK_C": block_c}, bwd_warps,
        )  # fmt: skip
        compile_for_gpu(
            deform_roi_pool_offset_backward_kernel,
            {**bwd, "X": f"*{dt}", "OFFSET": rois, "PARTIAL": rois},
            {**deform, "BLOCK_C": block_c}, bwd_warps,
        )  # fmt: skip
        # (TensorFlow's crop_and_resize: 14 x 14 crops, bilinear and, full, nearest)
        for nearest in (False, True) if full else (False,):
            crop = {"CH": 14, "CW": 14, "NEAREST": nearest}
            compile_for_gpu(crop_and_resize_forward_kernel, fwd, {**crop, "BLOCK": block},
                            fwd_warps)  # fmt: skip
            compile_for_gpu(crop_and_resize_backward_kernel, bwd, {**crop, "BLOCK_C": block_c},
                            bwd_warps)  # fmt: skip
        compile_for_gpu(
            crop_and_resize_box_backward_kernel, {**bwd, "X": f"*{dt}", "GRAD_BOXES": rois},
            {"CH": 14, "CW": 14, "BLOCK_C": block_c}, max(1, block_c // 32),
        )  # fmt: skip
        # (Deformable ConvNets' own pooling: 4 x 4 samples a bin, one class of offsets in
        # 7 x 7 parts; plain (G 1) and, full, position-sensitive (G 7) and no offsets)
        for group, classes in ((1, 1), (7, 1), (1, 0)) if full else ((1, 1),):
            dps = {"PH": 7, "PW": 7, "S": 4, "PART": 7, "CLASSES": classes}
            compile_for_gpu(deform_ps_roi_pool_forward_kernel, {**fwd, "OFFSET": rois},
                            {**dps, "G": group, "BLOCK": block}, fwd_warps)  # fmt: skip
            compile_for_gpu(deform_ps_roi_pool_backward_kernel, {**bwd, "OFFSET": rois},
                            {**dps, "GROUP": group, "BLOCK_C": block_c}, bwd_warps)  # fmt: skip
            if classes:
                compile_for_gpu(
                    deform_ps_roi_pool_offset_backward_kernel,
                    {**bwd, "X": f"*{dt}", "OFFSET": rois, "GRAD_OFFSET": rois},
                    {**dps, "GROUP": group, "BLOCK_C": block_c}, max(1, block_c // 32),
                )  # fmt: skip
        pr = {"PH": 7, "PW": 7}
        compile_for_gpu(prroi_pool_forward_kernel, fwd, {**pr, "BLOCK": block}, fwd_warps)
        compile_for_gpu(prroi_pool_backward_kernel, bwd, {**pr, "BLOCK_C": block_c}, bwd_warps)
        compile_for_gpu(
            prroi_pool_box_backward_kernel,
            {**bwd, "X": f"*{dt}", "OUT": f"*{dt}", "PARTIAL": rois},
            {**pr, "BLOCK_C": block_c},
            bwd_warps,
        )
        compile_for_gpu(
            multi_scale_roi_pool_forward_kernel, {**fwd, **levels},
            {"NUM_LEVELS": 4, "PH": 7, "PW": 7, "BLOCK": block}, fwd_warps,
        )  # fmt: skip
        compile_for_gpu(
            multi_scale_roi_pool_backward_kernel, {**bwd, "LEVELS": "*i64"},
            {"NUM_LEVELS": 4, **argmax_tile, "ARGMAX_CM": True}, argmax_warps,
        )  # fmt: skip
        ps_pool = {"PH": 7, "PW": 7}
        compile_for_gpu(ps_roi_pool_forward_kernel, fwd, {**ps_pool, "BLOCK": block}, fwd_warps)
        # the scatter to every cell, and as differences in bands of PS_BAND rows
        for band in sorted({0, PS_BAND}) if full else (BAND,):
            compile_for_gpu(
                ps_roi_pool_backward_kernel, bwd,
                {**ps_pool, "BLOCK": ps_block, "BAND": band}, ps_warps,
            )  # fmt: skip
        for store in (False, True):
            pool = {"PH": 7, "PW": 7, "STORE_ARGMAX": store}
            # (a bin cell by cell; 2x2 cells at a time, VISIT_2X2, off: float32 and float16
            # with the argmax, the launch `kernel_configs` times)
            for visit_2x2 in (
                (False, True) if store and full and dt in ("fp32", "fp16") else (False,)
            ):
                compile_for_gpu(
                    roi_pool_forward_kernel, fwd,
                    {**pool, "BLOCK": block, "VISIT_2X2": visit_2x2}, fwd_warps,
                )  # fmt: skip
            compile_for_gpu(
                roi_pool_forward_nhwc_kernel, fwd, {**pool, "BLOCK_C": nhwc_c}, nhwc_warps
            )
        # (without regions the launcher passes the accumulator for RECTS, FLAGS, PARTS)
        unused = {"RECTS": rois, "FLAGS": "*i64", "PARTS": "*i64"}
        for cm in (True, False):
            # (the scatter alone, in regions, adding runs of bins once, both)
            for regions, runs in (
                ((False, False), (True, False), (False, True), (True, True))
                if full
                else ((False, True),)  # (the launchers' default)
            ):
                compile_for_gpu(
                    roi_pool_backward_kernel, {**bwd, **(REGIONS if regions else unused)},
                    {**argmax_tile, "ARGMAX_CM": cm, "REGIONS": regions, "RUNS": runs},
                    argmax_warps,
                )  # fmt: skip
        grad_block = amax_block(TORCH_DTYPES[dt])
        compile_for_gpu(
            zero_and_bound_kernel, {"ACC": "*i64", "G": f"*{dt}", "AMAX": amax},
            {"BLOCK": ZERO_BLOCK, "GRAD_BLOCK": grad_block}, ZERO_WARPS,
        )  # fmt: skip
        if full:  # (the sums in regions)
            compile_for_gpu(
                roi_pool_regions_kernel, {"ROIS": rois, **REGIONS},
                {"PH": 7, "PW": 7, "BLOCK": REGION_ROIS}, 4,
            )  # fmt: skip
            for aligned in (False, True):
                compile_for_gpu(
                    roi_align_regions_kernel, {"ROIS": rois, **REGIONS},
                    {"PH": 7, "PW": 7, "ALIGNED": aligned, "BLOCK": REGION_ROIS}, 4,
                )  # fmt: skip
            compile_for_gpu(
                zero_regions_and_bound_kernel,
                {"ACC": "*i64", "G": f"*{dt}", "AMAX": amax, **REGIONS},
                {"BLOCK": ZERO_BLOCK, "GRAD_BLOCK": grad_block, "ROWS": REGION_ROWS,
                 "CELLS": REGION_CELLS, "BLOCK_C": REGION_CHANNELS},
                ZERO_WARPS,
            )  # fmt: skip
        # NCHW output: stride_w is 1, which Triton specialises as a constant; the
        # position-sensitive ops' sums go bin by bin (7x7 bins); read where regions mark
        for bins, regions in ((1, False), (49, False), (1, True))[: 3 if full else 2]:
            compile_for_gpu(
                fixed_point_to_float_kernel,
                {"ACC": "*i64", "AMAX": amax, "GX": f"*{dt}", **(REGIONS if regions else unused)},
                {"stride_w": 1, "BLOCK_W": CONVERT_CELLS, "BLOCK_C": CONVERT_CHANNELS,
                 "BINS": bins, "REGIONS": regions},
                4,
            )  # fmt: skip
        # max |grad| as torch's float of the gradient's dtype (TORCH_BOUND_GRADIENTS): the
        # conversion in each dtype, the scatters that the bench's large cases run in float32
        float_amax = {"AMAX": f"*{dt}"}
        compile_for_gpu(
            fixed_point_to_float_kernel, {"ACC": "*i64", "GX": f"*{dt}", **unused, **float_amax},
            {"stride_w": 1, "BLOCK_W": CONVERT_CELLS, "BLOCK_C": CONVERT_CHANNELS, "BINS": 1,
             "REGIONS": False},
            4,
        )  # fmt: skip
        if dt == "fp32":
            compile_for_gpu(
                roi_align_backward_kernel, {**bwd, **float_amax},
                {"PH": 7, "PW": 7, "ALIGNED": True, "MAX_MODE": False, "PS": False,
                 "BLOCK_C": block_c, "SPAN": SPAN, "ARGMAX_CM": True, "ROIS_INNER": True},
                bwd_warps,
            )  # fmt: skip
            compile_for_gpu(
                roi_pool_backward_kernel, {**bwd, **unused, **float_amax},
                {**argmax_tile, "ARGMAX_CM": True, "REGIONS": False, "RUNS": True,
                 "ROIS_INNER": True},
                argmax_warps,
            )  # fmt: skip
        # sums as differences (ps_roi_pool's): R-FCN's map of 68 cells a row (16 channels
        # a program of 8 warps), and the widest rows (one channel)
        for block_w, block_c, warps in ((128, 16, 8), (BAND_TILE, 1, 8)) if full else ():
            compile_for_gpu(
                fixed_point_bands_to_float_kernel,
                {"ACC": "*i64", "AMAX": amax, "GX": f"*{dt}"},
                {"stride_w": 1, "BAND": PS_BAND, "BLOCK_W": block_w, "BLOCK_C": block_c,
                 "BINS": 49},
                warps,
            )  # fmt: skip
    print(
        "all Triton kernels compile for sm_90, with IEEE float32 division and "
        "round-to-nearest half outputs only"
    )
    return 0


if __name__ == "__main__":
    # python tests/triton_compile_check.py [--lean] [DTYPE ...] (all four by default)
    args = [a for a in sys.argv[1:] if a != "--lean"]
    sys.exit(main(tuple(args) or DTYPES, lean="--lean" in sys.argv[1:]))
