/* Channels small enough for one block: the block holds the whole channel in registers
 * (RES_ELEMS elements per thread, as RES_ELEMS / VEC packs), so the tensor is read once and
 * each pass is one launch.  x viewed as (N, C, S), S = row_len packs; block c is channel c;
 * thread tid holds the channel's packs j = tid + k * BLOCK_SIZE (j = n * row_len + s).
 *   normalize_train_resident: moments (shifted sums, Chan merge in the block), statistics and
 *     running statistics (channel_stats.cuh), then z = phi((x - mean) * scale + beta) from the
 *     registers: reads x once (the two-pass path reads it twice).
 *   grad_resident: the backward sums (grad_terms.cuh), dgamma, dbeta and the coefficients
 *     (channel_grads.cuh), then dx from the registers: reads z and dz once.
 * out may be x and dx may be dz: each pack is read, then written, by the same thread.  With
 * RESIDUAL (residual.cuh) z = phi(... + r), r read at the store, and grad_resident writes
 * dres = dy beside dx (r comes in the x argument where t needs it).
 * Needs: storage.h (STORE_BITS, PARAM_BITS, ACC_BITS, IDX64, VEC), activation.cuh,
 * residual.cuh, channel_reduce.cuh, channel_stats.cuh, grad_terms.cuh, channel_grads.cuh,
 * T_KIND. */
/* Elements a thread holds (half as many doubles: 64 registers per thread at 1024 threads).
 * cupy_abn/_kernel_backend.py: resident_block().  32-bit indices only (m <= 8192 per channel
 * and fewer than 2^31 elements in all: larger tensors take the two-pass path). */
/* Half as many with a residual add (r beside z and dz in grad_resident). */
#define RES_ELEMS ((ACC_BITS == 64 ? 4 : 8) / (1 + RESIDUAL))
#define RES_PACKS (RES_ELEMS / VEC)
#if IDX64
#error "the channel-resident kernels use 32-bit indices"
#endif
#define RES_MAX_BLOCK 1024

/* Thread tid's k-th pack of the channel: j = tid + k * BLOCK_SIZE, at row w.row, column
 * w.col of the walk; the walk is run again for the stores rather than keeping 64-bit
 * offsets in registers. */
#define RESIDENT_PACKS(k, w)                                                                  \
    walk_t w = walk_start(THREAD_ID, BLOCK_SIZE, row_len);                                    \
    UNROLLED for (int k = 0; k < RES_PACKS; ++k, walk_step(&w))                             \
        if ((idx_t)THREAD_ID + (idx_t)k * BLOCK_SIZE < m)

KERNEL LAUNCH_BOUNDS(RES_MAX_BLOCK, 1)
void normalize_train_resident(GLOBAL const store_t *x, GLOBAL store_t *out,
                              unsigned int channels, idx_t row_len, idx_t m,
                              GLOBAL const param_t *gamma, GLOBAL const param_t *beta,
                              GLOBAL param_t *running_mean, GLOBAL param_t *running_var,
                              int update_running, acc_t eps, acc_t decay,
                              acc_t one_minus_decay, int abs_gamma, acc_t param,
                              GLOBAL acc_t *stats RESIDUAL_ARG)
{
    SHARED acc_t s_n[RES_MAX_BLOCK];
    SHARED acc_t s_mean[RES_MAX_BLOCK];
    SHARED acc_t s_m2[RES_MAX_BLOCK];
    SHARED acc_t s_shift;
    const unsigned int c = BLOCK_ID;
    const idx_t first = (idx_t)c * row_len * VEC;
    GLOBAL const store_t *xc = x + first;
    GLOBAL store_t *outc = out + first;
    const idx_t plane = (idx_t)channels * row_len;
    acc_t v[RES_PACKS][VEC];
    {
        RESIDENT_PACKS(k, w) load_pack(xc, w.row * plane + w.col, v[k]);
    }
    if (THREAD_ID == 0) s_shift = v[0][0];   /* x[0, c, 0]: thread 0's first element */
    BARRIER();
    const acc_t sh = s_shift;
    acc_t s1 = 0, s2 = 0;
    unsigned int packs = 0;
    UNROLLED for (int k = 0; k < RES_PACKS; ++k)
        if ((idx_t)THREAD_ID + (idx_t)k * BLOCK_SIZE < m) {
            UNROLLED for (int e = 0; e < VEC; ++e) {
                const acc_t d = v[k][e] - sh;
                s1 += d;
                s2 += d * d;
            }
            packs += 1;
        }
    acc_t n = (acc_t)(packs * VEC), mu = 0, q = 0;
    if (packs != 0) {
        mu = s1 / n;
        q = s2 - s1 * mu;
        q = q > (acc_t)0 ? q : (acc_t)0;
    }
    tile_merge_moments(s_n, s_mean, s_m2, 1, &n, &mu, &q);
    if (THREAD_ID == 0) {
        const channel_params p = channel_params_of(gamma, beta, running_mean, running_var);
        finish_moments(n, mu, q, c, channels, sh, p, update_running, eps, decay,
                       one_minus_decay, abs_gamma, stats);
        s_n[0] = stats[ROW_MEAN * channels + c];   /* the block's copy of its constants */
        s_mean[0] = stats[ROW_SCALE * channels + c];
        s_m2[0] = stats[ROW_BETA * channels + c];
    }
    BARRIER();
    const acc_t mean = s_n[0], scale = s_mean[0], shift_y = s_m2[0];
    RESIDENT_PACKS(k, w) {
#if RESIDUAL
        acc_t vr[VEC];
        load_pack(res + first, w.row * plane + w.col, vr);
#endif
        UNROLLED for (int e = 0; e < VEC; ++e)
            v[k][e] = act_forward(WITH_RESIDUAL((v[k][e] - mean) * scale + shift_y, vr[e]),
                                  param);
        store_pack(outc, w.row * plane + w.col, v[k]);
    }
}

