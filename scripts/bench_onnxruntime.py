"""proofmesh's exact CPU kernels against ONNX Runtime on all-MiniLM-L6-v2, same weights, same
sentences, same run. Started by scripts/bench-onnxruntime, which makes the virtualenv, fetches
the model and builds the proofmesh binary; see there for usage.

The ONNX model is built here, directly from model.safetensors with onnx.helper, in the layout a
Hugging Face BertModel export has (so ONNX Runtime's BERT fusions recognise it), plus the
sentence-transformers head (mean pooling over the attention mask, L2 normalisation). Chosen over
torch.onnx.export because it needs no torch (a CPU torch + transformers + sentence-transformers
stack is several hundred MiB of wheels for a one-off export), reads exactly the tensors proofmesh
reads, and the agreement check below (cosine >= 0.99999 on every sentence, both graphs, both
batch sizes) shows that the graph computes the same function. ORT's
transformer optimizer (onnxruntime.transformers.optimizer, model_type "bert") then writes the
fused graph (EmbedLayerNormalization, Attention, SkipLayerNormalization, BiasGelu) a
performance-minded user would run; the faster of the plain and the fused graph is timed at
each batch size.

Timed path on both sides: text -> token ids -> encoder -> pooling -> normalised embedding, all
64 sentences per pass, in runs of B. ORT: `tokenizers` on the model's tokenizer.json
(truncation 256 as sentence_bert_config.json says, padding to the longest text of each run),
one InferenceSession with intra_op_num_threads=2, inter_op_num_threads=1, ORT_ENABLE_ALL,
CPUExecutionProvider. proofmesh: kernels/examples/minilm-throughput.rs (CpuBackend, which uses
every core: 2 here), run as a subprocess in between, so the two alternate under the same
machine conditions.
"""

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file
from tokenizers import Tokenizer

