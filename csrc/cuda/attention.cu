/* Exact attention on tensor cores over per-block key lists (sparse) or every key (dense), plus the
 * mask frontier and the visible-key count.
 *
 * A CTA is 4 warps and 64 query rows of one (sequence, kv head, query block): a row is a pair
 * (query head of the kv head's group, query), so K/V tiles serve every head of the group. Stages per
 * tile of 64 keys:
 *   gather    key indices (from the list, or consecutive), mask values of this thread's S entries
 *   load      K and V rows by cp.async into a double buffer (the next tile loads while this one computes)
 *   score     S = Q K^T with mma m16n8k16 (Q pre-scaled, held in registers as A fragments)
 *   softcap   S = softcap * tanh(S), then S += slope(h) * mask (-inf: the key is not seen)
 *   softmax   online: running row max and denominator, O rescaled when the max grows
 *   accumulate O += P V with P re-packed from the S accumulators as A fragments
 * and at the end sinks, 1/L, and the store into dst's permuted layout. f32 accumulation throughout;
 * Q and P are rounded to the K/V element type (f16 or bf16) for the tensor cores, as ggml-cuda does. */
#include "common.cuh"

#include <float.h>

namespace dhsa {

constexpr int BM = 64;  /* query rows per CTA (4 warps x 16) */
constexpr int BN = 64;  /* keys per tile */
constexpr int NT = 128; /* threads */
constexpr int PAD = 8;  /* halves of padding per smem row: conflict-free ldmatrix */

template <int D> constexpr size_t smem_bytes() { return sizeof(uint16_t) * (size_t)(BM + 4 * BN) * (D + PAD); }

template <typename T, int D, bool SPARSE>
__global__ void __launch_bounds__(NT, 2) k_attention(const AttnArgs a) {
    constexpr int LD = D + PAD;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T *Qs = reinterpret_cast<T *>(smem_raw); /* [BM][LD] */
    T *Ks = Qs + BM * LD;                    /* [2][BN][LD] */
    T *Vs = Ks + 2 * BN * LD;                /* [2][BN][LD] */
    __shared__ int s_kend;

    const dhsa_op &op = a.op;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
    const int64_t nh = op.n_head_kv, G = op.n_head / op.n_head_kv;
    const int64_t b = a.n_blocks - 1 - blockIdx.y; /* later blocks see more keys: start them first */
    const int64_t i3 = blockIdx.z / nh, hk = blockIdx.z % nh;
    const int64_t q0 = b * a.q_block;
    const int64_t nqb = min(a.q_block, op.n_q - q0);
    const int64_t unit_rows = G * nqb;
    const int64_t r0 = (int64_t)blockIdx.x * BM;
    if (r0 >= unit_rows || nqb <= 0) return;

    /* the two rows of this thread: g and g + 8 of the warp's 16 */
    bool rvalid[2];
    int64_t rq[2], rh[2];
    float rslope[2];
    const uint16_t *rmask[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int64_t R = r0 + warp * 16 + g + 8 * i;
        rvalid[i] = R < unit_rows;
        const int64_t Rc = rvalid[i] ? R : 0;
        rq[i] = q0 + Rc % nqb;
        rh[i] = hk * G + Rc / nqb;
        rslope[i] = alibi_slope(op.max_bias, op.n_head, rh[i]);
        rmask[i] = op.mask ? (const uint16_t *)((const char *)op.mask + rq[i] * op.mask_nb1 +
                                                (rh[i] % op.mask_ne2) * op.mask_nb2 + (i3 % op.mask_ne3) * op.mask_nb3)
                           : nullptr;
    }

    /* the keys of this CTA */
    const int32_t *klist = nullptr;
    int64_t nkeys;
    if (SPARSE) {
        const int64_t p = (i3 * a.n_blocks + b) * a.n_sel + (a.n_sel == 1 ? 0 : hk);
        klist = a.keys + p * a.key_stride;
        nkeys = a.counts[p];
    } else {
        if (a.last) {
            if (tid == 0) s_kend = 0;
            __syncthreads();
            int kend = 0;
            for (int r = tid; r < BM; r += NT) {
                const int64_t R = r0 + r;
                if (R >= unit_rows) continue;
                const int64_t q = q0 + R % nqb, h = hk * G + R / nqb;
                const int64_t row = ((i3 % op.mask_ne3) * op.mask_ne2 + h % op.mask_ne2) * op.n_q + q;
                kend = max(kend, a.last[row] + 1);
            }
            atomicMax(&s_kend, kend);
            __syncthreads();
            nkeys = s_kend;
        } else {
            nkeys = op.n_kv;
        }
    }

    /* Q tile, scaled, in the element type; rows past the unit are zeros */
    const float qscale = op.softcap != 0.0f ? op.scale / op.softcap : op.scale;
    for (int e = tid; e < BM * (D / 2); e += NT) {
        const int r = e / (D / 2), d = (e % (D / 2)) * 2;
        const int64_t R = r0 + r;
        float x0 = 0.0f, x1 = 0.0f;
        if (R < unit_rows) {
            const int64_t q = q0 + R % nqb, h = hk * G + R / nqb;
            const float *qr = (const float *)(op.q + q * op.q_nb1 + h * op.q_nb2 + i3 * op.q_nb3);
            x0 = qr[d] * qscale;
            x1 = qr[d + 1] * qscale;
        }
        *reinterpret_cast<uint32_t *>(&Qs[r * LD + d]) = pack2<T>(x0, x1);
    }
    __syncthreads();
    uint32_t qf[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        const int mi = lane >> 3, i = lane & 7;
        ldmatrix_x4(qf[kk], &Qs[(warp * 16 + (mi & 1) * 8 + i) * LD + kk * 16 + (mi >> 1) * 8]);
    }

    const char *kbase = op.k + hk * op.k_nb2 + i3 * op.k_nb3;
    const char *vbase = op.v + hk * op.v_nb2 + i3 * op.v_nb3;
    auto load_tile = [&](int64_t tile, int stage) {
        T *kd = Ks + stage * BN * LD, *vd = Vs + stage * BN * LD;
        for (int e = tid; e < BN * (D / 8); e += NT) {
            const int r = e / (D / 8), c = e % (D / 8);
            const int64_t t = tile * BN + r;
            const bool ok = t < nkeys;
            const int64_t j = ok ? (SPARSE ? (int64_t)klist[t] : t) : 0;
            cp_async16(&kd[r * LD + c * 8], kbase + j * op.k_nb1 + c * 16, ok ? 16 : 0);
            cp_async16(&vd[r * LD + c * 8], vbase + j * op.v_nb1 + c * 16, ok ? 16 : 0);
        }
        cp_async_commit();
    };

    float o[D / 8][4];
#pragma unroll
    for (int j = 0; j < D / 8; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.0f, 0.0f};
    long long attended = 0;

    const int64_t ntiles = (nkeys + BN - 1) / BN;
    if (ntiles > 0) load_tile(0, 0);
    for (int64_t tile = 0; tile < ntiles; tile++) {
        const int stage = (int)(tile & 1);

        /* mask entries of this thread's S values: rows g, g+8; columns 8n + 2*t4 + {0, 1} */
        uint32_t mv[2][8]; /* two f16 per register: column pair of n-tile n */
#pragma unroll
        for (int n = 0; n < 8; n++) {
            int64_t j[2];
            bool ok[2];
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int64_t t = tile * BN + 8 * n + 2 * t4 + e;
                ok[e] = t < nkeys;
                j[e] = ok[e] ? (SPARSE ? (int64_t)klist[t] : t) : 0;
            }
#pragma unroll
            for (int i = 0; i < 2; i++) {
                uint16_t m0 = NEG_INF_F16, m1 = NEG_INF_F16;
                if (rvalid[i]) {
                    if (rmask[i]) {
                        if (ok[0]) m0 = __ldg(rmask[i] + j[0]);
                        if (ok[1]) m1 = __ldg(rmask[i] + j[1]);
                    } else {
                        m0 = ok[0] ? 0 : NEG_INF_F16;
                        m1 = ok[1] ? 0 : NEG_INF_F16;
                    }
                }
                mv[i][n] = (uint32_t)m0 | ((uint32_t)m1 << 16);
            }
        }

        if (tile + 1 < ntiles) {
            load_tile(tile + 1, stage ^ 1);
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();

        /* S = Q K^T */
        const T *kt = Ks + stage * BN * LD;
        float s[8][4];
#pragma unroll
        for (int n = 0; n < 8; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
#pragma unroll
            for (int np = 0; np < 4; np++) {
                uint32_t bf[4];
                const int mi = lane >> 3, i = lane & 7;
                ldmatrix_x4(bf, &kt[(16 * np + (mi >> 1) * 8 + i) * LD + kk * 16 + (mi & 1) * 8]);
                mma16816<T>(s[2 * np], qf[kk], bf);
                mma16816<T>(s[2 * np + 1], qf[kk], bf + 2);
            }
        }

        /* softcap, mask, online softmax */
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int n = 0; n < 8; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int i = e >> 1;
                const uint16_t mb = (uint16_t)(mv[i][n] >> (16 * (e & 1)));
                float x = s[n][e];
                if (op.softcap != 0.0f) x = op.softcap * tanhf(x);
                x = mb == NEG_INF_F16 ? -INFINITY : x + rslope[i] * f16_bits_to_f32(mb);
                attended += mb != NEG_INF_F16;
                s[n][e] = x;
                mx[i] = fmaxf(mx[i], x);
            }
        }
        float alpha[2], msafe[2];
#pragma unroll
        for (int i = 0; i < 2; i++) {
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
            const float mnew = fmaxf(mrow[i], mx[i]);
            msafe[i] = mnew == -INFINITY ? 0.0f : mnew;
            alpha[i] = __expf(mrow[i] - msafe[i]);
            mrow[i] = mnew;
        }
        float psum[2] = {0.0f, 0.0f};
#pragma unroll
        for (int n = 0; n < 8; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int i = e >> 1;
                const float p = __expf(s[n][e] - msafe[i]);
                s[n][e] = p;
                psum[i] += p;
            }
        }
