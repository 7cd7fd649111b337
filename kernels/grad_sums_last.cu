/* Per-(channel, block) partial sums of dy and dy * t of channels-last tensors, viewed as
 * (M, C) rows of P packs (channel_tile.cuh); dy and t rebuilt per element from z
 * (grad_terms.cuh), as grad_sums.cu, whose outputs and finish this has: the last block of a
 * tile writes dgamma, dbeta and the coefficients of its channels (channel_grads.cuh); with
 * SATURATED, the saturated ELU outputs of each channel's slice (channel_saturated.cuh).
 * Needs: storage.h, activation.cuh, channel_reduce.cuh, grad_terms.cuh, channel_grads.cuh,
 * channel_tile.cuh, channel_saturated.cuh, T_KIND. */
/* t's scale is constant per channel, so it multiplies each column's sum once, after the
 * loop (that frees VEC registers).  Rows in flight per thread: the per-channel shifts and sums
 * of a pack column take 3 * VEC registers, so fewer rows than grad_sums.cu.
 * cupy_abn/_kernel_backend.py: unroll(). */
#undef UNROLL
#if RESIDUAL && ACC_BITS == 64   /* r beside 64-bit accumulators: ELU's log1p needs room */
#define UNROLL (VEC == 1 ? 2 : 1)
#else
#define UNROLL (VEC == 1 ? 4 : (VEC * GRAD_STREAMS * (1 + IDX64) > 8 ? 1 : 2))
#endif

/* One row's pack: dy and dy * t of its VEC channels into their sums a, at. */
DEVICE void grads_add_columns(const acc_t *vz, const acc_t *vdz, const acc_t *vx,
                              acc_t param, acc_t rparam, const acc_t *t_shift, acc_t *a,
                              acc_t *at)
{
    UNROLLED for (int k = 0; k < VEC; ++k) {
        acc_t dy, t;
        grad_terms(vz[k], vdz[k], vx[k], param, rparam, t_shift[k], (acc_t)1, &dy, &t);
        a[k] += dy;
        at[k] += dy * t;
    }
}

KERNEL LAUNCH_BOUNDS(MAX_BLOCK, 4)
void grad_sums_last(GLOBAL const store_t *z, GLOBAL const store_t *dz, GLOBAL const store_t *x,
                    GLOBAL const acc_t *stats, unsigned int channels, unsigned int packs,
                    idx_t m, unsigned int tile_x, unsigned int parts, acc_t param,
                    acc_t rparam, GLOBAL acc_t *sum_dy, GLOBAL acc_t *sum_dy_t,
                    GLOBAL unsigned int *arrivals, int finish, GLOBAL const param_t *gamma,
                    acc_t m_count, int training, int abs_gamma, GLOBAL param_t *dgamma,
                    GLOBAL param_t *dbeta, GLOBAL acc_t *coef SATURATED_ARG)
{
    SHARED acc_t s_dy[MAX_BLOCK];
    SHARED acc_t s_dyt[MAX_BLOCK];
    SHARED acc_t s_col_dy[MAX_BLOCK];    /* row 0's column sums: tile_x * VEC <= 32 * 8 */
    SHARED acc_t s_col_dyt[MAX_BLOCK];
    SHARED int s_last;
#if SATURATED
    SHARED unsigned int s_sat[MAX_BLOCK];
    unsigned int nsat[VEC];
    UNROLLED for (int k = 0; k < VEC; ++k) nsat[k] = 0;
#endif
    idx_t r, dr;
    tile_walk_t w = tile_start(packs, tile_x, parts, &r, &dr);
    acc_t t_shift[VEC], a[VEC], at[VEC];
    UNROLLED for (int k = 0; k < VEC; ++k) {
        a[k] = at[k] = 0;
        t_shift[k] = w.active ? t_shift_of(stats, w.p * VEC + k, channels) : (acc_t)0;
    }
    if (w.active) {
        idx_t i = w.i;
        for (; r + (UNROLL - 1) * dr < m; r += UNROLL * dr, i += UNROLL * w.di) {
            acc_t vz[UNROLL][VEC], vdz[UNROLL][VEC], vx[UNROLL][VEC];
            UNROLLED for (int u = 0; u < UNROLL; ++u)
                load_terms(z, dz, x, i + u * w.di, vz[u], vdz[u], vx[u]);
            UNROLLED for (int u = 0; u < UNROLL; ++u)
                grads_add_columns(vz[u], vdz[u], vx[u], param, rparam, t_shift, a, at);
#if SATURATED
            UNROLLED for (int u = 0; u < UNROLL; ++u) saturated_add(vz[u], rparam, nsat);
#endif
        }
        for (; r < m; r += dr, i += w.di) {
            acc_t vz[VEC], vdz[VEC], vx[VEC];
            load_terms(z, dz, x, i, vz, vdz, vx);
            grads_add_columns(vz, vdz, vx, param, rparam, t_shift, a, at);
#if SATURATED
            saturated_add(vz, rparam, nsat);
#endif
        }
    }
    UNROLLED for (int k = 0; k < VEC; ++k) {
        tile_sum2(s_dy, s_dyt, tile_x, &a[k], &at[k]);
        if (w.ly == 0) {
            s_col_dy[THREAD_ID * VEC + k] = a[k];
            s_col_dyt[THREAD_ID * VEC + k] = at[k];
        }
    }
#if SATURATED
    UNROLLED for (int k = 0; k < VEC; ++k) {
        tile_count(s_sat, tile_x, &nsat[k]);
        if (w.ly == 0 && w.active) saturated[(w.p * VEC + k) * parts + w.b] = nsat[k];
    }
#endif
    /* Not unrolled, from shared memory: a division per channel (t's scale 1 / g) with every
     * column sum live would need a stack frame. */
    if (w.ly == 0 && w.active)
        ROLLED for (int k = 0; k < VEC; ++k) {
            const unsigned int c = w.p * VEC + k, at_ = c * parts + w.b;
            publish(sum_dy + at_, s_col_dy[THREAD_ID * VEC + k]);
#if T_KIND == T_U
            publish(sum_dy_t + at_, s_col_dyt[THREAD_ID * VEC + k]);
#else
            publish(sum_dy_t + at_,
                    s_col_dyt[THREAD_ID * VEC + k] * t_scale_of(stats, c, channels));
#endif
        }
    const int last = tile_arrived_last(arrivals, w.tile, parts, finish, &s_last);
    if (!last || w.ly != 0 || !w.active) return;
    ROLLED for (int k = 0; k < VEC; ++k)
        finish_grads(sum_dy, sum_dy_t, parts, w.p * VEC + k, channels, stats, gamma, m_count,
                     training, abs_gamma, dgamma, dbeta, coef);
}
