/* Per-(channel, block) partial sums of dy and dy * t over a slice of the channel, with dy and
 * t recomputed per element from z (grad_terms.cuh).  Same grid and slicing as
 * channel_moments.cu: C * B blocks, outputs at [c * B + b].  Plain sums: tree reduction in
 * shared memory.  Needs: storage.h (STORE_BITS, ACC_BITS, IDX64), activation.cuh, T_KIND. */
KERNEL void grad_sums(GLOBAL const store_t *z, GLOBAL const store_t *dz,
                      GLOBAL const store_t *x, GLOBAL const acc_t *stats,
                      unsigned int channels, idx_t spatial, idx_t m, unsigned int blocks,
                      acc_t param, GLOBAL acc_t *sum_dy, GLOBAL acc_t *sum_dy_t)
{
    SHARED acc_t s_dy[MAX_BLOCK];
    SHARED acc_t s_dyt[MAX_BLOCK];
    const unsigned int tid = THREAD_ID;
    const unsigned int c = BLOCK_ID / blocks;
    const unsigned int b = BLOCK_ID % blocks;
    const idx_t plane = (idx_t)channels * spatial;
    const idx_t base = (idx_t)c * spatial;

    acc_t a = 0, at = 0;
    const idx_t stride = (idx_t)blocks * BLOCK_SIZE;
    walk_t w = walk_start((idx_t)b * BLOCK_SIZE + tid, stride, spatial);
    for (idx_t j = (idx_t)b * BLOCK_SIZE + tid; j < m; j += stride, walk_step(&w)) {
        const idx_t i = base + w.row * plane + w.col;
        acc_t dy, t;
        grad_terms(z, dz, x, stats, channels, c, i, param, &dy, &t);
        a += dy;
        at += dy * t;
    }
    s_dy[tid] = a;
    s_dyt[tid] = at;
    BARRIER();
    for (unsigned int half_size = BLOCK_SIZE / 2; half_size > 0; half_size >>= 1) {
        if (tid < half_size) {
            a += s_dy[tid + half_size];
            at += s_dyt[tid + half_size];
            s_dy[tid] = a;
            s_dyt[tid] = at;
        }
        BARRIER();
    }
    if (tid == 0) {
        sum_dy[(idx_t)c * blocks + b] = a;
        sum_dy_t[(idx_t)c * blocks + b] = at;
    }
}