#pragma unroll
        for (int i = 0; i < 2; i++) lrow[i] = lrow[i] * alpha[i] + psum[i];
#pragma unroll
        for (int j = 0; j < D / 8; j++) {
            o[j][0] *= alpha[0];
            o[j][1] *= alpha[0];
            o[j][2] *= alpha[1];
            o[j][3] *= alpha[1];
        }

        /* O += P V */
        const T *vt = Vs + stage * BN * LD;
#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++) {
            uint32_t pa[4];
            pa[0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
            pa[1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
            pa[2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            pa[3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
            for (int dp = 0; dp < D / 16; dp++) {
                uint32_t bf[4];
                const int mi = lane >> 3, i = lane & 7;
                ldmatrix_x4_trans(bf, &vt[(kk * 16 + (mi & 1) * 8 + i) * LD + (2 * dp + (mi >> 1)) * 8]);
                mma16816<T>(o[2 * dp], pa, bf);
                mma16816<T>(o[2 * dp + 1], pa, bf + 2);
            }
        }
        __syncthreads(); /* the next iteration's prefetch overwrites this stage */
    }

    /* sinks, normalise, store */
#pragma unroll
    for (int i = 0; i < 2; i++) {
        float S = lrow[i];
        S += __shfl_xor_sync(0xffffffffu, S, 1);
        S += __shfl_xor_sync(0xffffffffu, S, 2);
        const float M = mrow[i];
        float ms = 1.0f;
        if (op.sinks) {
            const float sk = op.sinks[rh[i]];
            if (sk > M) {
                ms = expf(M - sk);
                S = S * ms + 1.0f;
            } else {
                S += expf(sk - M);
            }
        }
        const float inv = S == 0.0f ? 0.0f : ms / S;
        if (!rvalid[i]) continue;
        float *out = (float *)((char *)op.dst + i3 * op.dst_nb3 + rq[i] * op.dst_nb2 + rh[i] * op.dst_nb1);
#pragma unroll
        for (int j = 0; j < D / 8; j++) {
            float2 v = make_float2(o[j][2 * i] * inv, o[j][2 * i + 1] * inv);
            *reinterpret_cast<float2 *>(out + 8 * j + 2 * t4) = v;
        }
    }

    /* keys attended: every (row, key) whose mask entry is finite */
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) attended += __shfl_xor_sync(0xffffffffu, attended, off);
    if (lane == 0 && a.counters && attended) atomicAdd(&a.counters[0], (unsigned long long)attended);
}

