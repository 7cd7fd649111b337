/* Per-channel backward, one thread per channel, over (C, B) partial sums that a synchronized
 * layer summed across processes (without synchronization, grad_sums.cu finishes in its last
 * block).  The math is channel_grads.cuh's.
 * Needs: storage.h (PARAM_BITS, ACC_BITS), channel_reduce.cuh, channel_grads.cuh, T_KIND. */
KERNEL void channel_backward(GLOBAL acc_t *sum_dy, GLOBAL acc_t *sum_dy_t,
                             unsigned int channels, unsigned int parts,
                             GLOBAL const acc_t *stats, GLOBAL const param_t *gamma, acc_t m,
                             int training, int abs_gamma, GLOBAL param_t *dgamma,
                             GLOBAL param_t *dbeta, GLOBAL acc_t *coef)
{
    const unsigned int c = BLOCK_ID * BLOCK_SIZE + THREAD_ID;
    if (c >= channels) return;
    finish_grads(sum_dy, sum_dy_t, parts, c, channels, stats, gamma, m, training, abs_gamma,
                 dgamma, dbeta, coef);
}
