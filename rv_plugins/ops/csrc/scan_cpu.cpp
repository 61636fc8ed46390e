// CPU kernels for the linear recurrence h_t = a_t * h_{t-1} + b_t over (B, L, D) tensors.
//
// One sequential pass over L per (batch, channel block); the channels of a step are contiguous, so
// the inner loop over a block of kBlock channels vectorises. Accumulation is in float for
// float/half/bfloat16 inputs and in double for double inputs. "Scan order" position k maps to
// t = k (forward) or t = L-1-k (reverse); the backward runs the same recurrence in the other order:
//   g_t = dh_t + a_next * g_next,  db_t = g_t,  da_t = g_t * h_prev,  dh0 = a_first * g_first.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>
#if defined(__AVX512F__) || defined(__AVX__)
#include <immintrin.h>  // streaming stores (see stream_line)
#endif

namespace {

constexpr int64_t kBlock = 64;

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

template <typename scalar_t>
void forward_kernel(const scalar_t* a, const scalar_t* b, const typename Acc<scalar_t>::type* h0, scalar_t* h,
                    int64_t B, int64_t L, int64_t D, bool reverse) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t nblocks = (D + kBlock - 1) / kBlock;
  const int64_t start = reverse ? L - 1 : 0;
  const int64_t step = reverse ? -D : D;
  at::parallel_for(0, B * nblocks, 1, [&](int64_t begin, int64_t end) {
    acc_t state[kBlock];
    for (int64_t job = begin; job < end; ++job) {
      const int64_t bi = job / nblocks, d0 = (job % nblocks) * kBlock;
      const int64_t n = std::min(kBlock, D - d0);
      for (int64_t d = 0; d < n; ++d) state[d] = h0 ? h0[bi * D + d0 + d] : acc_t(0);
      int64_t off = bi * L * D + start * D + d0;
      for (int64_t k = 0; k < L; ++k, off += step) {
        const scalar_t* ak = a + off;
        const scalar_t* bk = b + off;
        scalar_t* hk = h + off;
        for (int64_t d = 0; d < n; ++d) {
          state[d] = acc_t(ak[d]) * state[d] + acc_t(bk[d]);
          hk[d] = scalar_t(state[d]);
        }
      }
    }
  });
}

template <typename scalar_t>
void backward_kernel(const scalar_t* a, const scalar_t* h, const typename Acc<scalar_t>::type* h0,
                     const scalar_t* gh, scalar_t* ga, scalar_t* gb, typename Acc<scalar_t>::type* gh0,
                     int64_t B, int64_t L, int64_t D,
                     bool reverse) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t nblocks = (D + kBlock - 1) / kBlock;
  // Walk scan positions k = L-1 .. 0; "prev" in scan order is one step back along `step`.
  const int64_t step = reverse ? -D : D;
  const int64_t last = reverse ? 0 : L - 1;
  at::parallel_for(0, B * nblocks, 1, [&](int64_t begin, int64_t end) {
    acc_t g[kBlock], a_next[kBlock];
    for (int64_t job = begin; job < end; ++job) {
      const int64_t bi = job / nblocks, d0 = (job % nblocks) * kBlock;
      const int64_t n = std::min(kBlock, D - d0);
      for (int64_t d = 0; d < n; ++d) { g[d] = 0; a_next[d] = 0; }
      int64_t off = bi * L * D + last * D + d0;
      for (int64_t k = L - 1; k > 0; --k, off -= step) {
        const scalar_t* hp = h + off - step;
        for (int64_t d = 0; d < n; ++d) {
          g[d] = acc_t(gh[off + d]) + a_next[d] * g[d];
          gb[off + d] = scalar_t(g[d]);
          ga[off + d] = scalar_t(g[d] * acc_t(hp[d]));
          a_next[d] = acc_t(a[off + d]);
        }
      }
      // the first step in scan order: h_prev is h0 (kept in the accumulation type), or zero
      const acc_t* hp0 = h0 ? h0 + bi * D + d0 : nullptr;
      for (int64_t d = 0; d < n; ++d) {
        g[d] = acc_t(gh[off + d]) + a_next[d] * g[d];
        gb[off + d] = scalar_t(g[d]);
        ga[off + d] = scalar_t(g[d] * (hp0 ? hp0[d] : acc_t(0)));  // g * 0 (NaN for an infinite g), as autograd gives
        a_next[d] = acc_t(a[off + d]);
      }
      if (gh0) {
        for (int64_t d = 0; d < n; ++d) gh0[bi * D + d0 + d] = a_next[d] * g[d];
      }
    }
  });
}

