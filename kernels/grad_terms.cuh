/* dy and t of one element, recomputed from z (and x for plain ABN), never materialized:
 *   dy = dz * phi'(z);  t = (x - mean) * invstd | (phi_inv(z) - beta) / g | phi_inv(z)
 * as selected by T_KIND.  Shared by grad_sums.cu and grad_input.cu. */
DEVICE void grad_terms(GLOBAL const store_t *z, GLOBAL const store_t *dz,
                       GLOBAL const store_t *x, GLOBAL const acc_t *stats,
                       unsigned int channels, unsigned int c, idx_t i, acc_t param,
                       acc_t *dy, acc_t *t)
{
    const acc_t zi = LOAD_X(z, i);
    *dy = LOAD_X(dz, i) * act_deriv(zi, param);
#if T_KIND == T_XHAT_FROM_X
    *t = (LOAD_X(x, i) - stats[ROW_MEAN * channels + c]) * stats[ROW_INVSTD * channels + c];
#elif T_KIND == T_XHAT_FROM_Y
    *t = (act_inverse(zi, param) - stats[ROW_BETA * channels + c]) / stats[ROW_G * channels + c];
#else
    *t = act_inverse(zi, param);
#endif
}
