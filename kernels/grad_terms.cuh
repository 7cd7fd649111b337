/* dy and t of one element, rebuilt from z (and x for plain ABN), never materialized:
 *   dy = dz * phi'(z)
 *   t  = (src - t_shift) * t_scale, src = x (T_XHAT_FROM_X) or y = phi_inv(z) (otherwise;
 *        phi_inv(z) - r with a fused residual add, r in the x argument: residual.cuh):
 *        T_XHAT_FROM_X  (x - mean) * invstd
 *        T_XHAT_FROM_Y  (y - beta) * (1 / g)
 *        T_U            y - beta  (INPLACE-ABN II: u = g * xhat; t_scale is not applied)
 * The per-channel constants come from stats in grad_sums.cu (t_constants, once per thread)
 * and from the coefficient rows in grad_input.cu.  Needs: storage.h, activation.cuh,
 * residual.cuh, T_KIND. */

/* Packs in flight per streamed tensor in the backward's loops (z, dz, and x for plain ABN):
 * 2 packs, or 1 where they would not fit in 64 registers beside the walk (three tensors of
 * 8-wide packs, or 64-bit indices with more than two 4-wide tensors); 4 single elements on
 * the scalar path.  cupy_abn/_kernel_backend.py: unroll(). */
#define GRAD_STREAMS (T_KIND == T_XHAT_FROM_X || RESIDUAL ? 3 : 2)
#define UNROLL (VEC == 1 ? 4 : (VEC * GRAD_STREAMS * (1 + IDX64) > 16 ? 1 : 2))
/* Pack i of z and dz, and of x for plain ABN (T_XHAT_FROM_X) or of r for a residual add,
 * the one place the x argument is read. */
DEVICE void load_terms(GLOBAL const store_t *z, GLOBAL const store_t *dz,
                       GLOBAL const store_t *x, idx_t i, acc_t *vz, acc_t *vdz, acc_t *vx)
{
    load_pack(z, i, vz);
    load_pack(dz, i, vdz);
#if T_KIND == T_XHAT_FROM_X || RESIDUAL
    load_pack(x, i, vx);
#endif
}

DEVICE void grad_terms(acc_t z, acc_t dz, acc_t x, acc_t param, acc_t rparam, acc_t t_shift,
                       acc_t t_scale, acc_t *dy, acc_t *t)
{
    *dy = dz * act_deriv(z, param);
#if T_KIND == T_XHAT_FROM_X
    *t = (x - t_shift) * t_scale;
#elif T_KIND == T_XHAT_FROM_Y
    *t = (WITH_RESIDUAL(act_inverse(z, param, rparam), -x) - t_shift) * t_scale;
#else
    *t = WITH_RESIDUAL(act_inverse(z, param, rparam), -x) - t_shift;
#endif
}

DEVICE acc_t t_shift_of(GLOBAL const acc_t *stats, unsigned int c, unsigned int channels)
{
    return stats[(T_KIND == T_XHAT_FROM_X ? ROW_MEAN : ROW_BETA) * channels + c];
}

DEVICE acc_t t_scale_of(GLOBAL const acc_t *stats, unsigned int c, unsigned int channels)
{
#if T_KIND == T_XHAT_FROM_X
    return stats[ROW_INVSTD * channels + c];
#else
    return (acc_t)1 / stats[ROW_G * channels + c];
#endif
}

DEVICE void t_constants(GLOBAL const acc_t *stats, unsigned int c, unsigned int channels,
                        acc_t *t_shift, acc_t *t_scale)
{
    *t_shift = t_shift_of(stats, c, channels);
    *t_scale = t_scale_of(stats, c, channels);
}
