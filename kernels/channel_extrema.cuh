/* The finiteness check's extrema (cupy_abn/_finite.py): with EXTREMA=1 the statistics
 * kernels (channel_moments.cu, channel_moments_last.cu) also write each partial's min and max
 * of x, from which the host bounds the float16 output before anything is written.
 * Needs: storage.h (acc_t). */
#ifndef EXTREMA
#define EXTREMA 0
#endif

/* Tree min and max of (lo, hi) down the rows of a tile tile_x threads wide (tile_x = 1: the
 * whole block), as tile_merge_moments (channel_reduce.cuh); fmin/fmax ignore NaN, which the
 * moments report. */
DEVICE void tile_minmax(SHARED_PTR acc_t *s_lo, SHARED_PTR acc_t *s_hi, unsigned int tile_x,
                        acc_t *lo, acc_t *hi)
{
    const unsigned int tid = THREAD_ID;
    s_lo[tid] = *lo;
    s_hi[tid] = *hi;
    BARRIER();
    for (unsigned int half_size = BLOCK_SIZE / 2; half_size >= tile_x; half_size >>= 1) {
        if (tid < half_size) {
            *lo = ACC_FN(fmin)(*lo, s_lo[tid + half_size]);
            *hi = ACC_FN(fmax)(*hi, s_hi[tid + half_size]);
            s_lo[tid] = *lo;
            s_hi[tid] = *hi;
        }
        BARRIER();
    }
}