KERNEL LAUNCH_BOUNDS(RES_MAX_BLOCK, 1)
void grad_resident(GLOBAL const store_t *z, GLOBAL const store_t *dz, GLOBAL const store_t *x,
                   GLOBAL const acc_t *stats, unsigned int channels, idx_t row_len, idx_t m,
                   acc_t param, acc_t rparam, GLOBAL const param_t *gamma, acc_t m_count,
                   int training, int abs_gamma, GLOBAL param_t *dgamma, GLOBAL param_t *dbeta,
                   GLOBAL acc_t *coef, GLOBAL store_t *dx RESIDUAL_GRAD_ARG)
{
    SHARED acc_t s_a[RES_MAX_BLOCK];
    SHARED acc_t s_b[RES_MAX_BLOCK];
    const unsigned int c = BLOCK_ID;
    const idx_t first = (idx_t)c * row_len * VEC;
    GLOBAL const store_t *zc = z + first;
    GLOBAL const store_t *dzc = dz + first;
    GLOBAL const store_t *xc = x + first;
    GLOBAL store_t *dxc = dx + first;
    acc_t t_shift, t_scale;
    t_constants(stats, c, channels, &t_shift, &t_scale);

    const idx_t plane = (idx_t)channels * row_len;
    acc_t vz[RES_PACKS][VEC], vdz[RES_PACKS][VEC], vx[RES_PACKS][VEC];
    {
        RESIDENT_PACKS(k, w) load_terms(zc, dzc, xc, w.row * plane + w.col, vz[k], vdz[k], vx[k]);
    }
    acc_t sdy = 0, sdt = 0;
    UNROLLED for (int k = 0; k < RES_PACKS; ++k)
        if ((idx_t)THREAD_ID + (idx_t)k * BLOCK_SIZE < m)
            UNROLLED for (int e = 0; e < VEC; ++e) {
                acc_t dy, t;
                grad_terms(vz[k][e], vdz[k][e], vx[k][e], param, rparam, t_shift, t_scale,
                           &dy, &t);
                sdy += dy;
                sdt += dy * t;
            }
    tile_sum2(s_a, s_b, 1, &sdy, &sdt);
    if (THREAD_ID == 0) {
        finish_grad_sums(sdy, sdt, c, channels, stats, gamma, m_count, training, abs_gamma,
                         dgamma, dbeta, coef);
        s_a[0] = coef[COEF_A * channels + c];   /* the block's copy of its coefficients */
        s_a[1] = coef[COEF_B * channels + c];
        s_a[2] = coef[COEF_K * channels + c];
    }
    BARRIER();
    const acc_t ca = s_a[0], cb = s_a[1], ck = s_a[2];
    RESIDENT_PACKS(k, w) {
        UNROLLED for (int e = 0; e < VEC; ++e) {
            acc_t dy, t;
            grad_terms(vz[k][e], vdz[k][e], vx[k][e], param, rparam, t_shift, t_scale, &dy,
                       &t);
            vz[k][e] = (dy - t * ca - cb) * ck;
#if RESIDUAL
            vdz[k][e] = dy;   /* dL/dr */
#endif
        }
        store_pack(dxc, w.row * plane + w.col, vz[k]);
#if RESIDUAL
        store_pack(dres + first, w.row * plane + w.col, vdz[k]);
#endif
    }
}
