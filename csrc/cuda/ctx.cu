/* The C ABI of the CUDA path (see dhsa.h): a context per device (stream, events, a workspace that
 * grows and is reused), op checks, and the call that strings selection and attention together on
 * the context's stream. */
#include "common.cuh"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

using namespace dhsa;

struct dhsa_cuda_ctx {
    int device;
    cudaStream_t stream;
    cudaEvent_t ev[3];
    void *ws;
    size_t ws_bytes;
    unsigned long long *host_counters; /* pinned */
    /* the device copy of a host-resident mask, and which host mask it holds */
    void *mask_dev;
    size_t mask_cap;
    const void *mask_src;
    size_t mask_src_bytes;
    int64_t mask_epoch;
    /* where the last sparse call left its selection */
    int32_t *keys, *counts, *starts, *n_chunks;
    int64_t n_problems, key_stride, max_chunks;
};

static void set_err(char *err, size_t len, const char *fmt, ...) {
    if (!err || !len) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, len, fmt, ap);
    va_end(ap);
}

#define CK(call)                                                                                                       \
    do {                                                                                                               \
        cudaError_t e_ = (call);                                                                                       \
        if (e_ != cudaSuccess) {                                                                                       \
            set_err(err, err_len, "%s: %s (%s:%d)", #call, cudaGetErrorString(e_), __FILE__, __LINE__);               \
            return -1;                                                                                                 \
        }                                                                                                              \
    } while (0)

extern "C" int dhsa_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n;
}

extern "C" int dhsa_cuda_device_name(int device, char *buf, size_t len) {
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, device) != cudaSuccess) return -1;
    snprintf(buf, len, "%s", p.name);
    return 0;
}

extern "C" dhsa_cuda_ctx *dhsa_cuda_ctx_new(int device, char *err, size_t err_len) {
    dhsa_cuda_ctx *c = (dhsa_cuda_ctx *)calloc(1, sizeof(dhsa_cuda_ctx));
    if (!c) {
        set_err(err, err_len, "out of host memory");
        return nullptr;
    }
    c->device = device;
    cudaError_t e = cudaSetDevice(device);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking);
    for (int i = 0; i < 3 && e == cudaSuccess; i++) e = cudaEventCreate(&c->ev[i]);
    if (e == cudaSuccess) e = cudaMallocHost((void **)&c->host_counters, 8 * sizeof(unsigned long long));
    if (e != cudaSuccess) {
        set_err(err, err_len, "CUDA device %d: %s", device, cudaGetErrorString(e));
        dhsa_cuda_ctx_free(c);
        return nullptr;
    }
    return c;
}

extern "C" void dhsa_cuda_ctx_free(dhsa_cuda_ctx *c) {
    if (!c) return;
    cudaSetDevice(c->device);
    if (c->stream) cudaStreamSynchronize(c->stream);
    if (c->ws) cudaFree(c->ws);
    if (c->mask_dev) cudaFree(c->mask_dev);
    if (c->host_counters) cudaFreeHost(c->host_counters);
    for (int i = 0; i < 3; i++)
        if (c->ev[i]) cudaEventDestroy(c->ev[i]);
    if (c->stream) cudaStreamDestroy(c->stream);
    free(c);
}

static bool is_dense(const dhsa_op *op, const dhsa_cuda_select *sel) {
    return !sel || sel->mode == DHSA_CUDA_DENSE || op->n_kv <= sel->budget;
}

