// GEMM + bias in exact mode (Backend::gemm_bias): out[m x n] = a[m x k] . b[k x n] + bias[n].
//
// Each output element is owned by one thread, starts from +0.0, accumulates p = 0, 1, ..., k-1
// in increasing order with one __fmaf_rn per step, then adds the bias with one __fadd_rn. The
// block tile (BM x BN, stepping BK along k through shared memory) and the thread tile (TM x TN
// registers) only choose which elements are computed together, never the arithmetic of one:
// every tile shape below gives the same bits. Past the end of k nothing is accumulated (a
// zero-padded step would turn an accumulator of -0.0 into +0.0).
#include "math.cuh"

template <int BM, int BN, int BK, int TM, int TN>
static __device__ __forceinline__ void gemm_tile(
    const float* __restrict__ a, const float* __restrict__ b, const float* __restrict__ bias,
    float* __restrict__ out, unsigned int m, unsigned int k, unsigned int n) {
    constexpr int THREADS = (BM / TM) * (BN / TN);
    static_assert(THREADS == 256, "launched with 256 threads");
    static_assert((BM * BK) % THREADS == 0 && (BK * BN) % THREADS == 0, "whole loads per thread");
    // +4 columns keep the transposed stores to `as` free of bank conflicts and each row
    // 16-byte aligned for vector loads.
    __shared__ __align__(16) float as[BK][BM + 4];
    __shared__ __align__(16) float bs[BK][BN];

    const unsigned int tid = threadIdx.x;
    const unsigned int tr = tid / (BN / TN);
    const unsigned int tc = tid % (BN / TN);
    const size_t row0 = (size_t)blockIdx.y * BM;
    const size_t col0 = (size_t)blockIdx.x * BN;

    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i) {
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            acc[i][j] = 0.0f;
        }
    }

    for (unsigned int k0 = 0; k0 < k; k0 += BK) {
#pragma unroll
        for (int l = 0; l < BM * BK / THREADS; ++l) {
            const int idx = tid + l * THREADS;
            const int r = idx / BK;
            const int c = idx % BK;
            const size_t gr = row0 + r;
            const size_t gc = (size_t)k0 + c;
            as[c][r] = (gr < m && gc < k) ? a[gr * k + gc] : 0.0f;
        }
#pragma unroll
        for (int l = 0; l < BK * BN / THREADS; ++l) {
            const int idx = tid + l * THREADS;
            const int r = idx / BN;
            const int c = idx % BN;
            const size_t gr = (size_t)k0 + r;
            const size_t gc = col0 + c;
            bs[r][c] = (gr < k && gc < n) ? b[gr * n + gc] : 0.0f;
        }
        __syncthreads();

        const unsigned int steps = min((unsigned int)BK, k - k0);
        if (steps == BK) {
#pragma unroll
            for (int kk = 0; kk < BK; ++kk) {
                float av[TM];
                float bv[TN];
#pragma unroll
                for (int i = 0; i < TM; ++i) {
                    av[i] = as[kk][tr * TM + i];
                }
#pragma unroll
                for (int j = 0; j < TN; ++j) {
                    bv[j] = bs[kk][tc * TN + j];
                }
#pragma unroll
                for (int i = 0; i < TM; ++i) {
#pragma unroll
                    for (int j = 0; j < TN; ++j) {
                        acc[i][j] = __fmaf_rn(av[i], bv[j], acc[i][j]);
                    }
                }
            }
        } else {
            for (unsigned int kk = 0; kk < steps; ++kk) {
                float av[TM];
                float bv[TN];
#pragma unroll
                for (int i = 0; i < TM; ++i) {
                    av[i] = as[kk][tr * TM + i];
                }
#pragma unroll
                for (int j = 0; j < TN; ++j) {
                    bv[j] = bs[kk][tc * TN + j];
                }
#pragma unroll
                for (int i = 0; i < TM; ++i) {
#pragma unroll
                    for (int j = 0; j < TN; ++j) {
                        acc[i][j] = __fmaf_rn(av[i], bv[j], acc[i][j]);
                    }
                }
            }
        }
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const size_t gr = row0 + tr * TM + i;
        if (gr >= m) {
            continue;
        }
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const size_t gc = col0 + tc * TN + j;
            if (gc < n) {
                out[gr * n + gc] = bias != nullptr ? __fadd_rn(acc[i][j], bias[gc]) : acc[i][j];
            }
        }
    }
}

// 128 x 128 block tile, 8 x 8 per thread, 256 threads: for large m*n.
extern "C" __global__ void __launch_bounds__(256) gemm_bias_128(
    const float* a, const float* b, const float* bias, float* out, unsigned int m, unsigned int k,
    unsigned int n) {
    gemm_tile<128, 128, 8, 8, 8>(a, b, bias, out, m, k, n);
}

// 64 x 64 block tile, 4 x 4 per thread, 256 threads: when 128-tiles would leave SMs idle.
extern "C" __global__ void __launch_bounds__(256) gemm_bias_64(
    const float* a, const float* b, const float* bias, float* out, unsigned int m, unsigned int k,
    unsigned int n) {
    gemm_tile<64, 64, 16, 4, 4>(a, b, bias, out, m, k, n);
}

// 32 x 32 block tile, 2 x 2 per thread, 256 threads: small products.
extern "C" __global__ void __launch_bounds__(256) gemm_bias_32(
    const float* a, const float* b, const float* bias, float* out, unsigned int m, unsigned int k,
    unsigned int n) {
    gemm_tile<32, 32, 16, 2, 2>(a, b, bias, out, m, k, n);
}
