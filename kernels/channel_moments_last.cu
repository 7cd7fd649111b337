/* Training statistics of channels-last x, viewed as (M, C) rows of P packs (channel_tile.cuh).
 * Same outputs as channel_moments.cu: (count, mean of x - shift, M2) at [c * B + b] and
 * shift[c] = x[0, c]; with finish != 0 the last block of a tile merges each of its channels'
 * B partials in order and writes stats (channel_stats.cuh).  Each thread keeps shifted sums
 * for the VEC channels of its pack column; with EXTREMA (scalar path only) also their min and
 * max, written at [c * B + b] of xmin, xmax.
 * Needs: storage.h, channel_reduce.cuh, channel_stats.cuh, channel_tile.cuh,
 * channel_extrema.cuh (EXTREMA). */
/* Rows in flight per thread: cupy_abn/_kernel_backend.py: unroll(). */
#define UNROLL (VEC == 1 ? 8 : 4)   /* EXTREMA: VEC == 1 only (_kernel_source.py) */

/* One row's pack into its VEC channels' shifted sums; with EXTREMA also their extrema. */
DEVICE void moments_add_columns(const acc_t *v, const acc_t *sh, acc_t *s1, acc_t *s2,
                                acc_t *lo, acc_t *hi)
{
    UNROLLED for (int k = 0; k < VEC; ++k) {
        const acc_t d = v[k] - sh[k];
        s1[k] += d;
        s2[k] += d * d;
#if EXTREMA
        lo[k] = ACC_FN(fmin)(lo[k], d);
        hi[k] = ACC_FN(fmax)(hi[k], d);
#endif
    }
}

KERNEL LAUNCH_BOUNDS(MAX_BLOCK, 4)
void channel_moments_last(GLOBAL const store_t *x, unsigned int channels, unsigned int packs,
                          idx_t m, unsigned int tile_x, unsigned int parts, GLOBAL acc_t *count,
                          GLOBAL acc_t *mean, GLOBAL acc_t *m2, GLOBAL acc_t *shift,
                          GLOBAL unsigned int *arrivals, int finish,
                          GLOBAL const param_t *gamma, GLOBAL const param_t *beta,
                          GLOBAL param_t *running_mean, GLOBAL param_t *running_var,
                          int update_running, acc_t eps, acc_t decay, acc_t one_minus_decay,
                          int abs_gamma, GLOBAL acc_t *stats, GLOBAL acc_t *xmin,
                          GLOBAL acc_t *xmax)
{
    SHARED acc_t s_n[MAX_BLOCK];
    SHARED acc_t s_mean[MAX_BLOCK];
    SHARED acc_t s_m2[MAX_BLOCK];
    SHARED acc_t s_col_shift[MAX_BLOCK];   /* row 0's shifts: tile_x * VEC <= 32 * 8 */
    SHARED int s_last;
    idx_t r, dr;
    tile_walk_t w = tile_start(packs, tile_x, parts, &r, &dr);
    acc_t sh[VEC], s1[VEC], s2[VEC];
    UNROLLED for (int k = 0; k < VEC; ++k) sh[k] = s1[k] = s2[k] = 0;
    acc_t lo[VEC], hi[VEC];   /* EXTREMA: of d = x - shift */
    UNROLLED for (int k = 0; k < VEC; ++k) lo[k] = hi[k] = 0;
    unsigned int rows_seen = 0;
    if (w.active) {
        load_pack(x, w.p, sh);   /* row 0: each channel's shift */
        idx_t i = w.i;
        for (; r + (UNROLL - 1) * dr < m; r += UNROLL * dr, i += UNROLL * w.di) {
            acc_t v[UNROLL][VEC];
            UNROLLED for (int u = 0; u < UNROLL; ++u) load_pack(x, i + u * w.di, v[u]);
            UNROLLED for (int u = 0; u < UNROLL; ++u)
                moments_add_columns(v[u], sh, s1, s2, lo, hi);
            rows_seen += UNROLL;
        }
        for (; r < m; r += dr, i += w.di) {
            acc_t v[VEC];
            load_pack(x, i, v);
            moments_add_columns(v, sh, s1, s2, lo, hi);
            rows_seen += 1;
        }
    }
    const acc_t n0 = (acc_t)rows_seen;
    UNROLLED for (int k = 0; k < VEC; ++k) {
        acc_t n = n0, mu = 0, q = 0;
        if (rows_seen != 0) {
            mu = s1[k] / n;
            q = s2[k] - s1[k] * mu;
            q = q > (acc_t)0 ? q : (acc_t)0;   /* rounding can leave a tiny negative */
        }
        tile_merge_moments(s_n, s_mean, s_m2, tile_x, &n, &mu, &q);
#if EXTREMA
        tile_minmax(s_mean, s_m2, tile_x, &lo[k], &hi[k]);
#endif
        if (w.ly == 0 && w.active) {
            const unsigned int c = w.p * VEC + k, at = c * parts + w.b;
#if EXTREMA
            xmin[at] = sh[k] + lo[k];
            xmax[at] = sh[k] + hi[k];
#endif
            publish(count + at, n);
            publish(mean + at, mu);
            publish(m2 + at, q);
            if (w.b == 0) shift[c] = sh[k];
            s_col_shift[THREAD_ID * VEC + k] = sh[k];
        }
    }
    const int last = tile_arrived_last(arrivals, w.tile, parts, finish, &s_last);
    if (!last || w.ly != 0 || !w.active) return;
    const channel_params p = channel_params_of(gamma, beta, running_mean, running_var);
    ROLLED for (int k = 0; k < VEC; ++k)   /* one channel at a time: code size, registers */
        finish_train(count, mean, m2, parts, w.p * VEC + k, channels,
                     s_col_shift[THREAD_ID * VEC + k], p, update_running, eps, decay,
                     one_minus_decay, abs_gamma, stats);
}
