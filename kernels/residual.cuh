/* The residual add fused into the elementwise stages (docs/math.md, "Residual add"):
 * z = phi(y + r), y = (x - mean) * scale + beta, with RESIDUAL=1 (cupy_abn/api.py:
 * residual=).  Such variants take one more argument, last:
 *   the forward's elementwise kernels read r beside x (RESIDUAL_ARG: res);
 *   the backward's elementwise kernels write dL/dr = dz * phi'(z) = dy beside dx
 *     (RESIDUAL_GRAD_ARG: dres).
 * The backward's reductions need r in the in-place modes only (y = phi_inv(z) - r): it comes
 * in their x argument, which those modes never read otherwise (grad_terms.cuh).
 * Needs: storage.h (store_t). */
#ifndef RESIDUAL
#define RESIDUAL 0
#endif

#if RESIDUAL
#define RESIDUAL_ARG , GLOBAL const store_t *res
#define RESIDUAL_GRAD_ARG , GLOBAL store_t *dres
/* The pre-activation: y + r, both in acc_t, then one rounding at the store. */
#define WITH_RESIDUAL(y, r) ((y) + (r))
#else
#define RESIDUAL_ARG
#define RESIDUAL_GRAD_ARG
#define WITH_RESIDUAL(y, r) (y)
#endif