void check(const torch::Tensor& a, const torch::Tensor& b) {
  TORCH_CHECK(a.device().is_cpu() && b.device().is_cpu(), "scan_cpu: tensors must be on the CPU");
  TORCH_CHECK(a.dim() == 3 && a.sizes() == b.sizes(), "scan_cpu: a and b must both be (B, L, D)");
  TORCH_CHECK(a.is_contiguous() && b.is_contiguous(), "scan_cpu: inputs must be contiguous");
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "scan_cpu: a and b must share a dtype");
}

// h0 (and the gradient returned for it) in the accumulation type: float32, or float64 for float64 data.
void check_h0(const torch::Tensor& h0, const torch::Tensor& data) {
  const auto acc = data.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(h0.numel() == 0 || (h0.scalar_type() == acc && h0.is_contiguous()),
              "scan_cpu: h0 must be contiguous in the accumulation dtype (float32; float64 for float64 data)");
}

torch::Tensor forward(torch::Tensor a, torch::Tensor b, torch::Tensor h0, bool reverse) {
  check(a, b);
  check_h0(h0, a);
  const bool has_h0 = h0.numel() > 0;
  auto h = torch::empty_like(a);
  const int64_t B = a.size(0), L = a.size(1), D = a.size(2);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "scan_cpu_forward", [&] {
    forward_kernel<scalar_t>(a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(),
                             has_h0 ? h0.data_ptr<typename Acc<scalar_t>::type>() : nullptr, h.data_ptr<scalar_t>(),
                             B, L, D, reverse);
  });
  return h;
}

std::vector<torch::Tensor> backward(torch::Tensor a, torch::Tensor h, torch::Tensor h0,
                                    torch::Tensor grad_h, bool reverse) {
  check(a, h);
  check(a, grad_h);
  check_h0(h0, a);
  const bool has_h0 = h0.numel() > 0;
  auto ga = torch::empty_like(a);
  auto gb = torch::empty_like(a);
  auto gh0 = has_h0 ? torch::empty_like(h0) : torch::empty({0}, a.options());
  const int64_t B = a.size(0), L = a.size(1), D = a.size(2);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "scan_cpu_backward", [&] {
    backward_kernel<scalar_t>(a.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(),
                              has_h0 ? h0.data_ptr<typename Acc<scalar_t>::type>() : nullptr,
                              grad_h.data_ptr<scalar_t>(), ga.data_ptr<scalar_t>(), gb.data_ptr<scalar_t>(),
                              has_h0 ? gh0.data_ptr<typename Acc<scalar_t>::type>() : nullptr, B, L, D, reverse);
  });
  return {ga, gb, gh0};
}


// ---------------------------------------------------------------------------------------------
// Fused minGRU scan: gates from the raw projection, computed in the accumulation type.
//   proj row (one token) = [gate_0, cand_0, gate_1, cand_1, ...] blocks of H per direction;
//   z = sigmoid(gate), a = sigmoid(-gate), c = act(cand); h = a * h_prev + z * c.
// Backward (g = dL/dh_t accumulated in scan order, hp = h_prev):
//   dgate = g * z * a * (c - hp),  dcand = g * z * act'(cand),  dh0 = a_first * g_first.

// exp(x) for x <= 0 (or NaN), float, vectorisable (no libm call): x = n ln2 + r, |r| <= ln2/2, degree-7
// Taylor polynomial (relative error < 1e-8 before rounding), scaled by 2^n through the exponent bits.
// NaN propagates (the clamp keeps it, and 2^n's bits are formed by integer-free float arithmetic plus
// unsigned bit operations, so there is no undefined float->int conversion); the callers rely on it.
static inline float exp_neg(float x) {
  x = x < -87.0f ? -87.0f : x;  // one vmaxps; NaN compares false and passes through
  const float n = std::floor(x * 1.4426950408889634f + 0.5f);  // integer in [-126, 0]
  const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  // n + 1.5 * 2^23 holds n in its low mantissa bits: 2^n = ((bits - bits(1.5 * 2^23)) + 127) << 23
  const uint32_t m = __builtin_bit_cast(uint32_t, n + 12582912.0f);
  return p * __builtin_bit_cast(float, (m - 0x4B400000u + 127u) << 23);
}
static inline double exp_neg(double x) { return std::exp(x); }

