/* Elementwise forward of channels-last x, viewed as (M, C) rows of P packs (channel_tile.cuh):
 * out = phi((x - mean) * scale + beta), as normalize_activate.cu.  A thread keeps its pack
 * column's VEC channels' constants in registers; UNROLL rows are in flight.  out may be x.
 * With from_running != 0 (evaluation) the constants come from the parameters and running
 * statistics, and row 0 of the first block of each tile writes stats for the backward.
 * With RESIDUAL, out = phi(... + r), r read beside x (residual.cuh).
 * Needs: storage.h, activation.cuh, residual.cuh, channel_reduce.cuh, channel_tile.cuh. */
/* Rows in flight per thread, per tensor read; half as many beside r's packs.
 * cupy_abn/_kernel_backend.py: unroll(). */
#define UNROLL (VEC == 1 ? 8 : (VEC == 8 ? 2 : 4) / (1 + RESIDUAL))

KERNEL LAUNCH_BOUNDS(MAX_BLOCK, 4)
void normalize_activate_last(GLOBAL const store_t *x, GLOBAL store_t *out,
                             GLOBAL acc_t *stats, unsigned int channels, unsigned int packs,
                             idx_t m, unsigned int tile_x, unsigned int parts, acc_t param,
                             int from_running, GLOBAL const param_t *gamma,
                             GLOBAL const param_t *beta, GLOBAL const param_t *running_mean,
                             GLOBAL const param_t *running_var, acc_t eps,
                             int abs_gamma RESIDUAL_ARG)
{
    idx_t r, dr;
    const tile_walk_t w = tile_start(packs, tile_x, parts, &r, &dr);
    if (!w.active) return;
    acc_t mean[VEC], scale[VEC], shift_y[VEC];
    UNROLLED for (int k = 0; k < VEC; ++k) {
        const unsigned int c = w.p * VEC + k;
        if (from_running) {
            const acc_t var = LOAD_P(running_var, c);
            const acc_t invstd = ACC_FN(rsqrt)(var + eps);
            const acc_t gm = LOAD_P(gamma, c);
            const acc_t g = abs_gamma ? ACC_FN(fabs)(gm) + eps : gm;
            mean[k] = LOAD_P(running_mean, c);
            scale[k] = g * invstd;
            shift_y[k] = LOAD_P(beta, c);
            if (w.b == 0 && w.ly == 0) {
                stats[ROW_MEAN * channels + c] = mean[k];
                stats[ROW_VAR * channels + c] = var;
                stats[ROW_INVSTD * channels + c] = invstd;
                stats[ROW_G * channels + c] = g;
                stats[ROW_SCALE * channels + c] = scale[k];
                stats[ROW_BETA * channels + c] = shift_y[k];
            }
        } else {
            mean[k] = stats[ROW_MEAN * channels + c];
            scale[k] = stats[ROW_SCALE * channels + c];
            shift_y[k] = stats[ROW_BETA * channels + c];
        }
    }
    idx_t i = w.i;
    for (; r + (UNROLL - 1) * dr < m; r += UNROLL * dr, i += UNROLL * w.di) {
        acc_t v[UNROLL][VEC];
        UNROLLED for (int u = 0; u < UNROLL; ++u) load_pack(x, i + u * w.di, v[u]);
#if RESIDUAL
        acc_t vr[UNROLL][VEC];
        UNROLLED for (int u = 0; u < UNROLL; ++u) load_pack(res, i + u * w.di, vr[u]);
#endif
        UNROLLED for (int u = 0; u < UNROLL; ++u) {
            UNROLLED for (int k = 0; k < VEC; ++k)
                v[u][k] = act_forward(
                    WITH_RESIDUAL((v[u][k] - mean[k]) * scale[k] + shift_y[k], vr[u][k]), param);
            store_pack(out, i + u * w.di, v[u]);
        }
    }
    for (; r < m; r += dr, i += w.di) {
        acc_t v[VEC];
        load_pack(x, i, v);
#if RESIDUAL
        acc_t vr[VEC];
        load_pack(res, i, vr);
#endif
        UNROLLED for (int k = 0; k < VEC; ++k)
            v[k] = act_forward(
                WITH_RESIDUAL((v[k] - mean[k]) * scale[k] + shift_y[k], vr[k]), param);
        store_pack(out, i, v);
    }
}
