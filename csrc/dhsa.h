/* dhsa kernels: the whole C ABI between the Rust plugin and the CPU (and CUDA) kernels.
 *
 * The op is ggml's GGML_OP_FLASH_ATTN_EXT, described by plain pointers and byte strides so the
 * kernels need no ggml header:
 *   q    F32                    [DK, n_q,  n_head,    ne3]   rows contiguous, any strides
 *   k    f32/f16/bf16/q8_0      [DK, n_kv, n_head_kv, ne3]   rows contiguous, any strides
 *   v    f32/f16/bf16/q8_0      [DV, n_kv, n_head_kv, ne3]
 *   mask F16 (optional)         [n_kv, n_q, m_ne2, m_ne3]    broadcast over heads and dim 3;
 *                               mask_ne2 == 0 (and mask == NULL) when there is none
 *   sinks F32 (optional)        [n_head]
 *   dst  F32                    [DV, n_head, n_q, ne3]       (permuted, as ggml returns it)
 * out[q,h] = sum_j softmax_j(s_qj) v_j with s_qj = softcap(scale * q.k_j) + slope(h) * mask[q,j];
 * -inf entries are skipped; sinks add exp(sink[h]) to the softmax denominator only; a row whose
 * denominator is 0 is written as zeros. kv head = h / (n_head / n_head_kv).
 *
 * Attention is computed per work unit (sequence i3, kv head, tile of up to q_tile queries) over a
 * list of key spans: dense attention is the plan where every unit's list is [0, n_kv). */
#ifndef DHSA_H
#define DHSA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum dhsa_type { DHSA_F32 = 0, DHSA_F16 = 1, DHSA_BF16 = 2, DHSA_Q8_0 = 3 };

typedef struct dhsa_op {
    const char *q, *k, *v;
    const uint16_t *mask; /* NULL: no mask */
    const float *sinks;   /* NULL: no sinks */
    float *dst;
    int32_t k_type, v_type;
    int64_t dk, dv, n_q, n_kv, n_head, n_head_kv, ne3;
    int64_t mask_ne2, mask_ne3;
    size_t q_nb1, q_nb2, q_nb3;
    size_t k_nb1, k_nb2, k_nb3;
    size_t v_nb1, v_nb2, v_nb3;
    size_t mask_nb1, mask_nb2, mask_nb3;
    size_t dst_nb1, dst_nb2, dst_nb3;
    float scale, max_bias, softcap;
} dhsa_op;

/* A half-open range of key indices [begin, end). */
typedef struct dhsa_span {
    int32_t begin, end;
} dhsa_span;

/* Which keys each query block attends to. Blocks are q_block consecutive queries; a selection
 * group is one kv head (n_sel_groups == n_head_kv) or all of them (n_sel_groups == 1). The spans
 * of (i3, block b, group s) are spans[offsets[i] .. offsets[i+1]) with
 * i = (i3 * n_blocks + b) * n_sel_groups + s; spans are sorted and disjoint. */
typedef struct dhsa_plan {
    int64_t q_block, n_blocks, n_sel_groups;
    const dhsa_span *spans;
    const int64_t *offsets;
} dhsa_plan;

/* Counters a call adds to (atomically, from every thread). */
typedef struct dhsa_counters {
    int64_t keys_visible;  /* (query, head) x keys whose mask entry is finite */
    int64_t keys_attended; /* (query, head) x keys actually scored */
} dhsa_counters;

/* 0 if the kernel computes this op exactly, else a static string saying why not. */
const char *dhsa_op_unsupported(const dhsa_op *op);

/* Floats of scratch each thread needs for this op (bounded by the tile sizes, not by n_q x n_kv). */
int64_t dhsa_attention_scratch_floats(const dhsa_op *op, int64_t q_tile_limit);

/* Computes dst for every query. plan == NULL: dense (every key). scratch holds n_threads blocks of
 * scratch_stride floats, each at least dhsa_attention_scratch_floats(op, q_block or 0). With
 * count_visible, counters->keys_visible is filled (it reads the whole mask). Returns 0 or -1 on
 * bad arguments. */
