#!/usr/bin/env python3
"""Writes a speed-only GGUF model with random Q4_0 weights at Llama-3.1-8B's shape (32 layers,
4096 embd, 32 q / 8 kv heads of 128, ffn 14336, vocab 128256), for timing prefill; its output is
noise. The vocabulary is SentencePiece-style (byte tokens plus placeholders), so any text
tokenizes. Uses gguf-py from the pinned llama.cpp tree:

    PYTHONPATH=$LLAMA_CPP/gguf-py python3 scripts/synth_model.py OUT.gguf [--layers N]

Weights: each Q4_0 block has scale 0.004 and random 4-bit values (weights of std ~0.018); one
random tensor per shape is shared by all layers (the timing does not depend on the values)."""
import argparse
import sys

import numpy as np

try:
    import gguf
except ImportError:
    sys.exit("error: gguf-py not found: set PYTHONPATH to the llama.cpp tree's gguf-py folder")

QK = 32  # Q4_0: 32 weights per block of 2 + 16 bytes
BLOCK_BYTES = 18


def q4_0(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Random Q4_0 rows as raw bytes, shape (rows, cols // 32 * 18)."""
    blocks = rng.integers(0, 256, size=(rows, cols // QK, BLOCK_BYTES), dtype=np.uint8)
    blocks[:, :, 0:2] = np.frombuffer(np.float16(0.004).tobytes(), dtype=np.uint8)
    return blocks.reshape(rows, cols // QK * BLOCK_BYTES)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--ctx", type=int, default=262144, help="context length in the metadata")
    a = ap.parse_args()

    n_embd, n_ff, n_head, n_head_kv, head_dim, n_vocab = 4096, 14336, 32, 8, 128, 128256
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(a.out, "llama")
    w.add_name("dhsa random Llama-3.1-8B-shaped Q4_0 (speed only)")
    w.add_context_length(a.ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(a.layers)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)

    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256
    tokens += [f"tok{i}" for i in range(n_vocab - len(tokens))]
    types += [gguf.TokenType.NORMAL] * (n_vocab - len(types))
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * n_vocab)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    Q4 = gguf.GGMLQuantizationType.Q4_0
    shared = {}

    def quant(rows: int, cols: int) -> np.ndarray:
        if (rows, cols) not in shared:
            shared[(rows, cols)] = q4_0(rows, cols, rng)
        return shared[(rows, cols)]

    norm = np.ones(n_embd, dtype=np.float32)
    w.add_tensor("token_embd.weight", q4_0(n_vocab, n_embd, rng), raw_dtype=Q4)
    for i in range(a.layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", norm)
        w.add_tensor(p + "attn_q.weight", quant(n_embd, n_embd), raw_dtype=Q4)
        w.add_tensor(p + "attn_k.weight", quant(n_head_kv * head_dim, n_embd), raw_dtype=Q4)
        w.add_tensor(p + "attn_v.weight", quant(n_head_kv * head_dim, n_embd), raw_dtype=Q4)
        w.add_tensor(p + "attn_output.weight", quant(n_embd, n_embd), raw_dtype=Q4)
        w.add_tensor(p + "ffn_norm.weight", norm)
        w.add_tensor(p + "ffn_gate.weight", quant(n_ff, n_embd), raw_dtype=Q4)
        w.add_tensor(p + "ffn_up.weight", quant(n_ff, n_embd), raw_dtype=Q4)
        w.add_tensor(p + "ffn_down.weight", quant(n_embd, n_ff), raw_dtype=Q4)
    w.add_tensor("output_norm.weight", norm)
    w.add_tensor("output.weight", q4_0(n_vocab, n_embd, rng), raw_dtype=Q4)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(a.out)


if __name__ == "__main__":
    main()
