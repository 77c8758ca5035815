// Exact-mode scalar functions shared by the kernels: the device twins of kernels/src/math.rs.
//
// Every floating-point operation is an explicit round-to-nearest intrinsic (__fadd_rn,
// __fsub_rn, __fmul_rn, __fdiv_rn, __fsqrt_rn, __fmaf_rn) in the order of the Rust source, so
// neither NVRTC nor ptxas may contract, reorder or approximate it; `mul_add` in Rust is
// __fmaf_rn here. Constants are written as their f32 bit patterns (decimal in the comment):
// a decimal literal could be parsed through double and rounded twice. cuda.rs tests that each
// PM_F32 constant below equals the math.rs constant of the same name.
#pragma once

#define PM_F32(bits) __int_as_float(bits)

#define PM_LOG2E PM_F32(0x3fb8aa3b)         // 1.442695e0, log2(e)
#define PM_LN2_HI PM_F32(0x3f317200)        // 6.9314575e-1
#define PM_LN2_LO PM_F32(0x35bfbe8e)        // 1.4286068e-6
#define PM_ROUND_MAGIC PM_F32(0x4b400000)   // 1.2582912e7, 1.5 * 2^23
#define PM_EXP_HI PM_F32(0x42b20000)        // 8.9e1
#define PM_EXP_LO PM_F32(0xc2d00000)        // -1.04e2
#define PM_EXP_POLY0 PM_F32(0x39500d01)     // 1.984127e-4
#define PM_EXP_POLY1 PM_F32(0x3ab60b61)     // 1.3888889e-3
#define PM_EXP_POLY2 PM_F32(0x3c088889)     // 8.333334e-3
#define PM_EXP_POLY3 PM_F32(0x3d2aaaab)     // 4.1666668e-2
#define PM_EXP_POLY4 PM_F32(0x3e2aaaab)     // 1.6666667e-1
#define PM_EXP_POLY5 PM_F32(0x3f000000)     // 5e-1
#define PM_ERF_SPLIT PM_F32(0x3f800000)     // 1e0
#define PM_ERF_CLAMP PM_F32(0x40800000)     // 4e0
#define PM_ERF_SMALL0 PM_F32(0x38a52b48)    // 7.875875e-5
#define PM_ERF_SMALL1 PM_F32(0xba522844)    // -8.0168643e-4
#define PM_ERF_SMALL2 PM_F32(0x3baa0938)    // 5.1890872e-3
#define PM_ERF_SMALL3 PM_F32(0xbcdbfd5d)    // -2.6854211e-2
#define PM_ERF_SMALL4 PM_F32(0x3de71688)    // 1.1283594e-1
#define PM_ERF_SMALL5 PM_F32(0xbec0939f)    // -3.7612626e-1
#define PM_ERF_SMALL6 PM_F32(0x3e0375d4)    // 1.2837917e-1
#define PM_ERF_LARGE0 PM_F32(0xb324b321)    // -3.8347142e-8
#define PM_ERF_LARGE1 PM_F32(0x356f9658)    // 8.9253217e-7
#define PM_ERF_LARGE2 PM_F32(0xb6fa8d73)    // -7.4670475e-6
#define PM_ERF_LARGE3 PM_F32(0x36f9e631)    // 7.447576e-6
#define PM_ERF_LARGE4 PM_F32(0x39cfdfc2)    // 3.964883e-4
#define PM_ERF_LARGE5 PM_F32(0xbb8ba0a6)    // -4.261094e-3
#define PM_ERF_LARGE6 PM_F32(0x3cd19bae)    // 2.558693e-2
#define PM_ERF_LARGE7 PM_F32(0xbddf8bfd)    // -1.09153725e-1
#define PM_ERF_LARGE8 PM_F32(0xbf21ea2a)    // -6.324793e-1
#define PM_ERF_LARGE9 PM_F32(0xbf90a2d4)    // -1.1299691e0
#define PM_ERF_LARGE10 PM_F32(0x398f6137)   // 2.7347516e-4
#define PM_FRAC_1_SQRT_2 PM_F32(0x3f3504f3) // 7.0710677e-1, 1/sqrt(2)
#define PM_L2_FLOOR PM_F32(0x2b8cbccc)      // 1e-12, the floor of an L2 norm (ops.rs)

#define PM_INFINITY PM_F32(0x7f800000)

// 2^n for n in [-126, 127], from the exponent bits (math.rs `pow2`).
static __device__ __forceinline__ float pm_pow2(int n) {
    return __int_as_float((int)((unsigned int)(n + 127) << 23));
}

