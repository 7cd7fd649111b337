/* Elementwise backward: dx = (dy - t * A - B) * K with the per-channel coefficients of
 * channel_backward.cu, dy and t recomputed from z (grad_terms.cuh).  dx may be dz: each
 * element is read, then written, by the same thread.  Grid-stride loop over all elements.
 * Needs: storage.h (STORE_BITS, ACC_BITS, IDX64), activation.cuh, T_KIND. */
KERNEL void grad_input(GLOBAL const store_t *z, GLOBAL const store_t *dz,
                       GLOBAL const store_t *x, GLOBAL const acc_t *stats,
                       GLOBAL const acc_t *coef, unsigned int channels, idx_t spatial,
                       idx_t numel, acc_t param, GLOBAL store_t *dx)
{
    const idx_t stride = (idx_t)GRID_SIZE * BLOCK_SIZE;
    const idx_t start = (idx_t)BLOCK_ID * BLOCK_SIZE + THREAD_ID;
    /* rows n * C + c of length spatial: track c and the column, no division per step */
    walk_t w = walk_start(start, stride, spatial);
    unsigned int c = (unsigned int)(w.row % channels);
    const unsigned int dc = (unsigned int)(w.d_row % channels);
    for (idx_t i = start; i < numel; i += stride) {
        acc_t dy, t;
        grad_terms(z, dz, x, stats, channels, c, i, param, &dy, &t);
        STORE_X(dx, i, (dy - t * coef[COEF_A * channels + c] - coef[COEF_B * channels + c])
                           * coef[COEF_K * channels + c]);
        w.col += w.d_col;
        c += dc;
        if (w.col >= spatial) {
            w.col -= spatial;
            c += 1;
        }
        if (c >= channels) c -= channels;   /* c + dc + 1 < 2 * channels */
    }
}