# Bump when the graph below changes: it is part of the cache key.
GRAPH_VERSION = "bert-st-v2"
MIN_COSINE = 0.99999
MAX_SEQ_LEN = 256


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_graph(model_dir):
    """all-MiniLM-L6-v2 (BertModel + mean pooling + normalize) as an ONNX graph, opset 17."""
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["model_type"] == "bert", cfg["model_type"]
    assert cfg.get("hidden_act", "gelu") == "gelu", cfg["hidden_act"]
    assert cfg.get("position_embedding_type", "absolute") == "absolute"
    w = load_file(os.path.join(model_dir, "model.safetensors"))
    hidden = cfg["hidden_size"]
    heads = cfg["num_attention_heads"]
    head_dim = hidden // heads
    eps = float(cfg["layer_norm_eps"])
    layers = cfg["num_hidden_layers"]

    inits = []
    nodes = []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(op, inputs, name, **attrs):
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def f32(x):
        return np.asarray(x, dtype=np.float32)

    def linear(x, prefix, out):
        # torch.nn.Linear as exported: MatMul by the transposed weight, then the bias.
        wt = const(prefix + ".weight_t", f32(w[prefix + ".weight"]).T.copy())
        b = const(prefix + ".bias", f32(w[prefix + ".bias"]))
        mm = node("MatMul", [x, wt], out + "_mm")
        return node("Add", [b, mm], out)

    def layernorm(x, prefix, out):
        g = const(prefix + ".weight", f32(w[prefix + ".weight"]))
        b = const(prefix + ".bias", f32(w[prefix + ".bias"]))
        return node("LayerNormalization", [x, g, b], out, axis=-1, epsilon=eps)

    # Embeddings: word + token type + position, then LayerNorm.
    word = node(
        "Gather",
        [const("word_embeddings", f32(w["embeddings.word_embeddings.weight"])), "input_ids"],
        "emb_word",
    )
    tt = node(
        "Gather",
        [
            const("token_type_embeddings", f32(w["embeddings.token_type_embeddings.weight"])),
            "token_type_ids",
        ],
        "emb_tt",
    )
    shape = node("Shape", ["input_ids"], "ids_shape")
    seq = node("Gather", [shape, const("one_i64", np.array(1, np.int64))], "seq_len")
    seq1 = node("Unsqueeze", [seq, const("axes0", np.array([0], np.int64))], "seq_len_1")
    max_pos = cfg["max_position_embeddings"]
    pos_ids = node(
        "Slice",
        [
            const("position_ids", np.arange(max_pos, dtype=np.int64).reshape(1, max_pos)),
            const("zero_1d", np.array([0], np.int64)),
            seq1,
            const("axes1", np.array([1], np.int64)),
        ],
        "pos_ids",
    )
    pos = node(
        "Gather",
        [const("position_embeddings", f32(w["embeddings.position_embeddings.weight"])), pos_ids],
        "emb_pos",
    )
    e = node("Add", [word, tt], "emb_word_tt")
    e = node("Add", [e, pos], "emb_sum")
    x = layernorm(e, "embeddings.LayerNorm", "emb_out")

    # Additive attention mask [B, 1, 1, S]: 0 where attended, -10000 on padding.
    # Two Unsqueezes, as exported from torch (`mask[:, None, None, :]`): ORT's attention fusion
    # matches that chain.
    m = node("Unsqueeze", ["attention_mask", "axes1"], "mask_3d")
    m = node("Unsqueeze", [m, const("axes2", np.array([2], np.int64))], "mask_4d")
    m = node("Cast", [m], "mask_f", to=TensorProto.FLOAT)
    m = node("Sub", [const("one_f", f32(1.0)), m], "mask_inv")
    mask = node("Mul", [m, const("mask_neg", f32(-10000.0))], "mask_add")

    split_heads = const("split_heads", np.array([0, 0, heads, head_dim], np.int64))
    merge_heads = const("merge_heads", np.array([0, 0, hidden], np.int64))
    scale = const("sqrt_head_dim", f32(np.sqrt(head_dim)))
    sqrt2 = const("sqrt2", f32(np.sqrt(2.0)))
    one = const("gelu_one", f32(1.0))
    half = const("gelu_half", f32(0.5))
    for i in range(layers):
        p = f"encoder.layer.{i}"
        n = f"l{i}_"
        q = linear(x, p + ".attention.self.query", n + "q")
        k = linear(x, p + ".attention.self.key", n + "k")
        v = linear(x, p + ".attention.self.value", n + "v")
        q = node("Reshape", [q, split_heads], n + "q_r")
        q = node("Transpose", [q], n + "q_t", perm=[0, 2, 1, 3])
        k = node("Reshape", [k, split_heads], n + "k_r")
        k = node("Transpose", [k], n + "k_t", perm=[0, 2, 3, 1])
        v = node("Reshape", [v, split_heads], n + "v_r")
        v = node("Transpose", [v], n + "v_t", perm=[0, 2, 1, 3])
        s = node("MatMul", [q, k], n + "scores")
        s = node("Div", [s, scale], n + "scores_scaled")
        s = node("Add", [s, mask], n + "scores_masked")
        s = node("Softmax", [s], n + "probs", axis=-1)
        c = node("MatMul", [s, v], n + "ctx")
        c = node("Transpose", [c], n + "ctx_t", perm=[0, 2, 1, 3])
        c = node("Reshape", [c, merge_heads], n + "ctx_r")
        a = linear(c, p + ".attention.output.dense", n + "attn_out")
        a = node("Add", [a, x], n + "attn_res")
        x = layernorm(a, p + ".attention.output.LayerNorm", n + "attn_ln")
        h = linear(x, p + ".intermediate.dense", n + "ffn_in")
        # Exact GELU, x * 0.5 * (1 + erf(x / sqrt 2)), as exported from torch.
        g = node("Div", [h, sqrt2], n + "gelu_div")
        g = node("Erf", [g], n + "gelu_erf")
        g = node("Add", [g, one], n + "gelu_add")
        g = node("Mul", [h, g], n + "gelu_mul")
        g = node("Mul", [g, half], n + "gelu")
        o = linear(g, p + ".output.dense", n + "ffn_out")
        o = node("Add", [o, x], n + "ffn_res")
        x = layernorm(o, p + ".output.LayerNorm", n + "out")

    # sentence-transformers: mean over attended tokens, then x / max(|x|, 1e-12).
    mk = node("Unsqueeze", ["attention_mask", const("axes_last", np.array([-1], np.int64))], "pool_m")
    mk = node("Cast", [mk], "pool_mf", to=TensorProto.FLOAT)
    summed = node("Mul", [x, mk], "pool_masked")
    summed = node("ReduceSum", [summed, const("axes_seq", np.array([1], np.int64))], "pool_sum", keepdims=0)
    count = node("ReduceSum", [mk, "axes_seq"], "pool_count", keepdims=0)
    count = node("Max", [count, const("min_count", f32(1e-9))], "pool_count_c")
    mean = node("Div", [summed, count], "pool_mean")
    norm = node("ReduceL2", [mean], "l2", axes=[1], keepdims=1)  # axes: an attribute until opset 18
    norm = node("Max", [norm, const("min_norm", f32(1e-12))], "l2_c")
    out = node("Div", [mean, norm], "sentence_embedding")

    ints = lambda name: helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "seq"])
    graph = helper.make_graph(
        nodes,
        "all-minilm-l6-v2",
        [ints("input_ids"), ints("attention_mask"), ints("token_type_ids")],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", hidden])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, heads, hidden


def atomic_save(model, path):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".onnx.partial")
    os.close(fd)
    onnx.save(model, tmp)
    os.replace(tmp, path)


