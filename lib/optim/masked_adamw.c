/* One AdamW step over many float32 tensors, each with an optional keep mask.
 *
 * Built and loaded by lib/optim/fused_masked_adamw.py (plain C, no torch
 * headers, so it compiles in under a second). Where keep[i] is 0 the entry's
 * weight and both moments are written 0; elsewhere the arithmetic is torch's
 * fused CPU AdamW (aten/src/ATen/native/cpu/FusedAdamKernel.cpp, ADAMW mode,
 * float32) operation for operation, so the results are bit for bit those of
 * torch.optim.AdamW(fused=True) on the masked gradient. Compile with
 * -ffp-contract=off: torch's build contracts exactly the products written
 * with fmaf below and no others, and differently in its vector loops and in
 * the scalar loop that finishes each tensor's last numel % 8 entries
 * (measured against torch 2.13; tests/test_fused_step.py checks it).
 *
 * One pass reads w, g, m, v and the mask and writes w, m, v: 29 bytes per
 * weight with a bool mask, 28.125 with a bit-packed one (bit i of byte j keeps
 * entry 8j + i, lib/pruning/bitmask.py), against torch's 28, instead of
 * 28 + 9 for a separate masking pass.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

typedef struct {
    float *w;
    const float *g;
    float *m;
    float *v;
    const uint8_t *keep; /* NULL: dense, no mask */
    int64_t n;
    int64_t vector_end;  /* entries from here on take torch's scalar-loop rounding */
    int64_t keep_bits;   /* 1: keep is bit-packed (8 entries a byte, little bit order); 0: one byte per entry */
    float decay;         /* 1 - lr * weight_decay (computed in double, as torch) */
    float lerp_weight;   /* 1 - beta1: m = lerp(m, g, lerp_weight) */
    float beta2;
    float one_minus_beta2;
    float bias_correction2_sqrt;
    float eps;
    float neg_step_size; /* -lr / (1 - beta1^t) */
} masked_adamw_tensor;

#define CHUNK ((int64_t)1 << 15) /* entries per work item: 128 KiB of each array; a multiple of 8, so a
                                  * work item's bit-mask bytes are its own */

/* torch's lerp: from m when the weight is small, else from g (better rounding).
 * V is the second moment as torch's vector loop rounds it; V_SCALAR as its scalar loop does. */
#define ADAMW_ENTRY(FROM_GRAD, V)                                                \
    float gi = g[i], mi = m[i];                                                  \
    float p = w[i] * decay;                                                      \
    float mn = fmaf(coeff, gi - mi, (FROM_GRAD) ? gi : mi);                      \
    float vn = V;                                                                \
    float denom = sqrtf(vn) / bc2_sqrt + eps;                                    \
    p = p + (nss * mn) / denom;
#define V_VECTOR fmaf(c2 * gi, gi, v[i] * beta2)
#define V_SCALAR fmaf(v[i], beta2, (c2 * gi) * gi)
#define STORE_KEEP(K)                                                            \
    const int k = (K);                                                           \
    w[i] = k ? p : 0.0f; m[i] = k ? mn : 0.0f; v[i] = k ? vn : 0.0f;
#define STORE_MASKED STORE_KEEP(keep[i] != 0)
#define STORE_BITS STORE_KEEP((keep[i >> 3] >> (i & 7)) & 1)
#define STORE_DENSE w[i] = p; m[i] = mn; v[i] = vn;

#define BLOCK 256 /* entries whose bit mask is unpacked at a time: 256 bytes on the stack */

/* Entries [lo, hi) of the vector part; keep[0] is entry lo's mask byte (NULL: dense).
 * Four loops, so that each one vectorises without a branch inside. */
