/* Training statistics of x viewed as (N, C, S), S = row_len packs of VEC elements.
 *
 * Grid: C * B blocks; block b of channel c = BLOCK_ID % B, BLOCK_ID / B takes the channel's
 * packs j = b * BLOCK_SIZE + THREAD_ID + k * B * BLOCK_SIZE (j = n * row_len + s), UNROLL
 * packs in flight per thread.  No division per element: each thread keeps shifted sums
 * sum(d), sum(d^2) with d = x - x[0, c, 0] (one accumulator pair per lane of a pack), turns
 * them into (count, mean, M2) once, and the block merges those with Chan's formula.  The shift
 * keeps a mean of 1e4 with std 1e-2 accurate in float32.
 * Out: (count, mean of x - shift, M2) at [c * B + b] and shift[c].  With finish != 0 the last
 * block of a channel to arrive merges its B partials in order b = 0 .. B-1 and writes stats
 * (channel_stats.cuh): the training forward is this launch and normalize_activate.
 * With EXTREMA the block also writes the min and max of its slice at [c * B + b] of xmin,
 * xmax (from d = x - shift: 0 is the shift, itself an element of the channel).
 * Needs: storage.h (STORE_BITS, PARAM_BITS, ACC_BITS, IDX64, VEC), channel_reduce.cuh,
 * channel_stats.cuh, channel_extrema.cuh (EXTREMA). */
/* Packs in flight per thread: cupy_abn/_kernel_backend.py: unroll(). */
#define UNROLL (VEC == 1 ? 8 : 4)

/* One pack into the lanes' shifted sums; with EXTREMA also the extrema of d. */
DEVICE void moments_add(const acc_t *v, acc_t sh, acc_t *s1, acc_t *s2, acc_t *lo, acc_t *hi)
{
    UNROLLED for (int k = 0; k < VEC; ++k) {
        const acc_t d = v[k] - sh;
        s1[k] += d;
        s2[k] += d * d;
#if EXTREMA
        *lo = ACC_FN(fmin)(*lo, d);
        *hi = ACC_FN(fmax)(*hi, d);
#endif
    }
}

KERNEL LAUNCH_BOUNDS(MAX_BLOCK, 4)
void channel_moments(GLOBAL const store_t *x, unsigned int channels, idx_t row_len, idx_t m,
                     unsigned int parts, GLOBAL acc_t *count, GLOBAL acc_t *mean,
                     GLOBAL acc_t *m2, GLOBAL acc_t *shift, GLOBAL unsigned int *arrivals,
                     int finish, GLOBAL const param_t *gamma, GLOBAL const param_t *beta,
                     GLOBAL param_t *running_mean, GLOBAL param_t *running_var,
                     int update_running, acc_t eps, acc_t decay, acc_t one_minus_decay,
                     int abs_gamma, GLOBAL acc_t *stats, GLOBAL acc_t *xmin,
                     GLOBAL acc_t *xmax)
{
    SHARED acc_t s_n[MAX_BLOCK];
    SHARED acc_t s_mean[MAX_BLOCK];
    SHARED acc_t s_m2[MAX_BLOCK];
    SHARED acc_t s_shift;
    const unsigned int tid = THREAD_ID;
    const unsigned int c = BLOCK_ID / parts;
    const unsigned int b = BLOCK_ID - c * parts;
    const idx_t plane = (idx_t)channels * row_len;
    GLOBAL const store_t *xc = x + (idx_t)c * row_len * VEC;
    if (tid == 0) s_shift = LOAD_X(xc, 0);   /* one load per block, not one per thread */
    BARRIER();
    const acc_t sh = s_shift;

    acc_t s1[VEC], s2[VEC];
    UNROLLED for (int k = 0; k < VEC; ++k) s1[k] = s2[k] = 0;
    acc_t lo = 0, hi = 0;   /* EXTREMA: of d */
    unsigned int packs = 0;
    const idx_t stride = (idx_t)parts * BLOCK_SIZE;
    idx_t j = (idx_t)b * BLOCK_SIZE + tid;
    walk_t w = walk_start(j, stride, row_len);
    for (; j + (UNROLL - 1) * stride < m; j += UNROLL * stride) {
        acc_t v[UNROLL][VEC];
        UNROLLED for (int u = 0; u < UNROLL; ++u) {
            load_pack(xc, w.row * plane + w.col, v[u]);
            walk_step(&w);
        }
        UNROLLED for (int u = 0; u < UNROLL; ++u) moments_add(v[u], sh, s1, s2, &lo, &hi);
        packs += UNROLL;
    }
    for (; j < m; j += stride) {
        acc_t v[VEC];
        load_pack(xc, w.row * plane + w.col, v);
        walk_step(&w);
        moments_add(v, sh, s1, s2, &lo, &hi);
        packs += 1;
    }
    acc_t sum1 = 0, sum2 = 0;
    UNROLLED for (int k = 0; k < VEC; ++k) {
        sum1 += s1[k];
        sum2 += s2[k];
    }
    acc_t n = (acc_t)(packs * VEC), mu = 0, q = 0;
    if (packs != 0) {
        mu = sum1 / n;
        q = sum2 - sum1 * mu;
        q = q > (acc_t)0 ? q : (acc_t)0;   /* rounding can leave a tiny negative */
    }
    tile_merge_moments(s_n, s_mean, s_m2, 1, &n, &mu, &q);
#if EXTREMA
    tile_minmax(s_mean, s_m2, 1, &lo, &hi);
#endif
    if (tid != 0) return;
    const unsigned int at = c * parts + b;
#if EXTREMA
    xmin[at] = sh + lo;
    xmax[at] = sh + hi;
#endif
    publish(count + at, n);
    publish(mean + at, mu);
    publish(m2 + at, q);
    if (b == 0) shift[c] = sh;
    if (finish && arrived_last(arrivals, c, parts)) {
        const channel_params p = channel_params_of(gamma, beta, running_mean, running_var);
        finish_train(count, mean, m2, parts, c, channels, sh, p, update_running, eps, decay,
                     one_minus_decay, abs_gamma, stats);
    }
}
