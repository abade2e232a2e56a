// The selective scan on the CPU: one fused loop over time per block of channels (docs/architecture.md §3.4).
//
// Layout (mamba-ssm's): u, delta (Bt, K*Dn, L); A (K*Dn, N); B, C (Bt, K, N, L); D, delta_bias (K*Dn,).
// h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t,  y_t = C_t . h_t + D u_t,  dt = softplus(delta + bias).
//
// A block is kLanes neighbouring channels of one group, one per lane of a 32-byte vector (GCC/Clang
// vector extensions, lowered to whatever the compile flags allow): the N states of a block stay in
// registers or L1, B_t and C_t are scalars shared by every lane, and no horizontal sums are needed
// except for the B and C gradients. Time is processed in chunks of T steps, transposed into small
// (T, lanes) tiles. The forward can save the state entering every chunk; the backward walks the
// chunks in reverse, recomputes a chunk's states from its checkpoint and runs the adjoint
// recurrence through it (memory O(L/T) per channel and state).
//
// Work is split into items (batch, group, up to kBlocksPerItem blocks) whose number does not depend
// on the thread count, and reductions over items run in a fixed order afterwards, so results are
// the same bit for bit for any number of threads.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int kVectorBytes = 32;
constexpr int64_t kBlocksPerItem = 4;

template <typename T> struct Simd;

template <> struct Simd<float> {
  typedef float V __attribute__((vector_size(kVectorBytes)));
  typedef int32_t I __attribute__((vector_size(kVectorBytes)));
  // exp: clamp so that 2^k stays a normal number; Cody-Waite split of ln 2; Taylor degree 7 on
  // |r| <= ln2/2 (truncation 5e-9, below float rounding).
  static constexpr float kExpLow = -87.0f, kExpHigh = 88.0f;
  static constexpr float kRoundMagic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  static constexpr int32_t kMagicBits = 0x4B400000, kBias = 127, kMantissaBits = 23;
  static constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  static constexpr int kExpDegree = 7;
  static constexpr int kLogTerms = 6;  // atanh series of log: s^12/13 < 1e-9 for |s| <= 0.172
};

template <> struct Simd<double> {
  typedef double V __attribute__((vector_size(kVectorBytes)));
  typedef int64_t I __attribute__((vector_size(kVectorBytes)));
  static constexpr double kExpLow = -708.0, kExpHigh = 709.0;
  static constexpr double kRoundMagic = 6755399441055744.0;  // 1.5 * 2^52
  static constexpr int64_t kMagicBits = 0x4338000000000000LL, kBias = 1023, kMantissaBits = 52;
  static constexpr double kLn2Hi = 6.93147180369123816490e-01, kLn2Lo = 1.90821492927058770002e-10;
  static constexpr int kExpDegree = 13;  // truncation |r|^14/14! < 1e-19
  static constexpr int kLogTerms = 11;   // s^22/23 < 2e-19
};

template <typename T> constexpr int kLanes = kVectorBytes / sizeof(T);

template <typename T> using Vec = typename Simd<T>::V;

template <typename T> inline Vec<T> splat(T x) { return Vec<T>{} + x; }

