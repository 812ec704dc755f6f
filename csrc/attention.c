/* Exact attention over key spans (see dhsa.h): the one implementation of the softmax-attention math,
 * used by the dense path (every unit attends to [0, n_kv)) and by every sparse mode.
 *
 * A work unit is (sequence i3, kv head hk, tile of qt queries); its rows are the qt queries of each
 * of the G = n_head / n_head_kv query heads that share hk, so each K/V tile is converted once for
 * all of them. Stages per key tile of KT keys:
 *   gather    key indices from the spans; mask entries (transposed to [key][query]); skip the tile
 *             when no entry is finite
 *   load      K and V rows converted to f32 ([key][d])
 *   score     S^T[key][row] = K . Q^T  (Q pre-multiplied by the scale)
 *   softcap   S = softcap * tanh(S), then S += slope(h) * mask
 *   softmax   online: running row max M, denominator L, probabilities written over S
 *   accumulate O[row][:] = O * alpha + P . V
 * and at the end: sinks, 1/L, store into dst's permuted layout. */
#include "dhsa.h"
#include "simd.h"

#include <omp.h>
#include <stdlib.h>

#define KT 64           /* keys per tile */
#define ROWS_TARGET 128 /* query rows (heads x queries) per unit */
#define Q_TILE_MIN 8
#define Q_TILE_MAX 64
#define MR 6            /* micro-kernel rows */
#define NR 2            /* micro-kernel vectors per row */

static int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
static int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
static int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

#define NEG_INF_F16 0xFC00u

int64_t dhsa_kv_tile(void) { return KT; }

const char *dhsa_simd_name(void) { return DHSA_AVX2 ? "avx2" : "portable"; }

int64_t dhsa_q_tile(const dhsa_op *op, int64_t limit) {
    const int64_t g = op->n_head / op->n_head_kv;
    int64_t qt = imin(Q_TILE_MAX, imax(Q_TILE_MIN, (ROWS_TARGET / g) / 8 * 8));
    if (limit > 0 && qt > limit) {
        qt = limit;
    } else if (limit > 0) {
        /* tiles that split each block evenly: 64-query blocks with qt 40 become two tiles of 32 */
        qt = cdiv(limit, cdiv(limit, qt));
    }
    return qt;
}

static int type_ok(int32_t t, int64_t d) {
    switch (t) {
    case DHSA_F32:
    case DHSA_F16:
    case DHSA_BF16:
        return 1;
    case DHSA_Q8_0:
        return d % 32 == 0;
    default:
        return 0;
    }
}

const char *dhsa_op_unsupported(const dhsa_op *op) {
    if (op->dk <= 0 || op->dv <= 0 || op->dk > 1024 || op->dv > 1024) return "head size outside 1..1024";
    if (op->n_q <= 0 || op->n_kv <= 0 || op->n_head <= 0 || op->n_head_kv <= 0 || op->ne3 <= 0) return "empty op";
    if (op->n_q > INT32_MAX || op->n_kv > INT32_MAX) return "more than 2^31 queries or keys";
    if (op->n_head % op->n_head_kv != 0) return "n_head is not a multiple of n_head_kv";
    if (op->n_head / op->n_head_kv > 64) return "more than 64 query heads per kv head";
    if (!type_ok(op->k_type, op->dk)) return "K type not computed (f32, f16, bf16, q8_0 with DK % 32 == 0)";
    if (!type_ok(op->v_type, op->dv)) return "V type not computed (f32, f16, bf16, q8_0 with DV % 32 == 0)";
    /* presence is mask_ne2 > 0: the scheduler asks before the data is allocated */
    if (op->mask_ne2 > 0) {
        if (op->mask_ne3 <= 0) return "empty mask";
        if (op->n_head % op->mask_ne2 != 0 || op->ne3 % op->mask_ne3 != 0) return "mask does not broadcast";
    } else if (op->max_bias > 0.0f) {
        return "ALiBi without a mask";
    }
    if (!(op->softcap >= 0.0f) || !(op->max_bias >= 0.0f)) return "negative softcap or max_bias";
    return 0;
}

