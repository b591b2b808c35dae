"""Triton kernels of the fused multi-step neurons (imported lazily by :mod:`multispike.kernels.triton_kernels`).

This module imports ``triton`` at import time; nothing else in multispike does. Every kernel walks one block of
``BLOCK`` elements of a time-major sequence over all T steps with the membrane in registers (element ``(t, i)``
at ``ptr + t * stride_t + i``). Exactness rules as in the C++ kernels: each forward expression is the reference's
sequence of IEEE operations, float32 divisions use ``div_rn`` (round to nearest, not the approximate division),
and the launcher disables FMA contraction (``enable_fp_fusion=False``). The backward recomputes the membrane;
for ``T <= TILE_T_MAX`` the T membranes of a block stay in registers as a ``[TP, BLOCK]`` tile, above that in a
global scratch buffer.
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
# The forward and backward kernels of all families share these steps: loading an optional state, keeping the
# recomputed membranes of a block (register tile for T <= TILE_T_MAX, else global scratch) and reading them back
# in the reverse pass, and writing a block's parameter-gradient partial sums.
@triton.jit
def _load_or(ptr, offs, mask, fill, HAS: tl.constexpr):
    """``ptr[offs]`` when the optional tensor is present, else ``fill``."""
    if HAS:
        v = tl.load(ptr + offs, mask=mask, other=0.0)
    else:
        v = fill
    return v


@triton.jit
def _keep_m(tile, rows, scr_ptr, t, N, offs, mask, m, SCRATCH: tl.constexpr):
    """Remember the membrane m(t) of the block (returns the updated tile)."""
    if SCRATCH:
        tl.store(scr_ptr + tl.cast(t, tl.int64) * N + offs, m, mask=mask)
    else:
        tile = tl.where(rows[:, None] == t, m[None, :], tile)
    return tile


@triton.jit
def _m_at(tile, rows, scr_ptr, t, N, offs, mask, SCRATCH: tl.constexpr):
    """The remembered m(t); 0 for t = -1 (the caller selects the initial state there)."""
    if SCRATCH:
        m = tl.load(scr_ptr + tl.cast(t, tl.int64) * N + offs, mask=mask & (t >= 0), other=0.0)
    else:
        m = _row(tile, rows, t)
    return m


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
def lif_fwd_kernel(x_ptr, y_ptr, v0_ptr, lr0_ptr, vT_ptr, lrT_ptr, p_ptr, T, N, xst,
                   LM: tl.constexpr, SOFT: tl.constexpr, FIRE_GE: tl.constexpr, NORM: tl.constexpr,
                   PTH: tl.constexpr, HAS_V0: tl.constexpr, HAS_LR0: tl.constexpr, F32: tl.constexpr,
                   BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    theta = tl.load(p_ptr + 0)
    leak = tl.load(p_ptr + 1)
    tau = tl.load(p_ptr + 2)
    v_reset = tl.load(p_ptr + 3)   # 0 for a soft reset: also the decay modes' rest value vr0
    vr0 = v_reset
    v_init = tl.load(p_ptr + 4)
    zero = tl.zeros([BLOCK], dtype=p_ptr.dtype.element_ty)
    v = _load_or(v0_ptr, offs, mask, zero + v_init, HAS_V0)
    lr = _load_or(lr0_ptr, offs, mask, zero, HAS_LR0)
    for t in range(T):
        toff = tl.cast(t, tl.int64) * xst
        xv = tl.load(x_ptr + toff + offs, mask=mask, other=0.0)
        m = _lif_charge(v, lr, xv, leak, tau, vr0, LM, F32)
        s = _fire(_lif_arg(m, theta, NORM, F32), FIRE_GE)
        if LM == 1:
            lr = theta * s
        v = _lif_reset(m, s, theta, v_reset, SOFT)
        if PTH:
            yv = theta * s
        else:
            yv = s
        tl.store(y_ptr + tl.cast(t, tl.int64) * N + offs, yv, mask=mask)
    tl.store(vT_ptr + offs, v, mask=mask)
    if LM == 1:
        tl.store(lrT_ptr + offs, lr, mask=mask)


@triton.jit
def lif_bwd_kernel(x_ptr, gy_ptr, v0_ptr, lr0_ptr, gvT_ptr, glrT_ptr, gx_ptr, gv0_ptr, glr0_ptr, part_ptr, scr_ptr,
                   p_ptr, T, N, xst, gyst,
                   LM: tl.constexpr, SOFT: tl.constexpr, FIRE_GE: tl.constexpr, NORM: tl.constexpr,
                   PTH: tl.constexpr, DETACH: tl.constexpr, SK: tl.constexpr, HAS_V0: tl.constexpr,
                   HAS_LR0: tl.constexpr, HAS_GVT: tl.constexpr, HAS_GLRT: tl.constexpr, WANT_GV0: tl.constexpr,
                   WANT_GLR0: tl.constexpr, NEED_P: tl.constexpr, SCRATCH: tl.constexpr, TP: tl.constexpr,
                   F32: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    theta = tl.load(p_ptr + 0)
    leak = tl.load(p_ptr + 1)
    tau = tl.load(p_ptr + 2)
    v_reset = tl.load(p_ptr + 3)   # 0 for a soft reset: also the decay modes' rest value vr0
    vr0 = v_reset
    v_init = tl.load(p_ptr + 4)
    sp0 = tl.load(p_ptr + 5)
    sp1 = tl.load(p_ptr + 6)
    zero = tl.zeros([BLOCK], dtype=p_ptr.dtype.element_ty)
    vi = _load_or(v0_ptr, offs, mask, zero + v_init, HAS_V0)
    li = _load_or(lr0_ptr, offs, mask, zero, HAS_LR0)
    rows = tl.arange(0, TP)
    tile = tl.zeros([TP, BLOCK], dtype=p_ptr.dtype.element_ty)
    v = vi
    lr = li
    for t in range(T):
        xv = tl.load(x_ptr + tl.cast(t, tl.int64) * xst + offs, mask=mask, other=0.0)
        m = _lif_charge(v, lr, xv, leak, tau, vr0, LM, F32)
        tile = _keep_m(tile, rows, scr_ptr, t, N, offs, mask, m, SCRATCH)
        s = _fire(_lif_arg(m, theta, NORM, F32), FIRE_GE)
        if LM == 1:
            lr = theta * s
        v = _lif_reset(m, s, theta, v_reset, SOFT)
    gv = _load_or(gvT_ptr, offs, mask, zero, HAS_GVT)
    glr = _load_or(glrT_ptr, offs, mask, zero, HAS_GLRT)
    ath = zero
    ale = zero
    ata = zero
    for k in range(T):
        t = T - 1 - k
        m = _m_at(tile, rows, scr_ptr, t, N, offs, mask, SCRATCH)
        arg = _lif_arg(m, theta, NORM, F32)
        s = _fire(arg, FIRE_GE)
        g_y = tl.load(gy_ptr + tl.cast(t, tl.int64) * gyst + offs, mask=mask, other=0.0)
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
            mp = _m_at(tile, rows, scr_ptr, t - 1, N, offs, mask, SCRATCH)
            sp = _fire(_lif_arg(mp, theta, NORM, F32), FIRE_GE)
            vp = tl.where(t > 0, _lif_reset(mp, sp, theta, v_reset, SOFT), vi)
            lp = tl.where(t > 0, theta * sp, li)
            if LM == 0:
                ale = ale + gm * vp
            elif LM == 1:
                ale = ale + gm * (vp + lp)
            elif LM == 2:
                xv = tl.load(x_ptr + tl.cast(t, tl.int64) * xst + offs, mask=mask, other=0.0)
                ata = ata - gm * (xv - (vp - vr0)) / (tau * tau)
            else:
                ata = ata + gm * (vp - vr0) / (tau * tau)
        if LM == 2:
            gxv = gm / tau
        else:
            gxv = gm
        tl.store(gx_ptr + tl.cast(t, tl.int64) * N + offs, gxv, mask=mask)
        if LM <= 1:
            gv = gm * leak
        else:
            gv = gm * (1.0 - 1.0 / tau)
        if LM == 1:
            glr = gm * (leak - 1.0)
    if WANT_GV0:
        tl.store(gv0_ptr + offs, gv, mask=mask)
    if WANT_GLR0:
        tl.store(glr0_ptr + offs, glr, mask=mask)
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
def mlif_fwd_kernel(x_ptr, y_ptr, v0_ptr, lr0_ptr, vT_ptr, lrT_ptr, p_ptr, T, N, xst,
                    CM: tl.constexpr, SOFT: tl.constexpr, S: tl.constexpr, FLOOR: tl.constexpr,
                    FIRE_GE: tl.constexpr, HAS_V0: tl.constexpr, HAS_LR0: tl.constexpr, F32: tl.constexpr,
                    BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    theta = tl.load(p_ptr + 0)
    theta_e = tl.load(p_ptr + 1)
    leak = tl.load(p_ptr + 2)
    v_init = tl.load(p_ptr + 3)
    unit = tl.load(p_ptr + 4)
    oml = tl.load(p_ptr + 7)
    zero = tl.zeros([BLOCK], dtype=p_ptr.dtype.element_ty)
    v = _load_or(v0_ptr, offs, mask, zero + v_init, HAS_V0)
    lr = _load_or(lr0_ptr, offs, mask, zero, HAS_LR0)
    for t in range(T):
        xv = tl.load(x_ptr + tl.cast(t, tl.int64) * xst + offs, mask=mask, other=0.0)
        m = _mlif_charge(v, lr, xv, leak, oml, CM)
        o, f = _mlif_fire(_div(m, theta_e, F32), unit, S, FLOOR, FIRE_GE)
        reset = theta * o
        if SOFT:
            v = m - reset
        else:
            v = m * (1.0 - f)
        if CM == 1:
            lr = reset
        tl.store(y_ptr + tl.cast(t, tl.int64) * N + offs, o, mask=mask)
    tl.store(vT_ptr + offs, v, mask=mask)
    if CM == 1:
        tl.store(lrT_ptr + offs, lr, mask=mask)


@triton.jit
def mlif_bwd_kernel(x_ptr, gy_ptr, v0_ptr, lr0_ptr, gvT_ptr, glrT_ptr, gx_ptr, gv0_ptr, glr0_ptr, part_ptr, scr_ptr,
                    p_ptr, T, N, xst, gyst,
                    CM: tl.constexpr, SOFT: tl.constexpr, S: tl.constexpr, FLOOR: tl.constexpr,
                    FIRE_GE: tl.constexpr, DETACH: tl.constexpr, SIGN: tl.constexpr, UNSCALED: tl.constexpr,
                    SK: tl.constexpr, HAS_V0: tl.constexpr, HAS_LR0: tl.constexpr, HAS_GVT: tl.constexpr,
                    HAS_GLRT: tl.constexpr, WANT_GV0: tl.constexpr, WANT_GLR0: tl.constexpr, NEED_P: tl.constexpr,
                    SCRATCH: tl.constexpr, TP: tl.constexpr, F32: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    theta = tl.load(p_ptr + 0)
    theta_e = tl.load(p_ptr + 1)
    leak = tl.load(p_ptr + 2)
    v_init = tl.load(p_ptr + 3)
    unit = tl.load(p_ptr + 4)
    sp0 = tl.load(p_ptr + 5)
    sp1 = tl.load(p_ptr + 6)
    oml = tl.load(p_ptr + 7)
    zero = tl.zeros([BLOCK], dtype=p_ptr.dtype.element_ty)
    vi = _load_or(v0_ptr, offs, mask, zero + v_init, HAS_V0)
    li = _load_or(lr0_ptr, offs, mask, zero, HAS_LR0)
    rows = tl.arange(0, TP)
    tile = tl.zeros([TP, BLOCK], dtype=p_ptr.dtype.element_ty)
    v = vi
    lr = li
    for t in range(T):
        xv = tl.load(x_ptr + tl.cast(t, tl.int64) * xst + offs, mask=mask, other=0.0)
        m = _mlif_charge(v, lr, xv, leak, oml, CM)
        tile = _keep_m(tile, rows, scr_ptr, t, N, offs, mask, m, SCRATCH)
        o, f = _mlif_fire(_div(m, theta_e, F32), unit, S, FLOOR, FIRE_GE)
        reset = theta * o
        if SOFT:
            v = m - reset
        else:
            v = m * (1.0 - f)
        if CM == 1:
            lr = reset
    gv = _load_or(gvT_ptr, offs, mask, zero, HAS_GVT)
    glr = _load_or(glrT_ptr, offs, mask, zero, HAS_GLRT)
    ath = zero
    ale = zero
    dte = theta_e / theta
    for k in range(T):
        t = T - 1 - k
        m = _m_at(tile, rows, scr_ptr, t, N, offs, mask, SCRATCH)
        r = _div(m, theta_e, F32)
        o, f = _mlif_fire(r, unit, S, FLOOR, FIRE_GE)
        do, df = _mlif_windows(r, sp0, sp1, S, SIGN, UNSCALED, SK, unit)
        go = tl.load(gy_ptr + tl.cast(t, tl.int64) * gyst + offs, mask=mask, other=0.0)
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
            mp = _m_at(tile, rows, scr_ptr, t - 1, N, offs, mask, SCRATCH)
            op, fp_ = _mlif_fire(_div(mp, theta_e, F32), unit, S, FLOOR, FIRE_GE)
            resp = theta * op
            if SOFT:
                vpp = mp - resp
            else:
                vpp = mp * (1.0 - fp_)
            vp = tl.where(t > 0, vpp, vi)
            if CM == 1:
                ale = ale + gm * (vp + tl.where(t > 0, resp, li))
            elif CM == 2:
                xv = tl.load(x_ptr + tl.cast(t, tl.int64) * xst + offs, mask=mask, other=0.0)
                ale = ale - gm * (xv - vp)
            else:
                ale = ale + gm * vp
        if CM == 2:
            tl.store(gx_ptr + tl.cast(t, tl.int64) * N + offs, gm * oml, mask=mask)
            gv = gm * (1.0 - oml)
        else:
            tl.store(gx_ptr + tl.cast(t, tl.int64) * N + offs, gm, mask=mask)
            gv = gm * leak
        if CM == 1:
            glr = gm * (leak - 1.0)
    if WANT_GV0:
        tl.store(gv0_ptr + offs, gv, mask=mask)
    if WANT_GLR0:
        tl.store(glr0_ptr + offs, glr, mask=mask)
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
def lmht_fwd_kernel(x_ptr, y_ptr, v0_ptr, vT_ptr, lam_ptr, p_ptr, T, N, xst,
                    SCALE_IN: tl.constexpr, HAS_V0: tl.constexpr, F32: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    theta = tl.load(p_ptr + 0)
    in_scale = tl.load(p_ptr + 1)
    v_init = tl.load(p_ptr + 2)
    L = tl.load(p_ptr + 5)
    zero = tl.zeros([BLOCK], dtype=p_ptr.dtype.element_ty)
    v = _load_or(v0_ptr, offs, mask, zero + v_init, HAS_V0)
    for t in range(T):
        lt = tl.load(lam_ptr + t)
        xv = tl.load(x_ptr + tl.cast(t, tl.int64) * xst + offs, mask=mask, other=0.0)
        if SCALE_IN:
            xv = xv * in_scale
        m = lt * v + xv
        yv = _lmht_fire(m, theta, L, F32)
        v = m - yv
        tl.store(y_ptr + tl.cast(t, tl.int64) * N + offs, yv, mask=mask)
    tl.store(vT_ptr + offs, v, mask=mask)


@triton.jit
def lmht_bwd_kernel(x_ptr, gy_ptr, v0_ptr, gvT_ptr, gx_ptr, gv0_ptr, lam_ptr, part_ptr, scr_ptr, p_ptr, T, N, xst,
                    gyst, SCALE_IN: tl.constexpr, HAS_V0: tl.constexpr, HAS_GVT: tl.constexpr,
                    WANT_GV0: tl.constexpr, DETACH_T: tl.constexpr, DETACH_R: tl.constexpr, NEED_P: tl.constexpr,
                    SCRATCH: tl.constexpr, TP: tl.constexpr, F32: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    theta = tl.load(p_ptr + 0)
    in_scale = tl.load(p_ptr + 1)
    v_init = tl.load(p_ptr + 2)
    lo = tl.load(p_ptr + 3)
    hi = tl.load(p_ptr + 4)
    L = tl.load(p_ptr + 5)
    zero = tl.zeros([BLOCK], dtype=p_ptr.dtype.element_ty)
    vi = _load_or(v0_ptr, offs, mask, zero + v_init, HAS_V0)
    rows = tl.arange(0, TP)
    tile = tl.zeros([TP, BLOCK], dtype=p_ptr.dtype.element_ty)
    v = vi
    for t in range(T):
        lt = tl.load(lam_ptr + t)
        xv = tl.load(x_ptr + tl.cast(t, tl.int64) * xst + offs, mask=mask, other=0.0)
        if SCALE_IN:
            xv = xv * in_scale
        m = lt * v + xv
        tile = _keep_m(tile, rows, scr_ptr, t, N, offs, mask, m, SCRATCH)
        v = m - _lmht_fire(m, theta, L, F32)
    gv = _load_or(gvT_ptr, offs, mask, zero, HAS_GVT)
    for k in range(T):
        t = T - 1 - k
        lt = tl.load(lam_ptr + t)
        m = _m_at(tile, rows, scr_ptr, t, N, offs, mask, SCRATCH)
        win = ((m >= lo) & (m <= hi)).to(m.dtype)
        g_y = tl.load(gy_ptr + tl.cast(t, tl.int64) * gyst + offs, mask=mask, other=0.0)
        if not DETACH_R:
            g_y = g_y - gv
        gm = gv + g_y * win
        if SCALE_IN:
            tl.store(gx_ptr + tl.cast(t, tl.int64) * N + offs, gm * in_scale, mask=mask)
        else:
            tl.store(gx_ptr + tl.cast(t, tl.int64) * N + offs, gm, mask=mask)
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
