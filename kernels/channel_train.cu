/* Per-channel statistics, one thread per channel.
 * channel_train: channel_stats.cuh's finish over (C, B) moment partials that a synchronized
 *   layer exchanged (without synchronization, channel_moments.cu finishes in its last block).
 * channel_eval: the same stats from the running statistics.
 * Needs: storage.h (PARAM_BITS, ACC_BITS), channel_reduce.cuh, channel_stats.cuh. */

KERNEL void channel_train(GLOBAL acc_t *count, GLOBAL acc_t *mean, GLOBAL acc_t *m2,
                          GLOBAL const acc_t *shift, unsigned int channels, unsigned int parts,
                          GLOBAL const param_t *gamma, GLOBAL const param_t *beta,
                          GLOBAL param_t *running_mean, GLOBAL param_t *running_var,
                          int update_running, acc_t eps, acc_t decay, acc_t one_minus_decay,
                          int abs_gamma, GLOBAL acc_t *stats)
{
    const unsigned int c = BLOCK_ID * BLOCK_SIZE + THREAD_ID;
    if (c >= channels) return;
    const channel_params p = channel_params_of(gamma, beta, running_mean, running_var);
    finish_train(count, mean, m2, parts, c, channels, shift[c], p, update_running, eps, decay,
                 one_minus_decay, abs_gamma, stats);
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
