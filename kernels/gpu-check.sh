#!/usr/bin/env bash
# Checks the CUDA backend on a GPU machine: CPU-vs-CUDA bit identity of every op, GEMM
# throughput against cuBLAS, MiniLM sentences/s (next to PyTorch's numbers when torch is
# installed), and SmolLM2 decode tokens/s at 1 and 8 streams with the CPU's and CUDA's tokens
# compared. Prints markdown tables and one summary table.
#
#   kernels/gpu-check.sh build   # where Rust is: release-builds the gpu-check binary and the
#                                # kernels unit-test binary and copies both into .device/
#   kernels/gpu-check.sh run     # on the GPU machine (driver + NVRTC, no Rust needed): runs
#                                # the CUDA tests (the ignored GPU ones included), gpu-check,
#                                # and the PyTorch comparison; n/a wherever something is missing
#
# MODEL_DIR: a model directory (scripts/fetch-minilm prints one) for the MiniLM rows.
# SMOLLM2_DIR: SmolLM2-135M-Instruct (scripts/fetch-smollm2 prints it) for the decode rows;
# without either, models of the same shapes with seeded weights stand in (same cost).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE_DIR=.device

# Only the kernels package: it does not depend on RocksDB, so building it alone (rather than
# with --workspace) rebuilds nothing of the other crates and takes a minute, not half an hour.
build() {
    cargo build --release -p kernels --bin gpu-check --locked
    local json tests
    json="$(cargo test --release -p kernels --lib --no-run --locked --message-format=json)"
    tests="$(python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    t = m.get("target", {})
    if (m.get("reason") == "compiler-artifact" and t.get("name") == "kernels"
            and "lib" in t.get("kind", []) and m.get("profile", {}).get("test")
            and m.get("executable")):
        print(m["executable"])
' <<<"$json" | tail -n 1)"
    if [ -z "$tests" ]; then
        echo "gpu-check.sh: cannot find the kernels test binary in cargo's output" >&2
        exit 1
    fi
    mkdir -p "$DEVICE_DIR"
    cp target/release/gpu-check "$DEVICE_DIR/gpu-check"
    cp "$tests" "$DEVICE_DIR/kernels-tests"
    echo "built $DEVICE_DIR/gpu-check and $DEVICE_DIR/kernels-tests"
}

