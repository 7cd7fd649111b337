/* The activation of a variant, selected by ACT (codes of cupy_abn/_activations.py):
 *   act_forward(y, p)  z = phi(y)
 *   act_inverse(z, p, rp)  y = phi_inv(z)
 *   act_deriv(z, p)    phi'(y), written in terms of z
 * p is the runtime parameter (leaky_relu slope, elu alpha), rp = 1 / p computed once on the
 * host, so that no hot loop divides. */
#define ACT_IDENTITY 0
#define ACT_LEAKY_RELU 1
#define ACT_ELU 2
#define ACT_RELU 3

#if ACT == ACT_IDENTITY
DEVICE acc_t act_forward(acc_t y, acc_t p) { return y; }
DEVICE acc_t act_inverse(acc_t z, acc_t p, acc_t rp) { return z; }
DEVICE acc_t act_deriv(acc_t z, acc_t p) { return (acc_t)1; }
#elif ACT == ACT_LEAKY_RELU
DEVICE acc_t act_forward(acc_t y, acc_t p) { return y >= (acc_t)0 ? y : y * p; }
DEVICE acc_t act_inverse(acc_t z, acc_t p, acc_t rp) { return z >= (acc_t)0 ? z : z * rp; }
DEVICE acc_t act_deriv(acc_t z, acc_t p) { return z >= (acc_t)0 ? (acc_t)1 : p; }
#elif ACT == ACT_ELU
DEVICE acc_t act_forward(acc_t y, acc_t p)
{
    return y >= (acc_t)0 ? y : p * ACC_FN(expm1)(y);
}
DEVICE acc_t act_inverse(acc_t z, acc_t p, acc_t rp)
{
    /* z > -p for a true ELU output; the clamp guards rounding at the asymptote. */
    acc_t u = z * rp;
    u = u < (acc_t)(-1 + 1e-7) ? (acc_t)(-1 + 1e-7) : u;
    return z >= (acc_t)0 ? z : ACC_FN(log1p)(u);
}
DEVICE acc_t act_deriv(acc_t z, acc_t p) { return z >= (acc_t)0 ? (acc_t)1 : z + p; }
#elif ACT == ACT_RELU
DEVICE acc_t act_forward(acc_t y, acc_t p) { return y > (acc_t)0 ? y : (acc_t)0; }
DEVICE acc_t act_inverse(acc_t z, acc_t p, acc_t rp) { return z; } /* not invertible: unused */
DEVICE acc_t act_deriv(acc_t z, acc_t p) { return z > (acc_t)0 ? (acc_t)1 : (acc_t)0; }
#else
#error "ACT must be one of the codes in cupy_abn/_activations.py"
#endif
