"""Triton kernels of the fused multi-step neurons (imported lazily by :mod:`multispike.kernels.triton_kernels`).

This module imports ``triton`` at import time; nothing else in multispike does. Every kernel walks one block of
``BLOCK`` elements of a time-major sequence over all T steps with the membrane in registers (element ``(t, i)``
at ``ptr + t * stride_t + i``). Exactness rules as in the C++ kernels: each forward expression is the reference's
sequence of IEEE operations, float32 divisions use ``div_rn`` (round to nearest, not the approximate division),
and the launcher disables FMA contraction (``enable_fp_fusion=False``). The backward recomputes the membrane;
for ``T <= TILE_T_MAX`` the T membranes of a block stay in registers as a ``[TP, BLOCK]`` tile, above that in a
global scratch buffer.

Layout: the shared skeleton (block, optional state, sequence steps, membrane tile, partial sums) first, then one
section per family (IF/LIF, one-hot M-LIF, LM-HT), each its step helpers and its forward and backward kernel.
The module is longer than the package's ~450-line guide on purpose: it is the one place that imports ``triton``
(so that a missing or broken Triton is caught by a single lazy import in ``triton_kernels``), and splitting the
families into modules would put that import, and the lazy-import guard, in four places.
"""
from __future__ import annotations

import triton
import triton.language as tl

TILE_T_MAX = 32


@triton.jit
def _div(a, b, F32: tl.constexpr):
    if F32:
        r = tl.math.div_rn(a, b)
    else:
        r = a / b
    return r


@triton.jit
def _surrogate(x, p0, p1, SK: tl.constexpr):
    # SK 0 sigmoid (p0 = alpha), 1 atan (p0 = alpha/2, p1 = pi/2*alpha), 2 rect (p0 = a/2, p1 = 1/a),
    # 3 triangle (p0 = width, p1 = scale)
    if SK == 0:
        sg = 1.0 / (1.0 + tl.exp(-(p0 * x)))
        h = p0 * sg * (1.0 - sg)
    elif SK == 1:
        z = p1 * x
        h = p0 / (1.0 + z * z)
    elif SK == 2:
        h = tl.where(tl.abs(x) < p0, p1 + 0.0 * x, 0.0 * x)
    else:
        w = p0 - tl.abs(x)
        h = tl.where(w > 0, w, 0.0 * x) * p1
    return h


@triton.jit
def _row(tile, rows, t):
    """Row t of a [TP, BLOCK] register tile (a masked sum: adding zeros is exact)."""
    return tl.sum(tl.where(rows[:, None] == t, tile, 0.0), axis=0)