def onnx_models(model_dir, cache):
    """(plain, fused) ONNX paths, built once per weights file and graph version."""
    key = sha256_file(os.path.join(model_dir, "model.safetensors"))
    d = os.path.join(cache, f"{key}-{GRAPH_VERSION}-ort{ort.__version__}")
    os.makedirs(d, exist_ok=True)
    plain = os.path.join(d, "model.onnx")
    fused = os.path.join(d, "model-ort-optimized.onnx")
    stats = os.path.join(d, "fusions.json")
    if not os.path.exists(plain):
        model, heads, hidden = build_graph(model_dir)
        atomic_save(model, plain)
        log(f"wrote {plain}")
    if not os.path.exists(fused) or not os.path.exists(stats):
        from onnxruntime.transformers.optimizer import optimize_model

        with open(os.path.join(model_dir, "config.json")) as f:
            cfg = json.load(f)
        opt = optimize_model(
            plain,
            model_type="bert",
            num_heads=cfg["num_attention_heads"],
            hidden_size=cfg["hidden_size"],
            # The Python fusions alone: opt_level 1 and up first run ORT's own graph optimizer
            # through a helper that imports torch (for its version only). The session applies
            # ORT_ENABLE_ALL to the result at load anyway.
            opt_level=0,
        )
        counts = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
        atomic_save(opt.model, fused)
        with open(stats, "w") as f:
            json.dump(counts, f)
        log(f"wrote {fused}")
    with open(stats) as f:
        counts = json.load(f)
    return plain, fused, counts


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class OrtEncoder:
    def __init__(self, path, tokenizer_path):
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}
        tok = Tokenizer.from_file(tokenizer_path)
        tok.no_padding()
        tok.enable_truncation(MAX_SEQ_LEN)
        tok.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest text of each call
        self.tok = tok

    def embed(self, texts):
        enc = self.tok.encode_batch(texts)
        feed = {
            "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
        }
        feed = {k: v for k, v in feed.items() if k in self.inputs}
        return self.session.run(None, feed)[0]

    def embed_all(self, sentences, batch):
        return np.concatenate(
            [self.embed(sentences[i : i + batch]) for i in range(0, len(sentences), batch)]
        )

    def measure(self, sentences, batch, passes):
        """Warm-up, then the median of `passes` timed passes over all sentences (seconds)."""
        self.embed_all(sentences, batch)
        times = []
        for _ in range(passes):
            t = time.perf_counter()
            self.embed_all(sentences, batch)
            times.append(time.perf_counter() - t)
        return statistics.median(times), times


def ours(binary, model_dir, sentences_file, batch, passes, embeddings=None):
    cmd = [
        binary,
        "--model-dir", model_dir,
        "--sentences", sentences_file,
        "--batch", str(batch),
        "--rounds", str(passes),
    ]
    if embeddings:
        cmd += ["--embeddings", embeddings]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class OtherLoad:
    """Share of the machine's CPU time that other processes used between start() and stop():
    busy time from /proc/stat less this process's and its children's CPU time. Another
    process on 2 cores skews both systems, ORT's spinning thread pool the most."""

    def start(self):
        self.t = time.perf_counter()
        self.busy = self._busy()
        self.own = self._own()

    def stop(self):
        wall = time.perf_counter() - self.t
        if self.busy is None or wall <= 0:
            return None
        other = (self._busy() - self.busy) - (self._own() - self.own)
        return max(0.0, other / (wall * (os.cpu_count() or 1)))

    @staticmethod
    def _busy():
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own():
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system


