/* Elementwise forward: out = phi((x - mean) * scale + beta), per channel of x as (N, C, S).
 * out may be x (in place): each element is read, then written, by the same thread.
 * Grid-stride loop over all elements.  Needs: storage.h with STORE_BITS, ACC_BITS, IDX64;
 * activation.cuh. */
KERNEL void normalize_activate(GLOBAL const store_t *x, GLOBAL store_t *out,
                               GLOBAL const acc_t *stats, unsigned int channels,
                               idx_t spatial, idx_t numel, acc_t param)
{
    const idx_t stride = (idx_t)GRID_SIZE * BLOCK_SIZE;
    const idx_t start = (idx_t)BLOCK_ID * BLOCK_SIZE + THREAD_ID;
    /* rows n * C + c of length spatial: track c and the column, no division per step */
    walk_t w = walk_start(start, stride, spatial);
    unsigned int c = (unsigned int)(w.row % channels);
    const unsigned int dc = (unsigned int)(w.d_row % channels);
    for (idx_t i = start; i < numel; i += stride) {
        acc_t y = LOAD_X(x, i) - stats[ROW_MEAN * channels + c];
        y *= stats[ROW_SCALE * channels + c];
        y += stats[ROW_BETA * channels + c];
        STORE_X(out, i, act_forward(y, param));
        w.col += w.d_col;
        c += dc;
        if (w.col >= spatial) {
            w.col -= spatial;
            c += 1;
        }
        if (c >= channels) c -= channels;   /* c + dc + 1 < 2 * channels */
    }
}