# ---------------------------------------------------------------------------------------------- shared skeleton
# The forward and backward kernels of all families are built from these steps: a program's block, loading an
# optional state, reading and writing one step of a sequence, keeping the recomputed membranes of a block (register
# tile for T <= TILE_T_MAX, else global scratch) and reading them back in the reverse pass, storing the final state
# or the initial-state gradients, and writing a block's parameter-gradient partial sums. The families differ only
# in their step (charge, fire, reset) and its adjoint.
@triton.jit
def _block(N, BLOCK: tl.constexpr):
    """(program id, element offsets, in-range mask) of this program's block of ``BLOCK`` elements."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    return pid, offs, offs < N


@triton.jit
def _load_or(ptr, offs, mask, fill, HAS: tl.constexpr):
    """``ptr[offs]`` when the optional tensor is present, else ``fill``."""
    if HAS:
        v = tl.load(ptr + offs, mask=mask, other=0.0)
    else:
        v = fill
    return v


@triton.jit
def _load_pair(a_ptr, b_ptr, offs, mask, a_fill, b_fill, HAS_A: tl.constexpr, HAS_B: tl.constexpr):
    """Two optional per-element tensors at once: the initial (v, last reset) or the incoming (gv, glr)."""
    return _load_or(a_ptr, offs, mask, a_fill, HAS_A), _load_or(b_ptr, offs, mask, b_fill, HAS_B)


@triton.jit
def _store_pair(a_ptr, b_ptr, offs, mask, a, b, WANT_A: tl.constexpr, WANT_B: tl.constexpr):
    """Store ``a`` and/or ``b`` (the final state, or the initial-state gradients) where wanted."""
    if WANT_A:
        tl.store(a_ptr + offs, a, mask=mask)
    if WANT_B:
        tl.store(b_ptr + offs, b, mask=mask)


@triton.jit
def _seq_load(ptr, t, st, offs, mask):
    """Step ``t`` of a time-major sequence whose steps are ``st`` elements apart (0 outside the mask)."""
    return tl.load(ptr + tl.cast(t, tl.int64) * st + offs, mask=mask, other=0.0)


@triton.jit
def _seq_store(ptr, t, N, offs, value, mask):
    """Write step ``t`` of a contiguous time-major ``[T, N]`` output."""
    tl.store(ptr + tl.cast(t, tl.int64) * N + offs, value, mask=mask)


@triton.jit
def _new_tile(p_ptr, TP: tl.constexpr, BLOCK: tl.constexpr):
    """(row indices, zero ``[TP, BLOCK]`` register tile) for the recomputed membranes of a block."""
    return tl.arange(0, TP), tl.zeros([TP, BLOCK], dtype=p_ptr.dtype.element_ty)


@triton.jit
def _keep_m(tile, rows, scr_ptr, t, N, offs, mask, m, SCRATCH: tl.constexpr):
    """Remember the membrane m(t) of the block (returns the updated tile)."""
    if SCRATCH:
        _seq_store(scr_ptr, t, N, offs, m, mask)
    else:
        tile = tl.where(rows[:, None] == t, m[None, :], tile)
    return tile


@triton.jit
def _m_at(tile, rows, scr_ptr, t, N, offs, mask, SCRATCH: tl.constexpr):
    """The remembered m(t); 0 for t = -1 (the caller selects the initial state there)."""
    if SCRATCH:
        # (t >= 0) as a vector: Triton's interpreter turns "mask & <scalar bool>" into an int32 mask it cannot load
        # with (triton 3.9); compiled, both forms are the same predicate
        m = tl.load(scr_ptr + tl.cast(t, tl.int64) * N + offs, mask=mask & (tl.zeros_like(offs) + t >= 0), other=0.0)
    else:
        m = _row(tile, rows, t)
    return m


@triton.jit
def _prev_state(t, v_after, lr_after, vi, li):
    """The state before step t: the state after step t-1 (rebuilt from m(t-1)), or the initial state at t = 0."""
    return tl.where(t > 0, v_after, vi), tl.where(t > 0, lr_after, li)


@triton.jit
def _store_part(part_ptr, idx, acc, mask):
    """A block's partial sum of one parameter gradient, in float64."""
    tl.store(part_ptr + idx, tl.sum(tl.where(mask, acc, 0.0).to(tl.float64), axis=0))


# ============================================================================================ IF / LIF
@triton.jit
def _lif_charge(v, lr, xv, leak, tau, vr0, LM: tl.constexpr, F32: tl.constexpr):
    if LM == 0:
        m = leak * v + xv
    elif LM == 1:
        m = leak * (v + lr) + xv - lr
    elif LM == 2:
        m = v + _div(xv - (v - vr0), tau, F32)
    else:
        m = v - _div(v - vr0, tau, F32) + xv
    return m


@triton.jit
def _lif_arg(m, theta, NORM: tl.constexpr, F32: tl.constexpr):
    if NORM:
        a = _div(m, theta, F32) - 1.0
    else:
        a = m - theta
    return a


@triton.jit
def _fire(arg, FIRE_GE: tl.constexpr):
    if FIRE_GE:
        s = (arg >= 0).to(arg.dtype)
    else:
        s = (arg > 0).to(arg.dtype)
    return s


@triton.jit
def _lif_reset(m, s, theta, v_reset, SOFT: tl.constexpr):
    if SOFT:
        v = m - theta * s
    else:
        v = m * (1.0 - s) + v_reset * s
    return v


@triton.jit
def _lif_fire_reset(m, theta, v_reset, SOFT: tl.constexpr, FIRE_GE: tl.constexpr, NORM: tl.constexpr,
                    F32: tl.constexpr):
    """Spike s of the membrane m and the state after the reset: ``(s, v, last reset theta * s)``."""
    s = _fire(_lif_arg(m, theta, NORM, F32), FIRE_GE)
    return s, _lif_reset(m, s, theta, v_reset, SOFT), theta * s


