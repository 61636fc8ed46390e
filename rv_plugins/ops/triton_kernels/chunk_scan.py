"""Shared ``@triton.jit`` pieces: one chunk of a linear scan, handed on between chunks by decoupled look-back.

Every scan kernel of this package (linear scan and fused minGRU, forward and backward) is a grid of
programs, one per ``(line, chunk)``: a *line* is one sequence's ``BLOCK_D`` channels (``(batch,
[direction,] channel block)``), a *chunk* ``BLOCK_L`` consecutive scan steps of it. A program loads its
tile of decays ``a`` and inputs ``x`` once, as ``(R, STEPS, BLOCK_D)`` (:func:`tile_steps`), and
:func:`scan_chunk` turns them into the tile's states ``h_k = a_k h_{k-1} + x_k`` (the caller stores them):

1. **Ticket.** :func:`take_ticket` gives the program its chunk from an atomic counter per line, so a
   line's chunks are handed out in the order programs start. A program only ever waits for chunks of
   smaller tickets, whose programs have already started: forward progress on a GPU, and under
   ``TRITON_INTERPRET=1`` (programs run one after another) every predecessor has finished.
2. **Local scan** of the tile from a zero state (over the ``STEPS`` of a group inside each thread, then
   an exclusive scan of the group totals across threads), and its *summary*:
   the chunk's aggregate ``(A, B)`` (``h_out = A h_in + B``) and bounds ``M = max_k |a_cum_k|``,
   ``N = max_k |b_cum_k|`` of every state inside it (``|h_k| <= M |h_in| + N``).
3. **Publish the aggregate** (status 1), or status 3 when the summary is not finite or too large to
   compose safely: successors then wait for this chunk's inclusive state instead.
4. **Look back** (:func:`carry_in`): walk the predecessors from ``c - 1`` down, composing published
   aggregates until one has published its inclusive state (status 2) or the line's start (``h0``) is
   reached. No pass over all chunks: a chunk usually finds its predecessor's inclusive state or a
   few aggregates.
5. **States** ``h = a_cum h_in + b_cum``, and the inclusive state (status 2) for the successors.

Special values. The step-by-step loop (``rv_plugins/ops/reference.py``) is the definition; a parallel
scan reorders its arithmetic, which changes only rounding while every quantity stays finite and
moderate, but turns ``inf - inf`` into NaN or loses an overflow when it does not. So the fast path is
used only when the bounds prove that no state of the chunk can leave the range ``LIMIT`` (far below the
dtype's maximum) and the carried-in state is below ``HMAX``; any NaN, ±inf or huge value in ``a``, ``x``,
``h0`` or on the way fails that test (NaN fails every comparison). Such a chunk is recomputed by the
kernel step by step from its exact carried-in state, reading its rows again from memory (nothing of the
tile is kept in registers for that rare path), and hands on its inclusive state only
(:func:`publish_inclusive`), so every later chunk starts from what the loop computes. A composition of aggregates that
could overflow is likewise replaced by waiting for the predecessor's inclusive state. Underflow is the
one rounding left: contributions below ``2**-126 * HMAX`` of a state may flush to zero where the loop
keeps a subnormal.

Memory: status words (int32, zeroed per launch; the first ``n_lines`` are the ticket counters) and
five ``BLOCK_D`` vectors per chunk (``A, B, M, N, inclusive``) in the accumulation dtype.
"""
import triton
import triton.language as tl

# Status of a chunk (0: nothing published yet): its aggregate / its inclusive state / no usable aggregate.
AGGREGATE = tl.constexpr(1)
INCLUSIVE = tl.constexpr(2)
NO_AGGREGATE = tl.constexpr(3)


@triton.jit
def combine(a1, b1, a2, b2):
    """``(a1, b1)`` then ``(a2, b2)``: ``h -> a2 (a1 h + b1) + b2``."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _bounded_abs(x, LIMIT: tl.constexpr):
    """``|x|``, or +inf where ``|x| > LIMIT`` or ``x`` is NaN (so a max over it never drops a NaN)."""
    ax = tl.abs(x)
    return tl.where(ax <= LIMIT, ax, float("inf"))


@triton.jit
def take_ticket(FLAGS, n_lines, n_chunks):
    """``(line, chunk)`` of this program: the line from the program id (chunk-major, so neighbouring
    programs work on different lines), the chunk from the line's ticket counter ``FLAGS[line]``."""
    pid = tl.program_id(0)
    line = pid % n_lines
    if n_chunks > 1:
        chunk = tl.atomic_add(FLAGS + line, 1)
    else:
        chunk = pid * 0
    return line, chunk


