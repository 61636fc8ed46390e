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
#include <vector>

namespace {

constexpr int64_t kBlock = 64;

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

template <typename scalar_t>
void forward_kernel(const scalar_t* a, const scalar_t* b, const scalar_t* h0, scalar_t* h,
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
      for (int64_t d = 0; d < n; ++d) state[d] = h0 ? acc_t(h0[bi * D + d0 + d]) : acc_t(0);
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
void backward_kernel(const scalar_t* a, const scalar_t* h, const scalar_t* h0, const scalar_t* gh,
                     scalar_t* ga, scalar_t* gb, scalar_t* gh0, int64_t B, int64_t L, int64_t D,
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
      for (int64_t k = L - 1; k >= 0; --k, off -= step) {
        const scalar_t* hp = k > 0 ? h + off - step : (h0 ? h0 + bi * D + d0 : nullptr);
        for (int64_t d = 0; d < n; ++d) {
          g[d] = acc_t(gh[off + d]) + a_next[d] * g[d];
          gb[off + d] = scalar_t(g[d]);
          ga[off + d] = scalar_t(hp ? g[d] * acc_t(hp[d]) : acc_t(0));
          a_next[d] = acc_t(a[off + d]);
        }
      }
      if (gh0) {
        for (int64_t d = 0; d < n; ++d) gh0[bi * D + d0 + d] = scalar_t(a_next[d] * g[d]);
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

torch::Tensor forward(torch::Tensor a, torch::Tensor b, torch::Tensor h0, bool reverse) {
  check(a, b);
  const bool has_h0 = h0.numel() > 0;
  auto h = torch::empty_like(a);
  const int64_t B = a.size(0), L = a.size(1), D = a.size(2);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "scan_cpu_forward", [&] {
    forward_kernel<scalar_t>(a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(),
                             has_h0 ? h0.data_ptr<scalar_t>() : nullptr, h.data_ptr<scalar_t>(),
                             B, L, D, reverse);
  });
  return h;
}

std::vector<torch::Tensor> backward(torch::Tensor a, torch::Tensor h, torch::Tensor h0,
                                    torch::Tensor grad_h, bool reverse) {
  check(a, h);
  check(a, grad_h);
  const bool has_h0 = h0.numel() > 0;
  auto ga = torch::empty_like(a);
  auto gb = torch::empty_like(a);
  auto gh0 = has_h0 ? torch::empty_like(h0) : torch::empty({0}, a.options());
  const int64_t B = a.size(0), L = a.size(1), D = a.size(2);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "scan_cpu_backward", [&] {
    backward_kernel<scalar_t>(a.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(),
                              has_h0 ? h0.data_ptr<scalar_t>() : nullptr, grad_h.data_ptr<scalar_t>(),
                              ga.data_ptr<scalar_t>(), gb.data_ptr<scalar_t>(),
                              has_h0 ? gh0.data_ptr<scalar_t>() : nullptr, B, L, D, reverse);
  });
  return {ga, gb, gh0};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "linear scan forward (CPU)");
  m.def("backward", &backward, "linear scan backward (CPU)");
}