// z = sigmoid(g), a = sigmoid(-g) without cancellation (NaN in, NaN out: exp_neg passes it on).
template <typename acc_t>
static inline void gates_of(acc_t g, acc_t& z, acc_t& a) {
  const acc_t e = exp_neg(-std::abs(g));        // in (0, 1]
  const acc_t s = acc_t(1) / (acc_t(1) + e);  // sigmoid(|g|)
  const acc_t t = e * s;                      // sigmoid(-|g|)
  const bool pos = g >= acc_t(0);
  z = pos ? s : t;
  a = pos ? t : s;
}

// act(c) and act'(c): identity, or g(c) = c + 0.5 (c >= 0), sigmoid(c) (c < 0).
template <typename acc_t, bool kG>
static inline void act_of(acc_t c, acc_t& y, acc_t& dy) {
  if (!kG) { y = c; dy = acc_t(1); return; }
  const acc_t e = exp_neg(-std::abs(c));
  const acc_t s = e / (acc_t(1) + e);  // sigmoid(c) for c < 0
  const bool pos = c >= acc_t(0);
  y = pos ? c + acc_t(0.5) : s;
  dy = pos ? acc_t(1) : s * (acc_t(1) - s);
}

// Vector blocks ("lanes") of 64 bytes of the accumulation type: 16 floats (one AVX-512 register, one
// cache line) or 8 doubles. A row of a channel block is visited one lane block at a time, in the
// direction the walk goes through memory: upwards for steps that go up, *from the top down* for steps
// that go down (a reverse forward scan, the backward of a forward scan), so that every stream, within a
// row and from row to row, runs one way and the hardware prefetchers follow it (measured on this
// project's AMD EPYC: the backward of 8x3136x144 took 10.9 ms with rows read upwards inside a downward
// walk plus software prefetch, 7.3 ms with rows read downwards and no prefetch).
template <typename acc_t> struct Lanes { static constexpr int64_t value = 64 / int64_t(sizeof(acc_t)); };

// Streaming ("non-temporal") stores: a large output that will not be read before it leaves the cache is
// written without first reading each line in (saves one read of the output; backward 7.3 -> 6.3 ms
// above). The caller asks for them (cpu_kernel.py: outputs of 8 MiB and more); they are used for float
// outputs whose lane blocks are 64-byte aligned, ordinary stores elsewhere.
#if defined(__AVX512F__) || defined(__AVX__)
constexpr bool kCanStream = true;
static inline void stream_line(float* dst, const float* v) {  // dst 64-byte aligned, 16 floats
#if defined(__AVX512F__)
  _mm512_stream_ps(dst, _mm512_load_ps(v));
#else
  _mm256_stream_ps(dst, _mm256_load_ps(v));
  _mm256_stream_ps(dst + 8, _mm256_load_ps(v + 8));
#endif
}
static inline void stream_fence() { _mm_sfence(); }
#else
constexpr bool kCanStream = false;
static inline void stream_line(float* dst, const float* v) { for (int i = 0; i < 16; ++i) dst[i] = v[i]; }
static inline void stream_fence() {}
#endif

// One channel of one step, the maths every lane loop below shares (inlined into the loops).
// Forward: the new state a * s + z * act(c).
template <typename acc_t, bool kG, typename scalar_t>
static inline acc_t mingru_step(scalar_t gate, scalar_t cand, acc_t state) {
  acc_t z, a, c, dc;
  gates_of<acc_t>(acc_t(gate), z, a);
  act_of<acc_t, kG>(acc_t(cand), c, dc);
  return a * state + z * c;
}

