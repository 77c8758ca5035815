// Elementwise ops in exact mode: GELU (Backend::gelu), residual add (Backend::add_inplace),
// embedding gather (Backend::embedding_gather), SwiGLU (Backend::swiglu) and RoPE
// (Backend::rope). One element (or rotated pair) per thread, grid-stride loops.
#include "math.cuh"

// x[i] = gelu(x[i]) with the math.cuh erf polynomial.
extern "C" __global__ void gelu(float* x, unsigned long long len) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (size_t)gridDim.x * blockDim.x) {
        x[i] = pm_gelu(x[i]);
    }
}

// x[i] += y[i], one rounding.
extern "C" __global__ void add_inplace(float* x, const float* y, unsigned long long len) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (size_t)gridDim.x * blockDim.x) {
        x[i] = __fadd_rn(x[i], y[i]);
    }
}

// out[r][c] = table[ids[r]][c] for `count` ids of rows of `dim`; the host has checked every id
// against the table's row count.
extern "C" __global__ void embedding_gather(
    const float* table, const unsigned int* ids, float* out, unsigned long long count,
    unsigned long long dim) {
    const size_t len = count * dim;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = i / dim;
        const size_t c = i % dim;
        out[i] = table[(size_t)ids[r] * dim + c];
    }
}

// SwiGLU: each row of `gate_up` is `cols` gate values then `cols` up values;
// out[r][c] = silu(g) · u with silu(g) = g / (1 + exp(−g)), math.cuh's exp, each step rounded.
extern "C" __global__ void swiglu(
    const float* gate_up, float* out, unsigned long long rows, unsigned long long cols) {
    const size_t len = rows * cols;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = i / cols;
        const size_t c = i % cols;
        const float g = gate_up[r * 2 * cols + c];
        const float u = gate_up[r * 2 * cols + cols + c];
        out[i] = __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, pm_exp(-g))), u);
    }
}

// RoPE on consecutive pairs: row r's first `heads` heads of `head_dim` values are rotated by
// `angles[r][p] = (cos, sin)` (the host gathers each row's position from the one table):
// (x0, x1) → (x0·c − x1·s, x0·s + x1·c), each product rounded, then the sum (no FMA).
extern "C" __global__ void rope(
    float* x, const float* angles, unsigned long long rows, unsigned long long width,
    unsigned int heads, unsigned int head_dim) {
    const size_t pairs = head_dim / 2;
    const size_t len = rows * heads * pairs;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = i / (heads * pairs);
        const size_t h = i / pairs % heads;
        const size_t p = i % pairs;
        float* pair = x + r * width + h * head_dim + 2 * p;
        const float c = angles[(r * pairs + p) * 2];
        const float s = angles[(r * pairs + p) * 2 + 1];
        const float x0 = pair[0];
        const float x1 = pair[1];
        pair[0] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
        pair[1] = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
    }
}