template <typename T> inline Vec<T> load(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename T> inline T lane_sum(Vec<T> v) {
  T total = 0;
  for (int i = 0; i < kLanes<T>; ++i) total += v[i];
  return total;
}

// exp(x) to about one ulp; NaN stays NaN.
template <typename T> inline Vec<T> vexp(Vec<T> x) {
  using S = Simd<T>;
  using I = typename S::I;
  Vec<T> xc = x < S::kExpLow ? splat<T>(S::kExpLow) : x;
  xc = xc > S::kExpHigh ? splat<T>(S::kExpHigh) : xc;
  const Vec<T> shifted = xc * T(1.4426950408889634) + S::kRoundMagic;
  const Vec<T> k = shifted - S::kRoundMagic;
  const Vec<T> r = (xc - k * S::kLn2Hi) - k * S::kLn2Lo;
  T inverse_factorial[S::kExpDegree + 1];
  inverse_factorial[0] = 1;
  for (int i = 1; i <= S::kExpDegree; ++i) inverse_factorial[i] = inverse_factorial[i - 1] / T(i);
  Vec<T> p = splat<T>(inverse_factorial[S::kExpDegree]);
  for (int i = S::kExpDegree - 1; i >= 0; --i) p = p * r + inverse_factorial[i];
  const I scale_bits = (((I)shifted - S::kMagicBits) + S::kBias) << S::kMantissaBits;
  const Vec<T> result = p * (Vec<T>)scale_bits;
  return x != x ? x : result;
}

// log1p(z) for z in [0, 1]: w = 1 + z = 2^e m with m in [1/sqrt2, sqrt2], log m by the atanh series,
// then Kahan's correction z / (w - 1) for the rounding of 1 + z.
template <typename T> inline Vec<T> vlog1p_unit(Vec<T> z) {
  using S = Simd<T>;
  const Vec<T> w = z + T(1);
  const auto high = w > T(1.4142135623730951);
  const Vec<T> m = high ? w * T(0.5) : w;
  const Vec<T> s = (m - T(1)) / (m + T(1));
  const Vec<T> s2 = s * s;
  Vec<T> series = splat<T>(T(1) / T(2 * S::kLogTerms - 1));
  for (int i = S::kLogTerms - 2; i >= 0; --i) series = series * s2 + T(1) / T(2 * i + 1);
  const Vec<T> log_w = (high ? splat<T>(T(0.6931471805599453)) : splat<T>(T(0))) + T(2) * s * series;
  const Vec<T> w_minus_1 = w - T(1);
  return w_minus_1 == T(0) ? z : log_w * (z / w_minus_1);
}

// softplus(x) = max(x, 0) + log1p(exp(-|x|)), accurate everywhere; sigmoid(x) alongside.
template <typename T> inline Vec<T> vsoftplus(Vec<T> x, Vec<T>* sigmoid) {
  const Vec<T> abs_x = x < T(0) ? -x : x;
  const Vec<T> z = vexp<T>(-abs_x);
  if (sigmoid) *sigmoid = (x < T(0) ? z : splat<T>(T(1))) / (z + T(1));
  return (x > T(0) ? x : splat<T>(T(0))) + vlog1p_unit<T>(z);
}

struct Sizes {
  int64_t batch, channels, length, groups, width, states, chunk, chunks;
  int64_t blocks_per_group, items_per_group;
  int64_t items() const { return batch * groups * items_per_group; }
};

Sizes sizes_of(const at::Tensor& u, const at::Tensor& B, int64_t states, int64_t chunk, int lanes) {
  Sizes s;
  s.batch = u.size(0);
  s.channels = u.size(1);
  s.length = u.size(2);
  s.groups = B.size(1);
  s.width = s.channels / s.groups;
  s.states = states;
  s.chunk = chunk;
  s.chunks = (s.length + chunk - 1) / chunk;
  s.blocks_per_group = (s.width + lanes - 1) / lanes;
  s.items_per_group = (s.blocks_per_group + kBlocksPerItem - 1) / kBlocksPerItem;
  return s;
}

// One block: batch b, group g, channels [c0, c0 + valid) of the (Bt, K*Dn, L) tensors.
struct Block {
  int64_t b, g, index, c0, valid;
};

template <typename F> void for_each_block(const Sizes& s, int lanes, F&& fn) {
  at::parallel_for(0, s.items(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / (s.groups * s.items_per_group);
      const int64_t g = item / s.items_per_group % s.groups;
      const int64_t first = item % s.items_per_group * kBlocksPerItem;
      const int64_t last = std::min(first + kBlocksPerItem, s.blocks_per_group);
      for (int64_t blk = first; blk < last; ++blk) {
        const int64_t offset = blk * lanes;
        fn(Block{b, g, blk, g * s.width + offset, std::min<int64_t>(lanes, s.width - offset)}, item);
      }
    }
  });
}

// (valid, L)-strided rows [t0, t0 + len) -> tile (len, lanes); missing lanes get `fill`.
template <typename T>
void gather_tile(const T* rows, int64_t length, const Block& blk, int64_t t0, int64_t len, T fill, Vec<T>* tile) {
  T* out = reinterpret_cast<T*>(tile);
  constexpr int lanes = kLanes<T>;
  for (int64_t w = 0; w < lanes; ++w) {
    if (w < blk.valid) {
      const T* row = rows + (blk.c0 + w) * length + t0;
      for (int64_t t = 0; t < len; ++t) out[t * lanes + w] = row[t];
    } else {
      for (int64_t t = 0; t < len; ++t) out[t * lanes + w] = fill;
    }
  }
}