// Backward: g (dL/dh_t, carried) <- grad_h_t + a_{t+1} g; a_next <- a_t; the gradients of the gate and
// candidate inputs of this step.
template <typename acc_t, bool kG, typename scalar_t, typename prev_t>
static inline void mingru_grad_step(scalar_t gate, scalar_t cand, scalar_t grad_h, prev_t h_prev, acc_t& g,
                                    acc_t& a_next, acc_t& grad_gate, acc_t& grad_cand) {
  acc_t z, a, c, dc;
  gates_of<acc_t>(acc_t(gate), z, a);
  act_of<acc_t, kG>(acc_t(cand), c, dc);
  g = acc_t(grad_h) + a_next * g;
  const acc_t gz = g * z;
  grad_gate = gz * a * (c - acc_t(h_prev));
  grad_cand = gz * dc;
  a_next = a;
}

// One lane block (N = Lanes, or N = 0: a partial block of n lanes) of one step (one token).
// kStream: float outputs, N = 16, destination 64-byte aligned. restrict-qualified so the loops
// vectorise without run-time alias checks.
template <typename scalar_t, bool kG, bool kStream, int64_t N>
static inline void mingru_fwd_lanes(const scalar_t* __restrict gp, const scalar_t* __restrict cp,
                                    scalar_t* __restrict hk, typename Acc<scalar_t>::type* __restrict state,
                                    int64_t n) {
  using acc_t = typename Acc<scalar_t>::type;
  if constexpr (kStream) {
    alignas(64) float out[16];
    for (int64_t d = 0; d < 16; ++d) out[d] = state[d] = mingru_step<acc_t, kG>(gp[d], cp[d], state[d]);
    stream_line(hk, out);
  } else {
    const int64_t cnt = N > 0 ? N : n;
    for (int64_t d = 0; d < cnt; ++d) hk[d] = scalar_t(state[d] = mingru_step<acc_t, kG>(gp[d], cp[d], state[d]));
  }
}

// hp: h_prev, the data type (h of the previous step) or the accumulation type (h0 at the first step).
template <typename scalar_t, bool kG, bool kStream, int64_t N, typename prev_t>
static inline void mingru_bwd_lanes(const scalar_t* __restrict gp, const scalar_t* __restrict cp,
                                    const scalar_t* __restrict ghk, const prev_t* __restrict hp,
                                    scalar_t* __restrict ggate, scalar_t* __restrict gcand,
                                    typename Acc<scalar_t>::type* __restrict g,
                                    typename Acc<scalar_t>::type* __restrict a_next, int64_t n) {
  using acc_t = typename Acc<scalar_t>::type;
  if constexpr (kStream) {
    alignas(64) float out_gate[16], out_cand[16];
    for (int64_t d = 0; d < 16; ++d)
      mingru_grad_step<acc_t, kG>(gp[d], cp[d], ghk[d], hp[d], g[d], a_next[d], out_gate[d], out_cand[d]);
    stream_line(ggate, out_gate);
    stream_line(gcand, out_cand);
  } else {
    const int64_t cnt = N > 0 ? N : n;
    for (int64_t d = 0; d < cnt; ++d) {
      acc_t grad_gate, grad_cand;
      mingru_grad_step<acc_t, kG>(gp[d], cp[d], ghk[d], hp[d], g[d], a_next[d], grad_gate, grad_cand);
      ggate[d] = scalar_t(grad_gate);
      gcand[d] = scalar_t(grad_cand);
    }
  }
}

// The lane blocks [0, n) of a row in memory order (up) or from the top (down); the partial block
// (n % Lanes lanes, at the top) is written with ordinary stores. `f(offset, tag)` runs one block,
// tag = std::integral_constant<int64_t, N>.
template <typename acc_t, typename F>
static inline void for_lane_blocks(int64_t n, bool down, F&& f) {
  constexpr int64_t V = Lanes<acc_t>::value;
  const int64_t full = n - n % V;
  if (!down) {
    for (int64_t d = 0; d < full; d += V) f(d, std::integral_constant<int64_t, V>());
    if (full < n) f(full, std::integral_constant<int64_t, 0>());
  } else {
    if (full < n) f(full, std::integral_constant<int64_t, 0>());
    for (int64_t d = full - V; d >= 0; d -= V) f(d, std::integral_constant<int64_t, V>());
  }
}

