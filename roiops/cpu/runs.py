"""Adding one value to a short run of consecutive cells with one masked vector access.

Numba's scalar loops cost about one cycle per cell; the position-sensitive RoIPool
backward adds a bin's share to every cell of a rectangle, row by row, and its rows are
short (a bin of a box of 2-25 cells is 1-4 cells wide). ``add_to_run4`` /
``add_to_run8`` do a row of up to 4 / 8 cells in one masked vector load, one add and
one masked store (LLVM's ``llvm.masked.load`` / ``llvm.masked.store``: AVX-512 or AVX
masked moves on x86, scalarised where a target has none). Lanes past the run are neither
read nor written, so a run may end at the array's end; each cell gets exactly the IEEE
sum ``cell + value`` of the scalar loop. Like any Numba kernel code without bounds
checks, the caller keeps the run inside the array.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

_INDEX = ir.IntType(64)
_LANE = ir.IntType(32)


def _splat(builder, value, vector_type, lanes):
    """A vector of ``lanes`` copies of ``value``."""
    one = builder.insert_element(ir.Constant(vector_type, ir.Undefined), value, _LANE(0))
    return builder.shuffle_vector(one, one, ir.Constant(ir.VectorType(_LANE, lanes), [0] * lanes))


def _masked_run_adder(lanes: int):
    @intrinsic
    def add_to_run(typingctx, flat, start, count, value):
        if not (
            isinstance(flat, types.Array)
            and flat.ndim == 1
            and flat.layout == "C"  # the run is addressed from the data pointer
            and flat.dtype in (types.float32, types.float64)
            and isinstance(start, types.Integer)
            and isinstance(count, types.Integer)
            and isinstance(value, types.Float)
        ):
            return None
        sig = types.void(flat, start, count, value)

        def codegen(context, builder, signature, args):
            flat_v, start_v, count_v, value_v = args
            array_type = signature.args[0]
            data = context.make_array(array_type)(context, builder, flat_v).data
            element = context.get_value_type(array_type.dtype)
            bits = 32 if array_type.dtype == types.float32 else 64
            vector = ir.VectorType(element, lanes)
            index = ir.VectorType(_INDEX, lanes)
            start64 = context.cast(builder, start_v, signature.args[1], types.uint64)
            count64 = context.cast(builder, count_v, signature.args[2], types.int64)
            pointer = builder.bitcast(builder.gep(data, [start64]), vector.as_pointer())
            mask = builder.icmp_signed(
                "<", ir.Constant(index, list(range(lanes))), _splat(builder, count64, index, lanes)
            )
            # typed-pointer names: older LLVMs need them, newer ones remangle them
            name = f"v{lanes}f{bits}.p0v{lanes}f{bits}"
            align = _LANE(bits // 8)
            module = builder.module
            load_fn = module.globals.get(f"llvm.masked.load.{name}") or ir.Function(
                module,
                ir.FunctionType(vector, [pointer.type, _LANE, mask.type, vector]),
                f"llvm.masked.load.{name}",
            )
            store_fn = module.globals.get(f"llvm.masked.store.{name}") or ir.Function(
                module,
                ir.FunctionType(ir.VoidType(), [vector, pointer.type, _LANE, mask.type]),
                f"llvm.masked.store.{name}",
            )
            old = builder.call(load_fn, [pointer, align, mask, ir.Constant(vector, ir.Undefined)])
            addend = context.cast(builder, value_v, signature.args[3], array_type.dtype)
            new = builder.fadd(old, _splat(builder, addend, vector, lanes))
            builder.call(store_fn, [new, pointer, align, mask])
            return context.get_dummy_value()

        return sig, codegen

    return add_to_run


add_to_run4 = _masked_run_adder(4)
"""``add_to_run4(flat, start, count, value)``: ``flat[start:start + count] += value``
for ``count <= 4`` (``flat`` a 1-D float32/float64 array, ``start`` unsigned)."""
add_to_run8 = _masked_run_adder(8)
"""As ``add_to_run4``, for ``count <= 8``."""