extern "C" const char *dhsa_cuda_op_unsupported(const dhsa_op *op, const dhsa_cuda_select *sel) {
    if (const char *why = dhsa_op_unsupported(op)) return why;
    if (op->k_type != op->v_type || (op->k_type != DHSA_F16 && op->k_type != DHSA_BF16))
        return "CUDA: K and V must both be f16 or both bf16";
    if (op->dk != op->dv || (op->dk != 64 && op->dk != 128)) return "CUDA: head sizes other than DK = DV = 64 or 128";
    if (!attention_supported(*op)) return "CUDA: K/V strides not multiples of 16 bytes";
    if (is_dense(op, sel)) return nullptr;
    if (sel->mode != DHSA_CUDA_DHSA && sel->mode != DHSA_CUDA_BLOCK && sel->mode != DHSA_CUDA_STREAMING)
        return "CUDA: unknown selection mode";
    if (sel->budget < 1 || sel->budget > (1 << 20)) return "CUDA: budget outside 1..2^20";
    if (op->q_nb1 % 16 || op->q_nb2 % 16 || op->q_nb3 % 16) return "CUDA: Q strides not multiples of 16 bytes";
    if (sel->q_block < 1 || sel->q_block > 4096) return "CUDA: q_block outside 1..4096";
    {
        const int64_t qb = sel->q_block < op->n_q ? sel->q_block : op->n_q;
        const int64_t n_blocks = (op->n_q + qb - 1) / qb;
        const int64_t hpi = 32 / (op->dk / 8);
        if (hpi * (n_blocks * (op->dk + 1) + 8 * op->dk) * 4 > 200 * 1024) return "CUDA: more than ~190 query blocks";
    }
    if (sel->mode == DHSA_CUDA_DHSA && sel->dynamic_chunks) {
        if (sel->chunk_min < 1 || sel->chunk_max < sel->chunk_min || sel->chunk_max > 64)
            return "CUDA: dynamic chunks longer than 64 keys";
        if (sel->boundary_window < 1 || sel->boundary_window > 16) return "CUDA: boundary window outside 1..16";
        if (op->n_kv > (1 << 19)) return "CUDA: dynamic chunks over more than 2^19 keys";
    }
    if (sel->mode == DHSA_CUDA_DHSA && !sel->dynamic_chunks && sel->chunk_max < 1) return "CUDA: empty chunks";
    if (sel->mode == DHSA_CUDA_BLOCK && sel->block_size < 1) return "CUDA: empty blocks";
    return nullptr;
}

/* Carves the workspace: offsets of each buffer (256-byte aligned) and the total. */
struct Layout {
    size_t last, blo, bhi, horizon, bscore, exits, cnts, seg_entry, seg_off, starts, n_chunks, qmeans, scores, taken,
        keys, counts, counters, total;
};

struct Geometry {
    int64_t q_block, n_blocks, n_sel, max_chunks, seg_len, n_seg, n_problems, key_stride;
};

static Geometry geometry(const dhsa_op *op, const dhsa_cuda_select *sel, bool dense) {
    Geometry g = {};
    if (dense) {
        g.q_block = 64;
        g.n_blocks = (op->n_q + 63) / 64;
        g.n_sel = 1;
        return g;
    }
    g.q_block = sel->q_block < op->n_q ? sel->q_block : op->n_q;
    g.n_blocks = (op->n_q + g.q_block - 1) / g.q_block;
    g.n_sel = sel->shared_heads ? 1 : op->n_head_kv;
    if (sel->mode == DHSA_CUDA_DHSA && sel->dynamic_chunks) {
        g.max_chunks = op->n_kv / sel->chunk_min + 2;
        int64_t L = (op->n_kv + 127) / 128;
        L = (L + 63) / 64 * 64;
        g.seg_len = L < 1024 ? 1024 : L;
        g.n_seg = (op->n_kv + g.seg_len - 1) / g.seg_len;
    } else if (sel->mode == DHSA_CUDA_STREAMING) {
        g.max_chunks = 1;
    } else {
        const int64_t len = sel->mode == DHSA_CUDA_BLOCK ? sel->block_size : sel->chunk_max;
        g.max_chunks = (op->n_kv + len - 1) / len + 1;
    }
    g.n_problems = op->ne3 * g.n_blocks * g.n_sel;
    g.key_stride = sel->budget;
    return g;
}