// Software prefetch of proj's gate and candidate rows kAhead steps ahead of the walk, in the walk's
// direction. proj is the largest stream and its rows are strided (any batch/time strides); measured at
// 8x3136x144 on this project's EPYC, float32, one thread: forward 4.0 -> 2.2 ms, backward 5.1 -> 4.4 ms
// (walking down) and 4.7 -> 3.3 ms (walking up). Prefetching h and grad_h as well made the backward slower.
// (GCC 12 dropped __builtin_prefetch from these loops in the full kernels -- no prefetch instruction was
// left in the object -- so on x86-64 the prefetch is an asm statement the compiler must keep.)
constexpr int64_t kAhead = 4;
static inline void prefetch_line(const char* p) {
#if defined(__x86_64__) || defined(__i386__)
  asm volatile("prefetcht0 %0" : : "m"(*p));
#else
  __builtin_prefetch(p);
#endif
}
template <typename scalar_t>
static inline void prefetch_row(const scalar_t* p, int64_t n, bool down) {
  const char* c = reinterpret_cast<const char*>(p);
  const int64_t bytes = n * int64_t(sizeof(scalar_t));
  if (!down) {
    for (int64_t off = 0; off < bytes; off += 64) prefetch_line(c + off);
  } else {
    for (int64_t off = (bytes - 1) & ~int64_t(63); off >= 0; off -= 64) prefetch_line(c + off);
  }
}
template <typename scalar_t>
static inline void prefetch_proj_row(const scalar_t* gp, int64_t H, int64_t n, bool down) {
  if (down) { prefetch_row(gp + H, n, true); prefetch_row(gp, n, true); }
  else { prefetch_row(gp, n, false); prefetch_row(gp + H, n, false); }
}

constexpr int64_t kRowBlock = 512;

struct MinGRUShape {
  int64_t B, L, H, ndir;   // ndir = 2 for bidirectional (direction 1 scans backwards)
  int64_t sb, st;          // proj strides of batch and time (channel stride 1)
  bool reverse;            // single-direction reverse scan
  int64_t block;           // channels per job (<= kRowBlock)
};

// Whether streaming stores can serve an output the caller wants streamed (contiguous, rows of `row`
// elements, each job writing [dir * H + d0, +n) or [2 dir H + d0, +n) and + H of a row): float, and
// every full lane block 64-byte aligned.
template <typename scalar_t>
static bool can_stream(bool wanted, const scalar_t* out, int64_t row, const MinGRUShape& s) {
  if (!wanted || !kCanStream || !std::is_same<scalar_t, float>::value) return false;
  return reinterpret_cast<uintptr_t>(out) % 64 == 0 && row % 16 == 0 && s.H % 16 == 0 && s.block % 16 == 0;
}

template <typename scalar_t, bool kG, bool kStream>
void mingru_forward_kernel(const scalar_t* proj, const typename Acc<scalar_t>::type* h0, scalar_t* h, MinGRUShape s) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t bs = s.block;
  const int64_t nblocks = (s.H + bs - 1) / bs;
  const int64_t W = s.ndir * s.H;  // output row width
  at::parallel_for(0, s.B * s.ndir * nblocks, 1, [&](int64_t begin, int64_t end) {
    alignas(64) acc_t state[kRowBlock];
    for (int64_t job = begin; job < end; ++job) {
      const int64_t bi = job / (s.ndir * nblocks), dir = (job / nblocks) % s.ndir;
      const int64_t d0 = (job % nblocks) * bs, n = std::min(bs, s.H - d0);
      const bool rev = s.ndir == 2 ? dir == 1 : s.reverse;  // a reverse scan walks down through memory
      for (int64_t d = 0; d < n; ++d) state[d] = h0 ? h0[bi * W + dir * s.H + d0 + d] : acc_t(0);
      for (int64_t k = 0; k < s.L; ++k) {
        const int64_t t = rev ? s.L - 1 - k : k;
        const scalar_t* gp = proj + bi * s.sb + t * s.st + dir * 2 * s.H + d0;
        const scalar_t* cp = gp + s.H;
        scalar_t* hk = h + (bi * s.L + t) * W + dir * s.H + d0;
        if (k + kAhead < s.L) {
          const int64_t ta = rev ? t - kAhead : t + kAhead;
          prefetch_proj_row(proj + bi * s.sb + ta * s.st + dir * 2 * s.H + d0, s.H, n, rev);
        }
        for_lane_blocks<acc_t>(n, rev, [&](int64_t d, auto lanes) {
          constexpr int64_t N = decltype(lanes)::value;
          mingru_fwd_lanes<scalar_t, kG, kStream && N == 16 && std::is_same<scalar_t, float>::value, N>(gp + d, cp + d, hk + d, state + d, n - d);
        });
      }
    }
    if (kStream) stream_fence();
  });
}

