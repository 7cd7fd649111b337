/* The per-channel end of the backward, in one place for the fused path (the last block of
 * grad_sums.cu) and the separate one (channel_backward.cu, after a synchronized layer summed
 * the partials across processes):
 *   sum_dy, sum_dy_t = the (C, B) partials summed in order b = 0 .. B-1
 *   dL/dg  = sum dy*t, or sum dy*u / g for T_U (docs/math.md, "Backward": INPLACE-ABN II,
 *            stable form)
 *   dgamma = dL/dg * sign(gamma) in the in-place modes (+1 at zero), dbeta = sum dy
 *   coef (N_COEF, C): dx = (dy - t * A - B) * K with t = (src - T0) * T1 (grad_terms.cuh);
 *        A = B = 0 in evaluation mode.
 * dgamma and dbeta are written in the parameter dtype.
 * Needs: storage.h (PARAM_BITS, ACC_BITS), channel_reduce.cuh (collect), T_KIND. */

/* dgamma, dbeta and the coefficients of channel c from its sums; returns nothing, the
 * coefficients are in coef[.. * channels + c]. */
DEVICE void finish_grad_sums(acc_t sdy, acc_t sdt, unsigned int c, unsigned int channels,
                             GLOBAL const acc_t *stats, GLOBAL const param_t *gamma, acc_t m,
                             int training, int abs_gamma, GLOBAL param_t *dgamma,
                             GLOBAL param_t *dbeta, GLOBAL acc_t *coef)
{
    const acc_t g = stats[ROW_G * channels + c];
    const acc_t invstd = stats[ROW_INVSTD * channels + c];
#if T_KIND == T_U
    const acc_t dldg = sdt / g;
#else
    const acc_t dldg = sdt;
#endif
    acc_t a = 0, bb = 0;
    if (training) {
#if T_KIND == T_U
        a = dldg / (g * m);
#else
        a = sdt / m;
#endif
        bb = sdy / m;
    }
    coef[COEF_A * channels + c] = a;
    coef[COEF_B * channels + c] = bb;
    coef[COEF_K * channels + c] = g * invstd;
#if T_KIND == T_XHAT_FROM_X
    coef[COEF_T0 * channels + c] = stats[ROW_MEAN * channels + c];
    coef[COEF_T1 * channels + c] = invstd;
#else
    coef[COEF_T0 * channels + c] = stats[ROW_BETA * channels + c];
    coef[COEF_T1 * channels + c] = (acc_t)1 / g;
#endif
    const acc_t sign = (abs_gamma && LOAD_P(gamma, c) < (acc_t)0) ? (acc_t)-1 : (acc_t)1;
    STORE_P(dgamma, c, dldg * sign);
    STORE_P(dbeta, c, sdy);
}

/* The same from channel c's B partial sums, added in order b = 0 .. B-1. */
DEVICE void finish_grads(GLOBAL acc_t *sum_dy, GLOBAL acc_t *sum_dy_t, unsigned int parts,
                         unsigned int c, unsigned int channels, GLOBAL const acc_t *stats,
                         GLOBAL const param_t *gamma, acc_t m, int training, int abs_gamma,
                         GLOBAL param_t *dgamma, GLOBAL param_t *dbeta, GLOBAL acc_t *coef)
{
    acc_t sdy = 0, sdt = 0;
    for (unsigned int b = 0; b < parts; ++b) {
        sdy += collect(sum_dy + c * parts + b);
        sdt += collect(sum_dy_t + c * parts + b);
    }
    finish_grad_sums(sdy, sdt, c, channels, stats, gamma, m, training, abs_gamma, dgamma, dbeta,
                     coef);
}