static void vector_range(const masked_adamw_tensor *t, int64_t lo, int64_t hi, const uint8_t *restrict keep) {
    float *restrict w = t->w, *restrict m = t->m, *restrict v = t->v;
    const float *restrict g = t->g;
    const float decay = t->decay, beta2 = t->beta2, c2 = t->one_minus_beta2;
    const float bc2_sqrt = t->bias_correction2_sqrt, eps = t->eps, nss = t->neg_step_size;
    const int from_grad = !(fabsf(t->lerp_weight) < 0.5f);
    const float coeff = from_grad ? t->lerp_weight - 1.0f : t->lerp_weight;
    if (keep && !from_grad) {
        for (int64_t i = lo; i < hi; i++) { ADAMW_ENTRY(0, V_VECTOR) STORE_KEEP(keep[i - lo] != 0) }
    } else if (keep) {
        for (int64_t i = lo; i < hi; i++) { ADAMW_ENTRY(1, V_VECTOR) STORE_KEEP(keep[i - lo] != 0) }
    } else if (!from_grad) {
        for (int64_t i = lo; i < hi; i++) { ADAMW_ENTRY(0, V_VECTOR) STORE_DENSE }
    } else {
        for (int64_t i = lo; i < hi; i++) { ADAMW_ENTRY(1, V_VECTOR) STORE_DENSE }
    }
}

static void step_range(const masked_adamw_tensor *t, int64_t lo, int64_t hi) {
    float *restrict w = t->w, *restrict m = t->m, *restrict v = t->v;
    const float *restrict g = t->g;
    const uint8_t *restrict keep = t->keep;
    const float decay = t->decay, beta2 = t->beta2, c2 = t->one_minus_beta2;
    const float bc2_sqrt = t->bias_correction2_sqrt, eps = t->eps, nss = t->neg_step_size;
    const int from_grad = !(fabsf(t->lerp_weight) < 0.5f);
    const float coeff = from_grad ? t->lerp_weight - 1.0f : t->lerp_weight;
    const int64_t split = hi < t->vector_end ? hi : (lo > t->vector_end ? lo : t->vector_end);
    if (keep && t->keep_bits) {
        /* A bit read per entry does not vectorise (5-7x slower, measured): unpack a block of bits into
         * bytes, then run the byte-mask loop on it. lo and vector_end are multiples of 8. */
        uint8_t bytes[BLOCK];
        for (int64_t b = lo; b < split; b += BLOCK) {
            const int64_t e = b + BLOCK < split ? b + BLOCK : split;
            for (int64_t j = 0; j < (e - b + 7) / 8; j++) {
                const uint8_t packed = keep[b / 8 + j];
                for (int bit = 0; bit < 8; bit++)
                    bytes[8 * j + bit] = (packed >> bit) & 1;
            }
            vector_range(t, b, e, bytes);
        }
    } else {
        vector_range(t, lo, split, keep ? keep + lo : NULL);
    }
    for (int64_t i = split; i < hi; i++) { /* fewer than 8 entries per tensor */
        ADAMW_ENTRY(from_grad, V_SCALAR)
        if (keep && t->keep_bits) { STORE_BITS } else if (keep) { STORE_MASKED } else { STORE_DENSE }
    }
}

typedef struct {
    const masked_adamw_tensor *tensors;
    int64_t count;
    atomic_llong next; /* next work item, counted over all tensors' chunks */
} job;

/* Work items are handed out one at a time, so a core slowed by other load takes fewer. */
static void *worker(void *arg) {
    job *j = (job *)arg;
    int64_t tensor = 0, first_item = 0; /* items before `tensor` */
    for (;;) {
        int64_t item = atomic_fetch_add(&j->next, 1);
        while (tensor < j->count && item >= first_item + (j->tensors[tensor].n + CHUNK - 1) / CHUNK) {
            first_item += (j->tensors[tensor].n + CHUNK - 1) / CHUNK;
            tensor++;
        }
        if (tensor >= j->count)
            return NULL;
        const masked_adamw_tensor *t = &j->tensors[tensor];
        int64_t lo = (item - first_item) * CHUNK, hi = lo + CHUNK < t->n ? lo + CHUNK : t->n;
        step_range(t, lo, hi);
    }
}

/* Step every tensor on `threads` threads (the caller's included). Returns 0, or -1 if a thread failed to start
 * (the work is then done by the threads that did start). */
int masked_adamw_step(const masked_adamw_tensor *tensors, int64_t count, int threads) {
    job j = {tensors, count, 0};
    pthread_t ids[64];
    int started = 0, status = 0;
    if (threads > 64)
        threads = 64;
    for (int k = 1; k < threads; k++) {
        if (pthread_create(&ids[started], NULL, worker, &j) != 0) {
            status = -1;
            break;
        }
        started++;
    }
    worker(&j);
    for (int k = 0; k < started; k++)
        pthread_join(ids[k], NULL);
    return status;
}
