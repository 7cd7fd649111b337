/* Elementwise forward: out = phi((x - mean) * scale + beta), x viewed as rows n * C + c of
 * row_len packs.  row_threads threads (a power of two) share a row, so the channel and its
 * three constants are fetched once per row and stay in registers; UNROLL packs per thread are
 * in flight.  out may be x (in place): each pack is read, then written, by the same thread.
 * The constants come from stats (training), or, with from_running != 0 (evaluation: one
 * launch), from the parameters and running statistics, each row computing its channel's
 * (rsqrt: no division) and the rows of the first sample writing stats for the backward.
 * With RESIDUAL, out = phi(... + r), r read beside x (residual.cuh).
 * Needs: storage.h (STORE_BITS, PARAM_BITS, ACC_BITS, IDX64, VEC), activation.cuh,
 * residual.cuh, channel_reduce.cuh (row_walk_t). */
/* Packs in flight per thread, per tensor read: with r beside x, half as many 8-wide packs, and
 * half as many single elements with 64-bit indices (more would need a stack frame).
 * cupy_abn/_kernel_backend.py: unroll(). */
#define UNROLL (VEC == 1 ? (RESIDUAL && IDX64 ? 4 : 8) : (RESIDUAL && VEC == 8 ? 2 : 4))

KERNEL LAUNCH_BOUNDS(MAX_BLOCK, 4)
void normalize_activate(GLOBAL const store_t *x, GLOBAL store_t *out, GLOBAL acc_t *stats,
                        unsigned int channels, idx_t row_len, idx_t rows,
                        unsigned int row_threads, acc_t param, int from_running,
                        GLOBAL const param_t *gamma, GLOBAL const param_t *beta,
                        GLOBAL const param_t *running_mean, GLOBAL const param_t *running_var,
                        acc_t eps, int abs_gamma RESIDUAL_ARG)
{
    for (row_walk_t w = row_walk_start(channels, row_threads); w.r < rows;
         row_walk_next(&w, channels)) {
        const unsigned int c = w.c, lane = w.lane;
        const idx_t r = w.r;
        acc_t mean, scale, shift_y;
        if (from_running) {
            const acc_t var = LOAD_P(running_var, c);
            const acc_t invstd = ACC_FN(rsqrt)(var + eps);
            const acc_t gm = LOAD_P(gamma, c);
            const acc_t g = abs_gamma ? ACC_FN(fabs)(gm) + eps : gm;
            mean = LOAD_P(running_mean, c);
            scale = g * invstd;
            shift_y = LOAD_P(beta, c);
            if (r < channels && lane == 0) {
                stats[ROW_MEAN * channels + c] = mean;
                stats[ROW_VAR * channels + c] = var;
                stats[ROW_INVSTD * channels + c] = invstd;
                stats[ROW_G * channels + c] = g;
                stats[ROW_SCALE * channels + c] = scale;
                stats[ROW_BETA * channels + c] = shift_y;
            }
        } else {
            mean = stats[ROW_MEAN * channels + c];
            scale = stats[ROW_SCALE * channels + c];
            shift_y = stats[ROW_BETA * channels + c];
        }
        const idx_t base = r * row_len;
        for (idx_t j = lane; j < row_len; j += UNROLL * row_threads) {
            acc_t v[UNROLL][VEC];
            UNROLLED for (int u = 0; u < UNROLL; ++u)
                if (j + u * row_threads < row_len) load_pack(x, base + j + u * row_threads, v[u]);
#if RESIDUAL
            acc_t vr[UNROLL][VEC];
            UNROLLED for (int u = 0; u < UNROLL; ++u)
                if (j + u * row_threads < row_len)
                    load_pack(res, base + j + u * row_threads, vr[u]);
#endif
            UNROLLED for (int u = 0; u < UNROLL; ++u)
                if (j + u * row_threads < row_len) {
                    UNROLLED for (int k = 0; k < VEC; ++k)
                        v[u][k] = act_forward(
                            WITH_RESIDUAL((v[u][k] - mean) * scale + shift_y, vr[u][k]), param);
                    store_pack(out, base + j + u * row_threads, v[u]);
                }
        }
    }
}