@triton.jit
def _lif_step(v, lr, xv, theta, leak, tau, v_reset, LM: tl.constexpr, SOFT: tl.constexpr, FIRE_GE: tl.constexpr,
              NORM: tl.constexpr, F32: tl.constexpr):
    """One step of the reference: ``(m, s, v, lr)`` (the last reset changes only in the paper form LM 1)."""
    m = _lif_charge(v, lr, xv, leak, tau, v_reset, LM, F32)   # v_reset is 0 for a soft reset: the rest value vr0
    s, v, lr_new = _lif_fire_reset(m, theta, v_reset, SOFT, FIRE_GE, NORM, F32)
    if LM == 1:
        lr = lr_new
    return m, s, v, lr


@triton.jit
def _lif_scalars(p_ptr):
    """The scalar parameters of the plan (LifArgs order): theta, leak, tau, v_reset, v_init, sp0, sp1."""
    return (tl.load(p_ptr + 0), tl.load(p_ptr + 1), tl.load(p_ptr + 2), tl.load(p_ptr + 3), tl.load(p_ptr + 4),
            tl.load(p_ptr + 5), tl.load(p_ptr + 6))


@triton.jit
def lif_fwd_kernel(x_ptr, y_ptr, v0_ptr, lr0_ptr, vT_ptr, lrT_ptr, p_ptr, T, N, xst,
                   LM: tl.constexpr, SOFT: tl.constexpr, FIRE_GE: tl.constexpr, NORM: tl.constexpr,
                   PTH: tl.constexpr, HAS_V0: tl.constexpr, HAS_LR0: tl.constexpr, F32: tl.constexpr,
                   BLOCK: tl.constexpr):
    _pid, offs, mask = _block(N, BLOCK)
    theta, leak, tau, v_reset, v_init, _sp0, _sp1 = _lif_scalars(p_ptr)
    zero = tl.zeros([BLOCK], dtype=p_ptr.dtype.element_ty)
    v, lr = _load_pair(v0_ptr, lr0_ptr, offs, mask, zero + v_init, zero, HAS_V0, HAS_LR0)
    for t in range(T):
        _m, s, v, lr = _lif_step(v, lr, _seq_load(x_ptr, t, xst, offs, mask), theta, leak, tau, v_reset, LM, SOFT,
                                FIRE_GE, NORM, F32)
        if PTH:
            s = theta * s
        _seq_store(y_ptr, t, N, offs, s, mask)
    _store_pair(vT_ptr, lrT_ptr, offs, mask, v, lr, True, LM == 1)


