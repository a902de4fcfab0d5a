#!/usr/bin/env python3
"""Writes a GGUF memory fixture for locara-pressure-bench: NOT a real model.

The file is a llama-architecture model of a requested size (default 3 GiB)
whose weights are random Q4_0 blocks, with the tokenizer and chat template of
SmolLM2 135M copied in, so that llama.cpp loads it and it chats. Its answers
are noise. It exists so that a Locara daemon can hold a large share of the
machine's memory in the pressure benchmark, where only two tiny real models
(135M and 270M parameters) can be fetched.

On x86 (AVX2 and later), llama.cpp repacks Q4_0 weights at load into buffers
of its own, so a worker holding this model is charged about the file's size
as anonymous memory (its footprint), not only as mapped file pages that the
kernel can drop. The nibbles are random so that the memory does not compress
(zswap) or deduplicate either.

    python3 scripts/bench-model.py --size 3GiB
    target/debug/locara-pressure-bench --model ~/.cache/locara-bench-model/bench-q4_0-3GiB.gguf

Shapes are those of a 7B llama (n_embd 4096, 32 heads, 8 K/V heads, n_ff
11008) with SmolLM2's vocabulary (49152 tokens); the number of layers is what
reaches the size. It needs the `gguf` package (llama.cpp's GGUF reader and
writer); run with a Python that lacks it, the script installs it into the
test virtual environment ($LOCARA_TEST_HOME/venv, by default
~/.cache/locara-test/venv) and runs again there.
"""

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

# The gguf package's version this script was written against.
GGUF_VERSION = "0.19.0"

# Q4_0: 32 weights per block, stored as an f16 scale and 16 bytes of nibbles
# (ggml's block_q4_0); a weight is (nibble - 8) * scale.
QK4_0 = 32
Q4_0_BLOCK_BYTES = 2 + QK4_0 // 2

# A 7B llama's shape; SmolLM2's vocabulary, whose tokenizer is copied.
N_EMBD = 4096
N_HEAD = 32
N_HEAD_KV = 8
N_FF = 11008
N_VOCAB = 49152
# The context the file claims it was trained for, tokens: the daemon sizes
# its K/V pool within it.
CONTEXT_LENGTH = 4096
ROPE_FREQ_BASE = 10000.0
RMS_EPS = 1e-5

# The standard deviation of a nibble less 8, for nibbles uniform in 0..15:
# sqrt((16^2 - 1) / 12). A tensor's scale makes its weights' standard
# deviation 1 / sqrt(fan-in), so activations stay near unit size through the
# layers and the logits stay finite.
NIBBLE_STD = ((16 * 16 - 1) / 12) ** 0.5

# Bytes of metadata (mostly SmolLM2's 49152 tokens and 48900 merges) and
# padding, for the layer count; the actual size is printed.
METADATA_ALLOWANCE = 2 << 20

UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
         "g": 1 << 30, "gib": 1 << 30, "gb": 1 << 30, "t": 1 << 40, "tib": 1 << 40}


def test_home() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(os.environ.get("LOCARA_TEST_HOME", cache / "locara-test"))


def ensure_gguf() -> None:
    """Runs this script again in the test venv, with gguf installed, when
    this Python lacks it."""
    try:
        import gguf  # noqa: F401
        import numpy  # noqa: F401
        return
    except ImportError:
        pass
    venv = test_home() / "venv"
    python = venv / "bin" / "python"
    if Path(sys.executable).resolve() == python.resolve() and os.environ.get("LOCARA_BENCH_MODEL_REEXEC"):
        sys.exit(f"bench-model.py: the gguf package is still missing from {venv} after installing it")
    if not python.exists():
        print(f"bench-model.py: creating {venv}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    probe = subprocess.run([str(python), "-c", "import gguf, numpy"], capture_output=True)
    if probe.returncode != 0:
        print(f"bench-model.py: installing gguf=={GGUF_VERSION} into {venv}", file=sys.stderr)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", f"gguf=={GGUF_VERSION}"],
                       check=True)
    env = dict(os.environ, LOCARA_BENCH_MODEL_REEXEC="1")
    os.execve(str(python), [str(python), os.path.abspath(__file__), *sys.argv[1:]], env)


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 3GiB or 512MiB")
    size = int(float(m.group(1)) * UNITS[m.group(2).lower()])
    if size < 256 << 20:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 256MiB (one layer is about 95 MiB)")
    return size


