/* Elementwise backward: dx = (dy - t * A - B) * K with the per-channel coefficients of
 * channel_grads.cuh, dy and t rebuilt from z (grad_terms.cuh).  Rows, row_threads and UNROLL
 * as in normalize_activate.cu: the channel's five coefficients are fetched once per row.  dx
 * may be dz: each pack is read, then written, by the same thread.  With RESIDUAL, also
 * dres = dy (residual.cuh; r comes in the x argument where t needs it).
 * Needs: storage.h (STORE_BITS, ACC_BITS, IDX64, VEC), activation.cuh, residual.cuh,
 * channel_reduce.cuh (row_walk_t), grad_terms.cuh, T_KIND. */
/* A residual add's r beside 64-bit accumulators: fewer packs in flight (at grad_terms.cuh's
 * count ELU's log1p gets a stack frame).  cupy_abn/_kernel_backend.py: unroll(). */
#if RESIDUAL && ACC_BITS == 64
#undef UNROLL
#define UNROLL (VEC == 1 ? 2 : 1)
#endif

KERNEL LAUNCH_BOUNDS(MAX_BLOCK, 4)
void grad_input(GLOBAL const store_t *z, GLOBAL const store_t *dz, GLOBAL const store_t *x,
                GLOBAL const acc_t *coef, unsigned int channels, idx_t row_len, idx_t rows,
                unsigned int row_threads, acc_t param, acc_t rparam,
                GLOBAL store_t *dx RESIDUAL_GRAD_ARG)
{
    for (row_walk_t w = row_walk_start(channels, row_threads); w.r < rows;
         row_walk_next(&w, channels)) {
        const unsigned int c = w.c, lane = w.lane;
        const acc_t ca = coef[COEF_A * channels + c];
        const acc_t cb = coef[COEF_B * channels + c];
        const acc_t ck = coef[COEF_K * channels + c];
        const acc_t t_shift = coef[COEF_T0 * channels + c];
        const acc_t t_scale = coef[COEF_T1 * channels + c];
        const idx_t base = w.r * row_len;
        for (idx_t j = lane; j < row_len; j += UNROLL * row_threads) {
            acc_t vz[UNROLL][VEC], vdz[UNROLL][VEC], vx[UNROLL][VEC];
            UNROLLED for (int u = 0; u < UNROLL; ++u)
                if (j + u * row_threads < row_len)
                    load_terms(z, dz, x, base + j + u * row_threads, vz[u], vdz[u], vx[u]);
            UNROLLED for (int u = 0; u < UNROLL; ++u)
                if (j + u * row_threads < row_len) {
                    UNROLLED for (int k = 0; k < VEC; ++k) {
                        acc_t dy, t;
                        grad_terms(vz[u][k], vdz[u][k], vx[u][k], param, rparam, t_shift,
                                   t_scale, &dy, &t);
                        vz[u][k] = (dy - t * ca - cb) * ck;
#if RESIDUAL
                        vdz[u][k] = dy;   /* dL/dr */
#endif
                    }
                    store_pack(dx, base + j + u * row_threads, vz[u]);
#if RESIDUAL
                    store_pack(dres, base + j + u * row_threads, vdz[u]);
#endif
                }
        }
    }
}
