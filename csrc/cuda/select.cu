/* DHSA key selection on the GPU for one sequence: the same chunks and picks as the CPU path
 * (csrc/select.c + src/select.rs), with no host round trip. Stages:
 *   bounds        per query block: lowest and highest last-visible key of its rows (mask head 0);
 *                 the horizon (largest of those + 1). horizon <= budget: every block attends densely
 *                 and the later stages return at once.
 *   boundaries    1 - cos(mean key of w keys left, of w keys right) of each position (head-summed)
 *   chunks        the CPU's greedy segmentation (each chunk ends at the first strongest boundary in
 *                 [start + min, start + max]) in parallel: per segment of positions, every possible
 *                 entry start is walked to the segment's end; one CTA stitches the segments; a
 *                 last pass writes the starts. Fixed chunks: every len keys.
 *   scores        query means per block and kv head; chunk keys (sum / sqrt(len), or the mean) and
 *                 their dot products in the CPU's summation order (AVX2 lanes), so the scores are
 *                 bitwise the CPU's
 *   picks         per (block, group): sink and window, then chunks by descending score while they
 *                 fit the budget: a weighted radix select finds the prefix of the order that fits
 *                 whole, then the chunks after it are taken one at a time in order while any fits.
 *                 The kept keys are written as a sorted list. */
#include "common.cuh"

namespace dhsa {

/* ---- bounds ---------------------------------------------------------------------------------- */

__global__ void k_bounds(const int32_t *last, int64_t n_q, int64_t n_kv, int64_t q_block, int32_t *blo, int32_t *bhi,
                         int32_t *horizon) {
    const int64_t b = blockIdx.x;
    const int64_t q0 = b * q_block, q1 = min(n_q, q0 + q_block);
    int lo = INT32_MAX, hi = -1;
    for (int64_t q = q0 + threadIdx.x; q < q1; q += blockDim.x) {
        const int l = last ? last[q] : (int)(n_kv - 1);
        if (l >= 0) {
            lo = min(lo, l);
            hi = max(hi, l);
        }
    }
    __shared__ int s_lo, s_hi;
    if (threadIdx.x == 0) {
        s_lo = INT32_MAX;
        s_hi = -1;
    }
    __syncthreads();
    atomicMin(&s_lo, lo);
    atomicMax(&s_hi, hi);
    __syncthreads();
    if (threadIdx.x == 0) {
        blo[b] = s_hi < 0 ? -1 : s_lo;
        bhi[b] = s_hi;
        atomicMax(horizon, s_hi + 1);
    }
}

/* ---- boundary scores ------------------------------------------------------------------------- */

constexpr int BT = 64; /* positions per CTA */

template <typename T>
__global__ void k_boundary(const dhsa_op op, int64_t i3, const int32_t *horizon_p, int64_t budget, int w, float *out) {
    const int n = *horizon_p;
    if (n <= budget) return;
    const int j0 = blockIdx.x * BT;
    if (j0 >= n) return;
    extern __shared__ float hs[]; /* [BT + 2w][dk]: head-summed keys of [j0 - w, j0 + BT + w) */
    const int dk = (int)op.dk;
    const int r0 = max(0, j0 - w), r1 = min(n, j0 + BT + w);
    const char *kb = op.k + i3 * op.k_nb3;
    /* 8 dimensions per thread with 16-byte loads (rows and strides are 16-byte aligned); the heads
     * are summed in order, as the CPU does */
    const int d8 = dk / 8;
    for (int e = threadIdx.x; e < (r1 - r0) * d8; e += blockDim.x) {
        const int j = r0 + e / d8, d = (e % d8) * 8;
        float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t hk = 0; hk < op.n_head_kv; hk++) {
            const uint4 raw = __ldg(reinterpret_cast<const uint4 *>(kb + j * op.k_nb1 + hk * op.k_nb2 + d * sizeof(T)));
            const T *x = reinterpret_cast<const T *>(&raw);
#pragma unroll
            for (int l = 0; l < 8; l++) acc[l] += to_f32(x[l]);
        }
#pragma unroll
        for (int l = 0; l < 8; l++) hs[(j - r0) * dk + d + l] = acc[l];
    }
    __syncthreads();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    for (int jj = warp; jj < BT; jj += nw) {
        const int j = j0 + jj;
        if (j >= n) break;
        const int a0 = max(0, j - w), b1 = min(n, j + w);
        float ll = 0.0f, rr = 0.0f, lr = 0.0f;
        for (int d = lane; d < dk; d += 32) {
            float l = 0.0f, r = 0.0f;
            for (int i = a0; i < j; i++) l += hs[(i - r0) * dk + d];
            for (int i = j; i < b1; i++) r += hs[(i - r0) * dk + d];
            ll += l * l;
            rr += r * r;
            lr += l * r;
        }
        ll = warp_sum(ll);
        rr = warp_sum(rr);
        lr = warp_sum(lr);
        if (lane == 0) out[j] = (j == 0 || ll <= 0.0f || rr <= 0.0f) ? 0.0f : 1.0f - lr / sqrtf(ll * rr);
    }
}