static Layout layout(const dhsa_op *op, const dhsa_cuda_select *sel, const Geometry &g, bool dense) {
    Layout l = {};
    size_t off = 0;
    auto take = [&](size_t bytes) {
        const size_t at = off;
        off += (bytes + 255) / 256 * 256;
        return at;
    };
    l.last = take(op->mask ? sizeof(int32_t) * op->mask_ne3 * op->mask_ne2 * op->n_q : 0);
    l.counters = take(8 * sizeof(unsigned long long));
    if (!dense) {
        const int64_t mx = sel->chunk_max;
        l.blo = take(sizeof(int32_t) * g.n_blocks);
        l.bhi = take(sizeof(int32_t) * g.n_blocks);
        l.horizon = take(sizeof(int32_t) * op->ne3);
        l.bscore = take(sizeof(float) * op->n_kv);
        l.exits = take(sizeof(int32_t) * g.n_seg * mx);
        l.cnts = take(sizeof(int32_t) * g.n_seg * mx);
        l.seg_entry = take(sizeof(int32_t) * (g.n_seg + 1));
        l.seg_off = take(sizeof(int32_t) * (g.n_seg + 1));
        l.starts = take(sizeof(int32_t) * (g.max_chunks + 1));
        l.n_chunks = take(sizeof(int32_t));
        l.qmeans = take(sizeof(float) * g.n_blocks * op->n_head_kv * op->dk);
        l.scores = take(sizeof(float) * g.n_blocks * g.n_sel * g.max_chunks);
        l.taken = take(g.n_blocks * g.n_sel * g.max_chunks);
        l.keys = take(sizeof(int32_t) * g.n_problems * g.key_stride);
        l.counts = take(sizeof(int32_t) * g.n_problems);
    }
    l.total = off;
    return l;
}

static int grow(dhsa_cuda_ctx *c, size_t bytes, char *err, size_t err_len) {
    if (bytes <= c->ws_bytes) return 0;
    CK(cudaStreamSynchronize(c->stream));
    if (c->ws) CK(cudaFree(c->ws));
    c->ws = nullptr;
    c->ws_bytes = 0;
    const size_t want = bytes + bytes / 4; /* headroom: the next op is often a little larger */
    CK(cudaMalloc(&c->ws, want));
    c->ws_bytes = want;
    return 0;
}

/* Points op->mask at device memory: a mask in host memory (pinned or not) is copied into the
 * context's mask buffer, once per (host pointer, size, epoch). */
static int mask_on_device(dhsa_cuda_ctx *c, dhsa_op *op, int64_t epoch, char *err, size_t err_len) {
    if (!op->mask) return 0;
    cudaPointerAttributes at;
    cudaError_t e = cudaPointerGetAttributes(&at, op->mask);
    if (e != cudaSuccess) {
        cudaGetLastError(); /* an unknown pointer: plain host memory */
        at.type = cudaMemoryTypeUnregistered;
    }
    if (at.type == cudaMemoryTypeDevice || at.type == cudaMemoryTypeManaged) return 0;
    const size_t bytes = (size_t)(op->mask_ne3 - 1) * op->mask_nb3 + (size_t)(op->mask_ne2 - 1) * op->mask_nb2 +
                         (size_t)(op->n_q - 1) * op->mask_nb1 + (size_t)op->n_kv * sizeof(uint16_t);
    const bool fresh = epoch != 0 && c->mask_epoch == epoch && c->mask_src == op->mask && c->mask_src_bytes == bytes;
    if (!fresh) {
        if (bytes > c->mask_cap) {
            CK(cudaStreamSynchronize(c->stream));
            if (c->mask_dev) CK(cudaFree(c->mask_dev));
            c->mask_dev = nullptr;
            c->mask_cap = 0;
            CK(cudaMalloc(&c->mask_dev, bytes + bytes / 4));
            c->mask_cap = bytes + bytes / 4;
        }
        CK(cudaMemcpyAsync(c->mask_dev, op->mask, bytes, cudaMemcpyHostToDevice, c->stream));
        c->mask_src = op->mask;
        c->mask_src_bytes = bytes;
        c->mask_epoch = epoch;
    }
    op->mask = (const uint16_t *)c->mask_dev;
    return 0;
}

