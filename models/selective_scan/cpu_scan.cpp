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
//
// The fused Image-SSM scan (image_forward / image_backward, docs/architecture.md §3.3) runs the four
// directions of a (Bt, Dn, H, W) map with the same per-chunk loops: it reads each direction's pixels
// from the map by index arithmetic (pixel_at), forms delta = dt_proj(dt) + bias from the x_proj rows
// (Bt, K, R + 2N, H*W), and sums the directions' outputs into one (Bt, Dn, H, W) result. Tensors are
// read through their strides: the network's channels-last x (a block's channels are one vector load)
// and pixel-major x_proj rows (a pixel's rows in one or two cache lines) suit the column-major orders,
// which jump W pixels a step. An item is (batch, a run of blocks of Dn) and runs the four directions
// in turn, so it alone writes its channels of y and of grad x.
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

// Two-input lane shuffle with constant indices (GCC and Clang spell it differently).
#if defined(__clang__)
#define SHUFFLE(I, a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SHUFFLE(I, a, b, ...) __builtin_shuffle(a, b, I{__VA_ARGS__})
#endif

// The lane sums of v[0..lanes) as one vector (lane i: the sum of v[i]'s lanes), added pairwise in a
// fixed tree: a handful of shuffles instead of a chain of scalar additions per vector.
inline Vec<float> transposed_sums(const Vec<float>* v) {
  using I = Simd<float>::I;
  // pairs(a, b) = (a0+a1, b0+b1, a2+a3, b2+b3, a4+a5, b4+b5, a6+a7, b6+b7)
  const auto pairs = [](Vec<float> a, Vec<float> b) {
    return SHUFFLE(I, a, b, 0, 8, 2, 10, 4, 12, 6, 14) + SHUFFLE(I, a, b, 1, 9, 3, 11, 5, 13, 7, 15);
  };
  // quads(pairs(v0, v1), pairs(v2, v3)) = (v0[0:4], v1[0:4], v2[0:4], v3[0:4], v0[4:8], ..., v3[4:8])
  const auto quads = [](Vec<float> a, Vec<float> b) {
    return SHUFFLE(I, a, b, 0, 1, 8, 9, 4, 5, 12, 13) + SHUFFLE(I, a, b, 2, 3, 10, 11, 6, 7, 14, 15);
  };
  const Vec<float> low = quads(pairs(v[0], v[1]), pairs(v[2], v[3]));
  const Vec<float> high = quads(pairs(v[4], v[5]), pairs(v[6], v[7]));
  return SHUFFLE(I, low, high, 0, 1, 2, 3, 8, 9, 10, 11) + SHUFFLE(I, low, high, 4, 5, 6, 7, 12, 13, 14, 15);
}

inline Vec<double> transposed_sums(const Vec<double>* v) {
  using I = Simd<double>::I;
  const auto pairs = [](Vec<double> a, Vec<double> b) {  // (a0+a1, b0+b1, a2+a3, b2+b3)
    return SHUFFLE(I, a, b, 0, 4, 2, 6) + SHUFFLE(I, a, b, 1, 5, 3, 7);
  };
  const Vec<double> low = pairs(v[0], v[1]), high = pairs(v[2], v[3]);
  return SHUFFLE(I, low, high, 0, 1, 4, 5) + SHUFFLE(I, low, high, 2, 3, 6, 7);
}

// For o < outer, i < inner: add(o, i, the sum of the lanes of make(o, i)), kLanes sums at a time.
template <typename T, typename Make, typename Add>
inline void lane_sums(int64_t outer, int64_t inner, Make&& make, Add&& add) {
  constexpr int lanes = kLanes<T>;
  Vec<T> v[lanes];
  int64_t os[lanes], is[lanes];
  int64_t o = 0, i = 0;
  for (int64_t j = 0; j < outer * inner; j += lanes) {
    int m = 0;
    for (; m < lanes && o < outer; ++m) {
      os[m] = o;
      is[m] = i;
      v[m] = make(o, i);
      if (++i == inner) {
        i = 0;
        ++o;
      }
    }
    for (int k = m; k < lanes; ++k) v[k] = splat<T>(T(0));
    const Vec<T> sums = transposed_sums(v);
    for (int k = 0; k < m; ++k) add(os[k], is[k], sums[k]);
  }
}

// exp(x) to about one ulp.
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
  return p * (Vec<T>)scale_bits;  // NaN stays NaN: the clamps keep it, and NaN times anything is NaN
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

// A (channel, position) view: element (c, p) at data[c * c_stride + p * p_stride].
template <typename P> struct Plane {
  P* data;
  int64_t c_stride, p_stride;
  P* at(int64_t c, int64_t p) const { return data + c * c_stride + p * p_stride; }
};