/* ---- greedy segmentation, in parallel ---------------------------------------------------------- */

/* next(s) = the first strongest boundary in [s + min, s + max], for every s of segment k with
 * n - s > max (else -1: s starts the last chunk). sc holds scores [base, base + L + max). */
__device__ void seg_next(const float *scores, int n, int base, int L, int mn, int mx, float *sc, int *nxt) {
    for (int i = threadIdx.x; i < L + mx; i += blockDim.x) sc[i] = base + i < n ? scores[base + i] : 0.0f;
    __syncthreads();
    for (int i = threadIdx.x; i < L; i += blockDim.x) {
        const int s = base + i;
        int best = -1;
        if (s < n && n - s > mx) {
            best = s + mn;
            for (int j = s + mn + 1; j <= s + mx; j++)
                if (sc[j - base] > sc[best - base]) best = j;
        }
        nxt[i] = best;
    }
    __syncthreads();
}

__global__ void k_seg_walk(const float *scores, const int32_t *horizon_p, int64_t budget, int mn, int mx, int L,
                           int32_t *exits, int32_t *cnts) {
    const int n = *horizon_p;
    const int k = blockIdx.x, base = k * L;
    if (n <= budget || base >= n) return;
    extern __shared__ float sm[];
    float *sc = sm;
    int *nxt = reinterpret_cast<int *>(sm + L + mx);
    seg_next(scores, n, base, L, mn, mx, sc, nxt);
    for (int e = threadIdx.x; e < mx; e += blockDim.x) {
        int s = base + e, cnt = 0, exit = -2;
        if (s < n) {
            cnt = 1;
            for (;;) {
                const int nx = nxt[s - base];
                if (nx < 0) {
                    exit = -1;
                    break;
                }
                if (nx >= base + L) {
                    exit = nx;
                    break;
                }
                s = nx;
                cnt++;
            }
        }
        exits[k * mx + e] = exit;
        cnts[k * mx + e] = cnt;
    }
}

/* One CTA: follows the entries from start 0 through the segments; offsets of each segment's starts. */
__global__ void k_seg_stitch(const int32_t *horizon_p, int64_t budget, int mx, int L, const int32_t *exits,
                             const int32_t *cnts, int32_t *seg_entry, int32_t *seg_off, int32_t *n_chunks,
                             int32_t *starts) {
    const int n = *horizon_p;
    if (n <= budget) {
        if (threadIdx.x == 0) *n_chunks = 0;
        return;
    }
    const int n_seg = (n + L - 1) / L;
    extern __shared__ int ex[]; /* [n_seg][mx] exits, then [n_seg][mx] counts */
    int *cn = ex + n_seg * mx;
    for (int i = threadIdx.x; i < n_seg * mx; i += blockDim.x) {
        ex[i] = exits[i];
        cn[i] = cnts[i];
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int p = 0, off = 0;
        for (int k = 0; k < n_seg; k++) {
            seg_off[k] = off;
            if (p < 0) { /* past the last chunk */
                seg_entry[k] = -1;
                continue;
            }
            seg_entry[k] = p;
            off += cn[k * mx + (p - k * L)];
            p = ex[k * mx + (p - k * L)];
        }
        seg_off[n_seg] = off;
        *n_chunks = off;
        starts[off] = n;
    }
}