int dhsa_attention(const dhsa_op *op, const dhsa_plan *plan, int n_threads, float *scratch,
                   int64_t scratch_stride, int count_visible, dhsa_counters *counters);

/* ---- selection kernels (csrc/select.c); i3 picks the sequence (dim 3) ---- */

/* last[q] = index of the last key with a finite mask entry in query row q, over every mask head
 * (-1: none; n_kv - 1 without a mask). */
void dhsa_row_frontier(const dhsa_op *op, int64_t i3, int32_t *last, int n_threads);

/* out[j], j < n: 1 - cos(mean of the head-averaged keys [j-w, j), mean of [j, j+w)); 0 at j = 0. */
void dhsa_boundary_scores(const dhsa_op *op, int64_t i3, int64_t n, int64_t w, float *out, int n_threads);

/* Chunk c = keys [starts[c], starts[c+1]). out[c][kv head][dk] = sum / sqrt(len) when
 * length_normalised, else the mean. */
void dhsa_chunk_keys(const dhsa_op *op, int64_t i3, int64_t n_chunks, const int32_t *starts, int length_normalised,
                     float *out, int n_threads);

/* out[block][kv head][dk]: mean of q over the block's queries and the kv head's query heads. */
void dhsa_query_means(const dhsa_op *op, int64_t i3, int64_t q_block, float *out, int n_threads);

/* out[block][kv head][chunk] = qmeans[block][kv head] . ckeys[chunk][kv head] (unscaled). */
void dhsa_chunk_scores(const dhsa_op *op, int64_t n_blocks, int64_t n_chunks, const float *qmeans, const float *ckeys,
                       float *out, int n_threads);

/* out[block][group][n_kv]: exact softmax probability of each key (keys only, each query-head row
 * normalised to 1), summed over the block's queries and the group's heads. Slow: a dense pass. */
void dhsa_key_mass(const dhsa_op *op, int64_t i3, int64_t q_block, int64_t n_sel_groups, float *out, int n_threads);

/* out[block][q head][chunk] = log sum_{j in chunk} exp(s_j), s_j = softcap(scale * probe . k_j): the
 * log attention mass (unnormalised) that one probe query per block and q head, probes[block][q
 * head][dk] (e.g. the head's mean query over the block), puts on each chunk [starts[c],
 * starts[c+1]). Keys are not masked: callers pass chunks within the visible keys. -inf for an
 * empty chunk. */
void dhsa_probe_chunk_mass(const dhsa_op *op, int64_t i3, int64_t n_blocks, const float *probes, int64_t n_chunks,
                           const int32_t *starts, float *out, int n_threads);

/* out[block][kv head][chunk] = log of the attention mass each chunk gets, summed over the block's
 * query rows (every row_step-th) and the group's heads, when every row's softmax runs over chunk keys rather than keys:
 * row q of head h gives chunk c the weight len_c * exp(softcap(scale * q . ckeys[c][kv head])),
 * normalised over the chunks that start at or before last[q] (its last visible key). ckeys are
 * the chunk mean keys. -inf for a chunk no row sees. */
void dhsa_query_chunk_mass(const dhsa_op *op, int64_t i3, int64_t q_block, int64_t row_step, const int32_t *last, int64_t n_chunks,
                           const int32_t *starts, const float *ckeys, float *out, int n_threads);

/* Tile sizes, for tests and benchmarks. */
int64_t dhsa_kv_tile(void);
int64_t dhsa_q_tile(const dhsa_op *op, int64_t q_tile_limit);
const char *dhsa_simd_name(void);


/* ---- CUDA kernels (csrc/cuda; linked with the cargo feature `cuda`) -------------------------
 * The same op with device pointers (every pointer of dhsa_op addresses memory of one CUDA device).
 * One dhsa_cuda_ctx per device holds a stream and workspaces that grow and are reused, so an op
 * allocates nothing once the workspaces fit. A call runs the whole op on the context's stream:
 * selection (frontier, boundary scores, chunks, chunk scores, per-block picks) and attention, with
 * no host round trip in between; it waits for the stream before returning. */

