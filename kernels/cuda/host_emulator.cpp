// Runs the .cu kernels on the CPU, for the tests in kernels/src/backend/cuda.rs on machines
// without a GPU: the kernel sources are compiled as C++ with the CUDA builtins below mapped to
// their IEEE-754 equivalents (each _rn intrinsic is the same correctly rounded operation in
// float; build with -ffp-contract=off so nothing is fused), one OS thread per CUDA thread, one
// block at a time, __syncthreads as a barrier and __shared__ as a static shared by the block.
// It checks the kernels' indexing, tiling, masking and operation order against the Rust
// reference; the GPU itself (NVRTC, ptxas, the hardware) is checked by kernels/gpu-check.sh.
//
// Usage: host_emulator KERNEL GX GY GZ BX BY BZ SHARED_FLOATS ARG...
// where each ARG is f:PATH (a float buffer), u:PATH (u32 buffer), b:PATH (u8 buffer), n (a
// null pointer), i:N (unsigned int), l:N (unsigned long long) or x:HEX (a float by its bits).
// Buffers are raw little-endian files; float buffers are written back after the run.
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};
static thread_local dim3 threadIdx;
static thread_local dim3 blockIdx;
static dim3 blockDim;
static dim3 gridDim;
static std::barrier<>* pm_block_barrier = nullptr;
static std::vector<float> pm_dynamic_shared;

static void __syncthreads() { pm_block_barrier->arrive_and_wait(); }

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(n)
#define __align__(n) __attribute__((aligned(n)))

static float __int_as_float(int bits) {
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}
static float __fadd_rn(float a, float b) { return a + b; }
static float __fsub_rn(float a, float b) { return a - b; }
static float __fmul_rn(float a, float b) { return a * b; }
static float __fdiv_rn(float a, float b) { return a / b; }
static float __fsqrt_rn(float a) { return std::sqrt(a); }
static float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
static int __float2int_rz(float a) { return (int)a; }
static float __uint2float_rn(unsigned int a) { return (float)a; }
// fabsf and fmaxf are the C library's (exact: a sign bit, a comparison).
static unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }

// The kernel sources; the test rewrites `extern __shared__ float NAME[];` to point at
// pm_dynamic_shared before compiling.
#include "attention.cu"
#include "elementwise.cu"
#include "gemm.cu"
#include "norm.cu"
#include "pool.cu"

struct Arg {
    char kind;
    std::string path;
    std::vector<unsigned char> bytes;
    unsigned long long value = 0;
};

static std::vector<unsigned char> read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        std::fprintf(stderr, "cannot read %s\n", path.c_str());
        std::exit(2);
    }
    return std::vector<unsigned char>(std::istreambuf_iterator<char>(in), {});
}