__global__ void k_seg_emit(const float *scores, const int32_t *horizon_p, int64_t budget, int mn, int mx, int L,
                           const int32_t *seg_entry, const int32_t *seg_off, int32_t *starts) {
    const int n = *horizon_p;
    const int k = blockIdx.x, base = k * L;
    if (n <= budget || base >= n) return;
    const int entry = seg_entry[k];
    if (entry < 0) return;
    extern __shared__ float sm[];
    float *sc = sm;
    int *nxt = reinterpret_cast<int *>(sm + L + mx);
    seg_next(scores, n, base, L, mn, mx, sc, nxt);
    if (threadIdx.x == 0) {
        int s = entry, o = seg_off[k];
        for (;;) {
            starts[o++] = s;
            const int nx = nxt[s - base];
            if (nx < 0 || nx >= base + L) break;
            s = nx;
        }
    }
}

__global__ void k_fixed_chunks(const int32_t *horizon_p, int64_t budget, int64_t len, int32_t *starts,
                               int32_t *n_chunks) {
    const int64_t n = *horizon_p;
    const int64_t nc = n <= budget ? 0 : (n + len - 1) / len;
    const int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (c < nc) starts[c] = (int32_t)(c * len);
    if (c == 0) {
        *n_chunks = (int32_t)nc;
        if (nc > 0) starts[nc] = (int32_t)n;
    }
}

/* ---- query means and chunk scores ------------------------------------------------------------ */

__global__ void k_qmeans(const dhsa_op op, int64_t i3, int64_t q_block, const int32_t *horizon_p, int64_t budget,
                         float *out) {
    if (*horizon_p <= budget) return;
    const int nh = (int)op.n_head_kv, g = (int)(op.n_head / op.n_head_kv);
    const int b = blockIdx.x / nh, hk = blockIdx.x % nh;
    const int q0 = b * (int)q_block, nq = (int)min((int64_t)q_block, op.n_q - q0);
    const float f = 1.0f / (float)(nq * g);
    /* rows (head h, query q) in the CPU's order, R at a time through shared memory: the CTA loads
     * them as float4, then each thread adds its dimensions in order */
    constexpr int R = 16;
    extern __shared__ float4 tile4[]; /* [R][dk / 4] */
    const float *tile = reinterpret_cast<const float *>(tile4);
    const int dk = (int)op.dk, d4 = dk / 4, rows = g * nq;
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0}; /* dims threadIdx.x + 128 * k, dk <= 1024 */
    for (int r0 = 0; r0 < rows; r0 += R) {
        const int nr = min(R, rows - r0);
        __syncthreads();
        for (int i = threadIdx.x; i < nr * d4; i += blockDim.x) {
            const int r = r0 + i / d4, h = hk * g + r / nq, q = q0 + r % nq;
            tile4[i] = __ldg(reinterpret_cast<const float4 *>(op.q + (int64_t)q * op.q_nb1 + (int64_t)h * op.q_nb2 +
                                                              i3 * op.q_nb3) + i % d4);
        }
        __syncthreads();
        for (int r = 0; r < nr; r++)
#pragma unroll
            for (int k = 0; k < 8; k++)
                if (threadIdx.x + 128 * k < dk) acc[k] += tile[r * dk + threadIdx.x + 128 * k];
    }
#pragma unroll
    for (int k = 0; k < 8; k++)
        if (threadIdx.x + 128 * k < dk) out[((int64_t)b * nh + hk) * dk + threadIdx.x + 128 * k] = acc[k] * f;
}

/* a . b in the order of the CPU kernels' AVX2 dot: 8 lanes of fused multiply-adds, then halves. */
__device__ __forceinline__ float dot_avx2_order(const float *a, const float *b, int n) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int i = 0; i < n; i += 8) {
#pragma unroll
        for (int l = 0; l < 8; l++) acc[l] = fmaf(a[i + l], b[i + l], acc[l]);
    }
    const float s0 = acc[0] + acc[4], s1 = acc[1] + acc[5], s2 = acc[2] + acc[6], s3 = acc[3] + acc[7];
    return (s0 + s2) + (s1 + s3);
}

constexpr int CPW = 4; /* chunks per warp */

