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

/* Tile sizes, for tests and benchmarks. */
int64_t dhsa_kv_tile(void);
int64_t dhsa_q_tile(const dhsa_op *op, int64_t q_tile_limit);
const char *dhsa_simd_name(void);

#ifdef __cplusplus
}
#endif

#endif
