"""
Hand-written CPU kernels for batch-1 decoding: one vector times int8 or bfloat16 weight rows. Written here because
neither PyTorch nor a library at hand has one that keeps several row sums in flight: PyTorch's kernels and the
loops Inductor writes add each row into a single accumulator, one dependent add after another, which a core
finishes more slowly than memory delivers the row. These read four rows at a time into four accumulators:
- int8: the activations quantized to int8 in blocks of 32, each with its scale (as llama.cpp's Q8_0 does), the
  products summed by VNNI dot-product instructions, each block's sum scaled in float32, then the row's scale;
- bfloat16: the activations rounded to bfloat16, the products summed by AVX-512 BF16 dot-product instructions.
Built once per machine with the system's C compiler (-march=native) into the cache directory, loaded with ctypes
and exposed as torch custom ops, so that a compiled decoding step calls them as it calls any other kernel. Where
the compiler or the instructions are missing, they are not offered (available() is False); where they are, the
decoding-kernel race decides whether they are used.
"""
import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile

import torch

SOURCE = r'''
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define PREFETCH 1024  /* bytes ahead in a row */

static inline float bf16_float(uint16_t b) { uint32_t u = (uint32_t)b << 16; float f; memcpy(&f, &u, 4); return f; }

#if defined(__AVXVNNI__) || defined(__AVX512VNNI__)
static inline __m256 block_dot(__m256i x, const int8_t* w) {  /* 32 int8 products, summed to 8 floats */
  __m256i wv = _mm256_loadu_si256((const __m256i*)w);
#if defined(__AVXVNNI__)
  __m256i s = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(x, x), _mm256_sign_epi8(wv, x));
#else
  __m256i s = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(x, x), _mm256_sign_epi8(wv, x));
#endif
  return _mm256_cvtepi32_ps(s);
}
static inline float hsum8(__m256 v) {
  __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  a = _mm_add_ps(a, _mm_movehl_ps(a, a));
  return _mm_cvtss_f32(_mm_add_ss(a, _mm_movehdup_ps(a)));
}
/* y[n] = scales[n] * sum over blocks b of d[b] * (q_b . w[n]_b), q and d x's blocks of 32; K % 32 == 0 */
int q8_matvec(const int8_t* w, const uint16_t* scales, const float* x, float* y, int64_t N, int64_t K) {
  if (K % 32) return -1;
  int8_t q[K];
  float d[K / 32];
  for (int64_t b = 0; b < K / 32; b++) {
    float amax = 0.f;
    for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(x[b * 32 + i]));
    d[b] = amax / 127.f;
    float inv = amax ? 127.f / amax : 0.f;
    for (int i = 0; i < 32; i++) q[b * 32 + i] = (int8_t)lrintf(x[b * 32 + i] * inv);
  }
  #pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; n += 4) {
    int64_t rows = N - n < 4 ? N - n : 4;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    if (rows == 4) {
      const int8_t *w0 = w + n * K, *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;
      for (int64_t k = 0; k < K; k += 32) {
        if (k % 64 == 0)  /* a cache line ahead of the hardware's prefetcher, in each of the four rows */
          for (int r = 0; r < 4; r++) _mm_prefetch((const char*)(w0 + r * K + k + PREFETCH), _MM_HINT_T0);
        __m256i xv = _mm256_loadu_si256((const __m256i*)(q + k));
        __m256 db = _mm256_set1_ps(d[k / 32]);
        acc[0] = _mm256_fmadd_ps(block_dot(xv, w0 + k), db, acc[0]);
        acc[1] = _mm256_fmadd_ps(block_dot(xv, w1 + k), db, acc[1]);
        acc[2] = _mm256_fmadd_ps(block_dot(xv, w2 + k), db, acc[2]);
        acc[3] = _mm256_fmadd_ps(block_dot(xv, w3 + k), db, acc[3]);
      }
    } else {
      for (int64_t r = 0; r < rows; r++)
        for (int64_t k = 0; k < K; k += 32)
          acc[r] = _mm256_fmadd_ps(block_dot(_mm256_loadu_si256((const __m256i*)(q + k)), w + (n + r) * K + k),
                                   _mm256_set1_ps(d[k / 32]), acc[r]);
    }
    for (int64_t r = 0; r < rows; r++) y[n + r] = bf16_float(scales[n + r]) * hsum8(acc[r]);
  }
  return 0;
}
#else
int q8_matvec(const int8_t* w, const uint16_t* scales, const float* x, float* y, int64_t N, int64_t K) { return -1; }
#endif

#if defined(__AVX512BF16__)
/* y[n] = bf16(x) . w[n]; K % 32 == 0 */
int bf16_matvec(const uint16_t* w, const float* x, float* y, int64_t N, int64_t K) {
  if (K % 32) return -1;
  __m512bh xb[K / 32];
  for (int64_t k = 0; k < K; k += 32)
    xb[k / 32] = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + k + 16), _mm512_loadu_ps(x + k));
  #pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; n += 4) {
    int64_t rows = N - n < 4 ? N - n : 4;
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    if (rows == 4) {
      const uint16_t *w0 = w + n * K, *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;
      for (int64_t k = 0; k < K; k += 32) {
        for (int r = 0; r < 4; r++) _mm_prefetch((const char*)(w0 + r * K + k) + PREFETCH, _MM_HINT_T0);
        __m512bh xv = xb[k / 32];
        acc[0] = _mm512_dpbf16_ps(acc[0], xv, (__m512bh)_mm512_loadu_si512(w0 + k));
        acc[1] = _mm512_dpbf16_ps(acc[1], xv, (__m512bh)_mm512_loadu_si512(w1 + k));
        acc[2] = _mm512_dpbf16_ps(acc[2], xv, (__m512bh)_mm512_loadu_si512(w2 + k));
        acc[3] = _mm512_dpbf16_ps(acc[3], xv, (__m512bh)_mm512_loadu_si512(w3 + k));
      }
    } else {
      for (int64_t r = 0; r < rows; r++)
        for (int64_t k = 0; k < K; k += 32)
          acc[r] = _mm512_dpbf16_ps(acc[r], xb[k / 32], (__m512bh)_mm512_loadu_si512(w + (n + r) * K + k));
    }
    for (int64_t r = 0; r < rows; r++) y[n + r] = _mm512_reduce_add_ps(acc[r]);
  }
  return 0;
}
#else
int bf16_matvec(const uint16_t* w, const float* x, float* y, int64_t N, int64_t K) { return -1; }
#endif
'''
FLAGS = ['-O3', '-march=native', '-fopenmp', '-shared', '-fPIC']


