/* Elementwise backward of channels-last tensors, viewed as (M, C) rows of P packs
 * (channel_tile.cuh): dx = (dy - t * A - B) * K with the coefficients of channel_grads.cuh,
 * as grad_input.cu.  A thread keeps its pack column's coefficients in registers (5 * VEC), so
 * fewer rows are in flight.  dx may be dz.  With RESIDUAL, also dres = dy (residual.cuh).
 * Needs: storage.h, activation.cuh, residual.cuh, channel_reduce.cuh, grad_terms.cuh,
 * channel_tile.cuh, T_KIND. */
/* Rows in flight per thread (one with a residual add's r beside 64-bit accumulators: sm_80
 * with CUDA 12 would give ELU's log1p a stack frame at two).
 * cupy_abn/_kernel_backend.py: unroll(). */
#undef UNROLL
#define UNROLL (VEC == 1 ? 4 : (VEC * GRAD_STREAMS * (1 + IDX64) > 8 \
                            || (RESIDUAL && ACC_BITS == 64) ? 1 : 2))

KERNEL LAUNCH_BOUNDS(MAX_BLOCK, 4)
void grad_input_last(GLOBAL const store_t *z, GLOBAL const store_t *dz, GLOBAL const store_t *x,
                     GLOBAL const acc_t *coef, unsigned int channels, unsigned int packs,
                     idx_t m, unsigned int tile_x, unsigned int parts, acc_t param,
                     acc_t rparam, GLOBAL store_t *dx RESIDUAL_GRAD_ARG)
{
    idx_t r, dr;
    const tile_walk_t w = tile_start(packs, tile_x, parts, &r, &dr);
    if (!w.active) return;
    acc_t ca[VEC], cb[VEC], ck[VEC], t_shift[VEC], t_scale[VEC];
    UNROLLED for (int k = 0; k < VEC; ++k) {
        const unsigned int c = w.p * VEC + k;
        ca[k] = coef[COEF_A * channels + c];
        cb[k] = coef[COEF_B * channels + c];
        ck[k] = coef[COEF_K * channels + c];
        t_shift[k] = coef[COEF_T0 * channels + c];
        t_scale[k] = coef[COEF_T1 * channels + c];
    }
    idx_t i = w.i;
    for (; r < m; r += UNROLL * dr, i += UNROLL * w.di) {
        acc_t vz[UNROLL][VEC], vdz[UNROLL][VEC], vx[UNROLL][VEC];
        UNROLLED for (int u = 0; u < UNROLL; ++u)
            if (r + u * dr < m) load_terms(z, dz, x, i + u * w.di, vz[u], vdz[u], vx[u]);
        UNROLLED for (int u = 0; u < UNROLL; ++u)
            if (r + u * dr < m) {
                UNROLLED for (int k = 0; k < VEC; ++k) {
                    acc_t dy, t;
                    grad_terms(vz[u][k], vdz[u][k], vx[u][k], param, rparam, t_shift[k],
                               t_scale[k], &dy, &t);
                    vz[u][k] = (dy - t * ca[k] - cb[k]) * ck[k];
#if RESIDUAL
                    vdz[u][k] = dy;   /* dL/dr */
#endif
                }
                store_pack(dx, i + u * w.di, vz[u]);
#if RESIDUAL
                store_pack(dres, i + u * w.di, vdz[u]);
#endif
            }
    }
}