template <typename T>
void scatter_tile(const Vec<T>* tile, const Block& blk, int64_t t0, int64_t len, int64_t length, T* rows) {
  const T* in = reinterpret_cast<const T*>(tile);
  constexpr int lanes = kLanes<T>;
  for (int64_t w = 0; w < blk.valid; ++w) {
    T* row = rows + (blk.c0 + w) * length + t0;
    for (int64_t t = 0; t < len; ++t) row[t] = in[t * lanes + w];
  }
}

// Per-lane parameters of a block; missing lanes get A = 0, D = 0, bias = 0.
template <typename T> struct BlockParams {
  std::vector<Vec<T>> a;  // (N)
  Vec<T> d, bias;
  BlockParams(const T* A, const T* D, const T* bias_p, int64_t states, const Block& blk) : a(states) {
    for (int64_t n = 0; n < states; ++n)
      for (int w = 0; w < kLanes<T>; ++w) a[n][w] = w < blk.valid ? A[(blk.c0 + w) * states + n] : T(0);
    for (int w = 0; w < kLanes<T>; ++w) {
      d[w] = D && w < blk.valid ? D[blk.c0 + w] : T(0);
      bias[w] = bias_p && w < blk.valid ? bias_p[blk.c0 + w] : T(0);
    }
  }
};

// Step sizes of a tile in place: dt = softplus(delta + bias) (or delta + bias); sigmoid if asked.
template <typename T> void step_sizes(Vec<T>* dt, Vec<T>* sigmoid, int64_t len, Vec<T> bias, bool softplus) {
  for (int64_t t = 0; t < len; ++t) {
    const Vec<T> x = dt[t] + bias;
    dt[t] = softplus ? vsoftplus<T>(x, sigmoid ? sigmoid + t : nullptr) : x;
  }
}

template <typename T>
void forward_impl(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                  const at::Tensor& C, const T* D, const T* bias, bool softplus, const Sizes& s, at::Tensor& y,
                  T* checkpoints) {
  constexpr int lanes = kLanes<T>;
  const T *u_p = u.data_ptr<T>(), *delta_p = delta.data_ptr<T>(), *A_p = A.data_ptr<T>();
  const T *B_p = B.data_ptr<T>(), *C_p = C.data_ptr<T>();
  T* y_p = y.data_ptr<T>();
  const int64_t L = s.length, N = s.states;
  for_each_block(s, lanes, [&](const Block& blk, int64_t) {
    const BlockParams<T> par(A_p, D, bias, N, blk);
    const int64_t rows = blk.b * s.channels * L;
    const T* Bg = B_p + (blk.b * s.groups + blk.g) * N * L;
    const T* Cg = C_p + (blk.b * s.groups + blk.g) * N * L;
    std::vector<Vec<T>> h(N, splat<T>(T(0))), dt(s.chunk), uu(s.chunk), out(s.chunk);
    T* saved = checkpoints ? checkpoints + ((blk.b * s.groups + blk.g) * s.blocks_per_group + blk.index) * s.chunks * N * lanes
                           : nullptr;
    for (int64_t j = 0; j < s.chunks; ++j) {
      const int64_t t0 = j * s.chunk, len = std::min(s.chunk, L - t0);
      if (saved) std::memcpy(saved + j * N * lanes, h.data(), N * sizeof(Vec<T>));
      gather_tile<T>(delta_p + rows, L, blk, t0, len, T(0), dt.data());
      gather_tile<T>(u_p + rows, L, blk, t0, len, T(0), uu.data());
      step_sizes<T>(dt.data(), nullptr, len, par.bias, softplus);
      for (int64_t t = 0; t < len; ++t) {
        const Vec<T> dtu = dt[t] * uu[t];
        Vec<T> acc = par.d * uu[t];
        for (int64_t n = 0; n < N; ++n) {
          h[n] = vexp<T>(dt[t] * par.a[n]) * h[n] + dtu * Bg[n * L + t0 + t];
          acc += h[n] * Cg[n * L + t0 + t];
        }
        out[t] = acc;
      }
      scatter_tile<T>(out.data(), blk, t0, len, L, y_p + rows);
    }
  });
}

