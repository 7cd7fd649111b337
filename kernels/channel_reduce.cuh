/* What the streaming kernels share: the walk along a channel, the tree reductions of a block,
 * and the hand-off by which the last block of a channel finishes it.
 * Needs: storage.h (idx_t, acc_t). */

/* Position (row, col) of a flat index in rows of length `len`, advanced by a fixed stride
 * without a division per step: stride = d_row * len + d_col, d_col < len. */
typedef struct { idx_t row, col, d_row, d_col, len; } walk_t;

DEVICE walk_t walk_start(idx_t start, idx_t stride, idx_t len)
{
    walk_t w;
    w.row = start / len;
    w.col = start - w.row * len;
    w.d_row = stride / len;
    w.d_col = stride - w.d_row * len;
    w.len = len;
    return w;
}

DEVICE void walk_step(walk_t *w)
{
    w->row += w->d_row;
    w->col += w->d_col;
    if (w->col >= w->len) {
        w->col -= w->len;
        w->row += 1;
    }
}

/* The rows n * C + c of x viewed as (N, C, S) that a thread of an elementwise kernel visits:
 * row_threads threads (a power of two) share a row, the block's other threads take the next
 * rows, and the grid strides over further rows.  The channel is advanced with the row, with
 * no division per row. */
typedef struct { idx_t r, step; unsigned int c, dc, lane; } row_walk_t;

DEVICE row_walk_t row_walk_start(unsigned int channels, unsigned int row_threads)
{
    row_walk_t w;
    const unsigned int rows_per_block = BLOCK_SIZE / row_threads;
    w.lane = THREAD_ID & (row_threads - 1);
    w.step = (idx_t)GRID_SIZE * rows_per_block;
    w.r = (idx_t)BLOCK_ID * rows_per_block + THREAD_ID / row_threads;
    w.c = (unsigned int)(w.r % channels);
    w.dc = (unsigned int)(w.step % channels);
    return w;
}

DEVICE void row_walk_next(row_walk_t *w, unsigned int channels)
{
    w->r += w->step;
    w->c += w->dc;
    if (w->c >= channels) w->c -= channels;   /* c + dc < 2 * channels */
}

/* (n_a, mean_a, m2_a) += (n_b, mean_b, m2_b) by Chan's formula; an empty side adds nothing. */
DEVICE void chan_merge(acc_t *n_a, acc_t *mean_a, acc_t *m2_a, acc_t n_b, acc_t mean_b,
                       acc_t m2_b)
{
    const acc_t n = *n_a + n_b;
    if (n_b == (acc_t)0) return;
    const acc_t delta = mean_b - *mean_a;
    const acc_t w = n_b / n;
    *mean_a += delta * w;
    *m2_a += m2_b + delta * delta * *n_a * w;
    *n_a = n;
}

/* Tree merge of (n, mean, m2) down the rows of a tile tile_x threads wide, in a fixed order:
 * the threads of row 0 end with their column's merge (tile_x = 1: the whole block into thread
 * 0).  The last BARRIER lets a caller reuse the arrays at once. */
DEVICE void tile_merge_moments(SHARED_PTR acc_t *s_n, SHARED_PTR acc_t *s_mean,
                               SHARED_PTR acc_t *s_m2, unsigned int tile_x,
                               acc_t *n, acc_t *mean, acc_t *m2)
{
    const unsigned int tid = THREAD_ID;
    s_n[tid] = *n;
    s_mean[tid] = *mean;
    s_m2[tid] = *m2;
    BARRIER();
    for (unsigned int half_size = BLOCK_SIZE / 2; half_size >= tile_x; half_size >>= 1) {
        if (tid < half_size) {
            chan_merge(n, mean, m2, s_n[tid + half_size], s_mean[tid + half_size],
                       s_m2[tid + half_size]);
            s_n[tid] = *n;
            s_mean[tid] = *mean;
            s_m2[tid] = *m2;
        }
        BARRIER();
    }
}

/* Tree sum of (a, b) down the rows of a tile, as tile_merge_moments. */
DEVICE void tile_sum2(SHARED_PTR acc_t *s_a, SHARED_PTR acc_t *s_b, unsigned int tile_x,
                      acc_t *a, acc_t *b)
{
    const unsigned int tid = THREAD_ID;
    s_a[tid] = *a;
    s_b[tid] = *b;
    BARRIER();
    for (unsigned int half_size = BLOCK_SIZE / 2; half_size >= tile_x; half_size >>= 1) {
        if (tid < half_size) {
            *a += s_a[tid + half_size];
            *b += s_b[tid + half_size];
            s_a[tid] = *a;
            s_b[tid] = *b;
        }
        BARRIER();
    }
}

/* Partials that another block of the same launch reads back (collect: LOAD_COHERENT, which the
 * preludes define).  On a GPU a volatile store before FENCE_GLOBAL suffices; OpenCL 1.2
 * orders nothing between work-groups, so there every word goes through an atomic. */
#if defined(PACK_ACCESS_OPENCL)
typedef union { acc_t value; uint words[sizeof(acc_t) / 4]; } acc_words;

DEVICE void publish(GLOBAL acc_t *p, acc_t v)
{
    acc_words u;
    u.value = v;
    for (unsigned int k = 0; k < sizeof(acc_t) / 4; ++k)
        atomic_xchg((volatile GLOBAL uint *)p + k, u.words[k]);
}
#else
DEVICE void publish(acc_t *p, acc_t v) { *(volatile acc_t *)p = v; }
#endif

DEVICE acc_t collect(GLOBAL acc_t *p) { return LOAD_COHERENT(p); }

/* Called by thread 0 of a block after it published its partial of channel c: true for the
 * one block that arrives last, which may then collect every partial of c.  `arrivals` is
 * zeroed by the host before the launch.  CUDA C++ Programming Guide, "Memory Fence
 * Functions": the fence before the count releases this block's partials; the one after it,
 * in the same thread and before any read, acquires every other block's. */
DEVICE int arrived_last(GLOBAL unsigned int *arrivals, unsigned int c, unsigned int parts)
{
    if (parts == 1) return 1;
    FENCE_GLOBAL();
    if (ATOMIC_INC(arrivals + c) != parts - 1) return 0;
    FENCE_GLOBAL();
    return 1;
}
