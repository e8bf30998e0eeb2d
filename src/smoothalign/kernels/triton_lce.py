"""Triton kernels for the linear cross-entropy: the ``[N, V]`` logits live only in blocks.

Per-token loss (``z = softcap(C·e + b)``, ``β`` the label smoothing)::

    ℓ_n = lse(z_n) − (1 − β)·z_{n,t} − β·mean_v z_{n,v}
    ∂ℓ_n/∂z_n = softmax(z_n) − (1 − β)·onehot(t) − β/V

**Forward** (``_fwd_kernel``), grid ``(N/BLOCK_N, SPLIT)``: each program owns ``BLOCK_N``
tokens and one of ``SPLIT`` contiguous slices of the vocabulary; it walks its slice in
``BLOCK_V`` blocks, computing each ``[BLOCK_N, BLOCK_V]`` logits block with ``tl.dot`` over
``BLOCK_D`` slices of ``D`` (fp32 accumulator), and keeps an online log-sum-exp (running
max and rescaled sum), the target logit (found in exactly one block) and, when ``β > 0``,
the running sum of logits. The ``SPLIT`` partial results ``[SPLIT, N]`` are combined in
PyTorch (``logsumexp``/``sum``); ``SPLIT`` is chosen so that there are ≳ 4 programs per SM.

**Backward** (``_bwd_kernel``), grid ``(N/BLOCK_N)·(V/BLOCK_V)`` (grouped so that
``GROUP_N`` token blocks sweep the vocabulary together, for L2 reuse of C): each program
recomputes its logits block, forms ``g_n·(softmax − (1 − β)·onehot)`` in registers and
atomically adds ``d·C_block`` into ``dE`` and ``dᵀ·E_block`` into ``dC``, ``BLOCK_D`` columns
at a time; the block's gradient is never stored.

**Label smoothing for free.** ``∂ℓ/∂z`` splits into ``softmax − onehot`` (the β = 0
kernel), a sparse ``β·onehot`` (folded into the block as ``−(1 − β)`` at the target) and a
dense rank-one ``−β/V``, whose contribution is known in closed form: ``−β·g_n·c̄`` on each
row of ``dE`` (``c̄`` the mean row of C) and ``−(β/V)·Σ_n g_n e_n`` on every row of ``dC``
(and ``−(β/V)·Σ_n g_n`` on ``dbias``). Those are the *initial values* of the accumulation
buffers (instead of zeros), so the block loop is exactly the β = 0 loop and costs the same.
The forward's mean logit is closed-form too, ``e_n·c̄ + mean(b)``, so the forward kernel is
the β = 0 kernel; ``c̄`` is computed once (fp32, in slices of C: see ``_mean_row``) and kept
for the backward. With ``softcap`` the cap is nonlinear: the forward sums each block's logits, and
since the gradient of the cap, ``1 − tanh²``, varies per logit, ``−β/V`` is applied inside
the backward's block and gradient filtering is off when ``β > 0``.

**Gradient filtering** (the idea of Cut Cross-Entropy, Wijmans et al. 2024): a backward
block whose every ``|softmax − (1 − β)·onehot|`` is below ``filter_eps`` and that holds no
live token's target is skipped (its matmuls into dE and dC are not done). With
``filter_eps = "auto"`` the threshold is
``finfo(dtype).eps / 32`` for bf16 (2⁻¹², i.e. below what bf16 resolves next to 1 after the
``/32`` head-room) and fp16 (2⁻¹⁵), and filtering is off for float32 inputs
(``SMOOTHALIGN_LCE_FILTER_DIV`` replaces the 32, for ``lce_tune.py``: smaller token blocks
compute fewer blocks at the same threshold, and a lower one buys back their accuracy). Under the
split above, the ``β`` terms are exact and never filtered, and neither is the one-hot
term (a confident token's ``d_t = p_t − (1 − β)`` may be tiny, but dropping it while its
off-target mass is compensated, below, would undo the two's cancellation); only negligible
softmax mass is dropped, as in a β = 0 kernel.

**Precision.** Dot products accumulate in fp32; ``lse``, the partial sums and ``dbias`` are
fp32; ``dE`` is accumulated in an fp32 buffer processed in row chunks (at most
``DE_CHUNK_BYTES`` and ``DE_CHUNK_SHARE`` of the gradients, so the buffer stays a few % of
them at any shape) and cast at the end of each chunk; ``dC``
is accumulated in fp32 for float32 weights and in the weight's dtype (bf16/fp16 atomic
adds, each adding an fp32 ``[BLOCK_V, BLOCK_D]`` product) otherwise — the memory target
(≤ 1.05× the gradients) rules out an fp32 ``[V, D]`` buffer; ``accum_c_fp32=True`` asks
for it anyway. The block gradient is rounded to the inputs' dtype for its two products.
fp16's exponent range is narrow: ``g_n·softmax`` of a mean over 8192 tokens is below its
smallest normal number (6e-5) for every entry under 0.5, and flushed to 0 under 5e-4, so
for fp16 (``SCALE_ROWS``) each block is divided by its tokens' largest ``|g_n|`` before
the cast and the fp32 products are multiplied back (bf16 has fp32's range and needs none).

Block sizes: interpreter ``16×32×16``; CUDA, 16-bit inputs: forward ``BLOCK_N=128,
BLOCK_V=256, BLOCK_D=64`` (8 warps, 3 stages), backward ``64×128×64`` (4 warps, 3 stages),
the fastest of ``benchmarks/lce_tune.py``'s sweep on an H200, with ``GROUP_N=32`` (from its
``--diagnose``); float32 inputs ``64×64×32`` (4 warps, 2 stages) both ways.
``SMOOTHALIGN_LCE_FWD`` / ``SMOOTHALIGN_LCE_BWD`` = ``"BN,BV,BD,warps,stages"`` and
``SMOOTHALIGN_LCE_GROUP_N`` override them (for tuning on a new GPU). Compiled by the GPU's
triton 3.6 both defaults spill registers (``benchmarks/sm90_compile.py``); the sweep has
spill-free variants for the next GPU run. The atomic adds are relaxed (vectorised, 16 bytes
an instruction; the buffers are read only after the kernel), which made the backward 2.7×
faster than ordered ones at the Llama-3 shape.

**Strips** (``strips``, a share of ``filter_eps``; default ``STRIPS_DEFAULT`` = 1/4,
``SMOOTHALIGN_LCE_STRIPS`` overrides, 0 turns it off): of a block that passes the filter,
``dE`` takes only the rows (tokens) that hold an entry ``≥ strips·filter_eps`` and ``dC``
only the columns (vocabulary entries) that hold one; the other rows' and columns' atomic adds
are masked off (the products are still computed: the block is one ``tl.dot``). At the
Llama-3 shape, on the kernel benchmark's random logits, a computed block holds about one
entry above ``filter_eps``, and its adds were taken for the backward's bound (run E,
docs/results.md; run H measured them at about a quarter of it): 1/4 keeps half of ``dE``'s
adds there and a third on SmolLM2's hidden
states (``lce_filter_fraction.py --strips``), and took the H200's time at that shape from
57.8 to 51.2 ms (run H). A live token's target always keeps its row and column, and a
block holding one is never filtered out: the one-hot term is exact.

**Compensation** (``compensate``, on by default; ``SMOOTHALIGN_LCE_COMPENSATE=0`` turns it
off): what the filter and the strips leave out of a token's ``dE`` is ``g_n·Σ p_v·C_v`` over
the dropped entries; it is replaced by its mean-field value ``g_n·m_n·c̄``, with ``m_n`` the
off-target mass dropped (``1 −`` the mass the kernel kept, the target's included, counted
as for ``filter_stats``) and ``c̄`` C's mean row. A trained model's head has a large mean row, so
the dropped mass is mostly along it: on SmolLM2's hidden states this halves the block rule's
``dE`` error; on random logits (``c̄ ≈ 0``) it changes nothing. Not with a softcap.

**Skipping before the recompute** (``block_max``, on by default): the in-block filter
decides only after the block's logits are recomputed. With ``block_max`` the forward also
stores, per vocabulary block, the largest logit of each group of ``GROUP`` tokens
(``STORE_BMAX``; fp32, the smaller of the two ``BLOCK_N``, so that a backward block reads
whole groups), and the backward (``PREFILTER``) returns before the recompute when no live
token's target is in the block and its tokens' stored maximum is below the smallest live
``lse + log(filter_eps)`` (minus a margin for the forward/backward rounding difference).
One maximum per 64 tokens rather than per token keeps the store at 1/64 of a per-token one
(0.5 MB instead of 16 MB at N = 8192, V = 256000), inside the memory target; on the random
benchmark logits the test is the same, since a block is skippable only if all its tokens are.

**TMA reductions (experimental, off by default).** With ``tma_reduce=True`` (or
``SMOOTHALIGN_LCE_TMA=1``) on a GPU with TMA, each ``dE``/``dC`` tile goes to global memory
as one bulk reduce-add (``cp.reduce.async.bulk.tensor``) instead of 16-byte ``red``
instructions from every thread; the backward then uses BLOCK_D 32. Compiled for sm_90 on a
CPU (``benchmarks/sm90_compile.py``), not yet run on a GPU.

**What the filter dropped** (``filter_stats``): with ``STATS`` the backward also adds, per
token, the softmax mass of each block row it adds to ``dE`` into a ``[N]`` buffer; the host
turns it into the off-target mass left out of ``dE`` (``1 −`` kept: a live token's target row
is always added, in exactly one block, so its probability is in the kept mass; before the
compensation above). The trainers log
its mean as ``head/filtered_mass``.

**Dense backward (experimental, off by default)**: ``dense_backward=BYTES`` (or
``SMOOTHALIGN_LCE_DENSE``, MiB) replaces the block backward by ``kernels.dense_backward``:
cuBLAS products per chunk of tokens, with ``_dense_grad_kernel`` forming each chunk's
gradient from its float32 logits in one pass. For a peaked softmax, where filtering skips
little and the atomic adds bound the block backward. Not yet timed on a GPU.

Run on CPU tensors with ``TRITON_INTERPRET=1`` set before this module is imported.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from smoothalign.kernels._autograd import first_order_only

DE_CHUNK_BYTES = 32 << 20  # fp32 dE accumulation buffer per launch chunk, at most
DE_CHUNK_SHARE = 0.04  # ... and at most this share of the gradients' bytes (small shapes)
DE_CHUNK_ROWS: int | None = None  # overrides DE_CHUNK_BYTES (tests: several chunks)
STRIPS_DEFAULT: float | None = 0.25  # strip threshold ÷ filter_eps (see resolve_strips)
FILTER_DIV = 32.0  # filter_eps="auto" for 16-bit inputs: finfo(dtype).eps / FILTER_DIV


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _logits_block(
    E,
    C,
    Bias,
    offs_n,
    n_mask,
    offs_v,
    v_mask,
    D,
    softcap,
    stride_en,
    stride_ed,
    stride_cv,
    stride_cd,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    DOT_PREC: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """``softcap(E[offs_n] · C[offs_v]ᵀ + b)`` as an fp32 ``[BLOCK_N, BLOCK_V]`` block."""
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_mask = offs_d < D
        e = tl.load(
            E + offs_n[:, None] * stride_en + offs_d[None, :] * stride_ed,
            mask=n_mask[:, None] & d_mask[None, :],
            other=0.0,
        )
        c = tl.load(
            C + offs_v[None, :] * stride_cv + offs_d[:, None] * stride_cd,
            mask=v_mask[None, :] & d_mask[:, None],
            other=0.0,
        )
        if UPCAST:  # the interpreter multiplies 16-bit floats as their integer bits
            e = e.to(tl.float32)
            c = c.to(tl.float32)
        acc = tl.dot(e, c, acc, input_precision=DOT_PREC)
    if HAS_BIAS:
        b = tl.load(Bias + offs_v, mask=v_mask, other=0.0).to(tl.float32)
        acc += b[None, :]
    if HAS_SOFTCAP:
        acc = softcap * _tanh(acc / softcap)
    return acc


@triton.jit
def _fwd_kernel(
    E,
    C,
    Bias,
    T,
    LSE_P,
    ZT_P,
    SZ_P,
    BMAX,
    N,
    V,
    D,
    v_per_split,
    n_groups,
    ignore_index,
    softcap,
    stride_en,
    stride_ed,
    stride_cv,
    stride_cd,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    GROUP: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    SUM_Z: tl.constexpr,
    STORE_BMAX: tl.constexpr,
    DOT_PREC: tl.constexpr,
    UPCAST: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    n_mask = offs_n < N
    t = tl.load(T + offs_n, mask=n_mask, other=ignore_index)
    out = pid_s * N + offs_n
    live = n_mask & (t != ignore_index)
    if tl.max(live.to(tl.int32), 0) == 0:  # every token of the block ignored
        zero = tl.zeros((BLOCK_N,), dtype=tl.float32)
        tl.store(LSE_P + out, zero, mask=n_mask)
        tl.store(ZT_P + out, zero, mask=n_mask)
        if SUM_Z:
            tl.store(SZ_P + out, zero, mask=n_mask)
        return
    v_lo = pid_s * v_per_split
    v_hi = tl.minimum(v_lo + v_per_split, V)
    m = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
    s = tl.zeros((BLOCK_N,), dtype=tl.float32)
    zt = tl.zeros((BLOCK_N,), dtype=tl.float32)
    sz = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for v0 in range(v_lo, v_hi, BLOCK_V):
        offs_v = (v0 + tl.arange(0, BLOCK_V)).to(tl.int64)
        v_mask = offs_v < v_hi
        z = _logits_block(
            E,
            C,
            Bias,
            offs_n,
            n_mask,
            offs_v,
            v_mask,
            D,
            softcap,
            stride_en,
            stride_ed,
            stride_cv,
            stride_cd,
            BLOCK_N,
            BLOCK_V,
            BLOCK_D,
            HAS_BIAS,
            HAS_SOFTCAP,
            DOT_PREC,
            UPCAST,
        )
        zt += tl.sum(tl.where(offs_v[None, :] == t[:, None], z, 0.0), 1)
        if SUM_Z:
            sz += tl.sum(tl.where(v_mask[None, :], z, 0.0), 1)
        z = tl.where(v_mask[None, :], z, float("-inf"))
        z_max = tl.max(z, 1)
        if STORE_BMAX:  # the largest logit of each GROUP tokens here, [V blocks, N/GROUP]
            g_max = tl.max(tl.reshape(z_max, (BLOCK_N // GROUP, GROUP)), 1)
            offs_g = pid_n * (BLOCK_N // GROUP) + tl.arange(0, BLOCK_N // GROUP)
            tl.store(
                BMAX + tl.cast(v0 // BLOCK_V, tl.int64) * n_groups + offs_g,
                g_max,
                mask=offs_g < n_groups,
            )
        m_new = tl.maximum(m, z_max)
        # while every logit so far is -inf (a bias masking whole blocks), shift by 0, not by
        # -inf: exp(-inf - -inf) would be NaN
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - shift) + tl.sum(tl.exp(z - shift[:, None]), 1)
        m = m_new
    tl.store(LSE_P + out, m + tl.log(s), mask=n_mask)
    tl.store(ZT_P + out, zt, mask=n_mask)
    if SUM_Z:
        tl.store(SZ_P + out, sz, mask=n_mask)


@triton.jit
def _bwd_kernel(
    E,
    C,
    Bias,
    T,
    LSE,
    G,
    dE,
    dC,
    dBias,
    BMAX,
    KEPT,
    DE_DESC,
    DC_DESC,
    N,
    V,
    D,
    softcap,
    beta,
    filter_eps,
    strip_eps,
    log_eps,
    bmax_stride,
    bmax_div,
    stride_en,
    stride_ed,
    stride_cv,
    stride_cd,
    stride_den,
    stride_dcv,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    GROUP_N: tl.constexpr,
    GROUP: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    SMOOTH_IN_BLOCK: tl.constexpr,
    FILTER: tl.constexpr,
    STRIPS: tl.constexpr,
    PREFILTER: tl.constexpr,
    COMPUTE_DE: tl.constexpr,
    COMPUTE_DC: tl.constexpr,
    COMPUTE_DBIAS: tl.constexpr,
    TMA_REDUCE: tl.constexpr,
    STATS: tl.constexpr,
    SCALE_ROWS: tl.constexpr,
    DOT_PREC: tl.constexpr,
    UPCAST: tl.constexpr,
):
    pid = tl.program_id(0)
    num_n = tl.cdiv(N, BLOCK_N)
    num_v = tl.cdiv(V, BLOCK_V)
    per_group = GROUP_N * num_v
    first_n = (pid // per_group) * GROUP_N
    group_size = tl.minimum(num_n - first_n, GROUP_N)
    pid_n = first_n + (pid % per_group) % group_size
    pid_v = (pid % per_group) // group_size

    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    n_mask = offs_n < N
    g = tl.load(G + offs_n, mask=n_mask, other=0.0)  # 0 for ignored tokens (set by the host)
    g_abs = tl.max(tl.abs(g), 0)
    if g_abs == 0.0:
        return
    t = tl.load(T + offs_n, mask=n_mask, other=-1)
    lse = tl.load(LSE + offs_n, mask=n_mask, other=0.0)
    live = g != 0.0
    # the live tokens whose target is in this block: their entries (the one-hot term) are
    # never left out. A [BLOCK_N] test, not a [BLOCK_N, BLOCK_V] mask kept alive beside the
    # block: that mask, reduced here and under the strips and the stats, took the default
    # block's spills from 184 to 816 bytes a thread (sm_90, triton 3.6: sm90_compile.py)
    v_lo = pid_v * BLOCK_V
    target_rows = live & (t >= v_lo) & (t < v_lo + BLOCK_V)
    any_target = tl.max(target_rows.to(tl.int32), 0) > 0
    if PREFILTER:  # noqa: SIM102 (a constexpr branch around a runtime test)
        # skip before recomputing the logits: no live token's target is in this block and
        # the largest logit of the block's tokens here (from the forward: one fp32 maximum
        # per GROUP tokens, a whole number of groups per BLOCK_N) is below every live
        # token's lse + log(filter_eps), so every softmax entry is below filter_eps: the
        # blocks the in-block test below would skip, or fewer
        row = tl.cast(pid_v // bmax_div, tl.int64) * bmax_stride  # int64: N·V/BLOCK_V may pass 2³¹
        offs_g = pid_n * (BLOCK_N // GROUP) + tl.arange(0, BLOCK_N // GROUP)
        g_mask = offs_g * GROUP < N  # the groups of this row chunk
        bm = tl.max(tl.load(BMAX + row + offs_g, mask=g_mask, other=float("-inf")), 0)
        bm = tl.where(bm == float("-inf"), bm, bm + tl.abs(bm) * 1e-6 + 1e-6)
        floor = tl.min(tl.where(live, lse, float("inf")), 0)
        if (bm < floor + log_eps) & ~any_target:
            return
    offs_v = (pid_v * BLOCK_V + tl.arange(0, BLOCK_V)).to(tl.int64)
    v_mask = offs_v < V
    z = _logits_block(
        E,
        C,
        Bias,
        offs_n,
        n_mask,
        offs_v,
        v_mask,
        D,
        softcap,
        stride_en,
        stride_ed,
        stride_cv,
        stride_cd,
        BLOCK_N,
        BLOCK_V,
        BLOCK_D,
        HAS_BIAS,
        HAS_SOFTCAP,
        DOT_PREC,
        UPCAST,
    )
    p = tl.exp(z - lse[:, None])
    is_target = offs_v[None, :] == t[:, None]
    d = p - tl.where(is_target, 1.0 - beta, 0.0)
    if SMOOTH_IN_BLOCK:
        d = d - beta / V
    keep = live[:, None] & v_mask[None, :]
    d = tl.where(keep, d, 0.0)
    if STATS:  # the softmax mass of each row, its target's included (the host takes the
        # target's out: its row is always added, in exactly one block), summed now so that
        # p is not kept alive beside d
        p_rows = tl.sum(tl.where(keep, p, 0.0), 1)
    if STRIPS:  # the columns holding a live token's target, reduced before d's tests
        target_cols = tl.max((is_target & live[:, None]).to(tl.int32), 0) > 0
    if FILTER:  # noqa: SIM102 (a constexpr branch around a runtime test)
        if (tl.max(tl.max(tl.abs(d), 1), 0) < filter_eps) & ~any_target:
            return
    # strips: dE takes only the rows (tokens) of the block with an entry ≥ strip_eps or
    # their target, dC only its columns (vocabulary entries) with one or a token's target;
    # the others' atomic adds are masked off
    rows_on = n_mask
    cols_on = v_mask
    if STRIPS:
        ad = tl.abs(d)
        rows_on = rows_on & ((tl.max(ad, 1) >= strip_eps) | target_rows)
        cols_on = cols_on & ((tl.max(ad, 0) >= strip_eps) | target_cols)
    if STATS:  # the softmax mass this computed block keeps in dE, per token
        tl.atomic_add(KEPT + offs_n, tl.where(rows_on, p_rows, 0.0), mask=n_mask, sem="relaxed")
    # fp16: g/max|g| in the 16-bit block, max|g| back on the fp32 products
    if SCALE_ROWS:  # noqa: SIM108 (a constexpr branch)
        d = d * (g / g_abs)[:, None]
    else:
        d = d * g[:, None]
    if HAS_SOFTCAP:
        th = z / softcap
        d = d * (1.0 - th * th)
    if COMPUTE_DBIAS:
        d_bias = tl.sum(d, 0)
        if SCALE_ROWS:
            d_bias = d_bias * g_abs
        tl.atomic_add(dBias + offs_v, d_bias, mask=v_mask, sem="relaxed")
    d_lp = d.to(E.dtype.element_ty)
    if UPCAST:
        d_lp = d_lp.to(tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_mask = offs_d < D
        if COMPUTE_DE:
            c = tl.load(
                C + offs_v[:, None] * stride_cv + offs_d[None, :] * stride_cd,
                mask=v_mask[:, None] & d_mask[None, :],
                other=0.0,
            )
            if UPCAST:
                c = c.to(tl.float32)
            de = tl.dot(d_lp, c, input_precision=DOT_PREC)
            if SCALE_ROWS:
                de = de * g_abs
            if TMA_REDUCE:  # one bulk reduce-add of the tile (TMA clips rows ≥ N)
                if STRIPS:  # a bulk add has no mask: the rows left out add zeros
                    de = tl.where(rows_on[:, None], de, 0.0)
                DE_DESC.atomic_add([pid_n * BLOCK_N, d0], de)
            else:
                tl.atomic_add(
                    dE + offs_n[:, None] * stride_den + offs_d[None, :],
                    de,
                    mask=rows_on[:, None] & d_mask[None, :],
                    sem="relaxed",
                )
        if COMPUTE_DC:
            e = tl.load(
                E + offs_n[:, None] * stride_en + offs_d[None, :] * stride_ed,
                mask=n_mask[:, None] & d_mask[None, :],
                other=0.0,
            )
            if UPCAST:
                e = e.to(tl.float32)
            dc = tl.dot(tl.trans(d_lp), e, input_precision=DOT_PREC)
            if SCALE_ROWS:
                dc = dc * g_abs
            if TMA_REDUCE:
                if STRIPS:
                    dc = tl.where(cols_on[:, None], dc, 0.0)
                DC_DESC.atomic_add([pid_v * BLOCK_V, d0], dc.to(dC.dtype.element_ty))
            else:
                tl.atomic_add(
                    dC + offs_v[:, None] * stride_dcv + offs_d[None, :],
                    dc.to(dC.dtype.element_ty),
                    mask=cols_on[:, None] & d_mask[None, :],
                    sem="relaxed",
                )


# ------------------------------------------------------------------------------- host side
def _config(kind: str, dtype: torch.dtype) -> tuple[int, int, int, int, int]:
    """``(BLOCK_N, BLOCK_V, BLOCK_D, num_warps, num_stages)``."""
    override = os.environ.get(f"SMOOTHALIGN_LCE_{kind.upper()}")
    if override:
        bn, bv, bd, w, st = (int(x) for x in override.split(","))
        return bn, bv, bd, w, st
    if _interpreting():
        return 16, 32, 16, 1, 1
    if dtype == torch.float32:
        return 64, 64, 32, 4, 2
    # 16-bit: the fastest of benchmarks/lce_tune.py's sweep over both benchmark shapes on an
    # H200 (2026-11-26, docs/results.md): forward 128×256×64, backward 64×128×64
    return (128, 256, 64, 8, 3) if kind == "fwd" else (64, 128, 64, 4, 3)


def _group_n() -> int:
    """Token blocks that sweep the vocabulary together in the backward (``GROUP_N``):
    ``SMOOTHALIGN_LCE_GROUP_N`` (for tuning), else 32. On an H200 (``lce_tune.py
    --diagnose``, 2026-11-27) 32 took the β = 0.1 backward from 45.0 to 39.8 ms at N = 8192,
    D = 4096, V = 128256 and from 10.1 to 9.9 ms at D = 2304, V = 256000 against 8. The
    timings point to the atomic adds as the bound (docs/results.md, runs E and F: an
    inference, not a profile); more token blocks in flight per vocabulary block spread the
    adds into ``dE`` over more rows."""
    raw = os.environ.get("SMOOTHALIGN_LCE_GROUP_N", "32")
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"SMOOTHALIGN_LCE_GROUP_N: {raw!r}; a positive whole number")
    return int(raw)


def _tma_reduce(asked: bool | None, device: torch.device, d: int) -> bool:
    """Whether the backward adds its ``dE``/``dC`` tiles with TMA bulk reductions
    (``cp.reduce.async.bulk.tensor``, one per tile, through shared memory) instead of
    per-thread ``red`` instructions: when asked (``asked``; ``None`` reads
    ``SMOOTHALIGN_LCE_TMA=1``; off by default: not yet timed), on a GPU with TMA (compute
    capability 9.0 or later) and a row length TMA can address (``D`` a multiple of 8, so
    that 16-bit and fp32 rows are whole 16-byte units). The timings of runs E and F point to
    the ``red`` traffic as the Llama-3-shape backward's bound; Flash Attention 3 accumulates
    its ``dQ`` with the same TMA reductions."""
    if asked is None:
        asked = os.environ.get("SMOOTHALIGN_LCE_TMA", "0") == "1"
    if not asked or _interpreting():
        return False
    if device.type != "cuda" or torch.version.hip is not None:  # TMA is NVIDIA's
        return False
    if torch.cuda.get_device_capability(device)[0] < 9:
        return False
    return d > 0 and d % 8 == 0


def _dot_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # tf32: ignored for 16-bit inputs


@triton.jit
def _dense_grad_kernel(
    Z,
    G,
    Lse,
    Up,
    T,
    V,
    stride_z,
    stride_g,
    softcap,
    beta,
    BLOCK: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
):
    """One pass over a chunk's float32 logits ``Z`` ``[rows, V]``: ``G = up_n·(softmax −
    (1 − β)·onehot − β/V)`` (``·(1 − tanh²)`` with softcap) in ``G``'s dtype; rows whose
    upstream gradient is 0 (ignored tokens) get 0 whatever their ``lse``."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < V
    up = tl.load(Up + row)
    lse = tl.load(Lse + row)
    t = tl.load(T + row)
    z = tl.load(Z + row * stride_z + offs, mask=mask, other=0.0)
    if HAS_SOFTCAP:
        th = _tanh(z / softcap)
        z = softcap * th
    d = tl.exp(z - lse) - tl.where(offs == t, 1.0 - beta, 0.0) - beta / V
    d = d * up
    if HAS_SOFTCAP:
        d = d * (1.0 - th * th)
    d = tl.where(up != 0.0, d, 0.0)
    tl.store(G + row * stride_g + offs, d.to(G.dtype.element_ty), mask=mask)


