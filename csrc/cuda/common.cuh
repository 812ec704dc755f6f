/* Device helpers shared by the CUDA kernels (csrc/cuda/*.cu): element types, tensor-core mma
 * m16n8k16 with f32 accumulation, ldmatrix, cp.async, float keys for radix selection. */
#pragma once

#include "dhsa.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace dhsa {

constexpr uint16_t NEG_INF_F16 = 0xFC00u;

__device__ __forceinline__ float f16_bits_to_f32(uint16_t h) { return __half2float(__ushort_as_half(h)); }

template <typename T> __device__ __forceinline__ float to_f32(T x);
template <> __device__ __forceinline__ float to_f32<half>(half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

/* Two floats packed as one 32-bit register of the element type (low half = a). */
template <typename T> __device__ __forceinline__ uint32_t pack2(float a, float b);
template <> __device__ __forceinline__ uint32_t pack2<half>(float a, float b) {
    half2 h = __floats2half2_rn(a, b);
    return *reinterpret_cast<uint32_t *>(&h);
}
template <> __device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float a, float b) {
    __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<uint32_t *>(&h);
}

/* D (16x8 f32) += A (16x16, row) * B (16x8, col). */
template <typename T> __device__ __forceinline__ void mma16816(float *c, const uint32_t *a, const uint32_t *b);
template <> __device__ __forceinline__ void mma16816<half>(float *c, const uint32_t *a, const uint32_t *b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float *c, const uint32_t *a, const uint32_t *b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t *r, const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t *r, const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

/* 16-byte global -> shared copy; src_bytes 0 writes zeros (keys past the end of a list). */
__device__ __forceinline__ void cp_async16(void *dst, const void *src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

/* Order-preserving map of a float to an unsigned key (larger float -> larger key). */
__device__ __forceinline__ uint32_t float_key(float x) {
    const uint32_t u = __float_as_uint(x);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* ALiBi slope of head h, as ggml defines it. */
__device__ __forceinline__ float alibi_slope(float max_bias, int64_t n_head, int64_t h) {
    if (max_bias <= 0.0f) return 1.0f;
    const uint32_t n_head_log2 = 1u << (uint32_t)floorf(log2f((float)n_head));
    const float m0 = powf(2.0f, -(max_bias) / n_head_log2);
    const float m1 = powf(2.0f, -(max_bias / 2.0f) / n_head_log2);
    return (uint32_t)h < n_head_log2 ? powf(m0, (float)(h + 1)) : powf(m1, (float)(2 * (h - n_head_log2) + 1));
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

/* ---- launch wrappers (one .cu file each; ctx.cu strings them together) ------------------------ */

/* Everything the attention kernel reads. keys == NULL: dense, keys [0, kend) of each CTA, where
 * kend comes from `last` (the last finite key of each mask row; NULL: n_kv). */
struct AttnArgs {
    dhsa_op op;
    const int32_t *last; /* [m3][m2][n_q] or NULL */
    const int32_t *keys; /* [problem][key_stride] */
    const int32_t *counts;
    int64_t key_stride;
    int64_t q_block, n_blocks, n_sel;
    unsigned long long *counters; /* [0]: keys attended */
};

cudaError_t launch_attention(const AttnArgs &a, cudaStream_t s);
cudaError_t launch_frontier(const dhsa_op &op, int32_t *last, cudaStream_t s);
cudaError_t launch_count_visible(const dhsa_op &op, unsigned long long *counter, cudaStream_t s);
int attention_supported(const dhsa_op &op);
size_t attention_smem_bytes(const dhsa_op &op);

/* Selection of one sequence i3 (see select.cu). */
struct SelArgs {
    dhsa_op op; /* q, k of the whole op; i3 picks the sequence */
    dhsa_cuda_select sel;
    int64_t i3;
    int64_t q_block, n_blocks, n_sel;
    int64_t max_chunks;    /* capacity of starts - 1 and of each scores row */
    int64_t seg_len, n_seg; /* dynamic chunking: segment length and count (upper bound) */
    const int32_t *last;   /* frontier rows of mask head 0 of this sequence, or NULL (no mask) */
    int32_t *blo, *bhi;    /* [n_blocks] */
    int32_t *horizon;      /* scalar of this sequence */
    float *bscore;         /* [n_kv] */
    int32_t *exits, *cnts; /* [n_seg][chunk_max] */
    int32_t *seg_entry, *seg_off; /* [n_seg + 1] */
    int32_t *starts;       /* [max_chunks + 1] */
    int32_t *n_chunks;     /* scalar */
    float *qmeans;         /* [n_blocks][n_head_kv][dk] */
    float *scores;         /* [n_blocks][n_sel][max_chunks] */
    uint8_t *taken;        /* [n_blocks][n_sel][max_chunks] */
    int32_t *keys;         /* [n_blocks][n_sel][budget] of this sequence */
    int32_t *counts;       /* [n_blocks][n_sel] of this sequence */
    unsigned long long *counters; /* [2]: sparse, [3]: dense blocks */
};

cudaError_t launch_selection(const SelArgs &a, cudaStream_t s);

} // namespace dhsa
