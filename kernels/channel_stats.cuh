/* The per-channel end of the training forward, in one place for the fused path (the last
 * block of channel_moments.cu) and the separate one (channel_train.cu, after a synchronized
 * layer exchanged the partials):
 *   merge the (C, B) moment partials with Chan's formula, in partial order b = 0 .. B-1;
 *   stats (6, C) = mean, var, invstd, g, scale = g * invstd, beta;
 *   running statistics updated in place when update_running != 0 (unbiased variance).
 * A partial with count 0 contributes nothing; no partial count is divided by.
 * Needs: storage.h (PARAM_BITS, ACC_BITS), channel_reduce.cuh (collect). */

DEVICE void finish_stats(GLOBAL acc_t *stats, unsigned int c, unsigned int channels,
                         acc_t mean, acc_t var, acc_t gamma, acc_t beta, acc_t eps,
                         int abs_gamma)
{
    const acc_t invstd = (acc_t)1 / ACC_FN(sqrt)(var + eps);
    const acc_t g = abs_gamma ? ACC_FN(fabs)(gamma) + eps : gamma;
    stats[ROW_MEAN * channels + c] = mean;
    stats[ROW_VAR * channels + c] = var;
    stats[ROW_INVSTD * channels + c] = invstd;
    stats[ROW_G * channels + c] = g;
    stats[ROW_SCALE * channels + c] = g * invstd;
    stats[ROW_BETA * channels + c] = beta;
}

typedef struct {
    GLOBAL const param_t *gamma;
    GLOBAL const param_t *beta;
    GLOBAL param_t *running_mean;
    GLOBAL param_t *running_var;
} channel_params;

DEVICE channel_params channel_params_of(GLOBAL const param_t *gamma, GLOBAL const param_t *beta,
                                        GLOBAL param_t *running_mean,
                                        GLOBAL param_t *running_var)
{
    channel_params p;
    p.gamma = gamma;
    p.beta = beta;
    p.running_mean = running_mean;
    p.running_var = running_var;
    return p;
}

/* The statistics of channel c from its merged (n, mean of x - shift, M2). */
DEVICE void finish_moments(acc_t n, acc_t mu, acc_t m2, unsigned int c, unsigned int channels,
                           acc_t shift, channel_params p, int update_running, acc_t eps,
                           acc_t decay, acc_t one_minus_decay, int abs_gamma,
                           GLOBAL acc_t *stats)
{
    const acc_t mean_c = shift + mu;
    const acc_t var_c = m2 / n;
    finish_stats(stats, c, channels, mean_c, var_c, LOAD_P(p.gamma, c), LOAD_P(p.beta, c), eps,
                 abs_gamma);
    if (update_running) {
        /* m / max(m - 1, 1): one value per channel keeps its (zero) variance, as Chainer */
        const acc_t unbiased = var_c * n / (n > (acc_t)1 ? n - (acc_t)1 : (acc_t)1);
        STORE_P(p.running_mean, c,
                decay * LOAD_P(p.running_mean, c) + one_minus_decay * mean_c);
        STORE_P(p.running_var, c, decay * LOAD_P(p.running_var, c) + one_minus_decay * unbiased);
    }
}

/* The statistics of channel c from its B partials, merged in order b = 0 .. B-1. */
DEVICE void finish_train(GLOBAL acc_t *count, GLOBAL acc_t *mean, GLOBAL acc_t *m2,
                         unsigned int parts, unsigned int c, unsigned int channels,
                         acc_t shift, channel_params p, int update_running, acc_t eps,
                         acc_t decay, acc_t one_minus_decay, int abs_gamma,
                         GLOBAL acc_t *stats)
{
    const unsigned int base = c * parts;
    acc_t n = 0, sum = 0;
    for (unsigned int b = 0; b < parts; ++b) {
        const acc_t cnt = collect(count + base + b);
        if (cnt == (acc_t)0) continue;   /* what an empty partial holds is never read */
        n += cnt;
        sum += cnt * collect(mean + base + b);
    }
    const acc_t mu = sum / n;
    acc_t q = 0, spread = 0;
    for (unsigned int b = 0; b < parts; ++b) {
        const acc_t cnt = collect(count + base + b);
        if (cnt == (acc_t)0) continue;
        const acc_t d = collect(mean + base + b) - mu;
        q += collect(m2 + base + b);
        spread += cnt * (d * d);
    }
    finish_moments(n, mu, q + spread, c, channels, shift, p, update_running, eps, decay,
                   one_minus_decay, abs_gamma, stats);
}