@triton.jit
def lif_bwd_kernel(x_ptr, gy_ptr, v0_ptr, lr0_ptr, gvT_ptr, glrT_ptr, gx_ptr, gv0_ptr, glr0_ptr, part_ptr, scr_ptr,
                   p_ptr, T, N, xst, gyst,
                   LM: tl.constexpr, SOFT: tl.constexpr, FIRE_GE: tl.constexpr, NORM: tl.constexpr,
                   PTH: tl.constexpr, DETACH: tl.constexpr, SK: tl.constexpr, HAS_V0: tl.constexpr,
                   HAS_LR0: tl.constexpr, HAS_GVT: tl.constexpr, HAS_GLRT: tl.constexpr, WANT_GV0: tl.constexpr,
                   WANT_GLR0: tl.constexpr, NEED_P: tl.constexpr, SCRATCH: tl.constexpr, TP: tl.constexpr,
                   F32: tl.constexpr, BLOCK: tl.constexpr):
    pid, offs, mask = _block(N, BLOCK)
    theta, leak, tau, v_reset, v_init, sp0, sp1 = _lif_scalars(p_ptr)
    vr0 = v_reset   # 0 for a soft reset: the decay modes' rest value
    zero = tl.zeros([BLOCK], dtype=p_ptr.dtype.element_ty)
    vi, li = _load_pair(v0_ptr, lr0_ptr, offs, mask, zero + v_init, zero, HAS_V0, HAS_LR0)
    rows, tile = _new_tile(p_ptr, TP, BLOCK)
    v = vi
    lr = li
    for t in range(T):   # forward recomputation, m(t) kept
        m, s, v, lr = _lif_step(v, lr, _seq_load(x_ptr, t, xst, offs, mask), theta, leak, tau, v_reset, LM, SOFT,
                                FIRE_GE, NORM, F32)
        tile = _keep_m(tile, rows, scr_ptr, t, N, offs, mask, m, SCRATCH)
    gv, glr = _load_pair(gvT_ptr, glrT_ptr, offs, mask, zero, zero, HAS_GVT, HAS_GLRT)
    ath = zero
    ale = zero
    ata = zero
    for k in range(T):
        t = T - 1 - k
        m = _m_at(tile, rows, scr_ptr, t, N, offs, mask, SCRATCH)
        arg = _lif_arg(m, theta, NORM, F32)
        s = _fire(arg, FIRE_GE)
        g_y = _seq_load(gy_ptr, t, gyst, offs, mask)
        if PTH:
            gs = g_y * theta
            gth = g_y * s
        else:
            gs = g_y
            gth = zero
        if SOFT:
            gm = gv
            gsr = -theta * gv
            gth = gth - s * gv
            if LM == 1:
                gsr = gsr + theta * glr
                gth = gth + s * glr
        else:
            gm = gv * (1.0 - s)
            gsr = gv * (v_reset - m)
        if not DETACH:
            gs = gs + gsr
        garg = gs * _surrogate(arg, sp0, sp1, SK)
        if NORM:
            gm = gm + garg / theta
            gth = gth - garg * m / (theta * theta)
        else:
            gm = gm + garg
        ath = ath + gth
        if NEED_P:
            _sp, v_after, lr_after = _lif_fire_reset(_m_at(tile, rows, scr_ptr, t - 1, N, offs, mask, SCRATCH),
                                                    theta, v_reset, SOFT, FIRE_GE, NORM, F32)
            vp, lp = _prev_state(t, v_after, lr_after, vi, li)
            if LM == 0:
                ale = ale + gm * vp
            elif LM == 1:
                ale = ale + gm * (vp + lp)
            elif LM == 2:
                ata = ata - gm * (_seq_load(x_ptr, t, xst, offs, mask) - (vp - vr0)) / (tau * tau)
            else:
                ata = ata + gm * (vp - vr0) / (tau * tau)
        if LM == 2:
            _seq_store(gx_ptr, t, N, offs, gm / tau, mask)
        else:
            _seq_store(gx_ptr, t, N, offs, gm, mask)
        if LM <= 1:
            gv = gm * leak
        else:
            gv = gm * (1.0 - 1.0 / tau)
        if LM == 1:
            glr = gm * (leak - 1.0)
    _store_pair(gv0_ptr, glr0_ptr, offs, mask, gv, glr, WANT_GV0, WANT_GLR0)
    _store_part(part_ptr, pid * 3 + 0, ath, mask)
    _store_part(part_ptr, pid * 3 + 1, ale, mask)
    _store_part(part_ptr, pid * 3 + 2, ata, mask)


# ============================================================================================ one-hot M-LIF
@triton.jit
def _mlif_charge(v, lr, xv, leak, oml, CM: tl.constexpr):
    if CM == 1:
        m = leak * (v + lr) + xv - lr
    elif CM == 2:
        m = v + (xv - v) * oml
    else:
        m = leak * v + xv
    return m


@triton.jit
def _mlif_fire(r, unit, S: tl.constexpr, FLOOR: tl.constexpr, FIRE_GE: tl.constexpr):
    """(payload o, fired f) exactly as mlif._lane_sum: the weight unit*2^k of the highest edge passed."""
    if FIRE_GE:
        f = (r >= 1.0).to(r.dtype)
    else:
        f = (r > 1.0).to(r.dtype)
    o = f * unit
    for k in tl.static_range(1, S):
        if FLOOR:
            above = r >= (2.0 ** k)
        else:
            above = r > (2.0 ** k)
        o = tl.where(above, unit * (2.0 ** k), o)
    return o, f


@triton.jit
def _mlif_fire_reset(m, theta, theta_e, unit, SOFT: tl.constexpr, S: tl.constexpr, FLOOR: tl.constexpr,
                     FIRE_GE: tl.constexpr, F32: tl.constexpr):
    """Payload o of the membrane m and the state after the reset: ``(o, v, last reset theta * o)``."""
    o, f = _mlif_fire(_div(m, theta_e, F32), unit, S, FLOOR, FIRE_GE)
    reset = theta * o
    if SOFT:
        v = m - reset
    else:
        v = m * (1.0 - f)
    return o, v, reset