/* 8 warps, CPW chunks each. A key row of one kv head is read by dk / 8 lanes with 16-byte loads, so
 * a warp sums 32 * 8 / dk heads at once (in the CPU's ascending order per dimension); the CTA stages
 * those heads' query means in shared memory (rows padded by one float: lane b reads row b without
 * bank conflicts), and lane b takes the dot product with block b's mean. */
template <typename T>
__global__ void k_chunk_scores(const dhsa_op op, int64_t i3, const int32_t *starts, const int32_t *n_chunks_p,
                               int normalised, const float *qmeans, int64_t n_blocks_, int64_t n_sel,
                               int64_t stride, float *scores) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    const int nc = *n_chunks_p;
    const int c0 = (blockIdx.x * nw + warp) * CPW;
    if ((int)blockIdx.x * nw * CPW >= nc) return; /* the whole CTA: no barrier is skipped */
    extern __shared__ float sm[];
    const int dk = (int)op.dk, ld = dk + 1, n_blocks = (int)n_blocks_;
    const int lph = dk / 8, hpi = 32 / lph; /* lanes per head, heads per iteration */
    float *qm = sm;                                         /* [hpi][n_blocks][dk + 1] */
    float *ck = sm + hpi * n_blocks * ld + warp * hpi * dk; /* [nw][hpi][dk] */
    const int nh = (int)op.n_head_kv;
    const char *kb = op.k + i3 * op.k_nb3;
    const int hh = lane / lph, d0 = (lane % lph) * 8;
    for (int h0 = 0; h0 < nh; h0 += hpi) {
        __syncthreads(); /* the previous heads' means are no longer read */
        const int d4 = dk / 4;
        for (int i = threadIdx.x; i < hpi * n_blocks * d4; i += blockDim.x) {
            const int k = i / (n_blocks * d4), b = (i / d4) % n_blocks, d = (i % d4) * 4;
            float4 v = make_float4(0, 0, 0, 0);
            if (h0 + k < nh) v = __ldg(reinterpret_cast<const float4 *>(qmeans + ((int64_t)b * nh + h0 + k) * dk + d));
            float *o = qm + (k * n_blocks + b) * ld + d;
            o[0] = v.x;
            o[1] = v.y;
            o[2] = v.z;
            o[3] = v.w;
        }
        __syncthreads();
        for (int ci = 0; ci < CPW; ci++) {
            const int c = c0 + ci;
            if (c >= nc) break;
            const int s0 = starts[c], s1 = starts[c + 1], len = s1 - s0;
            const float f = len <= 0 ? 0.0f : normalised ? 1.0f / sqrtf((float)len) : 1.0f / (float)len;
            if (h0 + hh < nh) {
                const char *col = kb + (int64_t)(h0 + hh) * op.k_nb2 + d0 * sizeof(T);
                float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
#pragma unroll 4
                for (int j = s0; j < s1; j++) {
                    const uint4 raw = __ldg(reinterpret_cast<const uint4 *>(col + (int64_t)j * op.k_nb1));
                    const T *x = reinterpret_cast<const T *>(&raw);
#pragma unroll
                    for (int l = 0; l < 8; l++) acc[l] += to_f32(x[l]);
                }
#pragma unroll
                for (int l = 0; l < 8; l++) ck[hh * dk + d0 + l] = acc[l] * f;
            }
            __syncwarp();
            for (int k = 0; k < hpi && h0 + k < nh; k++) {
                const int hk = h0 + k;
                for (int b = lane; b < n_blocks; b += 32) {
                    const float v = dot_avx2_order(qm + (k * n_blocks + b) * ld, ck + k * dk, dk);
                    if (n_sel == 1) {
                        float *o = scores + (int64_t)b * stride + c;
                        *o = hk == 0 ? v : *o + v;
                    } else {
                        scores[((int64_t)b * nh + hk) * stride + c] = v;
                    }
                }
            }
            __syncwarp(); /* ck is rewritten by the next chunk */
        }
    }
}

/* ---- picks ----------------------------------------------------------------------------------- */

struct Range {
    int a, b;
};
__device__ __forceinline__ int overlap(Range x, Range y) { return max(0, min(x.b, y.b) - max(x.a, y.a)); }

constexpr int ST = 256; /* threads of the pick kernel */

