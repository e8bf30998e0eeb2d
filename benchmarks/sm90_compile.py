"""Compile the Triton kernels for an H100/H200 (sm_90) on a machine without a GPU, and read
what the compiler made of them: registers, spilled bytes, shared memory, the atomic and
reduction instructions, and the arithmetic of the RoPE kernel.

    python benchmarks/sm90_compile.py [--json out.json]

Triton compiles to PTX and, with the ``ptxas`` its wheel ships, to a cubin without any
GPU (``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))``); ``cuobjdump
-res-usage`` reads the registers and the stack (spills) from the cubin. Integer arguments
and pointers are marked divisible by 16, as Triton specializes them at a launch with the
benchmark's shapes (without that mark the atomic adds compile unvectorised). What this
cannot tell: time. It is this machine's Triton, not necessarily the GPU machine's: the
numbers differ between versions (``PYTHONPATH=<a folder holding another triton>`` runs it
with that one; docs/results.md has 3.9 and 3.6).
"""

from __future__ import annotations

import argparse
import collections
import inspect
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

TARGET = GPUTarget("cuda", 90, 32)
# the default, its spill-free variants, and lce_tune's smaller token blocks (32 / 16 rows,
# and 32×256: the default's tile area with half its rows)
BWD_CONFIGS = ["64,128,64,4,3", "64,128,32,4,3", "64,128,64,8,3", "64,128,32,8,3",
               "32,128,64,4,3", "16,128,64,4,3", "32,256,64,4,3"]  # fmt: skip
FWD_CONFIGS = ["128,256,64,8,3", "128,128,64,8,3", "128,256,64,8,4", "128,128,64,4,3"]