def dense_grad(z: Tensor, out: Tensor, lse: Tensor, up: Tensor, targets: Tensor, beta, softcap):
    """Launch ``_dense_grad_kernel``: ``out`` ``[rows, V]`` from the float32 logits ``z``."""
    rows, v = z.shape
    block = 16 if _interpreting() else 2048
    extra = {} if _interpreting() else {"num_warps": 8}
    _dense_grad_kernel[(rows, triton.cdiv(v, block))](
        z,
        out,
        lse,
        up,
        targets,
        v,
        z.stride(0),
        out.stride(0),
        float(softcap) if softcap is not None else 1.0,
        float(beta),
        BLOCK=block,
        HAS_SOFTCAP=softcap is not None,
        **extra,
    )
    return out


def resolve_filter_eps(filter_eps: float | str | None, dtype: torch.dtype) -> float | None:
    """The backward's threshold: ``"auto"`` is ``finfo(dtype).eps / FILTER_DIV`` for 16-bit
    inputs (``SMOOTHALIGN_LCE_FILTER_DIV`` overrides the divisor, for tuning with the block
    sizes: ``benchmarks/lce_tune.py``) and no filtering for float32; a number is itself."""
    from smoothalign.kernels import check_filter_eps

    filter_eps = check_filter_eps(filter_eps)
    if filter_eps is None:
        return None
    if filter_eps == "auto":
        if dtype in (torch.bfloat16, torch.float16):
            return torch.finfo(dtype).eps / _filter_div()
        return None
    return filter_eps