@triton.jit
def _publish(FLAGS, VALS, status_at, vals_at, offs, v, status, WORD: tl.constexpr, BLOCK_D: tl.constexpr):
    """Store ``v`` as summary word ``WORD`` of a chunk, then set the chunk's status (release)."""
    tl.store(VALS + vals_at + WORD * BLOCK_D + offs, v)
    tl.debug_barrier()  # every thread's stores before the one thread's release
    tl.atomic_xchg(FLAGS + status_at, status, sem="release")


@triton.jit
def _wait_inclusive(FLAGS, VALS, status_at, vals_at, offs, BLOCK_D: tl.constexpr):
    """Spin until a chunk has published its inclusive state; returns it."""
    flag = tl.atomic_add(FLAGS + status_at, 0, sem="acquire")
    while flag != INCLUSIVE:
        flag = tl.atomic_add(FLAGS + status_at, 0, sem="acquire")
    return tl.load(VALS + vals_at + 4 * BLOCK_D + offs, cache_modifier=".cg")


@triton.jit
def carry_in(FLAGS, VALS, status_base, vals_base, chunk, h_start, offs, LIMIT: tl.constexpr,
             HMAX: tl.constexpr, BLOCK_D: tl.constexpr):
    """The state entering ``chunk`` of a line (``h_start`` for chunk 0), by look-back over the
    predecessors' published summaries; exact (the predecessor's inclusive state) wherever composing
    aggregates could overflow. ``status_base``/``vals_base``: the line's first status word / summary."""
    h_in = h_start
    if chunk > 0:
        acc_a = tl.full([BLOCK_D], 1.0, h_start.dtype)
        acc_b = tl.zeros([BLOCK_D], h_start.dtype)
        bound_a = tl.zeros([BLOCK_D], h_start.dtype)
        bound_b = tl.zeros([BLOCK_D], h_start.dtype)
        prefix = h_start
        j = chunk - 1
        searching = j >= 0
        while searching:
            flag = tl.atomic_add(FLAGS + status_base + j, 0, sem="acquire")
            at = vals_base + j * (5 * BLOCK_D)
            if flag == INCLUSIVE:
                prefix = tl.load(VALS + at + 4 * BLOCK_D + offs, cache_modifier=".cg")
                searching = j < 0
            elif flag == AGGREGATE:
                a_j = tl.load(VALS + at + offs, cache_modifier=".cg")
                b_j = tl.load(VALS + at + BLOCK_D + offs, cache_modifier=".cg")
                m_j = tl.load(VALS + at + 2 * BLOCK_D + offs, cache_modifier=".cg")
                n_j = tl.load(VALS + at + 3 * BLOCK_D + offs, cache_modifier=".cg")
                # states inside chunks j..chunk-1 are bounded by bound_a |h| + bound_b for h entering j
                bound_b = tl.maximum(n_j, _bounded_abs(bound_a * tl.abs(b_j) + bound_b, LIMIT))
                bound_a = tl.maximum(m_j, _bounded_abs(bound_a * tl.abs(a_j), LIMIT))
                acc_b = acc_a * b_j + acc_b
                acc_a = acc_a * a_j
                j -= 1
                searching = j >= 0
        h_in = acc_a * prefix + acc_b
        safe = (bound_a * tl.abs(prefix) + bound_b <= LIMIT) & (tl.abs(prefix) <= HMAX)
        if tl.min(safe.to(tl.int32), 0) == 0:
            h_in = _wait_inclusive(FLAGS, VALS, status_base + chunk - 1, vals_base + (chunk - 1) * (5 * BLOCK_D),
                                   offs, BLOCK_D)
    return h_in


@triton.jit
def tile_steps(chunk, R: tl.constexpr, S: tl.constexpr):
    """Positions (in the order the line is scanned) of a chunk's ``(R, S, 1)`` tile: ``chunk * R * S + r * S + s``.

    A tile is ``R`` groups of ``S`` consecutive steps. Triton lays such a tile out with the ``S`` axis
    inside each thread (the channel axis is the contiguous one, then ``R``; the compile report checks
    it), so the scan over ``S`` costs no shuffles and only the ``R`` group totals cross threads."""
    r = tl.arange(0, R)[:, None, None]
    s = tl.arange(0, S)[None, :, None]
    return chunk * (R * S) + r * S + s


@triton.jit
def _then_group(pa1, pb1, qa1, qb1, pa2, pb2, qa2, qb2):
    """Scan operator over ``(P, Q)`` = (all groups so far but the last, the last): its scan gives each
    group's *exclusive* prefix in ``P``: ``P1, Q1, P2`` composed."""
    a = pa1 * qa1 * pa2
    b = pa2 * (qa1 * pb1 + qb1) + pb2
    return a, b, qa2, qb2