// The block's channels at positions pos[0..len) -> tile (len, lanes); missing lanes get `fill`.
// Channels next to each other in memory (channels-last) load as one vector.
template <typename T>
void gather_tile(Plane<const T> src, const Block& blk, const int64_t* pos, int64_t len, T fill, Vec<T>* tile) {
  constexpr int lanes = kLanes<T>;
  if (src.c_stride == 1 && blk.valid == lanes) {
    for (int64_t t = 0; t < len; ++t) tile[t] = load<T>(src.at(blk.c0, pos[t]));
    return;
  }
  T* out = reinterpret_cast<T*>(tile);
  for (int64_t w = 0; w < lanes; ++w) {
    if (w < blk.valid) {
      for (int64_t t = 0; t < len; ++t) out[t * lanes + w] = *src.at(blk.c0 + w, pos[t]);
    } else {
      for (int64_t t = 0; t < len; ++t) out[t * lanes + w] = fill;
    }
  }
}

// Tile (len, lanes) -> the block's channels at positions pos[0..len): stored, or added to what is there.
template <typename T>
void scatter_tile(const Vec<T>* tile, const Block& blk, const int64_t* pos, int64_t len, Plane<T> dst, bool add) {
  constexpr int lanes = kLanes<T>;
  if (dst.c_stride == 1 && blk.valid == lanes) {
    for (int64_t t = 0; t < len; ++t) {
      T* p = dst.at(blk.c0, pos[t]);
      const Vec<T> v = add ? load<T>(p) + tile[t] : tile[t];
      std::memcpy(p, &v, sizeof v);
    }
    return;
  }
  const T* in = reinterpret_cast<const T*>(tile);
  for (int64_t w = 0; w < blk.valid; ++w) {
    for (int64_t t = 0; t < len; ++t) {
      T* p = dst.at(blk.c0 + w, pos[t]);
      *p = add ? *p + in[t * lanes + w] : in[t * lanes + w];
    }
  }
}