template <typename T>
void backward_impl(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                   const at::Tensor& C, const T* D, const T* bias, bool softplus, const Sizes& s,
                   const T* checkpoints, const at::Tensor& grad_y, at::Tensor& grad_u, at::Tensor& grad_delta,
                   T* grad_B_parts, T* grad_C_parts, T* grad_A_parts, T* grad_D_parts, T* grad_bias_parts) {
  constexpr int lanes = kLanes<T>;
  const T *u_p = u.data_ptr<T>(), *delta_p = delta.data_ptr<T>(), *A_p = A.data_ptr<T>();
  const T *B_p = B.data_ptr<T>(), *C_p = C.data_ptr<T>(), *gy_p = grad_y.data_ptr<T>();
  T *gu_p = grad_u.data_ptr<T>(), *gdelta_p = grad_delta.data_ptr<T>();
  const int64_t L = s.length, N = s.states, T_ = s.chunk;
  for_each_block(s, lanes, [&](const Block& blk, int64_t item) {
    const BlockParams<T> par(A_p, D, bias, N, blk);
    const int64_t rows = blk.b * s.channels * L;
    const T* Bg = B_p + (blk.b * s.groups + blk.g) * N * L;
    const T* Cg = C_p + (blk.b * s.groups + blk.g) * N * L;
    // This item's rows of the (items, N, L) partial B and C gradients.
    T* gB = grad_B_parts + item * N * L;
    T* gC = grad_C_parts + item * N * L;
    const T* saved = checkpoints + ((blk.b * s.groups + blk.g) * s.blocks_per_group + blk.index) * s.chunks * N * lanes;
    std::vector<Vec<T>> dt(T_), sig(T_), uu(T_), gy(T_), gu(T_), gdelta(T_);
    // h_{t-1} for the chunk's steps and the final state (T+1, N); exp(dt_t A) (T, N).
    std::vector<Vec<T>> h_prev((T_ + 1) * N), decay(T_ * N);
    // carry = exp(dt_{t+1} A) * lambda_{t+1}: the adjoint arriving from later steps.
    std::vector<Vec<T>> carry(N, splat<T>(T(0))), grad_a(N, splat<T>(T(0))), grad_a_chunk(N);
    Vec<T> grad_d = splat<T>(T(0)), grad_bias = splat<T>(T(0));
    for (int64_t j = s.chunks - 1; j >= 0; --j) {
      const int64_t t0 = j * T_, len = std::min(T_, L - t0);
      gather_tile<T>(delta_p + rows, L, blk, t0, len, T(0), dt.data());
      gather_tile<T>(u_p + rows, L, blk, t0, len, T(0), uu.data());
      gather_tile<T>(gy_p + rows, L, blk, t0, len, T(0), gy.data());
      step_sizes<T>(dt.data(), sig.data(), len, par.bias, softplus);
      std::memcpy(h_prev.data(), saved + j * N * lanes, N * sizeof(Vec<T>));
      for (int64_t t = 0; t < len; ++t) {
        const Vec<T> dtu = dt[t] * uu[t];
        const Vec<T>* h0 = &h_prev[t * N];
        Vec<T>* h1 = &h_prev[(t + 1) * N];
        for (int64_t n = 0; n < N; ++n) {
          const Vec<T> a = vexp<T>(dt[t] * par.a[n]);
          decay[t * N + n] = a;
          h1[n] = a * h0[n] + dtu * Bg[n * L + t0 + t];
        }
      }
      std::fill(grad_a_chunk.begin(), grad_a_chunk.end(), splat<T>(T(0)));
      Vec<T> grad_d_chunk = splat<T>(T(0)), grad_bias_chunk = splat<T>(T(0));
      for (int64_t t = len - 1; t >= 0; --t) {
        const Vec<T> dtu = dt[t] * uu[t];
        Vec<T> grad_dtu = splat<T>(T(0)), grad_dt = splat<T>(T(0));
        for (int64_t n = 0; n < N; ++n) {
          const int64_t at = n * L + t0 + t;
          const Vec<T> lambda = gy[t] * Cg[at] + carry[n];
          gC[at] += lane_sum<T>(gy[t] * h_prev[(t + 1) * N + n]);
          gB[at] += lane_sum<T>(lambda * dtu);
          grad_dtu += lambda * Bg[at];
          carry[n] = lambda * decay[t * N + n];
          // d loss / d(dt_t A_n) = lambda_t exp(dt_t A_n) h_{t-1}
          const Vec<T> q = carry[n] * h_prev[t * N + n];
          grad_dt += q * par.a[n];
          grad_a_chunk[n] += q * dt[t];
        }
        gu[t] = grad_dtu * dt[t] + par.d * gy[t];
        grad_dt += grad_dtu * uu[t];
        gdelta[t] = softplus ? grad_dt * sig[t] : grad_dt;
        grad_d_chunk += gy[t] * uu[t];
        grad_bias_chunk += gdelta[t];
      }
      // Sums per chunk first, then over chunks: error ~ (T + L/T) eps rather than L eps.
      for (int64_t n = 0; n < N; ++n) grad_a[n] += grad_a_chunk[n];
      grad_d += grad_d_chunk;
      grad_bias += grad_bias_chunk;
      scatter_tile<T>(gu.data(), blk, t0, len, L, gu_p + rows);
      scatter_tile<T>(gdelta.data(), blk, t0, len, L, gdelta_p + rows);
    }
    // Per (batch, channel) partials, summed over the batch afterwards.
    for (int64_t w = 0; w < blk.valid; ++w) {
      const int64_t bc = blk.b * s.channels + blk.c0 + w;
      for (int64_t n = 0; n < N; ++n) grad_A_parts[bc * N + n] = grad_a[n][w];
      grad_D_parts[bc] = grad_d[w];
      grad_bias_parts[bc] = grad_bias[w];
    }
  });
}