template <typename scalar_t, bool kG, bool kStream>
void mingru_backward_kernel(const scalar_t* proj, const scalar_t* h, const typename Acc<scalar_t>::type* h0,
                            const scalar_t* gh, scalar_t* gproj, typename Acc<scalar_t>::type* gh0, MinGRUShape s) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t bs = s.block;
  const int64_t nblocks = (s.H + bs - 1) / bs;
  const int64_t W = s.ndir * s.H;
  const int64_t P = 2 * W;  // grad_proj is contiguous
  at::parallel_for(0, s.B * s.ndir * nblocks, 1, [&](int64_t begin, int64_t end) {
    alignas(64) acc_t g[kRowBlock], a_next[kRowBlock];
    alignas(64) acc_t zero[kRowBlock];
    for (int64_t job = begin; job < end; ++job) {
      const int64_t bi = job / (s.ndir * nblocks), dir = (job / nblocks) % s.ndir;
      const int64_t d0 = (job % nblocks) * bs, n = std::min(bs, s.H - d0);
      const bool rev = s.ndir == 2 ? dir == 1 : s.reverse;  // the backward of a forward scan walks down
      for (int64_t d = 0; d < n; ++d) { g[d] = 0; a_next[d] = 0; zero[d] = acc_t(0); }
      for (int64_t k = s.L - 1; k >= 0; --k) {  // scan positions, last first
        const int64_t t = rev ? s.L - 1 - k : k;
        const int64_t t_prev = rev ? t + 1 : t - 1;
        const scalar_t* gp = proj + bi * s.sb + t * s.st + dir * 2 * s.H + d0;
        const scalar_t* cp = gp + s.H;
        const scalar_t* ghk = gh + (bi * s.L + t) * W + dir * s.H + d0;
        scalar_t* ggate = gproj + (bi * s.L + t) * P + dir * 2 * s.H + d0;
        scalar_t* gcand = ggate + s.H;
        if (k >= kAhead) {
          const int64_t ta = rev ? t + kAhead : t - kAhead;
          prefetch_proj_row(proj + bi * s.sb + ta * s.st + dir * 2 * s.H + d0, s.H, n, !rev);
        }
        auto row = [&](auto hp) {  // hp: h_prev of this row (data type), or h0 / zeros (accumulation type)
          for_lane_blocks<acc_t>(n, !rev, [&](int64_t d, auto lanes) {
            constexpr int64_t N = decltype(lanes)::value;
            mingru_bwd_lanes<scalar_t, kG, kStream && N == 16 && std::is_same<scalar_t, float>::value, N>(
                gp + d, cp + d, ghk + d, hp + d, ggate + d, gcand + d, g + d, a_next + d, n - d);
          });
        };
        if (k > 0) row(h + (bi * s.L + t_prev) * W + dir * s.H + d0);
        else row(h0 ? h0 + bi * W + dir * s.H + d0 : static_cast<const acc_t*>(zero));
      }
      if (gh0) {
        for (int64_t d = 0; d < n; ++d) gh0[bi * W + dir * s.H + d0 + d] = a_next[d] * g[d];
      }
    }
    if (kStream) stream_fence();
  });
}

// f(kG, kStream) with both flags as std::integral_constant<bool, .> (kStream only where it is possible).
template <typename F>
static void with_flags(bool act_g, bool stream, F&& f) {
  using T = std::true_type;
  using N = std::false_type;
  if (act_g) { if (kCanStream && stream) f(T(), T()); else f(T(), N()); }
  else { if (kCanStream && stream) f(N(), T()); else f(N(), N()); }
}