/* Block-wide reductions through shared memory. */
__device__ int block_sum(int v, int *red) {
    v = __reduce_add_sync(0xffffffffu, v);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    int t = 0;
    for (int i = 0; i < ST / 32; i++) t += red[i];
    __syncthreads();
    return t;
}
__device__ unsigned long long block_max_u64(unsigned long long v, unsigned long long *red) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const unsigned long long x = __shfl_xor_sync(0xffffffffu, v, o);
        v = x > v ? x : v;
    }
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    unsigned long long t = 0;
    for (int i = 0; i < ST / 32; i++) t = red[i] > t ? red[i] : t;
    __syncthreads();
    return t;
}

struct PickArgs {
    int mode;
    int64_t budget, sink, window, n_sel, stride;
};

__global__ void __launch_bounds__(ST) k_pick(const PickArgs P, const float *scores, const int32_t *starts,
                                             const int32_t *n_chunks_p, const int32_t *blo, const int32_t *bhi,
                                             uint8_t *taken_all, int32_t *keys, int32_t *counts,
                                             unsigned long long *counters) {
    const int64_t p = blockIdx.x, b = p / P.n_sel;
    int32_t *out = keys + p * P.budget;
    const int lo = blo[b], hi = bhi[b];
    const int budget = (int)P.budget;
    const int tid = threadIdx.x;
    __shared__ int red[ST / 32];
    __shared__ unsigned long long redu[ST / 32];
    __shared__ int hist[256];
    __shared__ uint32_t s_prefix, s_pmask;
    __shared__ int s_above, s_done;

    if (hi < 0) {
        if (tid == 0) counts[p] = 0;
        return;
    }
    if (hi + 1 <= budget) {
        for (int i = tid; i <= hi; i += ST) out[i] = i;
        if (tid == 0) {
            counts[p] = hi + 1;
            atomicAdd(&counters[3], 1ull);
        }
        return;
    }
    const Range f0 = {0, min((int)P.sink, hi + 1)}, f1 = {max(lo - (int)P.window, 0), hi + 1};
    const Range both = {max(f0.a, f1.a), min(f0.b, f1.b)};
    const int used0 = (f0.b - f0.a) + (f1.b - f1.a) - overlap(f0, f1);

    const int nc = P.mode == DHSA_CUDA_STREAMING ? 0 : *n_chunks_p;
    const float *sc = scores + p * P.stride;
    uint8_t *taken = taken_all + p * P.stride;
    auto new_keys = [&](int c) -> int {
        const Range r = {starts[c], min(starts[c + 1], hi + 1)};
        return max(r.b - r.a, 0) - overlap(r, f0) - overlap(r, f1) + overlap(r, both);
    };
    auto weight = [&](int c) -> int { return starts[c] <= hi ? max(new_keys(c), 0) : 0; };
    const int room = budget - used0;

    /* phase A: the largest prefix of the descending order whose chunks all fit (weighted radix select) */
    if (tid == 0) {
        s_prefix = 0;
        s_pmask = 0;
        s_above = 0;
        s_done = 0;
    }
    for (int c = tid; c < nc; c += ST) taken[c] = 0;
    __syncthreads();
    for (int pass = 0; pass < 4 && nc > 0; pass++) {
        const int shift = 24 - 8 * pass;
        for (int i = tid; i < 256; i += ST) hist[i] = 0;
        __syncthreads();
        const uint32_t prefix = s_prefix, pmask = s_pmask;
        for (int c = tid; c < nc; c += ST) {
            const int w = weight(c);
            if (w <= 0) continue;
            const uint32_t u = float_key(sc[c]);
            if ((u & pmask) != prefix) continue;
            atomicAdd(&hist[(u >> shift) & 255], w);
        }
        __syncthreads();
        if (tid == 0) {
            int cum = 0, sel = -1;
            for (int d = 255; d >= 0; d--) {
                if (s_above + cum + hist[d] > room) {
                    sel = d;
                    break;
                }
                cum += hist[d];
            }
            s_above += cum;
            if (sel < 0) {
                s_done = 1;
            } else {
                s_prefix |= (uint32_t)sel << shift;
                s_pmask |= 255u << shift;
            }
        }
        __syncthreads();
        if (s_done) break;
    }
    const uint32_t prefix = s_prefix, pmask = s_pmask;
    const bool done = s_done || nc == 0;
    int rem = room - s_above;
    /* chunks above the threshold prefix (and, when everything fits, those at it) are taken */
    for (int c = tid; c < nc; c += ST) {
        const int w = weight(c);
        if (w <= 0) continue;
        const uint32_t u = float_key(sc[c]) & pmask;
        if (u > prefix || (done && u == prefix)) taken[c] = 1;
    }
    __syncthreads();

    /* phase B: after the prefix, the first chunk in order that fits, one at a time */
    while (!done && rem > 0) {
        unsigned long long best = 0;
        for (int c = tid; c < nc; c += ST) {
            if (taken[c]) continue;
            const int w = weight(c);
            if (w <= 0 || w > rem) continue;
            const unsigned long long k = ((unsigned long long)float_key(sc[c]) << 32) | (0xffffffffu - (uint32_t)c);
            best = k > best ? k : best;
        }
        best = block_max_u64(best, redu);
        if (best == 0) break;
        const int c = (int)(0xffffffffu - (uint32_t)(best & 0xffffffffu));
        rem -= weight(c);
        if (tid == 0) taken[c] = 1;
        __syncthreads();
    }

    /* emit the kept keys in order: per chunk, its taken part and its parts in sink and window */
    int carry = 0;
    const int n_items = P.mode == DHSA_CUDA_STREAMING ? 1 : nc;
    for (int c0 = 0; c0 < n_items; c0 += ST) {
        const int c = c0 + tid;
        Range pre = {0, 0}, win = {0, 0};
        if (c < n_items) {
            const Range R = P.mode == DHSA_CUDA_STREAMING ? Range{0, hi + 1} : Range{starts[c], starts[c + 1]};
            int pe = R.a;
            if (P.mode != DHSA_CUDA_STREAMING && taken[c]) pe = max(pe, min(R.b, hi + 1));
            pe = max(pe, min(R.b, f0.b)); /* f0 starts at 0: its part of R is a prefix of R */
            pre = {R.a, pe};
            win = {max(R.a, f1.a), min(R.b, f1.b)};
            if (win.b <= win.a) win = {0, 0};
        }
        /* union of pre and win (pre starts at R.a <= win.a) */
        int n = pre.b - pre.a;
        if (win.b > win.a) n += max(0, win.b - max(win.a, pre.b));
        /* exclusive scan over the tile */
        int incl = n;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const int x = __shfl_up_sync(0xffffffffu, incl, o);
            if ((tid & 31) >= o) incl += x;
        }
        if ((tid & 31) == 31) red[tid >> 5] = incl;
        __syncthreads();
        int warp_off = 0, tile_total = 0;
        for (int i = 0; i < ST / 32; i++) {
            if (i < (tid >> 5)) warp_off += red[i];
            tile_total += red[i];
        }
        __syncthreads();
        int o = carry + warp_off + incl - n;
        for (int j = pre.a; j < pre.b && o < budget; j++) out[o++] = j;
        for (int j = max(win.a, pre.b); j < win.b && o < budget; j++) out[o++] = j;
        carry += tile_total;
    }
    if (tid == 0) {
        counts[p] = min(carry, budget);
        atomicAdd(&counters[2], 1ull);
        /* sink and window alone past the budget (a block whose rows see very different ranges): the
         * list cannot hold them; the host recomputes the op densely */
        if (carry > budget) atomicAdd(&counters[4], 1ull);
    }
}