void check_inputs(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                  const at::Tensor& C) {
  for (const at::Tensor* t : {&u, &delta, &A, &B, &C}) {
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous() && t->scalar_type() == u.scalar_type(),
                "selective scan (cpp): inputs must be contiguous CPU tensors of one dtype");
  }
  TORCH_CHECK(u.dim() == 3 && delta.sizes() == u.sizes() && A.dim() == 2 && A.size(0) == u.size(1) && B.dim() == 4 &&
                  B.sizes() == C.sizes() && B.size(0) == u.size(0) && B.size(2) == A.size(1) &&
                  B.size(3) == u.size(2) && u.size(1) % B.size(1) == 0,
              "selective scan (cpp): shapes do not match the layout");
}

const void* optional_data(const c10::optional<at::Tensor>& t) { return t.has_value() ? t->data_ptr() : nullptr; }

// Returns y, and the checkpoints (the state entering every chunk) if chunk > 0, else an empty tensor.
std::vector<at::Tensor> scan_forward(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                     const at::Tensor& B, const at::Tensor& C, const c10::optional<at::Tensor>& D,
                                     const c10::optional<at::Tensor>& delta_bias, bool softplus, int64_t chunk,
                                     bool save_checkpoints) {
  check_inputs(u, delta, A, B, C);
  TORCH_CHECK(chunk > 0, "selective scan (cpp): chunk must be positive");
  at::Tensor y = at::empty_like(u);
  at::Tensor checkpoints;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpp_forward", [&] {
    const Sizes s = sizes_of(u, B, A.size(1), chunk, kLanes<scalar_t>);
    if (save_checkpoints)
      checkpoints = at::empty({s.batch, s.groups, s.blocks_per_group, s.chunks, s.states, kLanes<scalar_t>}, u.options());
    forward_impl<scalar_t>(u, delta, A, B, C, static_cast<const scalar_t*>(optional_data(D)),
                           static_cast<const scalar_t*>(optional_data(delta_bias)), softplus, s, y,
                           save_checkpoints ? checkpoints.data_ptr<scalar_t>() : nullptr);
  });
  return {y, checkpoints};
}

// Sums (parts, rows) along parts in order -> (rows); parallel over rows.
template <typename T> void sum_parts(const T* parts, int64_t n_parts, int64_t rows, int64_t stride, T* out) {
  at::parallel_for(0, rows, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      T total = 0;
      for (int64_t p = 0; p < n_parts; ++p) total += parts[p * stride + r];
      out[r] = total;
    }
  });
}