/* ---- per-op constants ------------------------------------------------------------------------ */

typedef struct {
    int64_t g;         /* query heads per kv head */
    int64_t qt, qtp;   /* queries per unit, padded to a vector multiple */
    int64_t rp;        /* rows per unit: g * qtp */
    int64_t dvp;       /* DV padded to the micro-kernel width */
    int64_t mask_blocks; /* distinct mask rows per query inside a unit: 1, or g when masks differ per head */
    float qscale;      /* folded into Q: scale, divided by softcap when softcap is on */
    float m0, m1;      /* ALiBi bases */
    uint32_t n_head_log2;
} consts;

static consts make_consts(const dhsa_op *op, int64_t limit) {
    consts c;
    c.g = op->n_head / op->n_head_kv;
    c.qt = dhsa_q_tile(op, limit);
    c.qtp = round_up(c.qt, 8);
    c.rp = c.g * c.qtp;
    c.dvp = round_up(op->dv, 8); /* a multiple of VL */
    c.mask_blocks = (op->mask && op->mask_ne2 > 1) ? c.g : 1;
    c.qscale = op->softcap != 0.0f ? op->scale / op->softcap : op->scale;
    c.n_head_log2 = 1u << (uint32_t)floor(log2((double)op->n_head));
    c.m0 = powf(2.0f, -(op->max_bias) / c.n_head_log2);
    c.m1 = powf(2.0f, -(op->max_bias / 2.0f) / c.n_head_log2);
    return c;
}

static float alibi_slope(const consts *c, const dhsa_op *op, int64_t h) {
    if (op->max_bias <= 0.0f) return 1.0f;
    return (uint32_t)h < c->n_head_log2 ? powf(c->m0, (float)(h + 1)) : powf(c->m1, (float)(2 * (h - c->n_head_log2) + 1));
}

typedef struct {
    float *qt_mat; /* [dk][rp]   Q^T, scaled */
    float *kb;     /* [KT][dk]   K tile */
    float *vb;     /* [KT][dvp]  V tile */
    float *st;     /* [KT][rp]   scores, then probabilities */
    float *mt;     /* [mask_blocks][KT][qtp] mask tile, transposed */
    float *o;      /* [rp][dvp]  output accumulator */
    float *m, *l, *alpha; /* [rp] */
    int32_t *idx;  /* [KT] key indices of the tile */
} scratch_t;

static int64_t scratch_floats(const dhsa_op *op, const consts *c) {
    return op->dk * c->rp + KT * op->dk + KT * c->dvp + KT * c->rp + c->mask_blocks * KT * c->qtp + c->rp * c->dvp +
           3 * c->rp + KT + 16 * 10;
}

int64_t dhsa_attention_scratch_floats(const dhsa_op *op, int64_t limit) {
    consts c = make_consts(op, limit);
    return scratch_floats(op, &c);
}

static scratch_t carve(float *base, const dhsa_op *op, const consts *c) {
    scratch_t s;
    float *p = base;
#define TAKE(n) (p += round_up((n), 16), p - round_up((n), 16))
    s.qt_mat = TAKE(op->dk * c->rp);
    s.kb = TAKE(KT * op->dk);
    s.vb = TAKE(KT * c->dvp);
    s.st = TAKE(KT * c->rp);
    s.mt = TAKE(c->mask_blocks * KT * c->qtp);
    s.o = TAKE(c->rp * c->dvp);
    s.m = TAKE(c->rp);
    s.l = TAKE(c->rp);
    s.alpha = TAKE(c->rp);
    s.idx = (int32_t *)TAKE(KT);
#undef TAKE
    return s;
}

/* ---- GEMM micro-kernel: C[m][n] (+)= sum_k A(m,k) B[k][n], A(m,k) = A[m*a_rs + k*a_cs] ---------- */

