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

/* Rows of the per-channel stats array (6, C): cupy_abn/_state.py; of the kernels' backward
 * coefficients (5, C): cupy_abn/_kernel_backend.py (channel_grads.cuh fills them). */
#define ROW_MEAN 0
#define ROW_VAR 1
#define ROW_INVSTD 2
#define ROW_G 3
#define ROW_SCALE 4
#define ROW_BETA 5
#define COEF_A 0
#define COEF_B 1
#define COEF_K 2
#define COEF_T0 3
#define COEF_T1 4

/* What the backward uses as t (cupy_abn/_state.py); T_KIND selects one. */
#define T_XHAT_FROM_X 0
#define T_XHAT_FROM_Y 1
#define T_U 2          /* INPLACE-ABN II: u = y - beta */

/* Largest block (threads) of every streaming kernel: static shared memory and
 * LAUNCH_BOUNDS are sized by it (cupy_abn/_kernel_backend.py: MAX_BLOCK). */
#define MAX_BLOCK 256

/* Packs: VEC consecutive elements of x-like storage moved by one access into acc_t v[VEC].
 * VEC * sizeof(store_t) == 16 bytes on the vector path (one LDG.128 / STG.128 on a GPU), VEC
 * == 1 on the scalar path (rows whose length or alignment forbids packs).  i counts packs. */
#if defined(STORE_BITS)
#ifndef VEC
#define VEC 1
#endif
#if VEC != 1 && VEC * STORE_BITS != 128
#error "VEC must be 1 or 16 bytes of store_t"
#endif

#if VEC == 1
DEVICE void load_pack(GLOBAL const store_t *p, idx_t i, acc_t *v) { v[0] = LOAD_X(p, i); }
DEVICE void store_pack(GLOBAL store_t *p, idx_t i, const acc_t *v) { STORE_X(p, i, v[0]); }
#elif defined(PACK_ACCESS_CUDA) && STORE_BITS == 32
DEVICE void load_pack(const store_t *p, idx_t i, acc_t *v)
{
    const float4 t = ((const float4 *)p)[i];
    v[0] = t.x; v[1] = t.y; v[2] = t.z; v[3] = t.w;
}
DEVICE void store_pack(store_t *p, idx_t i, const acc_t *v)
{
    ((float4 *)p)[i] = make_float4(v[0], v[1], v[2], v[3]);
}
#elif defined(PACK_ACCESS_CUDA) && STORE_BITS == 64
DEVICE void load_pack(const store_t *p, idx_t i, acc_t *v)
{
    const double2 t = ((const double2 *)p)[i];
    v[0] = t.x; v[1] = t.y;
}
DEVICE void store_pack(store_t *p, idx_t i, const acc_t *v)
{
    ((double2 *)p)[i] = make_double2(v[0], v[1]);
}
#elif defined(PACK_ACCESS_CUDA) && STORE_BITS == 16
/* Eight halves as four 32-bit words, each two halves (low first: little-endian). */
DEVICE void unpack_halves(unsigned int w, acc_t *v)
{
    v[0] = half_to_float((half_storage)(w & 0xffffu));
    v[1] = half_to_float((half_storage)(w >> 16));
}
DEVICE unsigned int pack_halves(acc_t a, acc_t b)
{
    return (unsigned int)float_to_half(a) | ((unsigned int)float_to_half(b) << 16);
}
DEVICE void load_pack(const store_t *p, idx_t i, acc_t *v)
{
    const uint4 t = ((const uint4 *)p)[i];
    unpack_halves(t.x, v); unpack_halves(t.y, v + 2);
    unpack_halves(t.z, v + 4); unpack_halves(t.w, v + 6);
}
DEVICE void store_pack(store_t *p, idx_t i, const acc_t *v)
{
    ((uint4 *)p)[i] = make_uint4(pack_halves(v[0], v[1]), pack_halves(v[2], v[3]),
                                 pack_halves(v[4], v[5]), pack_halves(v[6], v[7]));
}
#elif defined(PACK_ACCESS_OPENCL) && STORE_BITS == 32 && ACC_BITS == 64
/* float data, double accumulation (float64 parameters): convert the vector types */
DEVICE void load_pack(GLOBAL const store_t *p, idx_t i, acc_t *v)
{
    vstore4(convert_double4(vload4(i, p)), 0, v);
}
DEVICE void store_pack(GLOBAL store_t *p, idx_t i, const acc_t *v)
{
    vstore4(convert_float4(vload4(0, v)), i, p);
}
#elif defined(PACK_ACCESS_OPENCL) && STORE_BITS == 32
DEVICE void load_pack(GLOBAL const store_t *p, idx_t i, acc_t *v) { vstore4(vload4(i, p), 0, v); }
DEVICE void store_pack(GLOBAL store_t *p, idx_t i, const acc_t *v) { vstore4(vload4(0, v), i, p); }
#elif defined(PACK_ACCESS_OPENCL) && STORE_BITS == 64
DEVICE void load_pack(GLOBAL const store_t *p, idx_t i, acc_t *v) { vstore2(vload2(i, p), 0, v); }
DEVICE void store_pack(GLOBAL store_t *p, idx_t i, const acc_t *v) { vstore2(vload2(0, v), i, p); }
#elif defined(PACK_ACCESS_OPENCL) && STORE_BITS == 16
#if ACC_BITS == 64
#define PACK_TO_ACC(v8) convert_double8(v8)
#define PACK_FROM_ACC(v8) convert_float8(v8)   /* then to half: as CUDA's float_to_half */
#else
#define PACK_TO_ACC(v8) (v8)
#define PACK_FROM_ACC(v8) (v8)
#endif
DEVICE void load_pack(GLOBAL const store_t *p, idx_t i, acc_t *v)
{
    vstore8(PACK_TO_ACC(vload_half8(i, p)), 0, v);
}
DEVICE void store_pack(GLOBAL store_t *p, idx_t i, const acc_t *v)
{
    vstore_half8(PACK_FROM_ACC(vload8(0, v)), i, p);
}
#endif
#endif /* STORE_BITS */
