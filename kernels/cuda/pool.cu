// Mean pooling in exact mode (Backend::mean_pool): one thread per (sequence, column) sums the
// unmasked tokens in order from 0.0 and divides by their count (at least 1).
#include "math.cuh"

extern "C" __global__ void mean_pool(
    const float* x, const unsigned char* mask, float* out, unsigned int batch, unsigned int seq,
    unsigned int cols) {
    const size_t len = (size_t)batch * cols;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < len;
         idx += (size_t)gridDim.x * blockDim.x) {
        const size_t b = idx / cols;
        const size_t c = idx % cols;
        float acc = 0.0f;
        unsigned int tokens = 0;
        for (unsigned int t = 0; t < seq; ++t) {
            if (mask[b * seq + t] != 0) {
                acc = __fadd_rn(acc, x[(b * seq + t) * cols + c]);
                ++tokens;
            }
        }
        // Rust's `usize as f32` rounds to nearest, as __uint2float_rn does.
        out[idx] = __fdiv_rn(acc, __uint2float_rn(tokens > 0 ? tokens : 1));
    }
}