def _env_number(name: str, ok, expected: str) -> float | None:
    """The number in the environment variable ``name`` (unset or blank: ``None``), refused
    unless finite and ``ok(value)``; ``expected`` says what it should be."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and ok(value)):
        raise ValueError(f"{name}: {expected} expected, got {raw!r}")
    return value


def _filter_div() -> float:
    div = _env_number(
        "SMOOTHALIGN_LCE_FILTER_DIV",
        lambda x: x >= 1.0,
        "a number >= 1 (auto's threshold is the 16-bit eps divided by it)",
    )
    return FILTER_DIV if div is None else div


def resolve_strips(strips: float | None) -> float | None:
    """The strip threshold as a share of ``filter_eps`` (``None``: ``SMOOTHALIGN_LCE_STRIPS``,
    else ``STRIPS_DEFAULT``; 0: off), checked to lie in ``[0, 1]``: above 1 a computed
    block could add nothing."""
    if strips is None:
        env = os.environ.get("SMOOTHALIGN_LCE_STRIPS")
        if env is None:
            return STRIPS_DEFAULT
        try:
            strips = float(env)
        except ValueError:
            raise ValueError(
                f"SMOOTHALIGN_LCE_STRIPS: a number in [0, 1] expected, got {env!r}"
            ) from None
    if not 0.0 <= strips <= 1.0:  # NaN fails too
        raise ValueError(f"strips: a share of filter_eps in [0, 1] expected (0: off), got {strips}")
    return float(strips) or None


def resolve_compensate(compensate: bool | None) -> bool:
    """``None``: ``SMOOTHALIGN_LCE_COMPENSATE`` (``0`` off, anything else on, as the other
    ``SMOOTHALIGN_LCE_*`` switches), else on."""
    if compensate is not None:
        return bool(compensate)
    return os.environ.get("SMOOTHALIGN_LCE_COMPENSATE", "1") != "0"


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def _forward(e, c, bias, targets, beta, ignore_index, softcap, store_bmax=False):
    """Per-token loss and lse ``[N]``; ``c̄`` (fp32 ``[D]``, the mean row of C) when the
    smoothing term is closed-form (``β > 0``, no softcap), else None; with ``store_bmax`` also
    ``(maxima, BLOCK_V, GROUP)``: the largest logit of each ``GROUP`` consecutive tokens per
    forward vocabulary block, ``[V blocks, N/GROUP]`` in fp32, and the block width and group
    they were taken over (else None)."""
    n, d = e.shape
    v = c.shape[0]
    bn, bv, bd, warps, stages = _config("fwd", e.dtype)
    n_blocks = triton.cdiv(n, bn)
    v_blocks = triton.cdiv(v, bv)
    split = max(1, min(v_blocks, triton.cdiv(4 * _num_sms(e.device), n_blocks)))
    v_per_split = triton.cdiv(v_blocks, split) * bv
    split = triton.cdiv(v, v_per_split)  # no empty slice
    lse_p = torch.empty(split, n, dtype=torch.float32, device=e.device)
    zt_p = torch.empty_like(lse_p)
    sum_in_kernel = beta > 0 and softcap is not None  # else the mean logit is e·c̄ + mean(b)
    sz_p = torch.empty_like(lse_p) if sum_in_kernel else lse_p  # unused when SUM_Z is off
    group = _bmax_group(e.dtype)
    n_groups = triton.cdiv(n, group)
    bmax = None
    if store_bmax:
        bmax = torch.empty(v_blocks, n_groups, dtype=torch.float32, device=e.device)
    extra = {} if _interpreting() else {"num_warps": warps, "num_stages": stages}
    _fwd_kernel[(n_blocks, split)](
        e,
        c,
        bias if bias is not None else e,
        targets,
        lse_p,
        zt_p,
        sz_p,
        bmax if bmax is not None else lse_p,
        n,
        v,
        d,
        v_per_split,
        n_groups,
        ignore_index,
        float(softcap) if softcap is not None else 1.0,
        e.stride(0),
        e.stride(1),
        c.stride(0),
        c.stride(1),
        BLOCK_N=bn,
        BLOCK_V=bv,
        BLOCK_D=bd,
        GROUP=max(group, 1),
        HAS_BIAS=bias is not None,
        HAS_SOFTCAP=softcap is not None,
        SUM_Z=sum_in_kernel,
        STORE_BMAX=bmax is not None,
        DOT_PREC=_dot_precision(e.dtype),
        UPCAST=_interpreting() and e.dtype != torch.float32,
        **extra,
    )
    lse = torch.logsumexp(lse_p, 0) if split > 1 else lse_p[0]
    zt = zt_p.sum(0)
    loss = lse - (1.0 - beta) * zt
    c_mean = None
    if sum_in_kernel:
        loss = loss - (beta / v) * sz_p.sum(0)
    elif beta > 0:
        c_mean = _mean_row(c)
        mean_z = _rowwise_dot(e, c_mean)
        if bias is not None:
            mean_z = mean_z + bias.float().mean()
        loss = loss - beta * mean_z
    return loss, lse, c_mean, (bmax, bv, group) if bmax is not None else None, zt


def _dense_bytes_from_env() -> int | None:
    """``SMOOTHALIGN_LCE_DENSE`` (MiB; unset or 0: off): the dense backward's chunk bytes."""
    mib = _env_number("SMOOTHALIGN_LCE_DENSE", lambda x: x >= 0, "a size in MiB (0: off)")
    return max(1, int(mib * 2**20)) if mib else None