def _cache_dir():
    root = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(os.environ.get('NANOGPT_CACHE_DIR') or os.path.join(root, 'nanogpt'), 'kernels')


@functools.cache
def library():
    """The kernels' shared library, built once per machine, compiler and source; None where it cannot be."""
    from nanogpt.autotune import machine
    cc = shutil.which(os.environ['CC']) if os.environ.get('CC') else shutil.which('cc') or shutil.which('gcc')
    if cc is None:
        return None
    key = hashlib.sha256('\n'.join([SOURCE, cc, *FLAGS, machine(torch.device('cpu'))]).encode()).hexdigest()[:16]
    path = os.path.join(_cache_dir(), f'decoding-{key}.so')
    try:
        if not os.path.isfile(path):
            os.makedirs(_cache_dir(), exist_ok=True)
            with tempfile.TemporaryDirectory() as tmp:
                src, out = os.path.join(tmp, 'decoding.c'), os.path.join(tmp, 'decoding.so')
                with open(src, 'w') as f:
                    f.write(SOURCE)
                subprocess.run([cc, *FLAGS, src, '-o', out], check=True, capture_output=True, timeout=120)
                tmp_path = f'{path}.{os.getpid()}.tmp'  # (another process may be building it too)
                shutil.copy(out, tmp_path)
                os.replace(tmp_path, path)  # whole or not at all: another process may be loading it
        lib = ctypes.CDLL(path)
    except (OSError, subprocess.SubprocessError):
        return None
    p, i = ctypes.c_void_p, ctypes.c_int64
    lib.q8_matvec.argtypes, lib.q8_matvec.restype = [p, p, p, p, i, i], ctypes.c_int
    lib.bf16_matvec.argtypes, lib.bf16_matvec.restype = [p, p, p, i, i], ctypes.c_int
    return lib


def q8_matvec_eager(x, weight, scales):
    """x (1, K) float32 times the int8 rows weight (N, K), each times its bfloat16 scale: (1, N) float32."""
    x, weight, scales = x.float().contiguous(), weight.contiguous(), scales.contiguous()  # (no copies: they are)
    y = x.new_empty(1, weight.size(0))
    if library().q8_matvec(weight.data_ptr(), scales.data_ptr(), x.data_ptr(), y.data_ptr(), *weight.shape):
        raise RuntimeError("q8_matvec: this CPU lacks the instructions, or K is not a multiple of 32")
    return y


def bf16_matvec_eager(x, weight):
    """x (1, K) rounded to bfloat16 times the bfloat16 rows weight (N, K), summed in float32: (1, N) float32."""
    x, weight = x.float().contiguous(), weight.contiguous()
    y = x.new_empty(1, weight.size(0))
    if library().bf16_matvec(weight.data_ptr(), x.data_ptr(), y.data_ptr(), *weight.shape):
        raise RuntimeError("bf16_matvec: this CPU lacks the instructions, or K is not a multiple of 32")
    return y


# the same as torch ops, for a compiled program to call (eagerly, the functions above skip the dispatcher's cost);
# registered for the CPU alone, which costs a call less than torch.library.custom_op's wrapping
_ops = torch.library.Library('nanogpt', 'DEF')
_ops.define('q8_matvec(Tensor x, Tensor weight, Tensor scales) -> Tensor')
_ops.define('bf16_matvec(Tensor x, Tensor weight) -> Tensor')
_ops.impl('q8_matvec', q8_matvec_eager, 'CPU')
_ops.impl('bf16_matvec', bf16_matvec_eager, 'CPU')
torch.library.register_fake('nanogpt::q8_matvec')(lambda x, weight, scales: x.new_empty(1, weight.size(0)))
torch.library.register_fake('nanogpt::bf16_matvec')(lambda x, weight: x.new_empty(1, weight.size(0)))
q8_matvec, bf16_matvec = torch.ops.nanogpt.q8_matvec, torch.ops.nanogpt.bf16_matvec


@functools.cache
def available(weight_dtype):
    """Whether the hand-written kernel for weight_dtype ('int8' or 'bfloat16') builds, runs here and computes
    public PyTorch's product on a small example (within its activations' rounding)."""
    if library() is None:
        return False
    g = torch.Generator().manual_seed(0)  # (not the run's random stream)
    x = torch.randn(1, 64, generator=g)
    if weight_dtype == 'int8':
        w = torch.randint(-127, 128, (7, 64), dtype=torch.int8, generator=g)
        s = torch.rand(7, generator=g).bfloat16()
        reference = x @ (w.float() * s.float()[:, None]).t()
        run = lambda: q8_matvec(x, w, s)
    else:
        w = torch.randn(7, 64, generator=g).bfloat16()
        reference = x.bfloat16().float() @ w.float().t()
        run = lambda: bf16_matvec(x, w)
    try:
        got = run()
    except RuntimeError:
        return False
    return bool(((got - reference).abs().max() <= 2e-2 * reference.abs().max()).item())