int main(int argc, char** argv) {
    if (argc < 9) {
        std::fprintf(stderr, "usage: %s KERNEL GX GY GZ BX BY BZ SHARED_FLOATS ARG...\n", argv[0]);
        return 2;
    }
    const std::string kernel = argv[1];
    gridDim = {(unsigned)std::stoul(argv[2]), (unsigned)std::stoul(argv[3]),
               (unsigned)std::stoul(argv[4])};
    blockDim = {(unsigned)std::stoul(argv[5]), (unsigned)std::stoul(argv[6]),
                (unsigned)std::stoul(argv[7])};
    pm_dynamic_shared.assign(std::stoul(argv[8]), 0.0f);
    std::vector<Arg> args;
    for (int i = 9; i < argc; ++i) {
        const std::string a = argv[i];
        Arg arg{a[0], a.size() > 2 ? a.substr(2) : std::string()};
        if (arg.kind == 'f' || arg.kind == 'u' || arg.kind == 'b') {
            arg.bytes = read_file(arg.path);
        } else if (arg.kind == 'i' || arg.kind == 'l') {
            arg.value = std::stoull(arg.path);
        } else if (arg.kind == 'x') {
            arg.value = std::stoull(arg.path, nullptr, 16);
        } else if (arg.kind != 'n') {
            std::fprintf(stderr, "bad argument %s\n", a.c_str());
            return 2;
        }
        args.push_back(std::move(arg));
    }
    auto ptr = [&](size_t i) -> void* {
        return args.at(i).kind == 'n' ? nullptr : (void*)args.at(i).bytes.data();
    };
    auto f = [&](size_t i) { return (float*)ptr(i); };
    auto u = [&](size_t i) { return (unsigned int*)ptr(i); };
    auto b = [&](size_t i) { return (unsigned char*)ptr(i); };
    auto i32 = [&](size_t i) { return (unsigned int)args.at(i).value; };
    auto i64 = [&](size_t i) { return args.at(i).value; };
    auto x = [&](size_t i) { return __int_as_float((int)(unsigned int)args.at(i).value); };

    std::function<void()> body;
    if (kernel == "gemm_bias_128") {
        body = [&] { gemm_bias_128(f(0), f(1), f(2), f(3), i32(4), i32(5), i32(6)); };
    } else if (kernel == "gemm_bias_64") {
        body = [&] { gemm_bias_64(f(0), f(1), f(2), f(3), i32(4), i32(5), i32(6)); };
    } else if (kernel == "gemm_bias_32") {
        body = [&] { gemm_bias_32(f(0), f(1), f(2), f(3), i32(4), i32(5), i32(6)); };
    } else if (kernel == "gelu") {
        body = [&] { gelu(f(0), i64(1)); };
    } else if (kernel == "add_inplace") {
        body = [&] { add_inplace(f(0), f(1), i64(2)); };
    } else if (kernel == "embedding_gather") {
        body = [&] { embedding_gather(f(0), u(1), f(2), i64(3), i64(4)); };
    } else if (kernel == "softmax_rows") {
        body = [&] { softmax_rows(f(0), i64(1), i32(2)); };
    } else if (kernel == "layernorm_rows") {
        body = [&] { layernorm_rows(f(0), f(1), f(2), i64(3), i32(4), x(5), x(6)); };
    } else if (kernel == "rmsnorm_rows") {
        body = [&] { rmsnorm_rows(f(0), f(1), i64(2), i32(3), x(4), x(5)); };
    } else if (kernel == "swiglu") {
        body = [&] { swiglu(f(0), f(1), i64(2), i64(3)); };
    } else if (kernel == "rope") {
        body = [&] { rope(f(0), f(1), i64(2), i64(3), i32(4), i32(5)); };
    } else if (kernel == "l2_normalize_rows") {
        body = [&] { l2_normalize_rows(f(0), i64(1), i32(2)); };
    } else if (kernel == "attention") {
        body = [&] {
            attention(f(0), f(1), f(2), b(3), u(4), u(5), f(6), i32(7), i32(8), i32(9), x(10));
        };
    } else if (kernel == "attention_causal") {
        body = [&] {
            attention_causal(f(0), f(1), f(2), f(3), i32(4), i32(5), i32(6), i32(7), i32(8), x(9));
        };
    } else if (kernel == "mean_pool") {
        body = [&] { mean_pool(f(0), b(1), f(2), i32(3), i32(4), i32(5)); };
    } else {
        std::fprintf(stderr, "unknown kernel %s\n", kernel.c_str());
        return 2;
    }

    const unsigned threads = blockDim.x * blockDim.y * blockDim.z;
    for (unsigned bz = 0; bz < gridDim.z; ++bz) {
        for (unsigned by = 0; by < gridDim.y; ++by) {
            for (unsigned bx = 0; bx < gridDim.x; ++bx) {
                std::barrier<> barrier(threads);
                pm_block_barrier = &barrier;
                std::vector<std::thread> pool;
                for (unsigned t = 0; t < threads; ++t) {
                    pool.emplace_back([&, t] {
                        blockIdx = {bx, by, bz};
                        threadIdx = {t % blockDim.x, t / blockDim.x % blockDim.y,
                                     t / (blockDim.x * blockDim.y)};
                        body();
                        // A thread that returned early no longer takes part in barriers.
                        barrier.arrive_and_drop();
                    });
                }
                for (auto& th : pool) {
                    th.join();
                }
            }
        }
    }
    for (auto& arg : args) {
        if (arg.kind == 'f') {
            std::ofstream out(arg.path, std::ios::binary | std::ios::trunc);
            out.write((const char*)arg.bytes.data(), (std::streamsize)arg.bytes.size());
        }
    }
    return 0;
}