DHSA_INLINE void ukernel(const int mr, const int nr, float *C, int64_t ldc, const float *A, int64_t a_rs,
                         int64_t a_cs, const float *B, int64_t ldb, int64_t K, int accumulate) {
    vf acc[MR][NR];
#pragma GCC unroll 6
    for (int i = 0; i < mr; i++) {
#pragma GCC unroll 2
        for (int j = 0; j < nr; j++) acc[i][j] = accumulate ? vf_load(C + i * ldc + j * VL) : vf_zero();
    }
    for (int64_t k = 0; k < K; k++) {
        vf b[NR];
#pragma GCC unroll 2
        for (int j = 0; j < nr; j++) b[j] = vf_load(B + k * ldb + j * VL);
#pragma GCC unroll 6
        for (int i = 0; i < mr; i++) {
            const vf a = vf_set1(A[i * a_rs + k * a_cs]);
#pragma GCC unroll 2
            for (int j = 0; j < nr; j++) acc[i][j] = vf_fma(a, b[j], acc[i][j]);
        }
    }
#pragma GCC unroll 6
    for (int i = 0; i < mr; i++) {
#pragma GCC unroll 2
        for (int j = 0; j < nr; j++) vf_store(C + i * ldc + j * VL, acc[i][j]);
    }
}

#define UK_CASES(NRV)                                                                                            \
    switch (mr) {                                                                                                \
    case 6: ukernel(6, NRV, Cb, ldc, Ab, a_rs, a_cs, Bb, ldb, K, accumulate); break;                             \
    case 5: ukernel(5, NRV, Cb, ldc, Ab, a_rs, a_cs, Bb, ldb, K, accumulate); break;                             \
    case 4: ukernel(4, NRV, Cb, ldc, Ab, a_rs, a_cs, Bb, ldb, K, accumulate); break;                             \
    case 3: ukernel(3, NRV, Cb, ldc, Ab, a_rs, a_cs, Bb, ldb, K, accumulate); break;                             \
    case 2: ukernel(2, NRV, Cb, ldc, Ab, a_rs, a_cs, Bb, ldb, K, accumulate); break;                             \
    default: ukernel(1, NRV, Cb, ldc, Ab, a_rs, a_cs, Bb, ldb, K, accumulate); break;                            \
    }

/* N must be a multiple of VL. B panels of NR vectors stay in L1 while A is streamed. */
static void gemm(float *C, int64_t ldc, const float *A, int64_t a_rs, int64_t a_cs, const float *B, int64_t ldb,
                 int64_t M, int64_t N, int64_t K, int accumulate) {
    for (int64_t n0 = 0; n0 < N; n0 += NR * VL) {
        const int nv = (int)imin(NR, (N - n0) / VL);
        for (int64_t m0 = 0; m0 < M; m0 += MR) {
            const int mr = (int)imin(MR, M - m0);
            float *Cb = C + m0 * ldc + n0;
            const float *Ab = A + m0 * a_rs;
            const float *Bb = B + n0;
            if (nv == NR) {
                UK_CASES(NR)
            } else {
                UK_CASES(1)
            }
        }
    }
}

/* ---- one work unit --------------------------------------------------------------------------- */

typedef struct {
    const dhsa_span *spans;
    int64_t n, i;    /* span count, current span */
    int64_t next;    /* next key in the current span */
} cursor_t;

/* Fills up to KT key indices; returns how many. */
static int64_t next_tile(cursor_t *cur, int32_t *idx) {
    int64_t n = 0;
    while (n < KT && cur->i < cur->n) {
        const dhsa_span sp = cur->spans[cur->i];
        if (cur->next < sp.begin) cur->next = sp.begin;
        while (n < KT && cur->next < sp.end) idx[n++] = (int32_t)cur->next++;
        if (cur->next >= sp.end) cur->i++;
    }
    return n;
}

