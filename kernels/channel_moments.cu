/* Per-(channel, block) moments of x viewed as (N, C, S): Welford over a slice of the channel,
 * then a tree merge in shared memory with Chan's formula.
 *
 * Grid: C * B blocks, block b of channel c = BLOCK_ID % B, BLOCK_ID / B.  Block b takes the
 * channel's elements j = (b * BLOCK_SIZE + THREAD_ID) + k * B * BLOCK_SIZE (j = n * S + s).
 * The data are shifted by the channel's first element x[0, c, 0] before the sums, so a mean of
 * 1e4 with std 1e-2 in float32 keeps an accurate variance.  Out: count, mean (of x - shift)
 * and m2 at [c * B + b], and shift[c].  Needs: storage.h with STORE_BITS, ACC_BITS, IDX64. */

/* (n_a, mean_a, m2_a) += (n_b, mean_b, m2_b); an empty side contributes nothing. */
DEVICE void chan_merge(acc_t *n_a, acc_t *mean_a, acc_t *m2_a, acc_t n_b, acc_t mean_b,
                       acc_t m2_b)
{
    acc_t n = *n_a + n_b;
    if (n_b == (acc_t)0) return;
    acc_t delta = mean_b - *mean_a;
    acc_t w = n_b / n;
    *mean_a += delta * w;
    *m2_a += m2_b + delta * delta * *n_a * w;
    *n_a = n;
}

KERNEL void channel_moments(GLOBAL const store_t *x, unsigned int channels, idx_t spatial,
                            idx_t m, unsigned int blocks, GLOBAL acc_t *count,
                            GLOBAL acc_t *mean, GLOBAL acc_t *m2, GLOBAL acc_t *shift)
{
    SHARED acc_t s_n[MAX_BLOCK];
    SHARED acc_t s_mean[MAX_BLOCK];
    SHARED acc_t s_m2[MAX_BLOCK];
    const unsigned int tid = THREAD_ID;
    const unsigned int c = BLOCK_ID / blocks;
    const unsigned int b = BLOCK_ID % blocks;
    const idx_t plane = (idx_t)channels * spatial;
    const GLOBAL store_t *xc = x + (idx_t)c * spatial;
    const acc_t sh = LOAD_X(xc, 0);

    acc_t n = 0, mu = 0, q = 0;
    const idx_t stride = (idx_t)blocks * BLOCK_SIZE;
    walk_t w = walk_start((idx_t)b * BLOCK_SIZE + tid, stride, spatial);
    for (idx_t j = (idx_t)b * BLOCK_SIZE + tid; j < m; j += stride, walk_step(&w)) {
        const acc_t d = LOAD_X(xc, w.row * plane + w.col) - sh;
        n += (acc_t)1;
        const acc_t delta = d - mu;
        mu += delta / n;
        q += delta * (d - mu);
    }
    s_n[tid] = n;
    s_mean[tid] = mu;
    s_m2[tid] = q;
    BARRIER();
    for (unsigned int half_size = BLOCK_SIZE / 2; half_size > 0; half_size >>= 1) {
        if (tid < half_size) {
            chan_merge(&n, &mu, &q, s_n[tid + half_size], s_mean[tid + half_size],
                       s_m2[tid + half_size]);
            s_n[tid] = n;
            s_mean[tid] = mu;
            s_m2[tid] = q;
        }
        BARRIER();
    }
    if (tid == 0) {
        count[(idx_t)c * blocks + b] = n;
        mean[(idx_t)c * blocks + b] = mu;
        m2[(idx_t)c * blocks + b] = q;
        if (b == 0) shift[c] = sh;
    }
}