def _bmax_group(dtype: torch.dtype) -> int:
    """Tokens per stored block maximum: the smaller of the two BLOCK_N when it divides the
    larger (each backward block then reads whole groups), else 0 (no maxima)."""
    a, b = _config("fwd", dtype)[0], _config("bwd", dtype)[0]
    small, large = min(a, b), max(a, b)
    return small if large % small == 0 else 0


def _mean_row(c: Tensor, rows: int = 8192) -> Tensor:
    """``c.mean(0)`` in float32, ``rows`` rows at a time. Not one reduction over all of C:
    on the H200 that cost 0.13–0.17× the gradients' bytes of extra peak memory at β > 0
    (run A, ``c.sum(0, dtype=float32)``; the reduction's own workspace, which grows with the
    rows reduced), and the memory target leaves 5%. ``sum(dtype=float32)`` on a CUDA slice
    converts as it reads (no fp32 copy of the slice; on CPU it makes one, ``rows × D``)."""
    total = torch.zeros(c.shape[1], dtype=torch.float32, device=c.device)
    for s in range(0, c.shape[0], rows):
        total += c[s : s + rows].sum(0, dtype=torch.float32)
    return total / c.shape[0]


def _rowwise_dot(e: Tensor, w: Tensor, rows: int = 2048) -> Tensor:
    """``e.float() @ w`` ``[N]`` (``w`` fp32 ``[D]``), ``rows`` rows of ``e`` at a time."""
    out = torch.empty(e.shape[0], dtype=torch.float32, device=e.device)
    for s in range(0, e.shape[0], rows):
        out[s : s + rows] = e[s : s + rows].float() @ w
    return out