# cudarc (built for the CUDA 12.8 API) looks for libnvrtc.so / .so.12 and libcublas.so /
# .so.12. A CUDA 13 toolkit, or the pip wheels under torch, may only have other versioned
# names: find each library and link it under the names cudarc tries, and put its directory on
# LD_LIBRARY_PATH (NVRTC dlopens its builtins library, cuBLAS needs cublasLt, from there).
find_cuda_libs() {
    local shim dirs lib found dir
    shim="$(mktemp -d)"
    dirs="${LD_LIBRARY_PATH//:/ }"
    for dir in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
        /usr/local/cuda-*/lib64 /usr/local/cuda-*/targets/x86_64-linux/lib; do
        if [ -d "$dir" ]; then dirs="$dirs $dir"; fi
    done
    if command -v python3 >/dev/null; then
        dirs="$dirs $(python3 -c 'import glob, site; print(" ".join(d for s in site.getsitepackages() for d in glob.glob(s + "/nvidia/*/lib")))' 2>/dev/null || true)"
    fi
    for lib in nvrtc cublas; do
        found="$(ldconfig -p 2>/dev/null | awk -v l="lib$lib.so" '$1 ~ "^"l {print $NF; exit}' || true)"
        if [ -z "$found" ]; then
            for dir in $dirs; do
                found="$(ls "$dir"/lib$lib.so* 2>/dev/null | head -n 1 || true)"
                [ -n "$found" ] && break
            done
        fi
        if [ -n "$found" ]; then
            ln -sf "$found" "$shim/lib$lib.so"
            LD_LIBRARY_PATH="$(dirname "$found"):$LD_LIBRARY_PATH"
            echo "using $found for lib$lib"
        else
            echo "lib$lib not found (ldconfig, LD_LIBRARY_PATH, CUDA and pip dirs)"
        fi
    done
    export LD_LIBRARY_PATH="$shim:$LD_LIBRARY_PATH"
}

# PyTorch on the same GPU: torch.matmul (cuBLAS, FP32, TF32 off) at the same shapes, and
# MiniLM with transformers (mean pooling + L2 normalisation, as sentence-transformers does).
torch_check() {
    python3 - "$1" <<'PY'
import os, sys, time
summary = open(sys.argv[1], "a")
def add(section, row, column, value):
    summary.write(f"{section}\t{row}\t{column}\t{value}\n")
import torch
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
dev = torch.device("cuda")
print(f"## PyTorch {torch.__version__} on {torch.cuda.get_device_name(0)}\n")
print("| m×k·k×n | torch.matmul TFLOP/s |\n| --- | ---: |")
for m, k, n, reps in [(4096, 384, 384, 50), (4096, 384, 1536, 30), (4096, 1536, 384, 30),
                      (4096, 4096, 4096, 5)]:
    a = torch.rand(m, k, device=dev) * 2 - 1
    b = torch.rand(k, n, device=dev) * 2 - 1
    torch.matmul(a, b)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        torch.matmul(a, b)
    end.record()
    torch.cuda.synchronize()
    tflops = 2 * m * k * n * reps / (start.elapsed_time(end) / 1e3) / 1e12
    shape = f"{m}×{k}·{k}×{n}"
    print(f"| {shape} | {tflops:.2f} |")
    add("gemm TFLOP/s", shape, "torch.matmul", f"{tflops:.2f}")
print()
model_dir = os.environ.get("MODEL_DIR")
if not model_dir:
    print("MiniLM (torch): n/a (set MODEL_DIR)\n")
    sys.exit(0)
try:
    from transformers import AutoModel, AutoTokenizer
except ImportError as e:
    print(f"MiniLM (torch): n/a ({e})\n")
    sys.exit(0)
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModel.from_pretrained(model_dir).to(dev).eval()
print("| batch | torch cuda sentences/s |\n| ---: | ---: |")
for batch, runs in [(1, 20), (32, 5)]:
    texts = [f"Sentence {i}: validators re-execute sampled jobs and compare the output hash "
             "bit for bit with what the inference node signed." for i in range(batch)]
    def embed():
        enc = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt").to(dev)
        with torch.no_grad():
            out = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        pooled = (out * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=1).cpu()
    embed()
    t = time.perf_counter()
    for _ in range(runs):
        embed()
    rate = batch * runs / (time.perf_counter() - t)
    print(f"| {batch} | {rate:.1f} |")
    add("MiniLM sentences/s", f"batch {batch}", "torch cuda (transformers)", f"{rate:.1f}")
print()
PY
}

# One table from the section/row/column/value lines: a column per source, n/a where missing.
print_summary() {
    python3 - "$1" <<'PY'
import sys
rows, cols = {}, {}
for line in open(sys.argv[1]):
    parts = line.rstrip("\n").split("\t")
    if len(parts) != 4:
        continue
    section, row, col, value = parts
    rows.setdefault(section, {}).setdefault(row, {})[col] = value
    cols.setdefault(section, {})[col] = None
print("## Summary\n")
for section, table in rows.items():
    names = list(cols[section])
    print(f"| {section} | " + " | ".join(names) + " |")
    print("| --- |" + " ---: |" * len(names))
    for row, values in table.items():
        print(f"| {row} | " + " | ".join(values.get(c, "n/a") for c in names) + " |")
    print()
PY
}

run() {
    if [ ! -x "$DEVICE_DIR/gpu-check" ] || [ ! -x "$DEVICE_DIR/kernels-tests" ]; then
        echo "gpu-check.sh: run 'kernels/gpu-check.sh build' first (where Rust is)" >&2
        exit 1
    fi
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}"
    find_cuda_libs
    local summary status=0
    summary="$(mktemp)"
    # The host-emulation tests need a C++20 compiler and no GPU: CI runs them, not this.
    echo "## Tests (backend::cuda, GPU tests included)"
    if "$DEVICE_DIR/kernels-tests" --include-ignored --test-threads=1 backend::cuda:: \
        --skip host_emulated; then
        echo -e "tests\tbackend::cuda\tresult\tpassed" >>"$summary"
    else
        echo -e "tests\tbackend::cuda\tresult\tFAILED" >>"$summary"
        status=1
    fi
    echo
    "$DEVICE_DIR/gpu-check" --summary "$summary" || status=1
    if command -v python3 >/dev/null && python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
        torch_check "$summary" || echo "PyTorch comparison failed: n/a"
    else
        echo "PyTorch: n/a (torch with CUDA not importable)"
    fi
    echo
    if command -v python3 >/dev/null; then
        print_summary "$summary"
    else
        echo "## Summary (section, row, column, value)"
        cat "$summary"
    fi
    rm -f "$summary"
    return "$status"
}

case "${1:-}" in
build) build ;;
run) run ;;
*)
    echo "usage: kernels/gpu-check.sh build|run" >&2
    exit 2
    ;;
esac