@triton.jit
def _mlif_step(v, lr, xv, theta, theta_e, leak, oml, unit, CM: tl.constexpr, SOFT: tl.constexpr, S: tl.constexpr,
               FLOOR: tl.constexpr, FIRE_GE: tl.constexpr, F32: tl.constexpr):
    """One step of the reference: ``(m, o, v, lr)`` (the last reset changes only in the paper form CM 1)."""
    m = _mlif_charge(v, lr, xv, leak, oml, CM)
    o, v, reset = _mlif_fire_reset(m, theta, theta_e, unit, SOFT, S, FLOOR, FIRE_GE, F32)
    if CM == 1:
        lr = reset
    return m, o, v, lr


@triton.jit
def _mlif_windows(r, sp0, sp1, S: tl.constexpr, SIGN: tl.constexpr, UNSCALED: tl.constexpr, SK: tl.constexpr,
                  unit):
    """(D_o, D_f): sum_k c_k phi_k(r) for the payload weights unit*2^k and for unit weights."""
    do = 0.0 * r
    df = 0.0 * r
    for k in tl.static_range(S):
        if UNSCALED:
            phi = _surrogate(r - (2.0 ** k), sp0, sp1, SK)
        else:
            phi = _surrogate(r * (0.5 ** k) - 1.0, sp0, sp1, SK) * (0.5 ** k)
        if k == 0:
            do = do + unit * phi
            df = df + phi
        else:
            do = do + unit * ((2.0 ** k) + SIGN * (2.0 ** (k - 1))) * phi
            df = df + (1.0 + SIGN) * phi
    return do, df


@triton.jit
def _mlif_scalars(p_ptr):
    """The scalar parameters of the plan (MlifArgs order): theta, theta_e, leak, v_init, unit, sp0, sp1, oml."""
    return (tl.load(p_ptr + 0), tl.load(p_ptr + 1), tl.load(p_ptr + 2), tl.load(p_ptr + 3), tl.load(p_ptr + 4),
            tl.load(p_ptr + 5), tl.load(p_ptr + 6), tl.load(p_ptr + 7))


@triton.jit
def mlif_fwd_kernel(x_ptr, y_ptr, v0_ptr, lr0_ptr, vT_ptr, lrT_ptr, p_ptr, T, N, xst,
                    CM: tl.constexpr, SOFT: tl.constexpr, S: tl.constexpr, FLOOR: tl.constexpr,
                    FIRE_GE: tl.constexpr, HAS_V0: tl.constexpr, HAS_LR0: tl.constexpr, F32: tl.constexpr,
                    BLOCK: tl.constexpr):
    _pid, offs, mask = _block(N, BLOCK)
    theta, theta_e, leak, v_init, unit, _sp0, _sp1, oml = _mlif_scalars(p_ptr)
    zero = tl.zeros([BLOCK], dtype=p_ptr.dtype.element_ty)
    v, lr = _load_pair(v0_ptr, lr0_ptr, offs, mask, zero + v_init, zero, HAS_V0, HAS_LR0)
    for t in range(T):
        _m, o, v, lr = _mlif_step(v, lr, _seq_load(x_ptr, t, xst, offs, mask), theta, theta_e, leak, oml, unit, CM,
                                 SOFT, S, FLOOR, FIRE_GE, F32)
        _seq_store(y_ptr, t, N, offs, o, mask)
    _store_pair(vT_ptr, lrT_ptr, offs, mask, v, lr, True, CM == 1)