def size_label(size: int) -> str:
    if size % (1 << 30) == 0:
        return f"{size >> 30}GiB"
    return f"{size >> 20}MiB"


def q4_0_bytes(rows: int, cols: int) -> int:
    return rows * (cols // QK4_0) * Q4_0_BLOCK_BYTES


def layer_bytes() -> int:
    head_dim = N_EMBD // N_HEAD
    kv = N_HEAD_KV * head_dim
    return (q4_0_bytes(N_EMBD, N_EMBD) * 2      # attn_q, attn_output
            + q4_0_bytes(kv, N_EMBD) * 2        # attn_k, attn_v
            + q4_0_bytes(N_FF, N_EMBD) * 2      # ffn_gate, ffn_up
            + q4_0_bytes(N_EMBD, N_FF)          # ffn_down
            + 2 * N_EMBD * 4)                   # attn_norm, ffn_norm (f32)


def fixed_bytes() -> int:
    # token_embd and output (Q4_0), output_norm (f32).
    return 2 * q4_0_bytes(N_VOCAB, N_EMBD) + N_EMBD * 4


def layers_for(size: int) -> int:
    return max(1, round((size - fixed_bytes() - METADATA_ALLOWANCE) / layer_bytes()))


def random_q4_0(rng, rows: int, cols: int):
    """A Q4_0 tensor of `rows` rows of `cols` weights, as ggml stores it:
    each block an f16 scale and 16 bytes of random nibbles."""
    import numpy as np
    blocks = rows * (cols // QK4_0)
    data = rng.integers(0, 256, size=(blocks, Q4_0_BLOCK_BYTES), dtype=np.uint8)
    scale = np.float16(1.0 / (NIBBLE_STD * cols ** 0.5))
    data[:, 0:2] = np.frombuffer(scale.tobytes(), dtype=np.uint8)
    return data.reshape(rows, (cols // QK4_0) * Q4_0_BLOCK_BYTES)


def copy_tokenizer(writer, source: Path) -> int:
    """Copies every tokenizer.* key of `source` (tokens, merges, token types,
    special token ids, chat template) as raw values; the vocabulary's size."""
    from gguf import GGUFReader, GGUFValueType
    reader = GGUFReader(str(source))
    vocab = 0
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        kind = field.types[0]
        if kind == GGUFValueType.ARRAY:
            sub = field.types[-1]
            if sub == GGUFValueType.STRING:
                values = [bytes(field.parts[i]) for i in field.data]
            else:
                values = [field.parts[i].tolist()[0] for i in field.data]
            writer.add_key_value(key, values, kind, sub_type=sub)
            if key == "tokenizer.ggml.tokens":
                vocab = len(values)
        elif kind == GGUFValueType.STRING:
            writer.add_key_value(key, bytes(field.parts[-1]), kind)
        else:
            writer.add_key_value(key, field.parts[-1].tolist()[0], kind)
    return vocab


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Writes a GGUF memory fixture for locara-pressure-bench: a llama-architecture "
                    "model of the requested size with RANDOM Q4_0 weights and SmolLM2's tokenizer. "
                    "It loads and chats, but its answers are noise: it is not a model to use, only "
                    "memory for a daemon to hold (on x86 llama.cpp repacks Q4_0 weights into "
                    "anonymous memory, so a worker holding it is charged about the file's size).",
        epilog="Then: locara-pressure-bench --model PATH (see its --help).")
    parser.add_argument("--size", type=parse_size, default=3 << 30,
                        help="the file's size, e.g. 3GiB or 4500MiB (default 3GiB); layers are "
                             "added to reach it")
    parser.add_argument("--out", type=Path,
                        help="the file to write (default: "
                             "~/.cache/locara-bench-model/bench-q4_0-SIZE.gguf)")
    parser.add_argument("--tokenizer-from", type=Path,
                        default=test_home() / "files" / "smollm2-135m.gguf",
                        help="the GGUF whose tokenizer and chat template are copied (default: "
                             "the test cache's SmolLM2 135M, which scripts/test.sh fetches)")
    parser.add_argument("--seed", type=int, default=0, help="the random weights' seed (default 0)")
    args = parser.parse_args()
    ensure_gguf()

    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType

    if not args.tokenizer_from.is_file():
        sys.exit(f"bench-model.py: no tokenizer source at {args.tokenizer_from} "
                 "(run scripts/test.sh once to fetch the test models, or pass --tokenizer-from)")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    out = args.out or cache / "locara-bench-model" / f"bench-q4_0-{size_label(args.size)}.gguf"
    out.parent.mkdir(parents=True, exist_ok=True)
    n_layer = layers_for(args.size)
    head_dim = N_EMBD // N_HEAD
    kv = N_HEAD_KV * head_dim

    writer = GGUFWriter(None, "llama")
    writer.add_name(f"locara bench fixture {size_label(args.size)} (random Q4_0 weights, not a model)")
    writer.add_description("A memory fixture for locara-pressure-bench: random weights; "
                           "its answers are noise.")
    writer.add_type("model")
    writer.add_context_length(CONTEXT_LENGTH)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(ROPE_FREQ_BASE)
    writer.add_layer_norm_rms_eps(RMS_EPS)
    writer.add_vocab_size(N_VOCAB)
    writer.add_file_type(LlamaFileType.MOSTLY_Q4_0)
    writer.add_quantization_version(2)
    vocab = copy_tokenizer(writer, args.tokenizer_from)
    if vocab != N_VOCAB:
        sys.exit(f"bench-model.py: {args.tokenizer_from} has {vocab} tokens, not {N_VOCAB}")

    # (name, rows, cols) of each Q4_0 matrix; None for an f32 norm of N_EMBD.
    tensors: list[tuple[str, int | None, int | None]] = [("token_embd.weight", N_VOCAB, N_EMBD)]
    for i in range(n_layer):
        b = f"blk.{i}"
        tensors += [
            (f"{b}.attn_norm.weight", None, None),
            (f"{b}.attn_q.weight", N_EMBD, N_EMBD),
            (f"{b}.attn_k.weight", kv, N_EMBD),
            (f"{b}.attn_v.weight", kv, N_EMBD),
            (f"{b}.attn_output.weight", N_EMBD, N_EMBD),
            (f"{b}.ffn_norm.weight", None, None),
            (f"{b}.ffn_gate.weight", N_FF, N_EMBD),
            (f"{b}.ffn_up.weight", N_FF, N_EMBD),
            (f"{b}.ffn_down.weight", N_EMBD, N_FF),
        ]
    tensors += [("output_norm.weight", None, None), ("output.weight", N_VOCAB, N_EMBD)]
    for name, rows, cols in tensors:
        if rows is None:
            writer.add_tensor_info(name, (N_EMBD,), np.dtype(np.float32), N_EMBD * 4)
        else:
            shape = (rows, (cols // QK4_0) * Q4_0_BLOCK_BYTES)
            writer.add_tensor_info(name, shape, np.dtype(np.uint8), shape[0] * shape[1],
                                   raw_dtype=GGMLQuantizationType.Q4_0)

    started = time.monotonic()
    print(f"bench-model.py: writing {out}: {n_layer} layers of n_embd {N_EMBD}, n_ff {N_FF}, "
          f"{N_HEAD} heads ({N_HEAD_KV} K/V), vocabulary {N_VOCAB}, random Q4_0 weights",
          file=sys.stderr)
    partial = out.with_name(out.name + ".partial")
    writer.write_header_to_file(partial)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    rng = np.random.default_rng(args.seed)
    ones = np.ones(N_EMBD, dtype=np.float32)
    for name, rows, cols in tensors:
        writer.write_tensor_data(ones if rows is None else random_q4_0(rng, rows, cols))
    writer.close()
    partial.replace(out)
    size = out.stat().st_size
    print(f"bench-model.py: wrote {out}: {size} bytes ({size / (1 << 30):.2f} GiB) "
          f"in {time.monotonic() - started:.0f} s", file=sys.stderr)
    print(out)


if __name__ == "__main__":
    main()
