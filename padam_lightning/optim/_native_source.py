"""C++ source of the native CPU Padam kernel (kept as a string so that wheels carry it).

One call updates every tensor of one dtype: it receives arrays of data pointers and element counts,
splits the concatenated elements evenly across threads and, per element, reads the parameter, the
gradient and the state once and writes them back once (the same memory traffic as torch's fused
Adam). The power ``(sqrt(vhat) + eps)^(2p)`` is chosen per call from a plan:

* ``plan == -1``: ``p = 0``, the power is 1 (momentum SGD);
* ``plan >= 0``: ``p = 2^-(plan + 1)``, the power is ``plan`` further square roots of
  ``sqrt(vhat) + eps`` (``p = 1/2, 1/4, 1/8, 1/16, ...``), exact and cheap;
* ``plan == -2``: any other ``p``; a vectorizable ``exp2(2p * log2(x))`` in single precision (a few
  ulp) and ``std::pow`` in double precision.

The storage type may be float, double, bfloat16 or (where the compiler has ``_Float16``) float16;
half types compute in float, like torch's fused optimizers.
"""

NATIVE_SOURCE = r"""
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <pthread.h>

namespace {

constexpr int kMaxThreads = 256;
constexpr int kMaxSqrtPlan = 7;
// Below this many elements per thread, starting a thread costs more than it saves.
constexpr int64_t kMinElementsPerThread = int64_t(1) << 15;

enum DType : int { kFloat32 = 0, kFloat64 = 1, kBFloat16 = 2, kFloat16 = 3 };

struct Hyper {
  double beta1, beta2, eps, weight_decay, decay, grad_sign, two_p;
  int plan;
};

struct Work {
  int dtype;
  int64_t n_tensors;
  void* const* params;
  void* const* grads;
  void* const* exp_avgs;
  void* const* exp_avg_sqs;
  void* const* max_exp_avg_sqs;  // nullptr when amsgrad is off
  const int64_t* numels;
  const double* step_sizes;
  Hyper hyper;
};

struct Slice {
  const Work* work;
  int64_t begin, end;  // range in the concatenation of all tensors
};

inline uint32_t float_bits(float x) { uint32_t u; std::memcpy(&u, &x, 4); return u; }
inline float bits_float(uint32_t u) { float x; std::memcpy(&x, &u, 4); return x; }

struct BFloat16 { uint16_t bits; };

template <typename S> struct Traits { using Math = S; };
template <> struct Traits<BFloat16> { using Math = float; };

template <typename S> inline typename Traits<S>::Math load(const S& x) { return x; }
template <typename S> inline void store(S& dst, typename Traits<S>::Math x) { dst = x; }

template <> inline float load<BFloat16>(const BFloat16& x) {
  return bits_float(uint32_t(x.bits) << 16);
}
template <> inline void store<BFloat16>(BFloat16& dst, float x) {
  // Round to nearest even, keeping NaN a (quiet) NaN.
  const uint32_t u = float_bits(x);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  dst.bits = std::isnan(x) ? uint16_t(0x7fc0u) : uint16_t(rounded);
}

#ifdef __FLT16_MAX__
using Float16 = _Float16;
template <> struct Traits<Float16> { using Math = float; };
template <> inline float load<Float16>(const Float16& x) { return float(x); }
template <> inline void store<Float16>(Float16& dst, float x) { dst = Float16(x); }
#endif

// An exponent 0 < a <= 1 with its split a = high + low into parts of 12 significant bits each, so
// that high * e and low * e are exact for any float exponent e (at most 8 bits).
struct Exponent {
  double a;
  float high, low;
  explicit Exponent(double value) : a(value) {
    const float f = float(value);
    high = bits_float(float_bits(f) & 0xfffff000u);
    low = f - high;
  }
};

inline float round_to_integer(float x) {
  // Round to nearest with the 1.5 * 2^23 trick: std::nearbyint and std::floor do not vectorize.
  return (x + 12582912.0f) - 12582912.0f;
}

// x^a as exp2(a * log2(x)), branch-free so that loops vectorize; about 2 ulp (torch: 1 ulp).
inline float pow_positive(float x, const Exponent& a) {
  const uint32_t u = float_bits(x);
  int32_t e = int32_t(u >> 23) - 127;
  float m = bits_float((u & 0x7fffffu) | 0x3f800000u);  // mantissa in [1, 2)
  const bool high = m > 1.41421356f;
  m = high ? 0.5f * m : m;                              // now in [0.707, 1.414]
  e += high ? 1 : 0;
  const float y = (m - 1.0f) / (m + 1.0f);             // ln(m) = 2 atanh(y), |y| <= 0.172
  const float y2 = y * y;
  const float ln_m =
      2.0f * y * (1.0f + y2 * (1.0f / 3 + y2 * (1.0f / 5 + y2 * (1.0f / 7 + y2 * (1.0f / 9)))));
  // a * log2(x) = a * e + a * log2(m), split so that the large part a * e loses no bits.
  const float fe = float(e);
  const float whole_high = a.high * fe;                // exact
  const float n1 = round_to_integer(whole_high);
  float r = ((whole_high - n1) + a.low * fe) + float(a.a) * (ln_m * 1.44269504f);
  const float n2 = round_to_integer(r);
  r = (r - n2) * 0.693147181f;                          // |r| <= 0.347
  const float n = std::min(std::max(n1 + n2, -126.0f), 127.0f);
  const float p =
      1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 +
      r * (1.0f / 720 + r * (1.0f / 5040)))))));
  const float result = p * bits_float(uint32_t(int32_t(n) + 127) << 23);
  // Zero, infinity and NaN are passed through (0^a = 0, inf^a = inf).
  return ((x > 0.0f) & (x <= 3.4028235e38f)) ? result : x;
}

inline float general_power(float x, const Exponent& a) { return pow_positive(x, a); }
inline double general_power(double x, const Exponent& a) { return std::pow(x, a.a); }

// Recursion rather than a loop, so that the chain is straight-line code that vectorizes.
template <int kCount, typename T>
inline T repeated_sqrt(T s) {
  if constexpr (kCount == 0) return s;
  else return repeated_sqrt<kCount - 1>(std::sqrt(s));
}

template <typename T, int kPlan>
inline T power(T s, const Exponent& two_p) {
  if constexpr (kPlan == -1) return T(1);
  else if constexpr (kPlan == -2) return general_power(s, two_p);
  else return repeated_sqrt<kPlan>(s);
}

// Not inlined into the dispatch below, so that each instantiation is vectorized on its own.
template <typename S, int kPlan, bool kAmsgrad>
__attribute__((noinline)) void update(S* __restrict param, const S* __restrict grad,
                                      S* __restrict exp_avg, S* __restrict exp_avg_sq,
                                      S* __restrict max_exp_avg_sq, int64_t n, const Hyper& h,
                                      double step_size) {
  using T = typename Traits<S>::Math;
  const T beta1 = T(h.beta1), beta2 = T(h.beta2);
  const T one_minus_beta1 = T(1.0 - h.beta1), one_minus_beta2 = T(1.0 - h.beta2);
  const T eps = T(h.eps), weight_decay = T(h.weight_decay), decay = T(h.decay);
  const T grad_sign = T(h.grad_sign), neg_step = T(-step_size);
  const Exponent two_p(h.two_p);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    // decay is exactly 1 and weight_decay exactly 0 when unused, so these are no-ops then.
    const T theta = load(param[i]) * decay;
    const T g = grad_sign * load(grad[i]) + weight_decay * theta;
    const T m = beta1 * load(exp_avg[i]) + one_minus_beta1 * g;
    const T v = beta2 * load(exp_avg_sq[i]) + one_minus_beta2 * (g * g);
    store(exp_avg[i], m);
    store(exp_avg_sq[i], v);
    T vhat = v;
    if constexpr (kAmsgrad) {
      const T previous = load(max_exp_avg_sq[i]);
      vhat = previous > v ? previous : v;
      store(max_exp_avg_sq[i], vhat);
    }
    // Half types update with the unrounded moments, as torch's fused optimizers do.
    const T denom = power<T, kPlan>(std::sqrt(vhat) + eps, two_p);
    store(param[i], theta + neg_step * m / denom);
  }
}

template <typename S, int kPlan, bool kAmsgrad>
void run_slice(const Slice& slice) {
  const Work& w = *slice.work;
  int64_t offset = 0;
  for (int64_t t = 0; t < w.n_tensors && offset < slice.end; ++t) {
    const int64_t n = w.numels[t];
    const int64_t lo = std::max(slice.begin, offset), hi = std::min(slice.end, offset + n);
    if (lo < hi) {
      const int64_t s = lo - offset;
      update<S, kPlan, kAmsgrad>(
          static_cast<S*>(w.params[t]) + s, static_cast<const S*>(w.grads[t]) + s,
          static_cast<S*>(w.exp_avgs[t]) + s, static_cast<S*>(w.exp_avg_sqs[t]) + s,
          kAmsgrad ? static_cast<S*>(w.max_exp_avg_sqs[t]) + s : nullptr, hi - lo, w.hyper,
          w.step_sizes[t]);
    }
    offset += n;
  }
}

template <typename S, bool kAmsgrad>
void run_plan(const Slice& slice) {
  switch (slice.work->hyper.plan) {
    case -1: return run_slice<S, -1, kAmsgrad>(slice);
    case 0: return run_slice<S, 0, kAmsgrad>(slice);
    case 1: return run_slice<S, 1, kAmsgrad>(slice);
    case 2: return run_slice<S, 2, kAmsgrad>(slice);
    case 3: return run_slice<S, 3, kAmsgrad>(slice);
    case 4: return run_slice<S, 4, kAmsgrad>(slice);
    case 5: return run_slice<S, 5, kAmsgrad>(slice);
    case 6: return run_slice<S, 6, kAmsgrad>(slice);
    case 7: return run_slice<S, 7, kAmsgrad>(slice);
    default: return run_slice<S, -2, kAmsgrad>(slice);
  }
}

template <typename S>
void run_amsgrad(const Slice& slice) {
  if (slice.work->max_exp_avg_sqs != nullptr) run_plan<S, true>(slice);
  else run_plan<S, false>(slice);
}

void* run_thread(void* arg) {
  const Slice& slice = *static_cast<const Slice*>(arg);
  switch (slice.work->dtype) {
    case kFloat32: run_amsgrad<float>(slice); break;
    case kFloat64: run_amsgrad<double>(slice); break;
    case kBFloat16: run_amsgrad<BFloat16>(slice); break;
#ifdef __FLT16_MAX__
    case kFloat16: run_amsgrad<Float16>(slice); break;
#endif
    default: break;
  }
  return nullptr;
}

}  // namespace

extern "C" {

// 1 where this build supports the dtype code, else 0.
int padam_supports_dtype(int dtype) {
  if (dtype == kFloat32 || dtype == kFloat64 || dtype == kBFloat16) return 1;
#ifdef __FLT16_MAX__
  if (dtype == kFloat16) return 1;
#endif
  return 0;
}

int padam_max_sqrt_plan() { return kMaxSqrtPlan; }

// Returns 0 on success, 1 for an unsupported dtype.
int padam_step(int dtype, int num_threads, int64_t n_tensors, void* const* params,
               void* const* grads, void* const* exp_avgs, void* const* exp_avg_sqs,
               void* const* max_exp_avg_sqs, const int64_t* numels, const double* step_sizes,
               double beta1, double beta2, double eps, double weight_decay, double decay,
               double grad_sign, double two_p, int plan) {
  if (!padam_supports_dtype(dtype)) return 1;
  const Work work{dtype, n_tensors, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs,
                  numels, step_sizes, Hyper{beta1, beta2, eps, weight_decay, decay, grad_sign,
                  two_p, plan}};
  int64_t total = 0;
  for (int64_t t = 0; t < n_tensors; ++t) total += numels[t];
  const int64_t useful = std::max<int64_t>(1, total / kMinElementsPerThread);
  const int threads = int(std::max<int64_t>(1, std::min<int64_t>({num_threads, kMaxThreads,
                                                                   useful})));
  // Slices start on multiples of 64 elements so that threads do not share cache lines.
  const int64_t per_thread = ((total + threads - 1) / threads + 63) / 64 * 64;
  Slice slices[kMaxThreads];
  for (int i = 0; i < threads; ++i) {
    slices[i] = Slice{&work, std::min(total, i * per_thread),
                      std::min(total, (i + 1) * per_thread)};
  }
  pthread_t handles[kMaxThreads];
  bool started[kMaxThreads] = {false};
  for (int i = 1; i < threads; ++i) {
    started[i] = pthread_create(&handles[i], nullptr, run_thread, &slices[i]) == 0;
  }
  run_thread(&slices[0]);
  for (int i = 1; i < threads; ++i) {
    if (started[i]) pthread_join(handles[i], nullptr);
    else run_thread(&slices[i]);  // no thread could be started: do its share here
  }
  return 0;
}

}  // extern "C"
"""