def min_cosine(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    cos = np.sum(a.astype(np.float64) * b.astype(np.float64), axis=1)
    return float(cos.min()), int(cos.argmin())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--sentences", required=True)
    ap.add_argument("--binary", required=True)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--retries", type=int, default=3)
    args = ap.parse_args()

    with open(args.sentences) as f:
        sentences = [l.rstrip("\n") for l in f if l.strip()]
    t0 = time.perf_counter()
    plain, fused, fusions = onnx_models(args.model_dir, args.cache)
    log(f"ONNX models ready in {time.perf_counter() - t0:.1f} s; ORT fusions: {fusions}")
    tokenizer = os.path.join(args.model_dir, "tokenizer.json")
    encoders = {"plain": OrtEncoder(plain, tokenizer), "ort-optimized": OrtEncoder(fused, tokenizer)}
    real_tokens = sum(
        sum(e.attention_mask) for e in encoders["plain"].tok.encode_batch(sentences)
    )

    # Agreement: every ORT variant at both batch sizes against ours (batch 1 and 32).
    with tempfile.TemporaryDirectory() as tmp:
        ref = {}
        for batch in (1, 32):
            path = os.path.join(tmp, f"ours-{batch}.json")
            r = ours(args.binary, args.model_dir, args.sentences, batch, 1, embeddings=path)
            with open(path) as f:
                ref[batch] = np.array(json.load(f)["embeddings"], dtype=np.float32)
            if r["tokens"] != real_tokens:
                sys.exit(f"token counts differ: proofmesh {r['tokens']}, tokenizers {real_tokens}")
    worst = (1.0, "", 0)
    for name, enc in encoders.items():
        for batch in (1, 32):
            got = enc.embed_all(sentences, batch)
            for ob in (1, 32):
                c, i = min_cosine(got, ref[ob])
                if c < worst[0]:
                    worst = (c, f"ORT {name} batch {batch} vs proofmesh batch {ob}", i)
    print(f"agreement: min cosine {worst[0]:.9f} over {len(sentences)} sentences "
          f"x ORT plain/optimized x batch 1/32 (worst: {worst[1] or '-'}, sentence {worst[2] + 1})")
    if worst[0] < MIN_COSINE:
        sys.exit(f"agreement FAILED: min cosine {worst[0]} < {MIN_COSINE}")

    # Which ORT graph is faster, per batch size (a short trial each).
    choice = {}
    for batch in (1, 32):
        trial = {name: enc.measure(sentences, batch, 3)[0] for name, enc in encoders.items()}
        choice[batch] = min(trial, key=trial.get)
        log(f"batch {batch} ORT trial (s per 64 sentences): "
            + ", ".join(f"{k} {v:.4f}" for k, v in trial.items()) + f" -> {choice[batch]}")

    results = {("ort", b): [] for b in (1, 32)}
    results.update({("ours", b): [] for b in (1, 32)})
    load = OtherLoad()
    quietest = []
    for rnd in range(args.rounds):
        for batch in (1, 32):
            # A pair measured while other processes took more than 5% of the CPUs is measured
            # again (up to --retries times); the quietest attempt counts.
            attempts = []
            for attempt in range(1 + args.retries):
                load.start()
                sec, _ = encoders[choice[batch]].measure(sentences, batch, args.passes)
                r = ours(args.binary, args.model_dir, args.sentences, batch, args.passes)
                other = load.stop()
                attempts.append((other or 0.0, sec, r["seconds"]))
                log(f"round {rnd + 1} batch {batch}: ORT {len(sentences) / sec:.1f} sent/s, "
                    f"proofmesh {r['sentences_per_s']:.1f} sent/s"
                    + ("" if other is None else f" (other processes: {100 * other:.0f}% CPU)"))
                if other is None or other <= 0.05:
                    break
            _, sec, ours_sec = min(attempts)
            results[("ort", batch)].append(sec)
            results[("ours", batch)].append(ours_sec)
            quietest.append(min(attempts)[0])
    other = max(quietest) if quietest else None

    n = len(sentences)
    med = {k: statistics.median(v) for k, v in results.items()}
    print()
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs); ONNX Runtime {ort.__version__} "
          f"(CPUExecutionProvider, 2 intra-op threads); proofmesh CpuBackend (exact mode)")
    print(f"{n} sentences, {real_tokens} real tokens; each figure the median of {args.rounds} "
          f"alternating rounds, each round the median of {args.passes} passes after a warm-up")
    if other is not None:
        warn = " -- WARNING: the machine was not idle, figures are skewed" if other > 0.05 else ""
        print(f"other processes used at most {100 * other:.1f}% of the CPUs during any counted "
              f"round{warn}")
    print()
    print("| system | batch 1 sentences/s | batch 1 tokens/s | batch 32 sentences/s | batch 32 tokens/s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    rows = [
        (f"ONNX Runtime {ort.__version__} (b1: {choice[1]}, b32: {choice[32]})", "ort"),
        ("proofmesh exact (CpuBackend)", "ours"),
    ]
    for label, key in rows:
        cells = []
        for batch in (1, 32):
            s = med[(key, batch)]
            cells += [f"{n / s:.1f}", f"{real_tokens / s:.0f}"]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print()
    for batch in (1, 32):
        ratios = [o / p for o, p in zip(results[("ort", batch)], results[("ours", batch)])]
        print(f"batch {batch}: proofmesh / ORT = {statistics.median(ratios):.2f}x "
              f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)}; "
              f"spread {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
