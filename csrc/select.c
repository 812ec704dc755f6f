/* Selection kernels (see dhsa.h): the heavy loops of DHSA's key selection. The host side (Rust)
 * strings them together, picks chunks within the budget and builds the span plan.
 *
 *   frontier       last visible key of every query row (from the mask)
 *   boundaries     dissimilarity of the mean key left and right of each position
 *   chunk keys     per kv head: chunk sum / sqrt(len) (length-normalised) or the chunk mean
 *   query means    per query block and kv head: mean over the block's queries and the group's heads
 *   chunk scores   query mean . chunk key
 *   key mass       exact softmax mass of each key, summed over a block's queries (oracle, recall)
 *   probe mass     log mass one probe query per block and head puts on each chunk (dhsa probe score)
 *   rows mass      log mass every query row puts on each chunk, softmax over chunk mean keys (rows) */
#include "dhsa.h"
#include "simd.h"

#include <omp.h>
#include <stdlib.h>

#define NEG_INF_F16 0xFC00u

/* Below this many element operations a loop runs on the calling thread: a parallel region costs
 * microseconds when the cores are idle and a scheduler time slice when they are not. */
#define PAR_MIN_WORK (1 << 17)

static int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

static const char *k_row(const dhsa_op *op, int64_t i3, int64_t hk, int64_t j) {
    return op->k + j * op->k_nb1 + hk * op->k_nb2 + i3 * op->k_nb3;
}

