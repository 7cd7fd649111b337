/* Storage and accumulation types of a variant, from the -D defines (after a prelude):
 *   STORE_BITS  x, z, dz, dx storage: 16, 32 or 64      -> store_t, LOAD_X, STORE_X
 *   PARAM_BITS  gamma, beta, running stats: 16, 32, 64  -> param_t, LOAD_P, STORE_P
 *   ACC_BITS    accumulation: 32 or 64                  -> acc_t, ACC_FN(sqrt) ...
 *   IDX64       1: 64-bit element indices (numel >= 2^31), 0: 32-bit        -> idx_t
 * Values are always loaded into acc_t and stored back with one rounding. */
#if ACC_BITS == 64
typedef double acc_t;
#define ACC_FN(f) f
#else
typedef float acc_t;
#define ACC_FN(f) F32_FN(f)
#endif

#if defined(STORE_BITS)
#if STORE_BITS == 16
typedef half_storage store_t;
#define LOAD_X(p, i) ((acc_t)LOAD_HALF(p, i))
#define STORE_X(p, i, v) STORE_HALF(p, i, v)
#elif STORE_BITS == 32
typedef float store_t;
#define LOAD_X(p, i) ((acc_t)(p)[i])
#define STORE_X(p, i, v) ((p)[i] = (float)(v))
#else
typedef double store_t;
#define LOAD_X(p, i) ((acc_t)(p)[i])
#define STORE_X(p, i, v) ((p)[i] = (double)(v))
#endif
#endif

#if defined(PARAM_BITS)
#if PARAM_BITS == 16
typedef half_storage param_t;
#define LOAD_P(p, i) ((acc_t)LOAD_HALF(p, i))
#define STORE_P(p, i, v) STORE_HALF(p, i, v)
#elif PARAM_BITS == 32
typedef float param_t;
#define LOAD_P(p, i) ((acc_t)(p)[i])
#define STORE_P(p, i, v) ((p)[i] = (float)(v))
#else
typedef double param_t;
#define LOAD_P(p, i) ((acc_t)(p)[i])
#define STORE_P(p, i, v) ((p)[i] = (double)(v))
#endif
#endif

#if IDX64
typedef uint64_type idx_t;
#else
typedef unsigned int idx_t;
#endif

/* Rows of the per-channel stats array (6, C) and coefficient array (3, C): cupy_abn/_state.py */
#define ROW_MEAN 0
#define ROW_VAR 1
#define ROW_INVSTD 2
#define ROW_G 3
#define ROW_SCALE 4
#define ROW_BETA 5
#define COEF_A 0
#define COEF_B 1
#define COEF_K 2

/* What the backward uses as t (cupy_abn/_state.py); T_KIND selects one. */
#define T_XHAT_FROM_X 0
#define T_XHAT_FROM_Y 1
#define T_Y 2

/* Largest block (threads) of the reduction kernels: static shared memory is sized by it. */
#define MAX_BLOCK 256

/* Position (row, col) of a flat index in rows of length `len`, advanced by a fixed stride
 * without a division per step: stride = d_row * len + d_col, d_col < len. */
typedef struct { idx_t row, col, d_row, d_col, len; } walk_t;

DEVICE walk_t walk_start(idx_t start, idx_t stride, idx_t len)
{
    walk_t w;
    w.row = start / len;
    w.col = start - w.row * len;
    w.d_row = stride / len;
    w.d_col = stride - w.d_row * len;
    w.len = len;
    return w;
}

DEVICE void walk_step(walk_t *w)
{
    w->row += w->d_row;
    w->col += w->d_col;
    if (w->col >= w->len) {
        w->col -= w->len;
        w->row += 1;
    }
}