MinGRUShape mingru_shape(const torch::Tensor& proj, bool reverse, bool bidirectional, int64_t block) {
  TORCH_CHECK(proj.device().is_cpu() && proj.dim() == 3, "mingru_cpu: proj must be a (B, L, P) CPU tensor");
  TORCH_CHECK(proj.stride(2) == 1, "mingru_cpu: proj's channel stride must be 1 (call .contiguous())");
  MinGRUShape s;
  s.ndir = bidirectional ? 2 : 1;
  TORCH_CHECK(proj.size(2) % (2 * s.ndir) == 0, "mingru_cpu: proj's last dim must be 2H (4H if bidirectional)");
  s.B = proj.size(0); s.L = proj.size(1); s.H = proj.size(2) / (2 * s.ndir);
  s.sb = proj.stride(0); s.st = proj.stride(1); s.reverse = reverse;
  TORCH_CHECK(block >= 1 && block <= kRowBlock, "mingru_cpu: block must be in [1, ", kRowBlock, "]");
  s.block = block;
  return s;
}

torch::Tensor mingru_forward(torch::Tensor proj, torch::Tensor h0, bool reverse, bool bidirectional, bool act_g,
                             int64_t block, bool stream_h) {
  const MinGRUShape s = mingru_shape(proj, reverse, bidirectional, block);
  check_h0(h0, proj);
  const bool has_h0 = h0.numel() > 0;
  auto h = torch::empty({s.B, s.L, s.ndir * s.H}, proj.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, proj.scalar_type(), "mingru_cpu_forward", [&] {
    const auto* h0p = has_h0 ? h0.data_ptr<typename Acc<scalar_t>::type>() : nullptr;
    scalar_t* hp = h.data_ptr<scalar_t>();
    const bool stream = can_stream(stream_h, hp, s.ndir * s.H, s);
    with_flags(act_g, stream, [&](auto kG, auto kStream) {
      mingru_forward_kernel<scalar_t, decltype(kG)::value, decltype(kStream)::value>(proj.data_ptr<scalar_t>(),
                                                                                     h0p, hp, s);
    });
  });
  return h;
}

std::vector<torch::Tensor> mingru_backward(torch::Tensor proj, torch::Tensor h, torch::Tensor h0,
                                           torch::Tensor grad_h, bool reverse, bool bidirectional, bool act_g,
                                           int64_t block, bool stream_grad) {
  const MinGRUShape s = mingru_shape(proj, reverse, bidirectional, block);
  TORCH_CHECK(h.is_contiguous() && grad_h.is_contiguous(), "mingru_cpu: h and grad_h must be contiguous");
  check_h0(h0, proj);
  const bool has_h0 = h0.numel() > 0;
  auto gproj = torch::empty({s.B, s.L, 2 * s.ndir * s.H}, proj.options());
  auto gh0 = has_h0 ? torch::empty_like(h0) : torch::empty({0}, proj.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, proj.scalar_type(), "mingru_cpu_backward", [&] {
    const auto* h0p = has_h0 ? h0.data_ptr<typename Acc<scalar_t>::type>() : nullptr;
    auto* gh0p = has_h0 ? gh0.data_ptr<typename Acc<scalar_t>::type>() : nullptr;
    scalar_t* gp = gproj.data_ptr<scalar_t>();
    const bool stream = can_stream(stream_grad, gp, 2 * s.ndir * s.H, s);
    with_flags(act_g, stream, [&](auto kG, auto kStream) {
      mingru_backward_kernel<scalar_t, decltype(kG)::value, decltype(kStream)::value>(
          proj.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), h0p, grad_h.data_ptr<scalar_t>(), gp, gh0p, s);
    });
  });
  return {gproj, gh0};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "linear scan forward (CPU)");
  m.def("backward", &backward, "linear scan backward (CPU)");
  m.def("mingru_forward", &mingru_forward, "fused minGRU gates + scan forward (CPU)");
  m.def("mingru_backward", &mingru_backward, "fused minGRU scan backward, gradient in proj's layout (CPU)");
}