@triton.jit
def mlif_bwd_kernel(x_ptr, gy_ptr, v0_ptr, lr0_ptr, gvT_ptr, glrT_ptr, gx_ptr, gv0_ptr, glr0_ptr, part_ptr, scr_ptr,
                    p_ptr, T, N, xst, gyst,
                    CM: tl.constexpr, SOFT: tl.constexpr, S: tl.constexpr, FLOOR: tl.constexpr,
                    FIRE_GE: tl.constexpr, DETACH: tl.constexpr, SIGN: tl.constexpr, UNSCALED: tl.constexpr,
                    SK: tl.constexpr, HAS_V0: tl.constexpr, HAS_LR0: tl.constexpr, HAS_GVT: tl.constexpr,
                    HAS_GLRT: tl.constexpr, WANT_GV0: tl.constexpr, WANT_GLR0: tl.constexpr, NEED_P: tl.constexpr,
                    SCRATCH: tl.constexpr, TP: tl.constexpr, F32: tl.constexpr, BLOCK: tl.constexpr):
    pid, offs, mask = _block(N, BLOCK)
    theta, theta_e, leak, v_init, unit, sp0, sp1, oml = _mlif_scalars(p_ptr)
    zero = tl.zeros([BLOCK], dtype=p_ptr.dtype.element_ty)
    vi, li = _load_pair(v0_ptr, lr0_ptr, offs, mask, zero + v_init, zero, HAS_V0, HAS_LR0)
    rows, tile = _new_tile(p_ptr, TP, BLOCK)
    v = vi
    lr = li
    for t in range(T):   # forward recomputation, m(t) kept
        m, o, v, lr = _mlif_step(v, lr, _seq_load(x_ptr, t, xst, offs, mask), theta, theta_e, leak, oml, unit, CM,
                                 SOFT, S, FLOOR, FIRE_GE, F32)
        tile = _keep_m(tile, rows, scr_ptr, t, N, offs, mask, m, SCRATCH)
    gv, glr = _load_pair(gvT_ptr, glrT_ptr, offs, mask, zero, zero, HAS_GVT, HAS_GLRT)
    ath = zero
    ale = zero
    dte = theta_e / theta
    for k in range(T):
        t = T - 1 - k
        m = _m_at(tile, rows, scr_ptr, t, N, offs, mask, SCRATCH)
        r = _div(m, theta_e, F32)
        o, f = _mlif_fire(r, unit, S, FLOOR, FIRE_GE)
        do, df = _mlif_windows(r, sp0, sp1, S, SIGN, UNSCALED, SK, unit)
        go = _seq_load(gy_ptr, t, gyst, offs, mask)
        if SOFT:
            gm = gv
            gor = -theta * gv
            gth = -o * gv
            if CM == 1:
                gor = gor + theta * glr
                gth = gth + o * glr
            if not DETACH:
                go = go + gor
            gf = zero
        else:
            gm = gv * (1.0 - f)
            if DETACH:
                gf = zero
            else:
                gf = -m * gv
            gth = zero
        gr = go * do + gf * df
        gm = gm + gr / theta_e
        gth = gth - gr * m / (theta_e * theta_e) * dte
        ath = ath + gth
        if NEED_P:
            _op, v_after, lr_after = _mlif_fire_reset(_m_at(tile, rows, scr_ptr, t - 1, N, offs, mask, SCRATCH),
                                                     theta, theta_e, unit, SOFT, S, FLOOR, FIRE_GE, F32)
            vp, lp = _prev_state(t, v_after, lr_after, vi, li)
            if CM == 1:
                ale = ale + gm * (vp + lp)
            elif CM == 2:
                ale = ale - gm * (_seq_load(x_ptr, t, xst, offs, mask) - vp)
            else:
                ale = ale + gm * vp
        if CM == 2:
            _seq_store(gx_ptr, t, N, offs, gm * oml, mask)
            gv = gm * (1.0 - oml)
        else:
            _seq_store(gx_ptr, t, N, offs, gm, mask)
            gv = gm * leak
        if CM == 1:
            glr = gm * (leak - 1.0)
    _store_pair(gv0_ptr, glr0_ptr, offs, mask, gv, glr, WANT_GV0, WANT_GLR0)
    _store_part(part_ptr, pid * 2 + 0, ath, mask)
    _store_part(part_ptr, pid * 2 + 1, ale, mask)


# ============================================================================================ LM-HT level loop
@triton.jit
def _lmht_fire(m, theta, L, F32: tl.constexpr):
    q = tl.floor(_div(m, theta, F32))
    q = tl.where(q < 0, 0.0 * q, q)   # NaN propagates (comparisons are false), as in torch.clamp
    q = tl.where(q > L, 0.0 * q + L, q)
    return q * theta