extern "C" int dhsa_cuda_attention(dhsa_cuda_ctx *c, const dhsa_op *op_in, const dhsa_cuda_select *sel, int flags,
                                   int64_t mask_epoch, dhsa_cuda_result *res, char *err, size_t err_len) {
    dhsa_op op_dev = op_in ? *op_in : dhsa_op{};
    const dhsa_op *op = &op_dev;
    if (!c || !op_in || !res) {
        set_err(err, err_len, "null argument");
        return -1;
    }
    if (const char *why = dhsa_cuda_op_unsupported(op, sel)) {
        set_err(err, err_len, "op not computed: %s", why);
        return -1;
    }
    if (!op->q || !op->k || !op->v || !op->dst || (op->mask_ne2 > 0) != (op->mask != nullptr)) {
        set_err(err, err_len, "op with missing tensors");
        return -1;
    }
    if (((uintptr_t)op->k | (uintptr_t)op->v | (is_dense(op, sel) ? 0 : (uintptr_t)op->q)) % 16 != 0) {
        set_err(err, err_len, "K/V (or Q of a sparse op) not 16-byte aligned");
        return -1;
    }
    CK(cudaSetDevice(c->device));
    if (flags & DHSA_CUDA_SYNC_DEVICE) CK(cudaDeviceSynchronize());
    memset(res, 0, sizeof(*res));
    /* only the mask may come from host memory (llama.cpp's graph input); the rest must be on the device */
    const void *need_device[] = {op->q, op->k, op->v, op->dst};
    for (const void *p : need_device) {
        cudaPointerAttributes at;
        if (cudaPointerGetAttributes(&at, p) != cudaSuccess || at.type != cudaMemoryTypeDevice) {
            cudaGetLastError();
            set_err(err, err_len, "Q, K, V and dst must be in device memory of CUDA device %d", c->device);
            return -1;
        }
    }
    if (mask_on_device(c, &op_dev, mask_epoch, err, err_len)) return -1;

    bool dense = is_dense(op, sel);
    for (int attempt = 0; attempt < 2; attempt++) {
        const Geometry g = geometry(op, sel, dense);
        const Layout l = layout(op, sel, g, dense);
        if (grow(c, l.total, err, err_len)) return -1;
        char *w = (char *)c->ws;
        unsigned long long *counters = (unsigned long long *)(w + l.counters);
        int32_t *last = op->mask ? (int32_t *)(w + l.last) : nullptr;
        cudaStream_t s = c->stream;

        CK(cudaMemsetAsync(counters, 0, 8 * sizeof(unsigned long long), s));
        if (!dense) CK(cudaMemsetAsync(w + l.n_chunks, 0, sizeof(int32_t), s));
        CK(cudaEventRecord(c->ev[0], s));
        if (op->mask) CK(launch_frontier(*op, last, s));
        if (!dense) {
            CK(cudaMemsetAsync(w + l.horizon, 0, sizeof(int32_t) * op->ne3, s));
            for (int64_t i3 = 0; i3 < op->ne3; i3++) {
                SelArgs a = {};
                a.op = *op;
                a.sel = *sel;
                a.i3 = i3;
                a.q_block = g.q_block;
                a.n_blocks = g.n_blocks;
                a.n_sel = g.n_sel;
                a.max_chunks = g.max_chunks;
                a.seg_len = g.seg_len;
                a.n_seg = g.n_seg;
                a.last = last ? last + (i3 % op->mask_ne3) * op->mask_ne2 * op->n_q : nullptr;
                a.blo = (int32_t *)(w + l.blo);
                a.bhi = (int32_t *)(w + l.bhi);
                a.horizon = (int32_t *)(w + l.horizon) + i3;
                a.bscore = (float *)(w + l.bscore);
                a.exits = (int32_t *)(w + l.exits);
                a.cnts = (int32_t *)(w + l.cnts);
                a.seg_entry = (int32_t *)(w + l.seg_entry);
                a.seg_off = (int32_t *)(w + l.seg_off);
                a.starts = (int32_t *)(w + l.starts);
                a.n_chunks = (int32_t *)(w + l.n_chunks);
                a.qmeans = (float *)(w + l.qmeans);
                a.scores = (float *)(w + l.scores);
                a.taken = (uint8_t *)(w + l.taken);
                a.keys = (int32_t *)(w + l.keys) + i3 * g.n_blocks * g.n_sel * g.key_stride;
                a.counts = (int32_t *)(w + l.counts) + i3 * g.n_blocks * g.n_sel;
                a.counters = counters;
                CK(launch_selection(a, s));
            }
        }
        CK(cudaEventRecord(c->ev[1], s));
        AttnArgs aa = {};
        aa.op = *op;
        aa.last = last;
        aa.keys = dense ? nullptr : (const int32_t *)(w + l.keys);
        aa.counts = dense ? nullptr : (const int32_t *)(w + l.counts);
        aa.key_stride = g.key_stride;
        aa.q_block = g.q_block;
        aa.n_blocks = g.n_blocks;
        aa.n_sel = g.n_sel;
        aa.counters = counters;
        CK(launch_attention(aa, s));
        if ((flags & DHSA_CUDA_COUNT_VISIBLE) && op->mask) CK(launch_count_visible(*op, counters + 1, s));
        CK(cudaEventRecord(c->ev[2], s));
        CK(cudaMemcpyAsync(c->host_counters, counters, 8 * sizeof(unsigned long long), cudaMemcpyDeviceToHost, s));
        CK(cudaStreamSynchronize(s));
        const unsigned long long *hc = c->host_counters;
        if (!dense && hc[4] > 0) {
            /* a block's sink and window alone exceed the budget: compute the op exactly instead */
            dense = true;
            continue;
        }
        float t_sel = 0, t_attn = 0;
        CK(cudaEventElapsedTime(&t_sel, c->ev[0], c->ev[1]));
        CK(cudaEventElapsedTime(&t_attn, c->ev[1], c->ev[2]));
        res->select_ms += t_sel;
        res->attn_ms += t_attn;
        res->keys_attended = (int64_t)hc[0];
        res->keys_visible = (flags & DHSA_CUDA_COUNT_VISIBLE)
                                ? (op->mask ? (int64_t)hc[1] : op->n_q * op->n_kv * op->n_head * op->ne3)
                                : 0;
        res->sparse_blocks = (int64_t)hc[2];
        res->dense_blocks = (int64_t)hc[3];
        if (!dense) {
            c->keys = (int32_t *)(w + l.keys);
            c->counts = (int32_t *)(w + l.counts);
            c->starts = (int32_t *)(w + l.starts);
            c->n_chunks = (int32_t *)(w + l.n_chunks);
            c->n_problems = g.n_problems;
            c->key_stride = g.key_stride;
            c->max_chunks = g.max_chunks;
        } else {
            c->keys = nullptr;
            c->n_problems = 0;
        }
        return 0;
    }
    set_err(err, err_len, "internal: dense fallback did not finish");
    return -1;
}