def _de_chunk_rows(n: int, v: int, d: int, itemsize: int, bn: int) -> int:
    """Tokens per backward launch: the fp32 ``dE`` buffer of a chunk takes at most
    ``DE_CHUNK_BYTES`` and at most ``DE_CHUNK_SHARE`` of the gradients' bytes (``(N + V)·D``
    entries), in whole token blocks, and at least 8 of them (fewer would leave SMs idle).
    The share matters at small shapes: at SmolLM2's (N = 8192, D = 576, V = 49152) a 32 MiB
    cap is all 8192 rows, 19 MB against 66 MB of gradients."""
    budget = min(DE_CHUNK_BYTES, int(DE_CHUNK_SHARE * (n + v) * d * itemsize))
    return max(bn * 8, budget // (4 * d) // bn * bn)


def _backward(
    e,
    c,
    bias,
    targets,
    lse,
    g,
    beta,
    softcap,
    filter_eps,
    need,
    accum_c_fp32,
    de_chunk_rows,
    bmax=None,
    c_mean=None,
    tma_reduce=None,
    dense_bytes=None,
    stats=None,
    strips=None,
    compensate=False,
):
    need_e, need_c, need_b = need
    n, d = e.shape
    v = c.shape[0]
    filtering = not (dense_bytes or filter_eps is None or (beta > 0 and softcap is not None))
    if stats is not None and not filtering:
        stats["dropped_mass"] = torch.where(g != 0, 0.0, math.nan)  # nothing filtered
        stats = None
    # the dropped mass times C's mean row, added to dE (see the module doc); not with a
    # softcap, whose derivative weighs each dropped entry differently
    compensate = compensate and filtering and need_e and softcap is None
    if dense_bytes:
        from smoothalign.kernels.dense_backward import dense_backward, dense_chunk_rows

        return dense_backward(
            e,
            c,
            bias,
            targets,
            lse,
            g,
            beta=beta,
            softcap=softcap,
            need=need,
            # the Triton pass caps the logits in registers: no tanh buffer
            chunk_rows=dense_chunk_rows(v, e.dtype, dense_bytes, tanh_buffer=False),
            accum_c_fp32=accum_c_fp32,
            elementwise=dense_grad,
        )
    bn, bv, bd, warps, stages = _config("bwd", e.dtype)
    tma = _tma_reduce(tma_reduce, e.device, d)
    if tma and not os.environ.get("SMOOTHALIGN_LCE_BWD") and e.dtype != torch.float32:
        # staging the tiles in shared memory costs registers: compiled for sm_90 on a CPU,
        # BLOCK_D 64 spills with TMA (376 bytes a thread with triton 3.9, 184 with 3.6), 32
        # does not (benchmarks/sm90_compile.py)
        bd = 32
    rank_one = beta > 0 and softcap is None
    eps = None if (beta > 0 and softcap is not None) else filter_eps
    strip_eps = eps * strips if (eps is not None and strips) else None
    if de_chunk_rows is None:
        de_chunk_rows = _de_chunk_rows(n, v, d, e.element_size(), bn)
    # the forward's block maxima can skip a backward block only if it lies in one forward
    # block (forward BLOCK_V, as the forward used it, a multiple of the backward's) and
    # covers whole token groups (backward BLOCK_N and row chunks multiples of the group)
    bmax, bv_fwd, group = bmax if bmax is not None else (None, 1, 1)
    prefilter = (
        bmax is not None
        and eps is not None
        and bv_fwd % bv == 0
        and bn % group == 0
        and de_chunk_rows % group == 0
    )
    if prefilter and bmax.shape != (triton.cdiv(v, bv_fwd), triton.cdiv(n, group)):
        raise RuntimeError(f"block maxima of shape {tuple(bmax.shape)} for N={n}, V={v}")
    # buffers start at the closed-form rank-one part of the gradient (see the module doc)
    # the interpreter has no 16-bit atomic add: fp32 there (the bf16/fp16 path is GPU-only)
    c_bar = None
    if compensate:  # the forward computed c̄ when rank_one (β > 0, no softcap); else here,
        # before the gradient buffers exist, so the reduction's workspace is not at the peak
        c_bar = c_mean if c_mean is not None else _mean_row(c)
    fp32_c = accum_c_fp32 or c.dtype == torch.float32 or _interpreting()
    dc_dtype = torch.float32 if fp32_c else c.dtype
    dc_buf = None
    if need_c:
        if rank_one:
            gsum_e = torch.zeros(d, dtype=torch.float32, device=e.device)
            for s in range(0, n, 4096):
                gsum_e += g[s : s + 4096] @ e[s : s + 4096].float()
            dc_buf = (-(beta / v) * gsum_e).to(dc_dtype).expand(v, d).contiguous()
        else:
            dc_buf = torch.zeros(v, d, dtype=dc_dtype, device=e.device)
    db = None
    if need_b:
        db = torch.full((v,), -(beta / v) * float(g.sum()) if rank_one else 0.0, device=e.device)
        db = db.float()
    if not (need_e and rank_one):
        c_mean = None
    de_out = torch.empty_like(e) if need_e else None
    counting = stats is not None or compensate
    kept = torch.zeros(n, dtype=torch.float32, device=e.device) if counting else None
    extra = {} if _interpreting() else {"num_warps": warps, "num_stages": stages}
    dc_desc = None
    if tma and dc_buf is not None:
        from triton.tools.tensor_descriptor import TensorDescriptor

        dc_desc = TensorDescriptor.from_tensor(dc_buf, [bv, bd])
    for s in range(0, n, de_chunk_rows):
        rows = min(de_chunk_rows, n - s)
        gc = g[s : s + rows]
        de_buf = None
        if need_e:
            if c_mean is not None:
                de_buf = (-beta) * gc[:, None] * c_mean[None, :]
            else:
                de_buf = torch.zeros(rows, d, dtype=torch.float32, device=e.device)
        de_desc = None
        if tma and de_buf is not None:
            from triton.tools.tensor_descriptor import TensorDescriptor

            de_desc = TensorDescriptor.from_tensor(de_buf, [bn, bd])
        grid = (triton.cdiv(rows, bn) * triton.cdiv(v, bv),)
        _bwd_kernel[grid](
            e[s : s + rows],
            c,
            bias if bias is not None else e,
            targets[s : s + rows],
            lse[s : s + rows],
            gc,
            de_buf if de_buf is not None else gc,
            dc_buf if dc_buf is not None else gc,
            db if db is not None else gc,
            bmax[:, s // group :] if prefilter else gc,
            kept[s : s + rows] if kept is not None else gc,
            de_desc,
            dc_desc,
            rows,
            v,
            d,
            float(softcap) if softcap is not None else 1.0,
            float(beta),
            float(eps) if eps is not None else 0.0,
            float(strip_eps) if strip_eps is not None else 0.0,
            # minus 1e-3: the backward's recomputed logits may differ from the forward's
            # by fp32 rounding (other tiling); the skip must stay on the safe side
            math.log(eps) - 1e-3 if eps is not None else 0.0,
            bmax.shape[1] if prefilter else 1,
            bv_fwd // bv,
            e.stride(0),
            e.stride(1),
            c.stride(0),
            c.stride(1),
            d,
            d,
            BLOCK_N=bn,
            BLOCK_V=bv,
            BLOCK_D=bd,
            GROUP_N=_group_n(),
            GROUP=group if prefilter else 1,
            HAS_BIAS=bias is not None,
            HAS_SOFTCAP=softcap is not None,
            SMOOTH_IN_BLOCK=beta > 0 and softcap is not None,
            FILTER=eps is not None,
            STRIPS=strip_eps is not None,
            PREFILTER=prefilter,
            COMPUTE_DE=need_e,
            COMPUTE_DC=need_c,
            COMPUTE_DBIAS=need_b,
            TMA_REDUCE=tma,
            STATS=kept is not None,
            SCALE_ROWS=e.dtype == torch.float16,
            DOT_PREC=_dot_precision(e.dtype),
            UPCAST=_interpreting() and e.dtype != torch.float32,
            **extra,
        )
        if c_bar is not None:  # the off-target mass dE left out, along C's mean row
            dropped = (1.0 - kept[s : s + rows]).clamp_(min=0.0)  # kept: its target's too
            # where, not a product: an ignored token's target may be out of range
            de_buf.addr_(torch.where(gc != 0, gc * dropped, 0.0), c_bar)
        if de_buf is not None:
            # cast while copying: `= de_buf.to(e.dtype)` would first allocate a 16-bit copy
            # of the chunk, alive beside the fp32 buffer at the backward's peak (16 MiB at
            # the benchmark shapes, 1.4% of the gradients)
            de_out[s : s + rows].copy_(de_buf)
    if stats is not None:  # per token: the off-target softmax mass left out of dE (the
        # kept mass holds the target's probability: its row is always added)
        dropped = (1.0 - kept).clamp_(min=0.0)
        stats["dropped_mass"] = torch.where(g != 0, dropped, math.nan)  # no sync: no indexing
    dc = dc_buf.to(c.dtype) if dc_buf is not None else None
    return de_out, dc, (db.to(bias.dtype) if db is not None else None)


class TritonLinearCrossEntropy(torch.autograd.Function):
    """Per-token smoothed cross-entropy ``[N]`` (float32), 0 at ignored tokens."""

    @staticmethod
    def forward(
        ctx,
        e,
        c,
        bias,
        targets,
        beta,
        ignore_index,
        softcap,
        filter_eps,
        accum_c_fp32,
        block_max,
        tma_reduce,
        dense_bytes,
        filter_stats,
        strips,
        compensate,
    ):
        loss, lse, c_mean, maxima, _ = _forward(
            e, c, bias, targets, beta, ignore_index, softcap, block_max
        )
        valid = targets != ignore_index
        loss = loss.masked_fill(~valid, 0.0)
        bmax, bv_fwd, group = maxima if maxima is not None else (None, None, None)
        ctx.save_for_backward(e, c, bias, targets, lse, bmax, c_mean)
        ctx.opts = (beta, ignore_index, softcap, filter_eps, accum_c_fp32, bv_fwd, group)
        ctx.tma_reduce, ctx.dense_bytes, ctx.filter_stats = tma_reduce, dense_bytes, filter_stats
        ctx.strips, ctx.compensate = strips, compensate
        return loss

    @staticmethod
    @first_order_only
    def backward(ctx, grad):
        e, c, bias, targets, lse, bmax, c_mean = ctx.saved_tensors
        beta, ignore_index, softcap, filter_eps, accum_c_fp32, bv_fwd, group = ctx.opts
        g = grad.float().masked_fill(targets == ignore_index, 0.0).contiguous()
        de, dc, db = _backward(
            e,
            c,
            bias,
            targets,
            lse,
            g,
            beta,
            softcap,
            filter_eps,
            tuple(ctx.needs_input_grad[:3]),
            accum_c_fp32,
            DE_CHUNK_ROWS,
            (bmax, bv_fwd, group) if bmax is not None else None,
            c_mean,
            ctx.tma_reduce,
            ctx.dense_bytes,
            ctx.filter_stats,
            ctx.strips,
            ctx.compensate,
        )
        return (de, dc, db) + (None,) * 12


def triton_token_losses(
    e: Tensor,
    c: Tensor,
    targets: Tensor,
    *,
    beta: float = 0.0,
    ignore_index: int = -100,
    softcap: float | None = None,
    bias: Tensor | None = None,
    filter_eps: float | str | None = "auto",
    accum_c_fp32: bool = False,
    block_max: bool | None = None,
    tma_reduce: bool | None = None,
    dense_backward: int | None = None,
    filter_stats: dict | None = None,
    strips: float | None = None,
    compensate: bool | None = None,
) -> Tensor:
    """Per-token losses ``[N]`` of ``e`` ``[N, D]`` against ``c`` ``[V, D]`` with the kernels.

    ``filter_stats``: a dict that the backward fills with ``"dropped_mass"``, float32
    ``[N]``: per token, the softmax mass off its target in the blocks gradient filtering
    skipped and the block rows the strips left out, that is, left out of its ``dE`` (of the
    ``1 − p_target`` there is: a token predicted with certainty has nothing to lose); 0 when
    nothing was filtered, NaN for tokens with no gradient (ignored). Counted by the kernel
    as it goes (one atomic add per token and computed block: the mass it keeps, the
    target's included, whose row is always kept), which the compensation (on by default)
    needs anyway: the count is kept whenever either is on.

    ``dense_backward`` (bytes; off by default; ``None`` reads ``SMOOTHALIGN_LCE_DENSE`` in
    MiB): the backward through three BLAS products per chunk of tokens whose buffers take at
    most that many bytes (``kernels.dense_backward``), instead of the Triton kernel's
    atomic adds: nothing filtered (``filter_eps`` is then unused), meant for a trained
    model's peaked softmax, where filtering skips few blocks. An experiment, not yet timed
    on a GPU.

    ``strips`` (a share of ``filter_eps`` in [0, 1]; ``None`` reads ``SMOOTHALIGN_LCE_STRIPS``,
    else 1/4; 0 off) and ``compensate`` (``None`` reads ``SMOOTHALIGN_LCE_COMPENSATE``, else
    on): the finer filter and the mean-row compensation of the module doc.

    ``tma_reduce`` (off by default; ``None`` reads ``SMOOTHALIGN_LCE_TMA=1``): the backward
    adds its gradient tiles with TMA bulk reductions where the GPU has them (see
    ``_tma_reduce``): an experiment, compiled for sm_90 but not yet run on a GPU.

    ``block_max`` (on by default; ``None`` reads ``SMOOTHALIGN_LCE_BLOCKMAX``, ``0`` turns it
    off): the forward also stores the largest logit of each group of tokens (the smaller of
    the two BLOCK_N: 64) per vocabulary block (fp32, ``N·V/(BLOCK_V·64)`` values, held until
    the backward: 0.5 MB for N = 8192, V = 256000), and the backward skips a filterable block
    before recomputing its logits. Same gradient as the in-block filter or closer. On an
    H200 it cut forward + backward from 48.4 to 29.6 ms at N = 8192, D = 2304, V = 256000
    and from 63.1 to 60.0 ms at D = 4096, V = 128256 (β = 0.1; docs/results.md, run D), and
    gained nothing on a real model's hidden states, where few blocks are skippable. Nothing is stored
    when no gradient is needed or filtering is off.
    """
    if e.dtype != c.dtype:
        common = torch.promote_types(e.dtype, c.dtype)
        e, c = e.to(common), c.to(common)
    if e.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"triton linear cross-entropy: unsupported dtype {e.dtype}")
    if e.shape[0] == 0:  # still a graph to every input that wants a gradient (zeros)
        empty = e.new_zeros(0, dtype=torch.float32) + 0.0 * e.sum() + 0.0 * c.sum()
        return empty + 0.0 * bias.sum() if bias is not None else empty
    if e.stride(1) != 1:
        e = e.contiguous()
    if c.stride(1) != 1:
        c = c.contiguous()
    if bias is not None and bias.stride(0) != 1:  # the kernels read it densely
        bias = bias.contiguous()
    targets = targets.contiguous()
    eps = resolve_filter_eps(filter_eps, e.dtype)
    if block_max is None:
        block_max = os.environ.get("SMOOTHALIGN_LCE_BLOCKMAX", "1") != "0"
    # keep the maxima only where a backward will use them: gradients wanted, filtering on
    # (with β > 0 and softcap it is off), and forward blocks made of whole backward blocks
    wants_grad = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (e, c, bias)
    )
    usable = eps is not None and not (beta > 0 and softcap is not None)
    nested = (
        _config("fwd", e.dtype)[1] % _config("bwd", e.dtype)[1] == 0 and _bmax_group(e.dtype) > 0
    )
    if dense_backward is None:
        dense_backward = _dense_bytes_from_env()
    elif dense_backward < 0:
        raise ValueError(f"dense_backward: a size in bytes (0: off) expected, got {dense_backward}")
    block_max = bool(block_max) and wants_grad and usable and nested and not dense_backward
    return TritonLinearCrossEntropy.apply(
        e,
        c,
        bias,
        targets,
        float(beta),
        int(ignore_index),
        softcap,
        eps,
        accum_c_fp32,
        block_max,
        tma_reduce,
        int(dense_backward) if dense_backward else None,
        filter_stats,
        resolve_strips(strips),
        resolve_compensate(compensate),
    )
