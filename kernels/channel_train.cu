/* Per-channel statistics: one thread per channel.
 *
 * channel_train: merge the (C, B) moment partials of channel_moments (or of several
 * processes) with Chan's formula, finish mean/var/invstd/g/scale/beta into stats (6, C), and
 * update the running statistics in place when update_running != 0 (unbiased variance).
 * A partial with count 0 contributes nothing; no partial count is divided by.
 * channel_eval: the same stats from the running statistics.
 * Needs: storage.h with PARAM_BITS, ACC_BITS. */

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

KERNEL void channel_train(GLOBAL const acc_t *count, GLOBAL const acc_t *mean,
                          GLOBAL const acc_t *m2, GLOBAL const acc_t *shift,
                          unsigned int channels, unsigned int parts,
                          GLOBAL const param_t *gamma, GLOBAL const param_t *beta,
                          GLOBAL param_t *running_mean, GLOBAL param_t *running_var,
                          int update_running, acc_t eps, acc_t decay, acc_t one_minus_decay,
                          int abs_gamma,
                          GLOBAL acc_t *stats)
{
    const unsigned int c = BLOCK_ID * BLOCK_SIZE + THREAD_ID;
    if (c >= channels) return;
    const GLOBAL acc_t *cnt = count + c * parts;
    const GLOBAL acc_t *mu_b = mean + c * parts;
    const GLOBAL acc_t *m2_b = m2 + c * parts;

    acc_t n = 0, sum = 0;
    for (unsigned int b = 0; b < parts; ++b) {
        if (cnt[b] == (acc_t)0) continue;
        n += cnt[b];
        sum += cnt[b] * mu_b[b];
    }
    const acc_t mu = sum / n;
    acc_t q = 0, spread = 0;
    for (unsigned int b = 0; b < parts; ++b) {
        if (cnt[b] == (acc_t)0) continue;
        const acc_t d = mu_b[b] - mu;
        q += m2_b[b];
        spread += cnt[b] * (d * d);
    }
    const acc_t mean_c = shift[c] + mu;
    const acc_t var_c = (q + spread) / n;
    finish_stats(stats, c, channels, mean_c, var_c, LOAD_P(gamma, c), LOAD_P(beta, c), eps,
                 abs_gamma);
    if (update_running) {
        const acc_t unbiased = var_c * n / (n - (acc_t)1);
        STORE_P(running_mean, c, decay * LOAD_P(running_mean, c) + one_minus_decay * mean_c);
        STORE_P(running_var, c, decay * LOAD_P(running_var, c) + one_minus_decay * unbiased);
    }
}

KERNEL void channel_eval(GLOBAL const param_t *gamma, GLOBAL const param_t *beta,
                         GLOBAL const param_t *running_mean, GLOBAL const param_t *running_var,
                         unsigned int channels, acc_t eps, int abs_gamma, GLOBAL acc_t *stats)
{
    const unsigned int c = BLOCK_ID * BLOCK_SIZE + THREAD_ID;
    if (c >= channels) return;
    finish_stats(stats, c, channels, LOAD_P(running_mean, c), LOAD_P(running_var, c),
                 LOAD_P(gamma, c), LOAD_P(beta, c), eps, abs_gamma);
}