extern "C" int64_t dhsa_cuda_last_selection(dhsa_cuda_ctx *c, int32_t *counts, int32_t *keys, int64_t n_problems,
                                            int64_t cap, char *err, size_t err_len) {
    if (!c || !c->keys) {
        set_err(err, err_len, "no sparse selection was made by the last call");
        return -1;
    }
    if (n_problems < c->n_problems || cap < c->key_stride) {
        set_err(err, err_len, "buffers too small: %lld problems x %lld keys needed", (long long)c->n_problems,
                (long long)c->key_stride);
        return -1;
    }
    CK(cudaSetDevice(c->device));
    CK(cudaMemcpy(counts, c->counts, sizeof(int32_t) * c->n_problems, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy2D(keys, sizeof(int32_t) * cap, c->keys, sizeof(int32_t) * c->key_stride,
                    sizeof(int32_t) * c->key_stride, c->n_problems, cudaMemcpyDeviceToHost));
    return c->n_problems;
}

extern "C" int64_t dhsa_cuda_last_chunks(dhsa_cuda_ctx *c, int32_t *starts, int64_t cap, char *err, size_t err_len) {
    if (!c || !c->keys) {
        set_err(err, err_len, "no sparse selection was made by the last call");
        return -1;
    }
    CK(cudaSetDevice(c->device));
    int32_t n = 0;
    CK(cudaMemcpy(&n, c->n_chunks, sizeof(int32_t), cudaMemcpyDeviceToHost));
    if (n <= 0) return 0;
    if (cap < n + 1) {
        set_err(err, err_len, "buffer too small: %d starts", n + 1);
        return -1;
    }
    CK(cudaMemcpy(starts, c->starts, sizeof(int32_t) * (n + 1), cudaMemcpyDeviceToHost));
    return n + 1;
}