cudaError_t launch_selection(const SelArgs &a, cudaStream_t s) {
    const dhsa_op &op = a.op;
    const dhsa_cuda_select &sel = a.sel;
    cudaError_t e;
    k_bounds<<<(unsigned)a.n_blocks, 128, 0, s>>>(a.last, op.n_q, op.n_kv, a.q_block, a.blo, a.bhi, a.horizon);
    if ((e = cudaGetLastError()) != cudaSuccess) return e;
    const bool chunked = sel.mode == DHSA_CUDA_DHSA || sel.mode == DHSA_CUDA_BLOCK;
    const bool bf = op.k_type == DHSA_BF16;
    if (chunked) {
        if (sel.mode == DHSA_CUDA_DHSA && sel.dynamic_chunks) {
            const int w = (int)sel.boundary_window, mn = (int)sel.chunk_min, mx = (int)sel.chunk_max;
            const int L = (int)a.seg_len;
            const size_t bsmem = sizeof(float) * (size_t)(BT + 2 * w) * op.dk;
            const unsigned nt = (unsigned)((op.n_kv + BT - 1) / BT);
            if (bf)
                k_boundary<__nv_bfloat16><<<nt, 256, bsmem, s>>>(op, a.i3, a.horizon, sel.budget, w, a.bscore);
            else
                k_boundary<half><<<nt, 256, bsmem, s>>>(op, a.i3, a.horizon, sel.budget, w, a.bscore);
            if ((e = cudaGetLastError()) != cudaSuccess) return e;
            const size_t wsmem = sizeof(float) * (size_t)(L + mx) + sizeof(int) * (size_t)L;
            k_seg_walk<<<(unsigned)a.n_seg, 256, wsmem, s>>>(a.bscore, a.horizon, sel.budget, mn, mx, L, a.exits,
                                                             a.cnts);
            if ((e = cudaGetLastError()) != cudaSuccess) return e;
            k_seg_stitch<<<1, 256, 2 * sizeof(int) * (size_t)a.n_seg * mx, s>>>(
                a.horizon, sel.budget, mx, L, a.exits, a.cnts, a.seg_entry, a.seg_off, a.n_chunks, a.starts);
            if ((e = cudaGetLastError()) != cudaSuccess) return e;
            k_seg_emit<<<(unsigned)a.n_seg, 256, wsmem, s>>>(a.bscore, a.horizon, sel.budget, mn, mx, L, a.seg_entry,
                                                             a.seg_off, a.starts);
        } else {
            const int64_t len = sel.mode == DHSA_CUDA_BLOCK ? sel.block_size : sel.chunk_max;
            k_fixed_chunks<<<(unsigned)((a.max_chunks + 255) / 256), 256, 0, s>>>(a.horizon, sel.budget, len, a.starts,
                                                                                a.n_chunks);
        }
        if ((e = cudaGetLastError()) != cudaSuccess) return e;
        k_qmeans<<<(unsigned)(a.n_blocks * op.n_head_kv), 128, sizeof(float) * 16 * (size_t)op.dk, s>>>(
            op, a.i3, a.q_block, a.horizon, sel.budget, a.qmeans);
        if ((e = cudaGetLastError()) != cudaSuccess) return e;
        const int normalised = sel.mode == DHSA_CUDA_DHSA;
        const unsigned nb = (unsigned)((a.max_chunks + 8 * CPW - 1) / (8 * CPW));
        const size_t hpi = 32 / (op.dk / 8);
        const size_t csmem = sizeof(float) * hpi * ((size_t)a.n_blocks * (op.dk + 1) + 8 * (size_t)op.dk);
        if (csmem > 48 * 1024) {
            e = bf ? cudaFuncSetAttribute(k_chunk_scores<__nv_bfloat16>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          (int)csmem)
                   : cudaFuncSetAttribute(k_chunk_scores<half>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)csmem);
            if (e != cudaSuccess) return e;
        }
        if (bf)
            k_chunk_scores<__nv_bfloat16><<<nb, 256, csmem, s>>>(op, a.i3, a.starts, a.n_chunks, normalised, a.qmeans,
                                                                 a.n_blocks, a.n_sel, a.max_chunks, a.scores);
        else
            k_chunk_scores<half><<<nb, 256, csmem, s>>>(op, a.i3, a.starts, a.n_chunks, normalised, a.qmeans,
                                                        a.n_blocks, a.n_sel, a.max_chunks, a.scores);
        if ((e = cudaGetLastError()) != cudaSuccess) return e;
    }
    PickArgs P = {sel.mode, sel.budget, sel.sink, sel.window, a.n_sel, a.max_chunks};
    k_pick<<<(unsigned)(a.n_blocks * a.n_sel), ST, 0, s>>>(P, a.scores, a.starts, a.n_chunks, a.blo, a.bhi, a.taken,
                                                           a.keys, a.counts, a.counters);
    return cudaGetLastError();
}

} // namespace dhsa