@triton.jit
def scan_chunk(a, x, h_start, line, chunk, FLAGS, VALS, n_lines, n_chunks, LIMIT: tl.constexpr,
               HMAX: tl.constexpr, R: tl.constexpr, S: tl.constexpr, BLOCK_D: tl.constexpr):
    """States of one chunk, the fast (parallel) way: ``a``, ``x`` its ``(R, S, BLOCK_D)`` tile
    (:func:`tile_steps`) in the accumulation dtype, padded with the identity ``(1, 0)``; ``h_start`` the
    line's initial state. Returns ``(hs, h_in, exact)``: the ``(R, S, BLOCK_D)`` states, the state
    carried in, and whether ``hs`` is final. If not (special or huge values), the caller walks the
    chunk's steps one at a time from ``h_in``, reading each step's row from memory (nothing of the tile
    stays in registers for that path), and calls :func:`publish_inclusive` with the last state."""
    offs = tl.arange(0, BLOCK_D)
    status_base = n_lines + line * n_chunks                 # int32: launch.workspace checks the size
    vals_base = line * n_chunks * (5 * BLOCK_D)
    vals_at = vals_base + chunk * (5 * BLOCK_D)
    # scan inside each group of S steps (in-thread), then the exclusive scan of the R group totals
    cum_a, cum_b = tl.associative_scan((a, x), 1, combine)
    last_s = (tl.arange(0, S) == S - 1)[None, :, None]
    tot_a = tl.sum(tl.where(last_s, cum_a, 0.0), axis=1)     # exact: one term is not 0
    tot_b = tl.sum(tl.where(last_s, cum_b, 0.0), axis=1)
    pre_a, pre_b, _, _ = tl.associative_scan((tl.full(tot_a.shape, 1.0, tot_a.dtype), tl.zeros_like(tot_b), tot_a,
                                              tot_b), 0, _then_group)
    inc_a, inc_b = combine(pre_a, pre_b, tot_a, tot_b)
    last_r = (tl.arange(0, R) == R - 1)[:, None]
    agg_a = tl.sum(tl.where(last_r, inc_a, 0.0), axis=0)
    agg_b = tl.sum(tl.where(last_r, inc_b, 0.0), axis=0)
    # bounds of every state of the chunk: |h| <= bound_a |h_in| + bound_b (NaN and overflow -> inf)
    max_a = tl.max(_bounded_abs(cum_a, LIMIT), axis=1)
    max_b = tl.max(_bounded_abs(cum_b, LIMIT), axis=1)
    bound_a = tl.max(_bounded_abs(max_a * tl.abs(pre_a), LIMIT), axis=0)
    bound_b = tl.max(_bounded_abs(max_a * tl.abs(pre_b) + max_b, LIMIT), axis=0)
    if chunk > 0:
        if chunk < n_chunks - 1:
            usable = tl.min(((bound_a <= LIMIT) & (bound_b <= HMAX)).to(tl.int32), 0)
            tl.store(VALS + vals_at + offs, agg_a)
            tl.store(VALS + vals_at + BLOCK_D + offs, agg_b)
            tl.store(VALS + vals_at + 2 * BLOCK_D + offs, bound_a)
            status = tl.where(usable == 1, AGGREGATE, NO_AGGREGATE)
            _publish(FLAGS, VALS, status_base + chunk, vals_at, offs, bound_b, status, 3, BLOCK_D)
    h_in = carry_in(FLAGS, VALS, status_base, vals_base, chunk, h_start, offs, LIMIT, HMAX, BLOCK_D)
    fast = (bound_a * tl.abs(h_in) + bound_b <= LIMIT) & (tl.abs(h_in) <= HMAX) & (bound_b <= HMAX)
    exact = tl.min(fast.to(tl.int32), 0) == 1
    h_group = pre_a * h_in[None, :] + pre_b              # the state entering each group
    hs = cum_a * h_group[:, None, :] + cum_b
    if exact:
        if chunk < n_chunks - 1:
            _publish(FLAGS, VALS, status_base + chunk, vals_at, offs, agg_a * h_in + agg_b, INCLUSIVE, 4, BLOCK_D)
    return hs, h_in, exact


@triton.jit
def publish_inclusive(FLAGS, VALS, line, chunk, n_lines, n_chunks, h_out, BLOCK_D: tl.constexpr):
    """Hand a chunk's inclusive state (its last state) to its successors; for the exact path, which
    computes it step by step after :func:`scan_chunk` returned ``exact = False``."""
    if chunk < n_chunks - 1:
        row = line * n_chunks + chunk
        vals_at = row * (5 * BLOCK_D)
        _publish(FLAGS, VALS, n_lines + row, vals_at, tl.arange(0, BLOCK_D), h_out, INCLUSIVE, 4,
                 BLOCK_D)
