// Row ops in exact mode: softmax (Backend::softmax_rows), layer normalisation
// (Backend::layernorm_rows) and L2 normalisation (Backend::l2_normalize_rows). One thread block
// per row (grid-stride over rows); each row's sums are sequential loops in thread 0, in the
// order of ops.rs, and the per-element work after them runs on all threads.
#include "math.cuh"

extern "C" __global__ void softmax_rows(float* x, unsigned long long rows, unsigned int cols) {
    __shared__ float scratch;
    for (size_t row = blockIdx.x; row < rows; row += gridDim.x) {
        pm_block_softmax(x + row * cols, cols, &scratch);
    }
}

// `n` is `cols as f32`, converted on the host.
extern "C" __global__ void layernorm_rows(
    float* x, const float* gamma, const float* beta, unsigned long long rows, unsigned int cols,
    float n, float eps) {
    __shared__ float mean_s;
    __shared__ float inv_s;
    for (size_t row = blockIdx.x; row < rows; row += gridDim.x) {
        float* r = x + row * cols;
        if (threadIdx.x == 0) {
            float sum = 0.0f;
            for (unsigned int j = 0; j < cols; ++j) {
                sum = __fadd_rn(sum, r[j]);
            }
            const float mean = __fdiv_rn(sum, n);
            float acc = 0.0f;
            for (unsigned int j = 0; j < cols; ++j) {
                const float d = __fsub_rn(r[j], mean);
                acc = __fmaf_rn(d, d, acc);
            }
            mean_s = mean;
            inv_s = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(acc, n), eps)));
        }
        __syncthreads();
        const float mean = mean_s;
        const float inv = inv_s;
        for (unsigned int j = threadIdx.x; j < cols; j += blockDim.x) {
            const float d = __fsub_rn(r[j], mean);
            r[j] = __fmaf_rn(__fmul_rn(d, inv), gamma[j], beta[j]);
        }
        __syncthreads();
    }
}

// Each row divided by max(sqrt(sum of squares), 1e-12); fmaxf, like Rust's f32::max, returns
// the floor when the root is NaN.
extern "C" __global__ void l2_normalize_rows(float* x, unsigned long long rows, unsigned int cols) {
    __shared__ float norm_s;
    for (size_t row = blockIdx.x; row < rows; row += gridDim.x) {
        float* r = x + row * cols;
        if (threadIdx.x == 0) {
            float acc = 0.0f;
            for (unsigned int j = 0; j < cols; ++j) {
                acc = __fmaf_rn(r[j], r[j], acc);
            }
            norm_s = fmaxf(__fsqrt_rn(acc), PM_L2_FLOOR);
        }
        __syncthreads();
        const float norm = norm_s;
        for (unsigned int j = threadIdx.x; j < cols; j += blockDim.x) {
            r[j] = __fdiv_rn(r[j], norm);
        }
        __syncthreads();
    }
}

// RMS normalisation (Backend::rmsnorm_rows): the sum of squares by fmaf from 0 in order, then
// inv = 1 / sqrt(ss / n + eps) and each value (x · inv) · gamma, every step rounded. `n` is
// `cols as f32`, converted on the host.
extern "C" __global__ void rmsnorm_rows(
    float* x, const float* gamma, unsigned long long rows, unsigned int cols, float n, float eps) {
    __shared__ float inv_s;
    for (size_t row = blockIdx.x; row < rows; row += gridDim.x) {
        float* r = x + row * cols;
        if (threadIdx.x == 0) {
            float ss = 0.0f;
            for (unsigned int j = 0; j < cols; ++j) {
                ss = __fmaf_rn(r[j], r[j], ss);
            }
            inv_s = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(ss, n), eps)));
        }
        __syncthreads();
        const float inv = inv_s;
        for (unsigned int j = threadIdx.x; j < cols; j += blockDim.x) {
            r[j] = __fmul_rn(__fmul_rn(r[j], inv), gamma[j]);
        }
        __syncthreads();
    }
}