static void attend_unit(const dhsa_op *op, const consts *c, const scratch_t *s, int64_t i3, int64_t hk, int64_t iq0,
                        int64_t nq, const dhsa_span *spans, int64_t n_spans, int64_t *attended) {
    const int64_t g = c->g, qtp = c->qtp, rp = c->rp, dk = op->dk, dv = op->dv, dvp = c->dvp;

    /* Q^T, scaled; padding rows are zero */
    memset(s->qt_mat, 0, sizeof(float) * (size_t)(dk * rp));
    for (int64_t gi = 0; gi < g; gi++) {
        const int64_t h = hk * g + gi;
        for (int64_t q = 0; q < nq; q++) {
            const float *row = (const float *)(op->q + (iq0 + q) * op->q_nb1 + h * op->q_nb2 + i3 * op->q_nb3);
            float *col = s->qt_mat + gi * qtp + q;
            for (int64_t d = 0; d < dk; d++) col[d * rp] = row[d] * c->qscale;
        }
    }
    for (int64_t r = 0; r < rp; r++) {
        s->m[r] = -INFINITY;
        s->l[r] = 0.0f;
    }
    memset(s->o, 0, sizeof(float) * (size_t)(rp * dvp));

    float slope[64];
    for (int64_t gi = 0; gi < g; gi++) slope[gi] = alibi_slope(c, op, hk * g + gi);

    const uint16_t *mrow[64 * Q_TILE_MAX];
    if (op->mask) {
        for (int64_t b = 0; b < c->mask_blocks; b++) {
            const int64_t hm = (hk * g + b) % op->mask_ne2;
            for (int64_t q = 0; q < nq; q++) {
                mrow[b * qtp + q] = (const uint16_t *)((const char *)op->mask + (iq0 + q) * op->mask_nb1 +
                                                       hm * op->mask_nb2 + (i3 % op->mask_ne3) * op->mask_nb3);
            }
        }
    }

    const int64_t k_i3 = i3, hkv = hk;
    cursor_t cur = {spans, n_spans, 0, 0};
    int64_t kt;
    while ((kt = next_tile(&cur, s->idx)) > 0) {
        /* gather the mask, transposed; skip the tile when nothing in it is visible */
        int64_t finite = 0;
        if (op->mask) {
            for (int64_t b = 0; b < c->mask_blocks; b++) {
                float *mt = s->mt + b * KT * qtp;
                for (int64_t q = 0; q < qtp; q++) {
                    if (q >= nq) {
                        for (int64_t t = 0; t < kt; t++) mt[t * qtp + q] = -INFINITY;
                        continue;
                    }
                    const uint16_t *mp = mrow[b * qtp + q];
                    for (int64_t t = 0; t < kt; t++) {
                        const uint16_t hv = mp[s->idx[t]];
                        finite += hv != NEG_INF_F16;
                        mt[t * qtp + q] = f16_to_f32(hv);
                    }
                }
            }
            if (finite == 0) continue;
            *attended += c->mask_blocks == 1 ? finite * g : finite;
        } else {
            *attended += kt * nq * g;
        }

        /* load K and V rows */
        for (int64_t t = 0; t < kt; t++) {
            const int64_t j = s->idx[t];
            row_to_f32(op->k_type, op->k + j * op->k_nb1 + hkv * op->k_nb2 + k_i3 * op->k_nb3, s->kb + t * dk, dk);
            float *vrow = s->vb + t * dvp;
            row_to_f32(op->v_type, op->v + j * op->v_nb1 + hkv * op->v_nb2 + k_i3 * op->v_nb3, vrow, dv);
            for (int64_t d = dv; d < dvp; d++) vrow[d] = 0.0f;
        }

        /* score: S^T = K . Q^T */
        gemm(s->st, rp, s->kb, dk, 1, s->qt_mat, rp, kt, rp, dk, 0);

        /* softcap, mask */
        if (op->softcap != 0.0f) {
            const vf cap = vf_set1(op->softcap);
            for (int64_t i = 0; i < kt * rp; i += VL) vf_store(s->st + i, vf_mul(cap, vf_tanh(vf_load(s->st + i))));
        }
        if (op->mask) {
            for (int64_t t = 0; t < kt; t++) {
                float *srow = s->st + t * rp;
                for (int64_t gi = 0; gi < g; gi++) {
                    const float *mt = s->mt + (c->mask_blocks == 1 ? 0 : gi * KT * qtp) + t * qtp;
                    const vf sl = vf_set1(slope[gi]);
                    float *sr = srow + gi * qtp;
                    for (int64_t q = 0; q < qtp; q += VL) vf_store(sr + q, vf_fma(sl, vf_load(mt + q), vf_load(sr + q)));
                }
            }
        } else if (nq < qtp) {
            /* padding rows never take part */
            for (int64_t t = 0; t < kt; t++)
                for (int64_t gi = 0; gi < g; gi++)
                    for (int64_t q = nq; q < qtp; q++) s->st[t * rp + gi * qtp + q] = -INFINITY;
        }

        /* online softmax, VL rows at a time */
        int any_rescale = 0;
        for (int64_t r = 0; r < rp; r += VL) {
            vf mx = vf_set1(-INFINITY);
            for (int64_t t = 0; t < kt; t++) mx = vf_max(mx, vf_load(s->st + t * rp + r));
            const vf mold = vf_load(s->m + r);
            const vf mnew = vf_max(mold, mx);
            const vf msafe = vf_neginf_to(mnew, vf_zero());
            const vf a = vf_exp(vf_sub(mold, msafe));
            vf sum = vf_zero();
            for (int64_t t = 0; t < kt; t++) {
                const vf p = vf_exp(vf_sub(vf_load(s->st + t * rp + r), msafe));
                vf_store(s->st + t * rp + r, p);
                sum = vf_add(sum, p);
            }
            vf_store(s->l + r, vf_fma(vf_load(s->l + r), a, sum));
            vf_store(s->m + r, mnew);
            vf_store(s->alpha + r, a);
        }
        for (int64_t r = 0; r < rp; r++) any_rescale |= s->alpha[r] != 1.0f;
        if (any_rescale) {
            for (int64_t r = 0; r < rp; r++) {
                const float a = s->alpha[r];
                if (a == 1.0f) continue;
                float *orow = s->o + r * dvp;
                const vf av = vf_set1(a);
                for (int64_t d = 0; d < dvp; d += VL) vf_store(orow + d, vf_mul(av, vf_load(orow + d)));
            }
        }

        /* accumulate: O += P . V  (P^T is stored, so A(row, key) = st[key * rp + row]) */
        gemm(s->o, dvp, s->st, 1, rp, s->vb, dvp, rp, dvp, kt, 1);
    }

    /* sinks, normalise, store */
    for (int64_t gi = 0; gi < g; gi++) {
        const int64_t h = hk * g + gi;
        for (int64_t q = 0; q < nq; q++) {
            const int64_t r = gi * qtp + q;
            float M = s->m[r], S = s->l[r];
            float *orow = s->o + r * dvp;
            if (op->sinks) {
                const float sk = op->sinks[h];
                if (sk > M) {
                    const float ms = expf(M - sk);
                    for (int64_t d = 0; d < dv; d++) orow[d] *= ms;
                    S = S * ms + 1.0f;
                } else {
                    S += expf(sk - M);
                }
            }
            const float inv = S == 0.0f ? 0.0f : 1.0f / S;
            float *out = (float *)((char *)op->dst + i3 * op->dst_nb3 + (iq0 + q) * op->dst_nb2 + h * op->dst_nb1);
            for (int64_t d = 0; d < dv; d++) out[d] = orow[d] * inv;
        }
    }
}