// Returns grad u, delta, A, B, C, D, delta_bias (the last two undefined where D / delta_bias are None).
std::vector<at::Tensor> scan_backward(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                      const at::Tensor& B, const at::Tensor& C, const c10::optional<at::Tensor>& D,
                                      const c10::optional<at::Tensor>& delta_bias, bool softplus, int64_t chunk,
                                      const at::Tensor& checkpoints, const at::Tensor& grad_y) {
  check_inputs(u, delta, A, B, C);
  TORCH_CHECK(grad_y.sizes() == u.sizes() && grad_y.is_contiguous() && grad_y.scalar_type() == u.scalar_type(),
              "selective scan (cpp): grad_y must be contiguous like u");
  at::Tensor grad_u = at::empty_like(u), grad_delta = at::empty_like(u);
  at::Tensor grad_A = at::empty_like(A), grad_B = at::empty_like(B), grad_C = at::empty_like(C);
  at::Tensor grad_D, grad_bias;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpp_backward", [&] {
    using T = scalar_t;
    const Sizes s = sizes_of(u, B, A.size(1), chunk, kLanes<T>);
    TORCH_CHECK(checkpoints.numel() == s.batch * s.groups * s.blocks_per_group * s.chunks * s.states * kLanes<T>,
                "selective scan (cpp): checkpoints do not match the inputs");
    const int64_t N = s.states, L = s.length;
    // (Bt, K, items per group, N, L): one row per item; zero because blocks of an item add to it.
    at::Tensor parts_B = at::zeros({s.batch, s.groups, s.items_per_group, N, L}, u.options());
    at::Tensor parts_C = at::zeros_like(parts_B);
    at::Tensor parts_A = at::empty({s.batch, s.channels, N}, u.options());
    at::Tensor parts_D = at::empty({s.batch, s.channels}, u.options()), parts_bias = at::empty_like(parts_D);
    backward_impl<T>(u, delta, A, B, C, static_cast<const T*>(optional_data(D)),
                     static_cast<const T*>(optional_data(delta_bias)), softplus, s, checkpoints.data_ptr<T>(), grad_y,
                     grad_u, grad_delta, parts_B.data_ptr<T>(), parts_C.data_ptr<T>(), parts_A.data_ptr<T>(),
                     parts_D.data_ptr<T>(), parts_bias.data_ptr<T>());
    // Partials: along items within each (batch, group), along the batch for A, D and delta_bias.
    for (int64_t bg = 0; bg < s.batch * s.groups; ++bg) {
      const int64_t part = s.items_per_group * N * L;
      sum_parts<T>(parts_B.data_ptr<T>() + bg * part, s.items_per_group, N * L, N * L, grad_B.data_ptr<T>() + bg * N * L);
      sum_parts<T>(parts_C.data_ptr<T>() + bg * part, s.items_per_group, N * L, N * L, grad_C.data_ptr<T>() + bg * N * L);
    }
    sum_parts<T>(parts_A.data_ptr<T>(), s.batch, s.channels * N, s.channels * N, grad_A.data_ptr<T>());
    if (D.has_value()) {
      grad_D = at::empty({s.channels}, u.options());
      sum_parts<T>(parts_D.data_ptr<T>(), s.batch, s.channels, s.channels, grad_D.data_ptr<T>());
    }
    if (delta_bias.has_value()) {
      grad_bias = at::empty({s.channels}, u.options());
      sum_parts<T>(parts_bias.data_ptr<T>(), s.batch, s.channels, s.channels, grad_bias.data_ptr<T>());
    }
  });
  return {grad_u, grad_delta, grad_A, grad_B, grad_C, grad_D, grad_bias};
}

// exp, for measuring the vectorised exp's accuracy from Python.
at::Tensor vector_exp(const at::Tensor& x) {
  TORCH_CHECK(x.is_contiguous() && x.numel() % 8 == 0, "vector_exp: contiguous, a multiple of 8 elements");
  at::Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "vector_exp", [&] {
    const scalar_t* in = x.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    for (int64_t i = 0; i < x.numel(); i += kLanes<scalar_t>) {
      const Vec<scalar_t> v = vexp<scalar_t>(load<scalar_t>(in + i));
      std::memcpy(o + i, &v, sizeof v);
    }
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &scan_forward, "selective scan forward (y, checkpoints)");
  m.def("backward", &scan_backward, "selective scan backward (grads of u, delta, A, B, C, D, delta_bias)");
  m.def("vector_exp", &vector_exp, "the scan's vectorised exp, elementwise");
}
