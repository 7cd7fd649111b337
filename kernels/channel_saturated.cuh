/* The finiteness check's count of saturated ELU outputs (cupy_abn/_finite.py): with
 * SATURATED=1 (ELU in an in-place mode, training: the check's variants only) grad_sums.cu and
 * grad_sums_last.cu also write, per partial, how many outputs z the backward cannot rebuild
 * y from.  That is where act_inverse (activation.cuh) clamps: z / alpha below -1 + 1e-7, i.e.
 * z rounded to -alpha (y below about log(eps / 4) of the storage dtype: float16 -8.3,
 * float32 -16.2) or, in float64, y below log(1e-7) = -16.1.  The host raises before dx is
 * written.  The variant takes one more argument, `saturated` (C * B counts, at [c * B + b]).
 * Needs: storage.h (acc_t), activation.cuh (ACT). */
#ifndef SATURATED
#define SATURATED 0
#endif

#if SATURATED
#if ACT != ACT_ELU
#error "SATURATED counts ELU outputs only"
#endif
#define SATURATED_ARG , GLOBAL unsigned int *saturated

/* 1 where act_inverse clamps z (the same expression: keep the two in step). */
DEVICE unsigned int elu_saturated(acc_t z, acc_t rp)
{
    return z * rp < (acc_t)(-1 + 1e-7) ? 1u : 0u;
}

/* How many lanes of a pack are saturated (grad_sums.cu: one count per thread; a count per
 * lane would spill the float16 packs' variants). */
DEVICE unsigned int saturated_in_pack(const acc_t *vz, acc_t rp)
{
    unsigned int n = 0;
    UNROLLED for (int k = 0; k < VEC; ++k) n += elu_saturated(vz[k], rp);
    return n;
}

/* One pack's saturated lanes into the counts n, one per lane: its VEC channels
 * (grad_sums_last.cu). */
DEVICE void saturated_add(const acc_t *vz, acc_t rp, unsigned int *n)
{
    UNROLLED for (int k = 0; k < VEC; ++k) n[k] += elu_saturated(vz[k], rp);
}

/* Tree sum of n down the rows of a tile, as tile_sum2 (channel_reduce.cuh). */
DEVICE void tile_count(SHARED_PTR unsigned int *s_n, unsigned int tile_x, unsigned int *n)
{
    const unsigned int tid = THREAD_ID;
    s_n[tid] = *n;
    BARRIER();
    for (unsigned int half_size = BLOCK_SIZE / 2; half_size >= tile_x; half_size >>= 1) {
        if (tid < half_size) {
            *n += s_n[tid + half_size];
            s_n[tid] = *n;
        }
        BARRIER();
    }
}
#else
#define SATURATED_ARG
#endif