/* ---- the op ---------------------------------------------------------------------------------- */

static int64_t count_visible(const dhsa_op *op, int n_threads) {
    if (!op->mask) return op->n_q * op->n_kv * op->n_head * op->ne3;
    /* each distinct mask row, weighted by the heads and sequences that read it */
    const int64_t rows = op->mask_ne3 * op->mask_ne2 * op->n_q;
    const int64_t weight = (op->n_head / op->mask_ne2) * (op->ne3 / op->mask_ne3);
    int64_t total = 0;
#pragma omp parallel for num_threads(n_threads) schedule(static) reduction(+ : total) if (rows * op->n_kv >= (1 << 17))
    for (int64_t r = 0; r < rows; r++) {
        const int64_t q = r % op->n_q, hm = (r / op->n_q) % op->mask_ne2, i3 = r / (op->n_q * op->mask_ne2);
        const uint16_t *mp =
            (const uint16_t *)((const char *)op->mask + q * op->mask_nb1 + hm * op->mask_nb2 + i3 * op->mask_nb3);
        int64_t n = 0;
        for (int64_t j = 0; j < op->n_kv; j++) n += mp[j] != NEG_INF_F16;
        total += n;
    }
    return total * weight;
}

int dhsa_attention(const dhsa_op *op, const dhsa_plan *plan, int n_threads, float *scratch, int64_t scratch_stride,
                   int want_visible, dhsa_counters *counters) {
    if (dhsa_op_unsupported(op) || n_threads < 1 || !scratch) return -1;
    if (!op->q || !op->k || !op->v || !op->dst || (op->mask_ne2 > 0) != (op->mask != 0)) return -1;
    if (plan && (plan->q_block <= 0 || plan->n_blocks != cdiv(op->n_q, plan->q_block) ||
                 (plan->n_sel_groups != 1 && plan->n_sel_groups != op->n_head_kv) || !plan->spans || !plan->offsets))
        return -1;
    const consts c = make_consts(op, plan ? plan->q_block : 0);
    if (scratch_stride < scratch_floats(op, &c)) return -1;

    const int64_t block = plan ? plan->q_block : op->n_q;
    const int64_t n_blocks = plan ? plan->n_blocks : 1;
    const int64_t tiles_per_block = cdiv(block, c.qt);
    const int64_t n_units = n_blocks * tiles_per_block * op->ne3 * op->n_head_kv;
    const dhsa_span full = {0, (int32_t)op->n_kv};
    int64_t attended = 0;

#pragma omp parallel num_threads(n_threads) reduction(+ : attended)
    {
        const scratch_t s = carve(scratch + (int64_t)omp_get_thread_num() * scratch_stride, op, &c);
        /* last query tiles first: under a causal mask they see the most keys */
#pragma omp for schedule(dynamic, 1)
        for (int64_t u = n_units - 1; u >= 0; u--) {
            const int64_t hk = u % op->n_head_kv;
            const int64_t i3 = (u / op->n_head_kv) % op->ne3;
            const int64_t tile = u / (op->n_head_kv * op->ne3);
            const int64_t b = tile / tiles_per_block, t = tile % tiles_per_block;
            const int64_t iq0 = b * block + t * c.qt;
            if (iq0 >= op->n_q || t * c.qt >= block) continue;
            const int64_t nq = imin(c.qt, imin(op->n_q - iq0, (b + 1) * block - iq0));
            const dhsa_span *sp = &full;
            int64_t nsp = 1;
            if (plan) {
                const int64_t i = (i3 * n_blocks + b) * plan->n_sel_groups + (plan->n_sel_groups == 1 ? 0 : hk);
                sp = plan->spans + plan->offsets[i];
                nsp = plan->offsets[i + 1] - plan->offsets[i];
            }
            attend_unit(op, &c, &s, i3, hk, iq0, nq, sp, nsp, &attended);
        }
    }
    if (counters) {
        counters->keys_attended += attended;
        if (want_visible) counters->keys_visible += plan ? count_visible(op, n_threads) : attended;
    }
    return 0;
}