// Per-lane parameters of the lanes' channels [c0, c0 + valid) of A, D and the bias; missing lanes get 0.
template <typename T> struct BlockParams {
  std::vector<Vec<T>> a;  // (N)
  Vec<T> d, bias;
  BlockParams(const T* A, const T* D, const T* bias_p, int64_t states, int64_t c0, int64_t valid) : a(states) {
    for (int64_t n = 0; n < states; ++n)
      for (int w = 0; w < kLanes<T>; ++w) a[n][w] = w < valid ? A[(c0 + w) * states + n] : T(0);
    for (int w = 0; w < kLanes<T>; ++w) {
      d[w] = D && w < valid ? D[c0 + w] : T(0);
      bias[w] = bias_p && w < valid ? bias_p[c0 + w] : T(0);
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

// B_t or C_t of a chunk (or their gradients): state n at step t is p[n * n_stride + t].
template <typename P> struct Rows {
  P* p;
  int64_t n_stride;
  P& operator()(int64_t n, int64_t t) const { return p[n * n_stride + t]; }
};

// The recurrence through one chunk of len steps: h (N) enters as the state before it and leaves as
// its last state; out[t] = C_t . h_t + D u_t.
template <typename T>
void chunk_forward(const BlockParams<T>& par, int64_t N, int64_t len, const Vec<T>* dt, const Vec<T>* uu,
                   Rows<const T> Bs, Rows<const T> Cs, Vec<T>* h, Vec<T>* out) {
  for (int64_t t = 0; t < len; ++t) {
    const Vec<T> dtu = dt[t] * uu[t];
    Vec<T> acc = par.d * uu[t];
    for (int64_t n = 0; n < N; ++n) {
      h[n] = vexp<T>(dt[t] * par.a[n]) * h[n] + dtu * Bs(n, t);
      acc += h[n] * Cs(n, t);
    }
    out[t] = acc;
  }
}

// A block's backward state from chunk to chunk: the adjoint arriving from later steps and the sums
// of its parameter gradients.
template <typename T> struct BlockAdjoint {
  std::vector<Vec<T>> carry, grad_a;  // (N); carry = exp(dt_{t+1} A) * lambda_{t+1}
  Vec<T> grad_d, grad_bias;
  explicit BlockAdjoint(int64_t N)
      : carry(N, splat<T>(T(0))), grad_a(N, splat<T>(T(0))), grad_d(splat<T>(T(0))), grad_bias(splat<T>(T(0))) {}
};

// Work buffers of one chunk of a block's backward.
template <typename T> struct ChunkBuffers {
  std::vector<Vec<T>> dt, sig, uu, gy, gu, gdelta;  // (T)
  // h_{t-1} for the chunk's steps and the final state (T+1, N); exp(dt_t A) (T, N); a step's B
  // gradient per lane, before its lane sums (N).
  std::vector<Vec<T>> h_prev, decay, grad_b, grad_a_chunk;
  ChunkBuffers(int64_t chunk, int64_t N)
      : dt(chunk), sig(chunk), uu(chunk), gy(chunk), gu(chunk), gdelta(chunk), h_prev((chunk + 1) * N),
        decay(chunk * N), grad_b(N), grad_a_chunk(N) {}
};

// The backward through one chunk: recomputes its states from `saved` (the state entering it), then
// runs the adjoint recurrence from its last step to its first. Reads buf.dt (step sizes), buf.sig
// (sigmoid, their softplus derivative), buf.uu and buf.gy; writes buf.gu and buf.gdelta (the
// gradient of delta + bias); adds lane sums to the B and C gradient rows, and the rest to adj.
template <typename T>
void chunk_backward(const BlockParams<T>& par, int64_t N, int64_t len, bool softplus, const T* saved,
                    Rows<const T> Bs, Rows<const T> Cs, Rows<T> gB, Rows<T> gC, ChunkBuffers<T>& buf,
                    BlockAdjoint<T>& adj) {
  std::memcpy(buf.h_prev.data(), saved, N * sizeof(Vec<T>));
  for (int64_t t = 0; t < len; ++t) {
    const Vec<T> dtu = buf.dt[t] * buf.uu[t];
    const Vec<T>* h0 = &buf.h_prev[t * N];
    Vec<T>* h1 = &buf.h_prev[(t + 1) * N];
    for (int64_t n = 0; n < N; ++n) {
      const Vec<T> a = vexp<T>(buf.dt[t] * par.a[n]);
      buf.decay[t * N + n] = a;
      h1[n] = a * h0[n] + dtu * Bs(n, t);
    }
  }
  std::fill(buf.grad_a_chunk.begin(), buf.grad_a_chunk.end(), splat<T>(T(0)));
  Vec<T> grad_d_chunk = splat<T>(T(0)), grad_bias_chunk = splat<T>(T(0));
  for (int64_t t = len - 1; t >= 0; --t) {
    const Vec<T> dtu = buf.dt[t] * buf.uu[t];
    Vec<T> grad_dtu = splat<T>(T(0)), grad_dt = splat<T>(T(0));
    for (int64_t n = 0; n < N; ++n) {
      const Vec<T> lambda = buf.gy[t] * Cs(n, t) + adj.carry[n];
      buf.grad_b[n] = lambda * dtu;
      grad_dtu += lambda * Bs(n, t);
      adj.carry[n] = lambda * buf.decay[t * N + n];
      // d loss / d(dt_t A_n) = lambda_t exp(dt_t A_n) h_{t-1}
      const Vec<T> q = adj.carry[n] * buf.h_prev[t * N + n];
      grad_dt += q * par.a[n];
      buf.grad_a_chunk[n] += q * buf.dt[t];
    }
    // d/dB_t and d/dC_t are sums over the block's channels: of lambda_t dt_t u_t and of gy_t h_t.
    lane_sums<T>(1, N, [&](int64_t, int64_t n) { return buf.grad_b[n]; },
                 [&](int64_t, int64_t n, T sum) { gB(n, t) += sum; });
    lane_sums<T>(1, N, [&](int64_t, int64_t n) { return buf.gy[t] * buf.h_prev[(t + 1) * N + n]; },
                 [&](int64_t, int64_t n, T sum) { gC(n, t) += sum; });
    buf.gu[t] = grad_dtu * buf.dt[t] + par.d * buf.gy[t];
    grad_dt += grad_dtu * buf.uu[t];
    buf.gdelta[t] = softplus ? grad_dt * buf.sig[t] : grad_dt;
    grad_d_chunk += buf.gy[t] * buf.uu[t];
    grad_bias_chunk += buf.gdelta[t];
  }
  // Sums per chunk first, then over chunks: error ~ (T + L/T) eps rather than L eps.
  for (int64_t n = 0; n < N; ++n) adj.grad_a[n] += buf.grad_a_chunk[n];
  adj.grad_d += grad_d_chunk;
  adj.grad_bias += grad_bias_chunk;
}

// Positions t0 .. t0 + len - 1: a chunk of the (Bt, K*Dn, L) layout.
void consecutive(int64_t t0, int64_t len, int64_t* pos) {
  for (int64_t t = 0; t < len; ++t) pos[t] = t0 + t;
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
    const BlockParams<T> par(A_p, D, bias, N, blk.c0, blk.valid);
    const int64_t rows = blk.b * s.channels * L;
    const T* Bg = B_p + (blk.b * s.groups + blk.g) * N * L;
    const T* Cg = C_p + (blk.b * s.groups + blk.g) * N * L;
    std::vector<Vec<T>> h(N, splat<T>(T(0))), dt(s.chunk), uu(s.chunk), out(s.chunk);
    std::vector<int64_t> pos(s.chunk);
    T* saved = checkpoints ? checkpoints + ((blk.b * s.groups + blk.g) * s.blocks_per_group + blk.index) * s.chunks * N * lanes
                           : nullptr;
    for (int64_t j = 0; j < s.chunks; ++j) {
      const int64_t t0 = j * s.chunk, len = std::min(s.chunk, L - t0);
      consecutive(t0, len, pos.data());
      if (saved) std::memcpy(saved + j * N * lanes, h.data(), N * sizeof(Vec<T>));
      gather_tile<T>({delta_p + rows, L, 1}, blk, pos.data(), len, T(0), dt.data());
      gather_tile<T>({u_p + rows, L, 1}, blk, pos.data(), len, T(0), uu.data());
      step_sizes<T>(dt.data(), nullptr, len, par.bias, softplus);
      chunk_forward<T>(par, N, len, dt.data(), uu.data(), Rows<const T>{Bg + t0, L}, Rows<const T>{Cg + t0, L},
                       h.data(), out.data());
      scatter_tile<T>(out.data(), blk, pos.data(), len, {y_p + rows, L, 1}, false);
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
  const int64_t L = s.length, N = s.states;
  for_each_block(s, lanes, [&](const Block& blk, int64_t item) {
    const BlockParams<T> par(A_p, D, bias, N, blk.c0, blk.valid);
    const int64_t rows = blk.b * s.channels * L;
    const T* Bg = B_p + (blk.b * s.groups + blk.g) * N * L;
    const T* Cg = C_p + (blk.b * s.groups + blk.g) * N * L;
    // This item's rows of the (items, N, L) partial B and C gradients.
    T* gB = grad_B_parts + item * N * L;
    T* gC = grad_C_parts + item * N * L;
    const T* saved = checkpoints + ((blk.b * s.groups + blk.g) * s.blocks_per_group + blk.index) * s.chunks * N * lanes;
    ChunkBuffers<T> buf(s.chunk, N);
    BlockAdjoint<T> adj(N);
    std::vector<int64_t> pos(s.chunk);
    for (int64_t j = s.chunks - 1; j >= 0; --j) {
      const int64_t t0 = j * s.chunk, len = std::min(s.chunk, L - t0);
      consecutive(t0, len, pos.data());
      gather_tile<T>({delta_p + rows, L, 1}, blk, pos.data(), len, T(0), buf.dt.data());
      gather_tile<T>({u_p + rows, L, 1}, blk, pos.data(), len, T(0), buf.uu.data());
      gather_tile<T>({gy_p + rows, L, 1}, blk, pos.data(), len, T(0), buf.gy.data());
      step_sizes<T>(buf.dt.data(), buf.sig.data(), len, par.bias, softplus);
      chunk_backward<T>(par, N, len, softplus, saved + j * N * lanes, Rows<const T>{Bg + t0, L},
                        Rows<const T>{Cg + t0, L}, Rows<T>{gB + t0, L}, Rows<T>{gC + t0, L}, buf, adj);
      scatter_tile<T>(buf.gu.data(), blk, pos.data(), len, {gu_p + rows, L, 1}, false);
      scatter_tile<T>(buf.gdelta.data(), blk, pos.data(), len, {gdelta_p + rows, L, 1}, false);
    }
    // Per (batch, channel) partials, summed over the batch afterwards.
    for (int64_t w = 0; w < blk.valid; ++w) {
      const int64_t bc = blk.b * s.channels + blk.c0 + w;
      for (int64_t n = 0; n < N; ++n) grad_A_parts[bc * N + n] = adj.grad_a[n][w];
      grad_D_parts[bc] = adj.grad_d[w];
      grad_bias_parts[bc] = adj.grad_bias[w];
    }
  });
}

// ---- the fused Image-SSM scan ----

constexpr int kDirections = 4;
// Items of a call (at least; fewer when an image has fewer blocks): enough parallel work for a few
// cores at any batch, while an item holds as many blocks as it can, because each item gathers the
// x_proj rows of every chunk and writes its own partial x_dbl gradient (the size of x_dbl).
constexpr int64_t kParallelItems = 8;

// The pixel (row-major index h * W + w) that direction k visits at step t of an H x W map.
inline int64_t pixel_at(int k, int64_t t, int64_t height, int64_t width) {
  const int64_t s = k >= 2 ? height * width - 1 - t : t;  // k = 2, 3 walk k = 0, 1 backwards
  return k % 2 == 0 ? s : s % height * width + s / height;  // odd k: column-major
}

// Sizes, and the memory layouts: x (and y, grad y, grad x) by (image, channel, pixel) strides, x_dbl
// (and its gradient) by (image, direction, row, pixel) strides; an image's part of x_dbl is one dense run.
struct ImageSizes {
  int64_t batch, channels, height, width, length, rank, states, chunk, chunks;
  int64_t blocks, blocks_per_item, items_per_image;
  int64_t x_image, x_channel, x_pixel, d_image, d_direction, d_row, d_pixel;
  const int64_t* order;  // (K, L): pixel_at(k, t), computed once per call (integer division is slow)
  int64_t rows() const { return rank + 2 * states; }  // x_proj rows of a direction: dt, B, C
  const int64_t* pixels(int k, int64_t t0) const { return order + k * length + t0; }
  int64_t items() const { return batch * items_per_image; }
  template <typename P> Plane<P> image(P* base, int64_t b) const { return {base + b * x_image, x_channel, x_pixel}; }
  template <typename P> Plane<P> direction(P* x_dbl, int64_t b, int k) const {  // rows as "channels"
    return {x_dbl + b * d_image + k * d_direction, d_row, d_pixel};
  }
};

// pixel_at(k, t) for every direction and step: (K, L).
std::vector<int64_t> scan_orders(int64_t height, int64_t width) {
  std::vector<int64_t> order(kDirections * height * width);
  for (int k = 0; k < kDirections; ++k)
    for (int64_t t = 0; t < height * width; ++t) order[k * height * width + t] = pixel_at(k, t, height, width);
  return order;
}

ImageSizes image_sizes_of(const at::Tensor& x, const at::Tensor& x_dbl, const at::Tensor& dt_w, int64_t states,
                          int64_t chunk, int lanes, const std::vector<int64_t>& order) {
  ImageSizes s;
  s.order = order.data();
  s.x_image = x.stride(0);
  s.x_channel = x.stride(1);
  s.x_pixel = x.stride(3);
  s.d_image = x_dbl.stride(0);
  s.d_direction = x_dbl.stride(1);
  s.d_row = x_dbl.stride(2);
  s.d_pixel = x_dbl.stride(3);
  s.batch = x.size(0);
  s.channels = x.size(1);
  s.height = x.size(2);
  s.width = x.size(3);
  s.length = s.height * s.width;
  s.rank = dt_w.size(2);
  s.states = states;
  s.chunk = chunk;
  s.chunks = (s.length + chunk - 1) / chunk;
  s.blocks = (s.channels + lanes - 1) / lanes;
  const int64_t items_wanted = (kParallelItems + s.batch - 1) / s.batch;
  s.blocks_per_item = (s.blocks + items_wanted - 1) / items_wanted;
  s.items_per_image = (s.blocks + s.blocks_per_item - 1) / s.blocks_per_item;
  return s;
}

// The blocks [first, last) of an item, and its batch.
struct ImageItem {
  int64_t b, first, last;
  ImageItem(const ImageSizes& s, int64_t item)
      : b(item / s.items_per_image), first(item % s.items_per_image * s.blocks_per_item),
        last(std::min(first + s.blocks_per_item, s.blocks)) {}
  Block block(int64_t blk, int k, int lanes, int64_t channels) const {
    return Block{b, k, blk, blk * lanes, std::min<int64_t>(lanes, channels - blk * lanes)};
  }
};

// Direction k's parameters for each block of an item: A, D and the bias, and dt_proj's weight (R per block).
template <typename T> struct DirectionParams {
  std::vector<BlockParams<T>> par;
  std::vector<Vec<T>> weight;  // (blocks, R)
  DirectionParams(const ImageItem& it, int k, const ImageSizes& s, const T* dt_w, const T* dt_b, const T* A,
                  const T* D) {
    constexpr int lanes = kLanes<T>;
    weight.assign((it.last - it.first) * s.rank, splat<T>(T(0)));
    for (int64_t blk = it.first; blk < it.last; ++blk) {
      const Block bl = it.block(blk, k, lanes, s.channels);
      par.emplace_back(A, D, dt_b, s.states, k * s.channels + bl.c0, bl.valid);
      for (int64_t r = 0; r < s.rank; ++r)
        for (int64_t w = 0; w < bl.valid; ++w)
          weight[(blk - it.first) * s.rank + r][w] = dt_w[(k * s.channels + bl.c0 + w) * s.rank + r];
    }
  }
};

// Direction k's dt, B and C rows at the chunk's pixels as a (rows, chunk) tile.
template <typename T>
void gather_chunk(Plane<const T> rows, const ImageSizes& s, const int64_t* pixels, int64_t len, T* coef) {
  for (int64_t t = 0; t < len; ++t)
    for (int64_t r = 0; r < s.rows(); ++r) coef[r * s.chunk + t] = *rows.at(r, pixels[t]);
}

// Starts fetching the x_proj rows of the chunk at step `next` (the column-major orders jump W pixels a
// step, too far for the hardware's prefetcher to guess).
template <typename T> void prefetch_chunk(Plane<const T> rows, const ImageSizes& s, int k, int64_t next) {
  for (int64_t t = std::max<int64_t>(next, 0); t < std::min(next + s.chunk, s.length); ++t) {
    const int64_t pixel = s.pixels(k, t)[0];
    __builtin_prefetch(rows.at(0, pixel));
    __builtin_prefetch(rows.at(s.rows() - 1, pixel));
  }
}

// delta (before the bias) = dt_proj weight . dt rows, for the chunk's steps.
template <typename T>
void project_steps(const Vec<T>* weight, const T* coef, const ImageSizes& s, int64_t len, Vec<T>* dt) {
  for (int64_t t = 0; t < len; ++t) {
    Vec<T> acc = splat<T>(T(0));
    for (int64_t r = 0; r < s.rank; ++r) acc += weight[r] * coef[r * s.chunk + t];
    dt[t] = acc;
  }
}

template <typename T>
void image_forward_impl(const T* x, const T* x_dbl, const T* dt_w, const T* dt_b, const T* A, const T* D,
                        const ImageSizes& s, T* y, T* checkpoints) {
  constexpr int lanes = kLanes<T>;
  const int64_t N = s.states, R = s.rank, TC = s.chunk;
  at::parallel_for(0, s.items(), 1, [&](int64_t begin, int64_t end) {
    std::vector<Vec<T>> dt(TC), uu(TC), out(TC);
    std::vector<T> coef(s.rows() * TC);
    for (int64_t item = begin; item < end; ++item) {
      const ImageItem it(s, item);
      const Plane<const T> x_b = s.image(x, it.b);
      const Plane<T> y_b = s.image(y, it.b);
      std::vector<Vec<T>> h((it.last - it.first) * N);
      for (int k = 0; k < kDirections; ++k) {
        const DirectionParams<T> dir(it, k, s, dt_w, dt_b, A, D);
        std::fill(h.begin(), h.end(), splat<T>(T(0)));
        for (int64_t j = 0; j < s.chunks; ++j) {
          const int64_t t0 = j * TC, len = std::min(TC, s.length - t0);
          const int64_t* pixels = s.pixels(k, t0);
          gather_chunk<T>(s.direction(x_dbl, it.b, k), s, pixels, len, coef.data());
          prefetch_chunk<T>(s.direction(x_dbl, it.b, k), s, k, t0 + TC);
          for (int64_t blk = it.first; blk < it.last; ++blk) {
            const int64_t i = blk - it.first;
            const Block bl = it.block(blk, k, lanes, s.channels);
            Vec<T>* h_blk = &h[i * N];
            if (checkpoints)
              std::memcpy(checkpoints + (((it.b * s.blocks + blk) * kDirections + k) * s.chunks + j) * N * lanes, h_blk,
                          N * sizeof(Vec<T>));
            gather_tile<T>(x_b, bl, pixels, len, T(0), uu.data());
            project_steps<T>(&dir.weight[i * R], coef.data(), s, len, dt.data());
            step_sizes<T>(dt.data(), nullptr, len, dir.par[i].bias, true);
            chunk_forward<T>(dir.par[i], N, len, dt.data(), uu.data(), Rows<const T>{coef.data() + R * TC, TC},
                             Rows<const T>{coef.data() + (R + N) * TC, TC}, h_blk, out.data());
            // The merge: direction 0 writes the item's channels of y, the others add to them.
            scatter_tile<T>(out.data(), bl, pixels, len, y_b, k > 0);
          }
        }
      }
    }
  });
}

// grad_x: x's layout; parts_x_dbl: (items, one image's part of x_dbl in its layout), the per-item
// partial x_dbl gradients; parts_weight (Bt, K*Dn, R), parts_A (Bt, K*Dn, N), parts_D and parts_bias
// (Bt, K*Dn): per-image partials.
template <typename T>
void image_backward_impl(const T* x, const T* x_dbl, const T* dt_w, const T* dt_b, const T* A, const T* D,
                         const ImageSizes& s, const T* checkpoints, const T* grad_y, T* grad_x, T* parts_x_dbl,
                         T* parts_weight, T* parts_A, T* parts_D, T* parts_bias) {
  constexpr int lanes = kLanes<T>;
  const int64_t N = s.states, R = s.rank, TC = s.chunk, KD = kDirections * s.channels;
  at::parallel_for(0, s.items(), 1, [&](int64_t begin, int64_t end) {
    ChunkBuffers<T> buf(TC, N);
    std::vector<T> coef(s.rows() * TC), grad_coef(s.rows() * TC);
    std::vector<Vec<T>> grad_weight_chunk(R);
    for (int64_t item = begin; item < end; ++item) {
      const ImageItem it(s, item);
      const int64_t blocks = it.last - it.first;
      const Plane<const T> x_b = s.image(x, it.b), gy_b = s.image(grad_y, it.b);
      const Plane<T> gx_b = s.image(grad_x, it.b);
      for (int k = 0; k < kDirections; ++k) {
        const DirectionParams<T> dir(it, k, s, dt_w, dt_b, A, D);
        std::vector<BlockAdjoint<T>> adj(blocks, BlockAdjoint<T>(N));
        std::vector<Vec<T>> grad_weight(blocks * R, splat<T>(T(0)));
        // This item's partial: laid out like one image of x_dbl.
        const Plane<T> parts_k = s.direction(parts_x_dbl + item * s.d_image, 0, k);
        for (int64_t j = s.chunks - 1; j >= 0; --j) {
          const int64_t t0 = j * TC, len = std::min(TC, s.length - t0);
          const int64_t* pixels = s.pixels(k, t0);
          gather_chunk<T>(s.direction(x_dbl, it.b, k), s, pixels, len, coef.data());
          prefetch_chunk<T>(s.direction(x_dbl, it.b, k), s, k, t0 - TC);
          std::fill(grad_coef.begin(), grad_coef.end(), T(0));
          const Rows<T> grad_B{grad_coef.data() + R * TC, TC}, grad_C{grad_coef.data() + (R + N) * TC, TC};
          for (int64_t blk = it.first; blk < it.last; ++blk) {
            const int64_t i = blk - it.first;
            const Block bl = it.block(blk, k, lanes, s.channels);
            const Vec<T>* weight = &dir.weight[i * R];
            gather_tile<T>(x_b, bl, pixels, len, T(0), buf.uu.data());
            gather_tile<T>(gy_b, bl, pixels, len, T(0), buf.gy.data());
            project_steps<T>(weight, coef.data(), s, len, buf.dt.data());
            step_sizes<T>(buf.dt.data(), buf.sig.data(), len, dir.par[i].bias, true);
            const T* saved = checkpoints + (((it.b * s.blocks + blk) * kDirections + k) * s.chunks + j) * N * lanes;
            chunk_backward<T>(dir.par[i], N, len, true, saved, Rows<const T>{coef.data() + R * TC, TC},
                              Rows<const T>{coef.data() + (R + N) * TC, TC}, grad_B, grad_C, buf, adj[i]);
            // Through delta = dt_proj weight . dt rows + bias: to the dt rows and to the weight.
            std::fill(grad_weight_chunk.begin(), grad_weight_chunk.end(), splat<T>(T(0)));
            for (int64_t t = 0; t < len; ++t)
              for (int64_t r = 0; r < R; ++r) grad_weight_chunk[r] += buf.gdelta[t] * coef[r * TC + t];
            lane_sums<T>(len, R, [&](int64_t t, int64_t r) { return weight[r] * buf.gdelta[t]; },
                         [&](int64_t t, int64_t r, T sum) { grad_coef[r * TC + t] += sum; });
            for (int64_t r = 0; r < R; ++r) grad_weight[i * R + r] += grad_weight_chunk[r];
            scatter_tile<T>(buf.gu.data(), bl, pixels, len, gx_b, k > 0);
          }
          for (int64_t t = 0; t < len; ++t)
            for (int64_t r = 0; r < s.rows(); ++r) *parts_k.at(r, pixels[t]) = grad_coef[r * TC + t];
        }
        for (int64_t blk = it.first; blk < it.last; ++blk) {
          const int64_t i = blk - it.first;
          const Block bl = it.block(blk, k, lanes, s.channels);
          for (int64_t w = 0; w < bl.valid; ++w) {
            const int64_t bc = it.b * KD + k * s.channels + bl.c0 + w;
            for (int64_t n = 0; n < N; ++n) parts_A[bc * N + n] = adj[i].grad_a[n][w];
            for (int64_t r = 0; r < R; ++r) parts_weight[bc * R + r] = grad_weight[i * R + r][w];
            parts_D[bc] = adj[i].grad_d[w];
            parts_bias[bc] = adj[i].grad_bias[w];
          }
        }
      }
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

// x: its pixels flatten (H stride = W * W stride), dense (contiguous or channels-last); x_dbl: an image's
// part one dense run (row-major or pixel-major); the parameters contiguous.
void check_image_inputs(const at::Tensor& x, const at::Tensor& x_dbl, const at::Tensor& dt_w, const at::Tensor& dt_b,
                        const at::Tensor& A, const at::Tensor& D) {
  for (const at::Tensor* t : {&x, &x_dbl, &dt_w, &dt_b, &A, &D}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == x.scalar_type(),
                "image selective scan (cpp): inputs must be CPU tensors of one dtype");
  }
  for (const at::Tensor* t : {&dt_w, &dt_b, &A, &D})
    TORCH_CHECK(t->is_contiguous(), "image selective scan (cpp): parameters must be contiguous");
  TORCH_CHECK(x.dim() == 4 && (x.is_contiguous() || x.is_contiguous(at::MemoryFormat::ChannelsLast)) &&
                  x.stride(2) == x.size(3) * x.stride(3),
              "image selective scan (cpp): x must be contiguous or channels-last");
  TORCH_CHECK(x_dbl.dim() == 4 && (x_dbl.is_contiguous() || x_dbl.permute({0, 3, 1, 2}).is_contiguous()),
              "image selective scan (cpp): x_dbl must be row-major (contiguous) or pixel-major");
  TORCH_CHECK(x.dim() == 4 && dt_w.dim() == 3 && dt_w.size(0) == kDirections && dt_w.size(1) == x.size(1) &&
                  dt_b.dim() == 2 && dt_b.size(0) == kDirections && dt_b.size(1) == x.size(1) && A.dim() == 2 &&
                  A.size(0) == kDirections * x.size(1) && D.dim() == 1 && D.size(0) == A.size(0) && x_dbl.dim() == 4 &&
                  x_dbl.size(0) == x.size(0) && x_dbl.size(1) == kDirections &&
                  x_dbl.size(2) == dt_w.size(2) + 2 * A.size(1) && x_dbl.size(3) == x.size(2) * x.size(3),
              "image selective scan (cpp): shapes do not match the layout");
}

// y (Bt, Dn, H, W), and the checkpoints (the state entering every chunk of every direction) or an empty tensor.
std::vector<at::Tensor> image_scan_forward(const at::Tensor& x, const at::Tensor& x_dbl, const at::Tensor& dt_w,
                                           const at::Tensor& dt_b, const at::Tensor& A, const at::Tensor& D,
                                           int64_t chunk, bool save_checkpoints) {
  check_image_inputs(x, x_dbl, dt_w, dt_b, A, D);
  TORCH_CHECK(chunk > 0, "image selective scan (cpp): chunk must be positive");
  at::Tensor y = at::empty_like(x);
  at::Tensor checkpoints;
  const std::vector<int64_t> order = scan_orders(x.size(2), x.size(3));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "image_selective_scan_cpp_forward", [&] {
    using T = scalar_t;
    const ImageSizes s = image_sizes_of(x, x_dbl, dt_w, A.size(1), chunk, kLanes<T>, order);
    if (save_checkpoints)
      checkpoints = at::empty({s.batch, s.blocks, kDirections, s.chunks, s.states, kLanes<T>}, x.options());
    image_forward_impl<T>(x.data_ptr<T>(), x_dbl.data_ptr<T>(), dt_w.data_ptr<T>(), dt_b.data_ptr<T>(),
                          A.data_ptr<T>(), D.data_ptr<T>(), s, y.data_ptr<T>(),
                          save_checkpoints ? checkpoints.data_ptr<T>() : nullptr);
  });
  return {y, checkpoints};
}

// Returns grad x, x_dbl, dt_w, dt_b, A, D.
std::vector<at::Tensor> image_scan_backward(const at::Tensor& x, const at::Tensor& x_dbl, const at::Tensor& dt_w,
                                            const at::Tensor& dt_b, const at::Tensor& A, const at::Tensor& D,
                                            int64_t chunk, const at::Tensor& checkpoints, const at::Tensor& grad_y) {
  check_image_inputs(x, x_dbl, dt_w, dt_b, A, D);
  TORCH_CHECK(grad_y.sizes() == x.sizes() && grad_y.strides() == x.strides() && grad_y.scalar_type() == x.scalar_type(),
              "image selective scan (cpp): grad_y must be laid out like x");
  at::Tensor grad_x = at::empty_like(x), grad_x_dbl = at::empty_like(x_dbl), grad_w = at::empty_like(dt_w);
  at::Tensor grad_b = at::empty_like(dt_b), grad_A = at::empty_like(A), grad_D = at::empty_like(D);
  const std::vector<int64_t> order = scan_orders(x.size(2), x.size(3));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "image_selective_scan_cpp_backward", [&] {
    using T = scalar_t;
    const ImageSizes s = image_sizes_of(x, x_dbl, dt_w, A.size(1), chunk, kLanes<T>, order);
    TORCH_CHECK(checkpoints.numel() == s.batch * s.blocks * kDirections * s.chunks * s.states * kLanes<T>,
                "image selective scan (cpp): checkpoints do not match the inputs");
    const int64_t KD = kDirections * s.channels, part = s.d_image;
    // Every element of the partials is written: no zeros needed.
    at::Tensor parts_x_dbl = at::empty({s.items(), part}, x.options());
    at::Tensor parts_w = at::empty({s.batch, KD * s.rank}, x.options());
    at::Tensor parts_A = at::empty({s.batch, KD * s.states}, x.options());
    at::Tensor parts_D = at::empty({s.batch, KD}, x.options()), parts_bias = at::empty_like(parts_D);
    image_backward_impl<T>(x.data_ptr<T>(), x_dbl.data_ptr<T>(), dt_w.data_ptr<T>(), dt_b.data_ptr<T>(),
                           A.data_ptr<T>(), D.data_ptr<T>(), s, checkpoints.data_ptr<T>(), grad_y.data_ptr<T>(),
                           grad_x.data_ptr<T>(), parts_x_dbl.data_ptr<T>(), parts_w.data_ptr<T>(),
                           parts_A.data_ptr<T>(), parts_D.data_ptr<T>(), parts_bias.data_ptr<T>());
    // Partials: along the items of each image for x_dbl, along the batch for the parameters.
    for (int64_t b = 0; b < s.batch; ++b)
      sum_parts<T>(parts_x_dbl.data_ptr<T>() + b * s.items_per_image * part, s.items_per_image, part, part,
                   grad_x_dbl.data_ptr<T>() + b * part);
    sum_parts<T>(parts_w.data_ptr<T>(), s.batch, KD * s.rank, KD * s.rank, grad_w.data_ptr<T>());
    sum_parts<T>(parts_A.data_ptr<T>(), s.batch, KD * s.states, KD * s.states, grad_A.data_ptr<T>());
    sum_parts<T>(parts_D.data_ptr<T>(), s.batch, KD, KD, grad_D.data_ptr<T>());
    sum_parts<T>(parts_bias.data_ptr<T>(), s.batch, KD, KD, grad_b.data_ptr<T>());
  });
  return {grad_x, grad_x_dbl, grad_w, grad_b, grad_A, grad_D};
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
  m.def("image_forward", &image_scan_forward, "fused Image-SSM scan forward (y, checkpoints)");
  m.def("image_backward", &image_scan_backward, "fused Image-SSM scan backward (grads of x, x_dbl, dt_w, dt_b, A, D)");
  m.def("vector_exp", &vector_exp, "the scan's vectorised exp, elementwise");
}