enum dhsa_cuda_mode { DHSA_CUDA_DENSE = 0, DHSA_CUDA_DHSA = 1, DHSA_CUDA_BLOCK = 2, DHSA_CUDA_STREAMING = 3 };

/* The selection knobs the GPU reads (the meaning of each is that of the Rust Config). */
typedef struct dhsa_cuda_select {
    int32_t mode;           /* enum dhsa_cuda_mode */
    int32_t dynamic_chunks; /* dhsa mode: boundary-score chunks (1) or fixed chunks of chunk_max (0) */
    int32_t shared_heads;   /* one selection for all kv heads */
    int64_t budget, q_block, sink, window, chunk_min, chunk_max, boundary_window, block_size;
} dhsa_cuda_select;

/* What a call did. */
typedef struct dhsa_cuda_result {
    int64_t keys_attended;  /* (query, head) x keys whose finite mask entries were scored */
    int64_t keys_visible;   /* filled when DHSA_CUDA_COUNT_VISIBLE is set */
    int64_t sparse_blocks;  /* (block, group) pairs that attended to a selection */
    int64_t dense_blocks;   /* (block, group) pairs that attended to every visible key */
    float select_ms, attn_ms; /* device time (events) of the two stages */
} dhsa_cuda_result;

enum dhsa_cuda_flags {
    DHSA_CUDA_SYNC_DEVICE = 1,   /* synchronize the whole device first (work of other streams) */
    DHSA_CUDA_COUNT_VISIBLE = 2, /* count visible keys (reads the whole mask) */
};

typedef struct dhsa_cuda_ctx dhsa_cuda_ctx;

/* 0 if the CUDA kernels compute this op exactly with this selection, else why not (static). */
const char *dhsa_cuda_op_unsupported(const dhsa_op *op, const dhsa_cuda_select *sel);
/* CUDA devices visible to this process (0 when there is no driver or device). */
int dhsa_cuda_device_count(void);
/* Name of the device (into buf). Returns 0 or -1. */
int dhsa_cuda_device_name(int device, char *buf, size_t len);
dhsa_cuda_ctx *dhsa_cuda_ctx_new(int device, char *err, size_t err_len);
void dhsa_cuda_ctx_free(dhsa_cuda_ctx *ctx);
/* Computes dst. sel == NULL or sel->mode == DHSA_CUDA_DENSE: exact attention over every key.
 * The mask may live in host memory (llama.cpp's graph input): it is copied to the device first,
 * unless the last call copied the same host mask with the same nonzero mask_epoch (the caller
 * bumps the epoch whenever the host may have rewritten it; 0: always copy).
 * Returns 0, or -1 with a message in err. */
int dhsa_cuda_attention(dhsa_cuda_ctx *ctx, const dhsa_op *op, const dhsa_cuda_select *sel, int flags,
                        int64_t mask_epoch, dhsa_cuda_result *res, char *err, size_t err_len);
/* The keys the last sparse call attended, for tests and the token-sparse baseline: counts[p] and
 * keys[p * cap ..] for every (sequence, block, group) p = (i3 * n_blocks + b) * n_groups + s, sorted.
 * Returns the number of problems (n_problems when the buffers are large enough), or -1. */
int64_t dhsa_cuda_last_selection(dhsa_cuda_ctx *ctx, int32_t *counts, int32_t *keys, int64_t n_problems, int64_t cap,
                                 char *err, size_t err_len);
/* The chunk starts the last sparse call used for its last sequence (n_chunks + 1 values, the last
 * is the horizon). Returns n_chunks + 1, or -1. */
int64_t dhsa_cuda_last_chunks(dhsa_cuda_ctx *ctx, int32_t *starts, int64_t cap, char *err, size_t err_len);

#ifdef __cplusplus
}
#endif

#endif