@triton.jit
def _lmht_current(x_ptr, t, xst, offs, mask, in_scale, SCALE_IN: tl.constexpr):
    """The step-t input of the level loop (the mixed current, times in_scale when the input is scaled)."""
    xv = _seq_load(x_ptr, t, xst, offs, mask)
    if SCALE_IN:
        xv = xv * in_scale
    return xv


@triton.jit
def lmht_fwd_kernel(x_ptr, y_ptr, v0_ptr, vT_ptr, lam_ptr, p_ptr, T, N, xst,
                    SCALE_IN: tl.constexpr, HAS_V0: tl.constexpr, F32: tl.constexpr, BLOCK: tl.constexpr):
    _pid, offs, mask = _block(N, BLOCK)
    theta = tl.load(p_ptr + 0)
    in_scale = tl.load(p_ptr + 1)
    v_init = tl.load(p_ptr + 2)
    L = tl.load(p_ptr + 5)
    zero = tl.zeros([BLOCK], dtype=p_ptr.dtype.element_ty)
    v = _load_or(v0_ptr, offs, mask, zero + v_init, HAS_V0)
    for t in range(T):
        m = tl.load(lam_ptr + t) * v + _lmht_current(x_ptr, t, xst, offs, mask, in_scale, SCALE_IN)
        yv = _lmht_fire(m, theta, L, F32)
        v = m - yv
        _seq_store(y_ptr, t, N, offs, yv, mask)
    tl.store(vT_ptr + offs, v, mask=mask)


@triton.jit
def lmht_bwd_kernel(x_ptr, gy_ptr, v0_ptr, gvT_ptr, gx_ptr, gv0_ptr, lam_ptr, part_ptr, scr_ptr, p_ptr, T, N, xst,
                    gyst, SCALE_IN: tl.constexpr, HAS_V0: tl.constexpr, HAS_GVT: tl.constexpr,
                    WANT_GV0: tl.constexpr, DETACH_T: tl.constexpr, DETACH_R: tl.constexpr, NEED_P: tl.constexpr,
                    SCRATCH: tl.constexpr, TP: tl.constexpr, F32: tl.constexpr, BLOCK: tl.constexpr):
    pid, offs, mask = _block(N, BLOCK)
    theta = tl.load(p_ptr + 0)
    in_scale = tl.load(p_ptr + 1)
    v_init = tl.load(p_ptr + 2)
    lo = tl.load(p_ptr + 3)
    hi = tl.load(p_ptr + 4)
    L = tl.load(p_ptr + 5)
    zero = tl.zeros([BLOCK], dtype=p_ptr.dtype.element_ty)
    vi = _load_or(v0_ptr, offs, mask, zero + v_init, HAS_V0)
    rows, tile = _new_tile(p_ptr, TP, BLOCK)
    v = vi
    for t in range(T):   # forward recomputation, m(t) kept
        m = tl.load(lam_ptr + t) * v + _lmht_current(x_ptr, t, xst, offs, mask, in_scale, SCALE_IN)
        tile = _keep_m(tile, rows, scr_ptr, t, N, offs, mask, m, SCRATCH)
        v = m - _lmht_fire(m, theta, L, F32)
    gv = _load_or(gvT_ptr, offs, mask, zero, HAS_GVT)
    for k in range(T):
        t = T - 1 - k
        lt = tl.load(lam_ptr + t)
        m = _m_at(tile, rows, scr_ptr, t, N, offs, mask, SCRATCH)
        win = ((m >= lo) & (m <= hi)).to(m.dtype)
        g_y = _seq_load(gy_ptr, t, gyst, offs, mask)
        if not DETACH_R:
            g_y = g_y - gv
        gm = gv + g_y * win
        if SCALE_IN:
            _seq_store(gx_ptr, t, N, offs, gm * in_scale, mask)
        else:
            _seq_store(gx_ptr, t, N, offs, gm, mask)
        if NEED_P:
            mp = _m_at(tile, rows, scr_ptr, t - 1, N, offs, mask, SCRATCH)
            vp = tl.where(t > 0, mp - _lmht_fire(mp, theta, L, F32), vi)
            _store_part(part_ptr, pid * T + t, gm * vp, mask)
        if DETACH_T:
            gv = zero
        else:
            gv = gm * lt
    if WANT_GV0:
        tl.store(gv0_ptr + offs, gv, mask=mask)