static float dot(const float *a, const float *b, int64_t n) {
    vf acc = vf_zero();
    int64_t i = 0;
    for (; i + VL <= n; i += VL) acc = vf_fma(vf_load(a + i), vf_load(b + i), acc);
    float s = vf_hsum(acc);
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static void axpy(float *y, const float *x, float a, int64_t n) {
    int64_t i = 0;
    const vf av = vf_set1(a);
    for (; i + VL <= n; i += VL) vf_store(y + i, vf_fma(av, vf_load(x + i), vf_load(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

void dhsa_row_frontier(const dhsa_op *op, int64_t i3, int32_t *last, int n_threads) {
#pragma omp parallel for num_threads(n_threads) schedule(static) if (op->n_q * op->mask_ne2 * 512 >= PAR_MIN_WORK)
    for (int64_t q = 0; q < op->n_q; q++) {
        int64_t best = op->mask ? -1 : op->n_kv - 1;
        /* the latest key any head of this query sees (masks may differ per head) */
        for (int64_t hm = 0; op->mask && hm < op->mask_ne2; hm++) {
            const uint16_t *mp = (const uint16_t *)((const char *)op->mask + q * op->mask_nb1 + hm * op->mask_nb2 +
                                                    (i3 % op->mask_ne3) * op->mask_nb3);
            int64_t j = op->n_kv - 1;
            while (j > best && mp[j] == NEG_INF_F16) j--;
            if (j > best) best = j;
        }
        last[q] = (int32_t)best;
    }
}

/* The sum over kv heads of key row j, into out (dk floats; the caller keeps padding at zero). */
static void head_sum_key(const dhsa_op *op, int64_t i3, int64_t j, float *out) {
    memset(out, 0, sizeof(float) * (size_t)op->dk);
    for (int64_t hk = 0; hk < op->n_head_kv; hk++) accum_row(op->k_type, k_row(op, i3, hk, j), out, op->dk);
}

void dhsa_boundary_scores(const dhsa_op *op, int64_t i3, int64_t n, int64_t w, float *out, int n_threads) {
    const int64_t dk = op->dk, dkp = (dk + 7) / 8 * 8, slots = 2 * w + 1;
    if (n <= 0) return;
#pragma omp parallel num_threads(n_threads) if (n * op->n_head_kv * dk >= PAR_MIN_WORK)
    {
        const int nt = omp_get_num_threads(), t = omp_get_thread_num();
        const int64_t j0 = n * t / nt, j1 = n * (t + 1) / nt;
        /* a ring of the 2w+1 head-summed keys around j, and running sums of each side; rows are
         * padded to a vector multiple with zeros so the fused loop below has no tail */
        float *ring = calloc((size_t)(dkp * slots), sizeof(float));
        float *left = calloc((size_t)dkp, sizeof(float)), *right = calloc((size_t)dkp, sizeof(float));
        float *zero = calloc((size_t)dkp, sizeof(float));
#define RING(j) (ring + ((j) % slots) * dkp)
        if (ring && left && right && zero && j0 < j1) {
            /* left = keys [j0-w, j0), right = keys [j0, j0+w) (clipped to [0, n)) */
            for (int64_t j = imax(0, j0 - w); j < imin(n, j0 + w); j++) {
                head_sum_key(op, i3, j, RING(j));
                accum_row(0, (const char *)RING(j), j < j0 ? left : right, dkp);
            }
            for (int64_t j = j0; j < j1; j++) {
                /* slide by one: key j-1 moves from right to left, j-1-w leaves, j+w-1 enters;
                 * update both sums and their three dot products in one pass */
                const int slide = j > j0;
                const float *mid = slide ? RING(j - 1) : zero;
                const float *gone = slide && j - 1 - w >= 0 ? RING(j - 1 - w) : zero;
                const float *enter = zero;
                if (slide && j + w - 1 < n) {
                    head_sum_key(op, i3, j + w - 1, RING(j + w - 1));
                    enter = RING(j + w - 1);
                }
                vf ll = vf_zero(), rr = vf_zero(), lr = vf_zero();
                for (int64_t d = 0; d < dkp; d += VL) {
                    const vf m = vf_load(mid + d);
                    const vf l = vf_sub(vf_add(vf_load(left + d), m), vf_load(gone + d));
                    const vf r = vf_sub(vf_add(vf_load(right + d), vf_load(enter + d)), m);
                    vf_store(left + d, l);
                    vf_store(right + d, r);
                    ll = vf_fma(l, l, ll);
                    rr = vf_fma(r, r, rr);
                    lr = vf_fma(l, r, lr);
                }
                const float sll = vf_hsum(ll), srr = vf_hsum(rr), slr = vf_hsum(lr);
                /* 1 - cosine similarity of the two means: 0 inside a uniform stretch, up to 2 at a turn */
                out[j] = (j == 0 || sll <= 0.0f || srr <= 0.0f) ? 0.0f : 1.0f - slr / sqrtf(sll * srr);
            }
        }
#undef RING
        free(ring);
        free(left);
        free(right);
        free(zero);
    }
}

void dhsa_chunk_keys(const dhsa_op *op, int64_t i3, int64_t n_chunks, const int32_t *starts, int length_normalised,
                     float *out, int n_threads) {
    const int64_t dk = op->dk, nh = op->n_head_kv;
#pragma omp parallel num_threads(n_threads) if ((int64_t)starts[n_chunks] * nh * dk >= PAR_MIN_WORK)
    {
#pragma omp for schedule(static)
        for (int64_t c = 0; c < n_chunks; c++) {
            const int64_t len = starts[c + 1] - starts[c];
            const float f = len <= 0 ? 0.0f : length_normalised ? 1.0f / sqrtf((float)len) : 1.0f / (float)len;
            for (int64_t hk = 0; hk < nh; hk++) {
                float *o = out + (c * nh + hk) * dk;
                memset(o, 0, sizeof(float) * (size_t)dk);
                for (int64_t j = starts[c]; j < starts[c + 1]; j++) accum_row(op->k_type, k_row(op, i3, hk, j), o, dk);
                for (int64_t d = 0; d < dk; d++) o[d] *= f;
            }
        }
    }
}

void dhsa_query_means(const dhsa_op *op, int64_t i3, int64_t q_block, float *out, int n_threads) {
    const int64_t dk = op->dk, nh = op->n_head_kv, g = op->n_head / op->n_head_kv;
    const int64_t n_blocks = (op->n_q + q_block - 1) / q_block;
#pragma omp parallel for num_threads(n_threads) schedule(static) if (op->n_q * op->n_head * dk >= PAR_MIN_WORK)
    for (int64_t i = 0; i < n_blocks * nh; i++) {
        const int64_t b = i / nh, hk = i % nh;
        float *o = out + i * dk;
        memset(o, 0, sizeof(float) * (size_t)dk);
        const int64_t q0 = b * q_block, q1 = imin(op->n_q, q0 + q_block);
        for (int64_t h = hk * g; h < (hk + 1) * g; h++)
            for (int64_t q = q0; q < q1; q++)
                axpy(o, (const float *)(op->q + q * op->q_nb1 + h * op->q_nb2 + i3 * op->q_nb3), 1.0f, dk);
        const float f = 1.0f / (float)((q1 - q0) * g);
        for (int64_t d = 0; d < dk; d++) o[d] *= f;
    }
}

void dhsa_chunk_scores(const dhsa_op *op, int64_t n_blocks, int64_t n_chunks, const float *qmeans, const float *ckeys,
                       float *out, int n_threads) {
    const int64_t dk = op->dk, nh = op->n_head_kv;
#pragma omp parallel for num_threads(n_threads) schedule(static) if (n_blocks * nh * n_chunks * dk >= PAR_MIN_WORK)
    for (int64_t i = 0; i < n_blocks * nh; i++) {
        const int64_t hk = i % nh;
        const float *qm = qmeans + i * dk;
        float *o = out + i * n_chunks;
        for (int64_t c = 0; c < n_chunks; c++) o[c] = dot(qm, ckeys + (c * nh + hk) * dk, dk);
    }
}

void dhsa_key_mass(const dhsa_op *op, int64_t i3, int64_t q_block, int64_t n_sel_groups, float *out, int n_threads) {
    const int64_t dk = op->dk, nkv = op->n_kv, g = op->n_head / op->n_head_kv;
    const int64_t n_blocks = (op->n_q + q_block - 1) / q_block;
    const float qscale = op->softcap != 0.0f ? op->scale / op->softcap : op->scale;
    const uint32_t n_head_log2 = 1u << (uint32_t)floor(log2((double)op->n_head));
    const float m0 = powf(2.0f, -(op->max_bias) / n_head_log2);
    const float m1 = powf(2.0f, -(op->max_bias / 2.0f) / n_head_log2);
    memset(out, 0, sizeof(float) * (size_t)(n_blocks * n_sel_groups * nkv));
    /* one task per (block, kv head): keys of one kv head, summed into its selection group */
#pragma omp parallel num_threads(n_threads)
    {
        float *kf = malloc(sizeof(float) * (size_t)(nkv * dk));
        float *logit = malloc(sizeof(float) * (size_t)nkv);
        float *acc = malloc(sizeof(float) * (size_t)nkv);
#pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < n_blocks * op->n_head_kv; i++) {
            const int64_t b = i / op->n_head_kv, hk = i % op->n_head_kv;
            if (!kf || !logit || !acc) continue;
            for (int64_t j = 0; j < nkv; j++) row_to_f32(op->k_type, k_row(op, i3, hk, j), kf + j * dk, dk);
            memset(acc, 0, sizeof(float) * (size_t)nkv);
            const int64_t q0 = b * q_block, q1 = imin(op->n_q, q0 + q_block);
            for (int64_t h = hk * g; h < (hk + 1) * g; h++) {
                const float slope = op->max_bias <= 0.0f ? 1.0f
                                    : (uint32_t)h < n_head_log2 ? powf(m0, (float)(h + 1))
                                                                : powf(m1, (float)(2 * (h - n_head_log2) + 1));
                for (int64_t q = q0; q < q1; q++) {
                    const float *qr = (const float *)(op->q + q * op->q_nb1 + h * op->q_nb2 + i3 * op->q_nb3);
                    const uint16_t *mp = op->mask ? (const uint16_t *)((const char *)op->mask + q * op->mask_nb1 +
                                                                      (h % op->mask_ne2) * op->mask_nb2 +
                                                                      (i3 % op->mask_ne3) * op->mask_nb3)
                                                  : 0;
                    float mx = -INFINITY;
                    for (int64_t j = 0; j < nkv; j++) {
                        float m = mp ? f16_to_f32(mp[j]) * slope : 0.0f;
                        float s = -INFINITY;
                        if (m != -INFINITY) {
                            s = dot(qr, kf + j * dk, dk) * qscale;
                            if (op->softcap != 0.0f) s = op->softcap * tanhf(s);
                            s += m;
                        }
                        logit[j] = s;
                        mx = s > mx ? s : mx;
                    }
                    if (mx == -INFINITY) continue;
                    float sum = 0.0f;
                    for (int64_t j = 0; j < nkv; j++) {
                        logit[j] = logit[j] == -INFINITY ? 0.0f : expf(logit[j] - mx);
                        sum += logit[j];
                    }
                    const float inv = 1.0f / sum;
                    for (int64_t j = 0; j < nkv; j++) acc[j] += logit[j] * inv;
                }
            }
            float *o = out + (b * n_sel_groups + (n_sel_groups == 1 ? 0 : hk)) * nkv;
            if (n_sel_groups == 1) {
#pragma omp critical
                for (int64_t j = 0; j < nkv; j++) o[j] += acc[j];
            } else {
                for (int64_t j = 0; j < nkv; j++) o[j] += acc[j];
            }
        }
        free(kf);
        free(logit);
        free(acc);
    }
}

void dhsa_probe_chunk_mass(const dhsa_op *op, int64_t i3, int64_t n_blocks, const float *probes, int64_t n_chunks,
                           const int32_t *starts, float *out, int n_threads) {
    const int64_t dk = op->dk, nh = op->n_head, nhk = op->n_head_kv, g = nh / nhk;
    const int64_t n = n_chunks > 0 ? starts[n_chunks] : 0; /* keys [0, n) are scored */
    const float qscale = op->softcap != 0.0f ? op->scale / op->softcap : op->scale;
    /* every kv head's keys once, as f32 */
    float *kf = malloc(sizeof(float) * (size_t)(nhk * (n > 0 ? n : 1) * dk));
    if (!kf) {
        for (int64_t i = 0; i < n_blocks * nh * n_chunks; i++) out[i] = -INFINITY;
        return;
    }
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t i = 0; i < nhk * n; i++) {
        const int64_t hk = i / n, j = i % n;
        row_to_f32(op->k_type, k_row(op, i3, hk, j), kf + i * dk, dk);
    }
#pragma omp parallel num_threads(n_threads)
    {
        float *logit = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
#pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < n_blocks * nh; i++) {
            const int64_t h = i % nh, hk = h / g;
            const float *p = probes + i * dk, *kh = kf + hk * n * dk;
            float *o = out + i * n_chunks;
            if (!logit) {
                for (int64_t c = 0; c < n_chunks; c++) o[c] = -INFINITY;
                continue;
            }
            for (int64_t j = 0; j < n; j++) {
                float s = dot(p, kh + j * dk, dk) * qscale;
                if (op->softcap != 0.0f) s = op->softcap * tanhf(s);
                logit[j] = s;
            }
            for (int64_t c = 0; c < n_chunks; c++) {
                const int64_t a = starts[c], b = starts[c + 1];
                float mx = -INFINITY;
                for (int64_t j = a; j < b; j++) mx = logit[j] > mx ? logit[j] : mx;
                float sum = 0.0f;
                for (int64_t j = a; j < b; j++) sum += expf(logit[j] - mx);
                o[c] = b > a ? mx + logf(sum) : -INFINITY;
            }
        }
        free(logit);
    }
    free(kf);
}

/* Chunks that start at or before key `last` (starts ascending). */
static int64_t chunks_seen(const int32_t *starts, int64_t n_chunks, int32_t last) {
    int64_t lo = 0, hi = n_chunks;
    while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        if (starts[mid] <= last) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

#define QCM_ROWS 4 /* query rows scored together: each chunk key is loaded once for all of them */

void dhsa_query_chunk_mass(const dhsa_op *op, int64_t i3, int64_t q_block, int64_t row_step, const int32_t *last,
                           int64_t n_chunks, const int32_t *starts, const float *ckeys, float *out, int n_threads) {
    const int64_t dk = op->dk, nhk = op->n_head_kv, g = op->n_head / op->n_head_kv;
    const int64_t n_blocks = (op->n_q + q_block - 1) / q_block, dkv = dk / VL * VL;
    const float qscale = op->softcap != 0.0f ? op->scale / op->softcap : op->scale;
    const int64_t nc_alloc = n_chunks > 0 ? n_chunks : 1;
#pragma omp parallel num_threads(n_threads) if (op->n_q / row_step * op->n_head * n_chunks * dk >= PAR_MIN_WORK)
    {
        float *logit = malloc(sizeof(float) * (size_t)(QCM_ROWS * nc_alloc));
        float *lnlen = malloc(sizeof(float) * (size_t)nc_alloc);
        const float **rq = malloc(sizeof(float *) * (size_t)(q_block * g));
        int64_t *rnc = malloc(sizeof(int64_t) * (size_t)(q_block * g));
        const int ok = logit && lnlen && rq && rnc;
        for (int64_t c = 0; ok && c < n_chunks; c++) {
            const int64_t len = starts[c + 1] - starts[c];
            lnlen[c] = len > 0 ? logf((float)len) : -INFINITY;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < n_blocks * nhk; i++) {
            const int64_t b = i / nhk, hk = i % nhk;
            float *o = out + i * n_chunks;
            memset(o, 0, sizeof(float) * (size_t)n_chunks);
            const int64_t q0 = b * q_block, q1 = imin(op->n_q, q0 + q_block);
            /* the rows (query, head) that score, and how many chunks each sees */
            int64_t nr = 0;
            for (int64_t q = q0; ok && q < q1; q += row_step) {
                const int64_t nc = chunks_seen(starts, n_chunks, last[q]);
                for (int64_t h = hk * g; nc > 0 && h < (hk + 1) * g; h++, nr++) {
                    rq[nr] = (const float *)(op->q + q * op->q_nb1 + h * op->q_nb2 + i3 * op->q_nb3);
                    rnc[nr] = nc;
                }
            }
            for (int64_t r0 = 0; r0 < nr; r0 += QCM_ROWS) {
                const int64_t m = imin(QCM_ROWS, nr - r0);
                const float *qr[QCM_ROWS];
                int64_t ncm = 0;
                for (int64_t r = 0; r < QCM_ROWS; r++) {
                    qr[r] = rq[r0 + (r < m ? r : 0)];
                    ncm = imax(ncm, rnc[r0 + (r < m ? r : 0)]);
                }
                for (int64_t c = 0; c < ncm; c++) {
                    const float *k = ckeys + (c * nhk + hk) * dk;
                    vf a[QCM_ROWS];
                    for (int r = 0; r < QCM_ROWS; r++) a[r] = vf_zero();
                    for (int64_t d = 0; d < dkv; d += VL) {
                        const vf kv = vf_load(k + d);
                        for (int r = 0; r < QCM_ROWS; r++) a[r] = vf_fma(vf_load(qr[r] + d), kv, a[r]);
                    }
                    for (int r = 0; r < QCM_ROWS; r++) {
                        float s = vf_hsum(a[r]);
                        for (int64_t d = dkv; d < dk; d++) s += qr[r][d] * k[d];
                        s *= qscale;
                        if (op->softcap != 0.0f) s = op->softcap * tanhf(s);
                        logit[r * nc_alloc + c] = s + lnlen[c];
                    }
                }
                for (int64_t r = 0; r < m; r++) {
                    float *l = logit + r * nc_alloc;
                    const int64_t nc = rnc[r0 + r];
                    float mx = -INFINITY;
                    for (int64_t c = 0; c < nc; c++) mx = l[c] > mx ? l[c] : mx;
                    int64_t c = 0;
                    vf vs = vf_zero();
                    const vf vm = vf_set1(mx);
                    for (; c + VL <= nc; c += VL) {
                        const vf e = vf_exp(vf_sub(vf_load(l + c), vm));
                        vf_store(l + c, e);
                        vs = vf_add(vs, e);
                    }
                    float sum = vf_hsum(vs);
                    for (; c < nc; c++) {
                        l[c] = expf(l[c] - mx);
                        sum += l[c];
                    }
                    axpy(o, l, 1.0f / sum, nc);
                }
            }
            for (int64_t c = 0; c < n_chunks; c++) o[c] = o[c] > 0.0f ? logf(o[c]) : -INFINITY;
        }
        free(logit);
        free(lnlen);
        free(rq);
        free(rnc);
    }
}
