/* Per-channel backward: one thread per channel.  Sums the (C, B) partials of grad_sums.cu
 * (or of several processes), then
 *   dL/dg = sum dy*t (t = xhat)  or  (sum dy*y - beta * sum dy) / g  (T_KIND == T_Y)
 *   dgamma = dL/dg * sign(gamma) in the in-place modes (+1 at zero), dbeta = sum dy
 *   coef (3, C): dx = (dy - t * A - B) * K, with A = B = 0 in evaluation mode.
 * dgamma and dbeta are written in the parameter dtype.
 * Needs: storage.h (PARAM_BITS, ACC_BITS), T_KIND. */
KERNEL void channel_backward(GLOBAL const acc_t *sum_dy, GLOBAL const acc_t *sum_dy_t,
                             unsigned int channels, unsigned int parts,
                             GLOBAL const acc_t *stats, GLOBAL const param_t *gamma, acc_t m,
                             int training, int abs_gamma, GLOBAL param_t *dgamma,
                             GLOBAL param_t *dbeta, GLOBAL acc_t *coef)
{
    const unsigned int c = BLOCK_ID * BLOCK_SIZE + THREAD_ID;
    if (c >= channels) return;
    acc_t sdy = 0, sdt = 0;
    for (unsigned int b = 0; b < parts; ++b) {
        sdy += sum_dy[c * parts + b];
        sdt += sum_dy_t[c * parts + b];
    }
    const acc_t g = stats[ROW_G * channels + c];
    const acc_t beta = stats[ROW_BETA * channels + c];
#if T_KIND == T_Y
    const acc_t dldg = (sdt - beta * sdy) / g;
#else
    const acc_t dldg = sdt;
#endif
    acc_t a = 0, bb = 0;
    if (training) {
#if T_KIND == T_Y
        a = dldg / (g * m);
        /* "- beta/g * dL/dg": SPEC.md's "+" is a typo (see _numpy_backend.py). */
        bb = (sdy - beta / g * dldg) / m;
#else
        a = sdt / m;
        bb = sdy / m;
#endif
    }
    coef[COEF_A * channels + c] = a;
    coef[COEF_B * channels + c] = bb;
    coef[COEF_K * channels + c] = g * stats[ROW_INVSTD * channels + c];
    const acc_t sign = (abs_gamma && LOAD_P(gamma, c) < (acc_t)0) ? (acc_t)-1 : (acc_t)1;
    STORE_P(dgamma, c, dldg * sign);
    STORE_P(dbeta, c, sdy);
}