// math.rs `exp`: x = n*ln2 + r, e^x = 2^n * p(r).
static __device__ __forceinline__ float pm_exp(float x) {
    if (x != x) {
        return x;
    }
    if (x > PM_EXP_HI) {
        return PM_INFINITY;
    }
    if (x < PM_EXP_LO) {
        x = PM_EXP_LO;
    }
    const float n = __fsub_rn(__fadd_rn(__fmul_rn(x, PM_LOG2E), PM_ROUND_MAGIC), PM_ROUND_MAGIC);
    float r = __fmaf_rn(-n, PM_LN2_HI, x);
    r = __fmaf_rn(-n, PM_LN2_LO, r);
    float p = PM_EXP_POLY0;
    p = __fmaf_rn(p, r, PM_EXP_POLY1);
    p = __fmaf_rn(p, r, PM_EXP_POLY2);
    p = __fmaf_rn(p, r, PM_EXP_POLY3);
    p = __fmaf_rn(p, r, PM_EXP_POLY4);
    p = __fmaf_rn(p, r, PM_EXP_POLY5);
    p = __fmaf_rn(p, r, 1.0f);
    p = __fmaf_rn(p, r, 1.0f);
    // n is an integer in [-150, 129]: the conversion is exact (Rust `n as i32`).
    const int ni = __float2int_rz(n);
    const int n1 = ni >> 1;
    const int n2 = ni - n1;
    return __fmul_rn(__fmul_rn(p, pm_pow2(n1)), pm_pow2(n2));
}

// math.rs `erf`: x + x*Q(x^2) below 1, 1 - exp(P(|x|)) from 1 on (|x| clamped at 4).
static __device__ __forceinline__ float pm_erf(float x) {
    if (x != x) {
        return x;
    }
    float t = fabsf(x);
    if (t < PM_ERF_SPLIT) {
        const float s = __fmul_rn(x, x);
        float q = PM_ERF_SMALL0;
        q = __fmaf_rn(q, s, PM_ERF_SMALL1);
        q = __fmaf_rn(q, s, PM_ERF_SMALL2);
        q = __fmaf_rn(q, s, PM_ERF_SMALL3);
        q = __fmaf_rn(q, s, PM_ERF_SMALL4);
        q = __fmaf_rn(q, s, PM_ERF_SMALL5);
        q = __fmaf_rn(q, s, PM_ERF_SMALL6);
        return __fmaf_rn(q, x, x);
    }
    if (t > PM_ERF_CLAMP) {
        t = PM_ERF_CLAMP;
    }
    float p = PM_ERF_LARGE0;
    p = __fmaf_rn(p, t, PM_ERF_LARGE1);
    p = __fmaf_rn(p, t, PM_ERF_LARGE2);
    p = __fmaf_rn(p, t, PM_ERF_LARGE3);
    p = __fmaf_rn(p, t, PM_ERF_LARGE4);
    p = __fmaf_rn(p, t, PM_ERF_LARGE5);
    p = __fmaf_rn(p, t, PM_ERF_LARGE6);
    p = __fmaf_rn(p, t, PM_ERF_LARGE7);
    p = __fmaf_rn(p, t, PM_ERF_LARGE8);
    p = __fmaf_rn(p, t, PM_ERF_LARGE9);
    p = __fmaf_rn(p, t, PM_ERF_LARGE10);
    const float r = __fsub_rn(1.0f, pm_exp(p));
    return x < 0.0f ? -r : r;
}

// math.rs `gelu`: (0.5*x) * (1 + erf(x * (1/sqrt2))).
static __device__ __forceinline__ float pm_gelu(float x) {
    const float e = pm_erf(__fmul_rn(x, PM_FRAC_1_SQRT_2));
    return __fmul_rn(__fmul_rn(0.5f, x), __fadd_rn(1.0f, e));
}

// math.rs `softmax_row` on `row[0..len]` (global or shared memory), by one thread block: the
// max and the sum are sequential loops in thread 0 (left to right, `v > max`, sum from 0.0),
// the exp and the division run in parallel, one element per thread. `scratch` is one float of
// shared memory. Every thread of the block must call it; len > 0.
static __device__ __forceinline__ void pm_block_softmax(float* row, unsigned int len, float* scratch) {
    if (threadIdx.x == 0) {
        float max = row[0];
        for (unsigned int j = 0; j < len; ++j) {
            const float v = row[j];
            if (v > max) {
                max = v;
            }
        }
        *scratch = max;
    }
    __syncthreads();
    const float max = *scratch;
    for (unsigned int j = threadIdx.x; j < len; j += blockDim.x) {
        row[j] = pm_exp(__fsub_rn(row[j], max));
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float sum = 0.0f;
        for (unsigned int j = 0; j < len; ++j) {
            sum = __fadd_rn(sum, row[j]);
        }
        *scratch = sum;
    }
    __syncthreads();
    const float sum = *scratch;
    for (unsigned int j = threadIdx.x; j < len; j += blockDim.x) {
        row[j] = __fdiv_rn(row[j], sum);
    }
    __syncthreads();
}
