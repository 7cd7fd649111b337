/* Per-(channel, block) partial sums of dy and dy * t over a slice of the channel, dy and t
 * rebuilt per element from z (grad_terms.cuh).  Same grid, walk and UNROLL-deep pack loads as
 * channel_moments.cu; x is read only for plain ABN (T_XHAT_FROM_X).  Outputs at [c * B + b];
 * with finish != 0 the last block of a channel to arrive writes dgamma, dbeta and the
 * coefficients of grad_input.cu (channel_grads.cuh): the backward is this launch and
 * grad_input.  With SATURATED (the finiteness check, never finishing) the block also counts
 * the saturated ELU outputs of its slice into saturated[c * B + b] (channel_saturated.cuh).
 * Needs: storage.h (STORE_BITS, PARAM_BITS, ACC_BITS, IDX64, VEC), activation.cuh,
 * channel_reduce.cuh, grad_terms.cuh, channel_grads.cuh, channel_saturated.cuh, T_KIND. */

/* The check's variants (SATURATED) keep one pack per tensor in flight on the vector path: the
 * count's register would spill the float16 packs' variants (and float64's with 64-bit
 * indices) at two.  cupy_abn/_kernel_backend.py: unroll(). */
#if SATURATED && VEC != 1
#undef UNROLL
#define UNROLL 1
#endif
/* A residual add's r beside 64-bit accumulators: fewer packs in flight (at grad_terms.cuh's
 * count ELU's log1p gets a stack frame), as in grad_input.cu. */
#if RESIDUAL && ACC_BITS == 64
#undef UNROLL
#define UNROLL (VEC == 1 ? 2 : 1)
#endif

/* One pack's dy and dy * t into the lanes' sums a, at. */
DEVICE void grads_add(const acc_t *vz, const acc_t *vdz, const acc_t *vx, acc_t param,
                      acc_t rparam, acc_t t_shift, acc_t t_scale, acc_t *a, acc_t *at)
{
    UNROLLED for (int k = 0; k < VEC; ++k) {
        acc_t dy, t;
        grad_terms(vz[k], vdz[k], vx[k], param, rparam, t_shift, t_scale, &dy, &t);
        a[k] += dy;
        at[k] += dy * t;
    }
}

KERNEL LAUNCH_BOUNDS(MAX_BLOCK, 4)
void grad_sums(GLOBAL const store_t *z, GLOBAL const store_t *dz, GLOBAL const store_t *x,
               GLOBAL const acc_t *stats, unsigned int channels, idx_t row_len, idx_t m,
               unsigned int parts, acc_t param, acc_t rparam, GLOBAL acc_t *sum_dy,
               GLOBAL acc_t *sum_dy_t, GLOBAL unsigned int *arrivals, int finish,
               GLOBAL const param_t *gamma, acc_t m_count, int training, int abs_gamma,
               GLOBAL param_t *dgamma, GLOBAL param_t *dbeta, GLOBAL acc_t *coef SATURATED_ARG)
{
    SHARED acc_t s_dy[MAX_BLOCK];
    SHARED acc_t s_dyt[MAX_BLOCK];
#if SATURATED
    SHARED unsigned int s_sat[MAX_BLOCK];
    unsigned int nsat = 0;
#endif
    const unsigned int tid = THREAD_ID;
    const unsigned int c = BLOCK_ID / parts;
    const unsigned int b = BLOCK_ID - c * parts;
    const idx_t plane = (idx_t)channels * row_len;
    const idx_t first = (idx_t)c * row_len * VEC;
    GLOBAL const store_t *zc = z + first;
    GLOBAL const store_t *dzc = dz + first;
    GLOBAL const store_t *xc = x + first;
    acc_t t_shift, t_scale;
    t_constants(stats, c, channels, &t_shift, &t_scale);

    acc_t a[VEC], at[VEC];
    UNROLLED for (int k = 0; k < VEC; ++k) a[k] = at[k] = 0;
    const idx_t stride = (idx_t)parts * BLOCK_SIZE;
    idx_t j = (idx_t)b * BLOCK_SIZE + tid;
    walk_t w = walk_start(j, stride, row_len);
    for (; j + (UNROLL - 1) * stride < m; j += UNROLL * stride) {
        acc_t vz[UNROLL][VEC], vdz[UNROLL][VEC], vx[UNROLL][VEC];
        UNROLLED for (int u = 0; u < UNROLL; ++u) {
            load_terms(zc, dzc, xc, w.row * plane + w.col, vz[u], vdz[u], vx[u]);
            walk_step(&w);
        }
        UNROLLED for (int u = 0; u < UNROLL; ++u)
            grads_add(vz[u], vdz[u], vx[u], param, rparam, t_shift, t_scale, a, at);
#if SATURATED
        UNROLLED for (int u = 0; u < UNROLL; ++u) nsat += saturated_in_pack(vz[u], rparam);
#endif
    }
    for (; j < m; j += stride) {
        acc_t vz[VEC], vdz[VEC], vx[VEC];
        load_terms(zc, dzc, xc, w.row * plane + w.col, vz, vdz, vx);
        walk_step(&w);
        grads_add(vz, vdz, vx, param, rparam, t_shift, t_scale, a, at);
#if SATURATED
        nsat += saturated_in_pack(vz, rparam);
#endif
    }
    acc_t sdy = 0, sdt = 0;
    UNROLLED for (int k = 0; k < VEC; ++k) {
        sdy += a[k];
        sdt += at[k];
    }
    tile_sum2(s_dy, s_dyt, 1, &sdy, &sdt);
#if SATURATED
    tile_count(s_sat, 1, &nsat);
    if (tid == 0) saturated[c * parts + b] = nsat;
#endif
    if (tid != 0) return;
    publish(sum_dy + c * parts + b, sdy);
    publish(sum_dy_t + c * parts + b, sdt);
    if (finish && arrived_last(arrivals, c, parts))
        finish_grads(sum_dy, sum_dy_t, parts, c, channels, stats, gamma, m_count, training,
                     abs_gamma, dgamma, dbeta, coef);
}
