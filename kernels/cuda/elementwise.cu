// Elementwise ops in exact mode: GELU (Backend::gelu), residual add (Backend::add_inplace) and
// embedding gather (Backend::embedding_gather). One element per thread, grid-stride loops.
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