def _resources(kernel) -> dict:
    """Registers, stack bytes (spills) and shared memory of a compiled kernel."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        out = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True)
    m = re.search(r"REG:(\d+) STACK:(\d+)", out.stdout)
    regs, stack = (int(m.group(1)), int(m.group(2))) if m else (None, None)
    return {"registers": regs, "stack_bytes": stack, "shared_bytes": kernel.metadata.shared}


def _ops(ptx: str, pattern: str) -> dict:
    return dict(collections.Counter(re.findall(pattern, ptx)))


def backward(config: str, tma: bool, dtype: str = "bf16", strips: bool = True) -> dict:
    """The linear cross-entropy backward (β > 0 closed form, filtering and block maxima on,
    strips and the kept-mass count of the compensation on (``strips=False``: run F's block
    rule): the benchmark's default path; fp16 scales each block's rows, ``SCALE_ROWS``)."""
    from smoothalign.kernels import triton_lce as K

    bn, bv, bd, warps, stages = (int(x) for x in config.split(","))
    params = list(inspect.signature(K._bwd_kernel.fn).parameters)
    types = {"E": f"*{dtype}", "C": f"*{dtype}", "Bias": f"*{dtype}", "T": "*i64",
             "LSE": "*fp32", "G": "*fp32", "dE": "*fp32", "dC": f"*{dtype}", "dBias": "*fp32",
             "BMAX": "*fp32", "KEPT": "*fp32",
             "softcap": "fp32", "beta": "fp32", "filter_eps": "fp32", "strip_eps": "fp32", "log_eps": "fp32",
             "DE_DESC": f"tensordesc<fp32[{bn}, {bd}]>",
             "DC_DESC": f"tensordesc<{dtype}[{bv}, {bd}]>"}  # fmt: skip
    ints = ("N", "V", "D", "bmax_stride", "bmax_div", "stride_en", "stride_ed", "stride_cv",
            "stride_cd", "stride_den", "stride_dcv")  # fmt: skip
    consts = dict(BLOCK_N=bn, BLOCK_V=bv, BLOCK_D=bd, GROUP_N=32, GROUP=min(bn, 64),
                  HAS_BIAS=False, HAS_SOFTCAP=False, SMOOTH_IN_BLOCK=False, FILTER=True,
                  STRIPS=strips, PREFILTER=True, COMPUTE_DE=True, COMPUTE_DC=True, COMPUTE_DBIAS=False,
                  TMA_REDUCE=tma, STATS=strips, SCALE_ROWS=dtype == "fp16", DOT_PREC="tf32",
                  UPCAST=False)  # fmt: skip
    signature = {}
    for p in params:
        if p in ("DE_DESC", "DC_DESC") and not tma:
            signature[p], consts[p] = "constexpr", None
        else:
            signature[p] = types.get(p) or ("i32" if p in ints else "constexpr")
    divisible = {i for i, p in enumerate(params) if p in ints or types.get(p, "").startswith("*")}
    divisible -= {params.index("stride_ed"), params.index("stride_cd"), params.index("bmax_div")}
    attrs = {(i,): [["tt.divisibility", 16]] for i in divisible}
    src = ASTSource(fn=K._bwd_kernel, signature=signature, constexprs=consts, attrs=attrs)
    options = {"num_warps": warps, "num_stages": stages, "enable_fp_fusion": True}  # a launch's
    kernel = triton.compile(src, target=TARGET, options=options)
    atomics = _ops(kernel.asm["ptx"], r"\b((?:red|atom|cp\.reduce)\.[\w.:]+)")
    return {"kernel": "lce backward", "config": config, "dtype": dtype, "tma_reduce": tma,
            "strips": strips,
            **_resources(kernel), "atomics": atomics}  # fmt: skip


def forward(config: str, store_bmax: bool = True) -> dict:
    """The linear cross-entropy forward (bf16, β > 0 closed form, storing block maxima: the
    benchmark's default path)."""
    from smoothalign.kernels import triton_lce as K

    bn, bv, bd, warps, stages = (int(x) for x in config.split(","))
    params = list(inspect.signature(K._fwd_kernel.fn).parameters)
    types = {"E": "*bf16", "C": "*bf16", "Bias": "*bf16", "T": "*i64", "LSE_P": "*fp32",
             "ZT_P": "*fp32", "SZ_P": "*fp32", "BMAX": "*fp32", "softcap": "fp32"}  # fmt: skip
    ints = ("N", "V", "D", "v_per_split", "n_groups", "ignore_index", "stride_en", "stride_ed",
            "stride_cv", "stride_cd")  # fmt: skip
    consts = dict(BLOCK_N=bn, BLOCK_V=bv, BLOCK_D=bd, GROUP=64, HAS_BIAS=False,
                  HAS_SOFTCAP=False, SUM_Z=False, STORE_BMAX=store_bmax, DOT_PREC="tf32",
                  UPCAST=False)  # fmt: skip
    signature = {p: types.get(p) or ("i32" if p in ints else "constexpr") for p in params}
    divisible = {i for i, p in enumerate(params) if p in ints or types.get(p, "").startswith("*")}
    divisible -= {params.index(p) for p in ("stride_ed", "stride_cd", "ignore_index")}
    attrs = {(i,): [["tt.divisibility", 16]] for i in divisible}
    src = ASTSource(fn=K._fwd_kernel, signature=signature, constexprs=consts, attrs=attrs)
    options = {"num_warps": warps, "num_stages": stages, "enable_fp_fusion": True}
    kernel = triton.compile(src, target=TARGET, options=options)
    mma = _ops(kernel.asm["ptx"], r"\b(wgmma\.mma_async\.\S+|mma\.sync\.\S+)")
    return {"kernel": "lce forward", "config": config, **_resources(kernel), "mma": mma}


def dense_grad(softcap: bool) -> dict:
    """The dense backward's one-pass gradient of a chunk's float32 logits (bf16 out), as
    ``triton_lce.dense_grad`` launches it."""
    from smoothalign.kernels import triton_lce as K

    params = list(inspect.signature(K._dense_grad_kernel.fn).parameters)
    types = {"Z": "*fp32", "G": "*bf16", "Lse": "*fp32", "Up": "*fp32", "T": "*i64",
             "softcap": "fp32", "beta": "fp32"}  # fmt: skip
    ints = ("V", "stride_z", "stride_g")
    consts = {"BLOCK": 2048, "HAS_SOFTCAP": softcap}
    signature = {p: types.get(p) or ("i32" if p in ints else "constexpr") for p in params}
    # as a launch at the benchmark shapes marks them (V = 128256 and 256000: multiples of 16)
    divisible = {i for i, p in enumerate(params) if p in ints or types.get(p, "").startswith("*")}
    attrs = {(i,): [["tt.divisibility", 16]] for i in divisible}
    src = ASTSource(fn=K._dense_grad_kernel, signature=signature, constexprs=consts, attrs=attrs)
    kernel = triton.compile(src, target=TARGET, options={"num_warps": 8})
    loads = _ops(kernel.asm["ptx"], r"\b(ld\.global\S*)")
    return {"kernel": "dense backward gradient", "softcap": softcap, **_resources(kernel),
            "loads": loads}  # fmt: skip


def rope(dtype: str, backward_pass: bool, fp_fusion: bool) -> dict:
    """The RoPE kernel: which arithmetic instructions the rounding became."""
    from smoothalign.kernels import triton_layers as TL

    params = list(inspect.signature(TL._rope_kernel.fn).parameters)
    signature = {p: f"*{dtype}" for p in ("X", "COS", "SIN", "Y")}
    signature.update({p: "i32" for p in ("S", "H")})
    signature.update({p: "i64" for p in params if p.startswith("stride_")})
    consts = {"HALF": 32, "BLOCK_H": 32, "BLOCK_HALF": 32, "BACKWARD": backward_pass}
    signature.update({p: "constexpr" for p in consts})
    src = ASTSource(fn=TL._rope_kernel, signature=signature, constexprs=consts)
    kernel = triton.compile(
        src, target=TARGET, options={"num_warps": 4, "enable_fp_fusion": fp_fusion}
    )
    arith = _ops(kernel.asm["ptx"], r"\b((?:mul|fma|sub|add|neg)(?:\.rn)?\.(?:bf16|f16|f32)\b)")
    return {"kernel": "rope " + ("backward" if backward_pass else "forward"), "dtype": dtype,
            "fp_fusion": fp_fusion, "arithmetic": arith}  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", help="write the rows here as well")
    args = p.parse_args(argv)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9 warns without it
    rows = [forward(cfg) for cfg in FWD_CONFIGS]
    rows += [backward(cfg, tma) for tma in (False, True) for cfg in BWD_CONFIGS]
    rows += [backward(BWD_CONFIGS[0], False, strips=False)]  # run F's block rule
    rows += [backward(BWD_CONFIGS[0], False, "fp16")]
    rows += [rope(dt, bw, fus) for dt in ("bf16", "fp16") for bw in (False, True)
             for fus in (True, False)]  # fmt: skip
    rows += [dense_grad(softcap) for softcap in (False, True)]
    for row in rows:
        print(json.dumps(row))
    if args.json:
        doc = {"triton": triton.__version__, "target": "cuda sm_90", "rows": rows}
        Path(args.json).write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