/* last[row] = the last key with a finite mask entry of each mask row (-1: none); warp per row,
 * scanning back from the end (causal masks stop after the padding). */
__global__ void k_frontier(const dhsa_op op, int32_t *last) {
    const int64_t rows = op.mask_ne3 * op.mask_ne2 * op.n_q;
    const int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const int64_t q = row % op.n_q, hm = (row / op.n_q) % op.mask_ne2, m3 = row / (op.n_q * op.mask_ne2);
    const uint16_t *mp = (const uint16_t *)((const char *)op.mask + q * op.mask_nb1 + hm * op.mask_nb2 + m3 * op.mask_nb3);
    long long found = -1;
    for (long long end = op.n_kv; end > 0 && found < 0; end -= 128) {
        long long best = -1;
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const long long j = end - 1 - lane - 32 * u;
            if (j >= 0 && mp[j] != NEG_INF_F16) best = max(best, j);
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) best = max(best, __shfl_xor_sync(0xffffffffu, best, o));
        found = best;
    }
    if (lane == 0) last[row] = (int32_t)found;
}

/* Finite mask entries of every distinct mask row, weighted by the heads and sequences reading it. */
__global__ void k_count_visible(const dhsa_op op, unsigned long long *counter) {
    const int64_t rows = op.mask_ne3 * op.mask_ne2 * op.n_q;
    const int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const int64_t q = row % op.n_q, hm = (row / op.n_q) % op.mask_ne2, m3 = row / (op.n_q * op.mask_ne2);
    const uint16_t *mp = (const uint16_t *)((const char *)op.mask + q * op.mask_nb1 + hm * op.mask_nb2 + m3 * op.mask_nb3);
    unsigned long long n = 0;
    for (int64_t j = lane; j < op.n_kv; j += 32) n += mp[j] != NEG_INF_F16;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) n += __shfl_xor_sync(0xffffffffu, n, o);
    const unsigned long long weight = (op.n_head / op.mask_ne2) * (op.ne3 / op.mask_ne3);
    if (lane == 0 && n) atomicAdd(counter, n * weight);
}

