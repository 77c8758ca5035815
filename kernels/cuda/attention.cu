// Masked multi-head attention in exact mode (Backend::attention). One thread block per
// (query, head, sequence); padded queries are skipped (the host zeroes the output first).
//
// `keys` holds, for each sequence b, its unmasked positions in increasing order at
// keys[b*seq ..], and `key_count[b]` how many there are; the host builds both from the mask,
// so padded keys never enter a score, a max or a sum. Scores are computed in parallel (each
// one's dot product sequential over d), the softmax is math.cuh's pm_block_softmax, and each
// output dimension sums the weighted values over the keys in order.
#include "math.cuh"

extern "C" __global__ void attention(
    const float* q, const float* k, const float* v, const unsigned char* mask,
    const unsigned int* keys, const unsigned int* key_count, float* out, unsigned int seq,
    unsigned int heads, unsigned int head_dim, float scale) {
    extern __shared__ float scores[];
    __shared__ float scratch;
    const unsigned int i = blockIdx.x;
    const unsigned int h = blockIdx.y;
    const size_t b = blockIdx.z;
    const unsigned int count = key_count[b];
    // Uniform across the block, so returning before the barriers below is safe.
    if (mask[b * seq + i] == 0 || count == 0) {
        return;
    }
    const size_t hidden = (size_t)heads * head_dim;
    const unsigned int* key = keys + b * seq;
    const float* qi = q + (b * seq + i) * hidden + (size_t)h * head_dim;
    for (unsigned int jj = threadIdx.x; jj < count; jj += blockDim.x) {
        const float* kj = k + (b * seq + key[jj]) * hidden + (size_t)h * head_dim;
        float acc = 0.0f;
        for (unsigned int d = 0; d < head_dim; ++d) {
            acc = __fmaf_rn(qi[d], kj[d], acc);
        }
        scores[jj] = __fmul_rn(acc, scale);
    }
    __syncthreads();
    pm_block_softmax(scores, count, &scratch);
    float* o = out + (b * seq + i) * hidden + (size_t)h * head_dim;
    for (unsigned int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float acc = 0.0f;
        for (unsigned int jj = 0; jj < count; ++jj) {
            const float vj = v[(b * seq + key[jj]) * hidden + (size_t)h * head_dim + d];
            acc = __fmaf_rn(scores[jj], vj, acc);
        }
        o[d] = acc;
    }
}

// Causal grouped-query attention of one sequence over its key-value cache
// (Backend::attention_causal). One thread block per (query, head). Query i is at position
// keys − queries + i and sees keys 0..= that position; query head h reads key-value head
// h / (heads / kv_heads). The arithmetic is the masked kernel's: each score a sequential fmaf
// over d from 0, scaled; math.cuh's block softmax; each output dimension the fmaf sum of the
// weighted values over the visible keys in order.
extern "C" __global__ void attention_causal(
    const float* q, const float* k, const float* v, float* out, unsigned int queries,
    unsigned int keys, unsigned int heads, unsigned int kv_heads, unsigned int head_dim,
    float scale) {
    extern __shared__ float scores[];
    __shared__ float scratch;
    const unsigned int i = blockIdx.x;
    const unsigned int h = blockIdx.y;
    const unsigned int visible = keys - queries + i + 1;
    const size_t width = (size_t)heads * head_dim;
    const size_t kv_width = (size_t)kv_heads * head_dim;
    const size_t g = h / (heads / kv_heads);
    const float* qi = q + i * width + (size_t)h * head_dim;
    for (unsigned int j = threadIdx.x; j < visible; j += blockDim.x) {
        const float* kj = k + j * kv_width + g * head_dim;
        float acc = 0.0f;
        for (unsigned int d = 0; d < head_dim; ++d) {
            acc = __fmaf_rn(qi[d], kj[d], acc);
        }
        scores[j] = __fmul_rn(acc, scale);
    }
    __syncthreads();
    pm_block_softmax(scores, visible, &scratch);
    float* o = out + i * width + (size_t)h * head_dim;
    for (unsigned int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float acc = 0.0f;
        for (unsigned int j = 0; j < visible; ++j) {
            acc = __fmaf_rn(scores[j], v[j * kv_width + g * head_dim + d], acc);
        }
        o[d] = acc;
    }
}