int attention_supported(const dhsa_op &op) {
    if (op.k_type != op.v_type || (op.k_type != DHSA_F16 && op.k_type != DHSA_BF16)) return 0;
    if (op.dk != op.dv || (op.dk != 64 && op.dk != 128)) return 0;
    const size_t strides[] = {op.k_nb1, op.k_nb2, op.k_nb3, op.v_nb1, op.v_nb2, op.v_nb3};
    for (size_t s : strides)
        if (s % 16 != 0) return 0;
    if (op.dst_nb1 % 8 || op.dst_nb2 % 8 || op.dst_nb3 % 8) return 0;
    if (op.q_nb1 % 4 || op.q_nb2 % 4 || op.q_nb3 % 4) return 0;
    return 1;
}

size_t attention_smem_bytes(const dhsa_op &op) { return op.dk == 64 ? smem_bytes<64>() : smem_bytes<128>(); }

template <typename T, int D, bool SPARSE> static cudaError_t launch_t(const AttnArgs &a, cudaStream_t s) {
    const size_t smem = smem_bytes<D>();
    /* the shared-memory limit is an attribute of the function on each device */
    static bool configured[64] = {};
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess) return e;
    if (dev < 0 || dev >= 64) return cudaErrorInvalidDevice;
    if (!configured[dev]) {
        e = cudaFuncSetAttribute(k_attention<T, D, SPARSE>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (e != cudaSuccess) return e;
        configured[dev] = true;
    }
    const int64_t G = a.op.n_head / a.op.n_head_kv;
    const int64_t row_tiles = (G * a.q_block + BM - 1) / BM;
    dim3 grid((unsigned)row_tiles, (unsigned)a.n_blocks, (unsigned)(a.op.ne3 * a.op.n_head_kv));
    k_attention<T, D, SPARSE><<<grid, NT, smem, s>>>(a);
    return cudaGetLastError();
}

cudaError_t launch_attention(const AttnArgs &a, cudaStream_t s) {
    const bool sparse = a.keys != nullptr;
    const bool bf = a.op.k_type == DHSA_BF16;
#define DHSA_LAUNCH(T)                                                                                                 \
    if (a.op.dk == 64) return sparse ? launch_t<T, 64, true>(a, s) : launch_t<T, 64, false>(a, s);                     \
    return sparse ? launch_t<T, 128, true>(a, s) : launch_t<T, 128, false>(a, s);
    if (bf) {
        DHSA_LAUNCH(__nv_bfloat16)
    } else {
        DHSA_LAUNCH(half)
    }
#undef DHSA_LAUNCH
}

cudaError_t launch_frontier(const dhsa_op &op, int32_t *last, cudaStream_t s) {
    const int64_t rows = op.mask_ne3 * op.mask_ne2 * op.n_q;
    k_frontier<<<(unsigned)((rows + 7) / 8), 256, 0, s>>>(op, last);
    return cudaGetLastError();
}

cudaError_t launch_count_visible(const dhsa_op &op, unsigned long long *counter, cudaStream_t s) {
    const int64_t rows = op.mask_ne3 * op.mask_ne2 * op.n_q;
    k_count_visible<<<(unsigned)((rows + 7) / 8), 256, 0, s>>>(op, counter);
    return cudaGetLastError();
}

} // namespace dhsa
