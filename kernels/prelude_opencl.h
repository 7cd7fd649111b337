/* Portability prelude, OpenCL C side (PoCL, Oclgrind).  Same names as prelude_cuda.cuh.
 * float16 is a storage-only type here: vload_half/vstore_half need no cl_khr_fp16. */
#if ACC_BITS == 64 || STORE_BITS == 64 || PARAM_BITS == 64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
#endif
#define KERNEL __kernel
#define DEVICE static inline
#define GLOBAL __global
#define SHARED __local
#define SHARED_PTR __local   /* address space of a pointer into SHARED */
#define BARRIER() barrier(CLK_LOCAL_MEM_FENCE | CLK_GLOBAL_MEM_FENCE)   /* as __syncthreads */
#define THREAD_ID ((unsigned int)get_local_id(0))
#define BLOCK_ID ((unsigned int)get_group_id(0))
#define BLOCK_SIZE ((unsigned int)get_local_size(0))
#define GRID_SIZE ((unsigned int)get_num_groups(0))
/* No unroll hint here: on a GPU it keeps the pack arrays in registers (prelude_cuda.cuh);
 * on PoCL it changes nothing computed, but its LLVM took 80 s to unroll grad_sums_last's
 * nested float16 pack loops (VEC 8 inside UNROLL 4) and a minute more at the first launch,
 * against 1 s without it. */
#define UNROLLED
#define ROLLED
#define LAUNCH_BOUNDS(max_threads, min_blocks)
#define FENCE_GLOBAL() mem_fence(CLK_GLOBAL_MEM_FENCE)
#define ATOMIC_INC(p) atomic_inc(p)
/* LOAD_COHERENT of a partial (acc_t): OpenCL 1.2 orders nothing between work-groups but
 * atomics, so each 32-bit word is read with one (as channel_reduce.cuh's publish writes it). */
#if ACC_BITS == 64
typedef union { double value; uint words[2]; } coherent_words;
DEVICE double load_coherent(GLOBAL const double *p)
#else
typedef union { float value; uint words[1]; } coherent_words;
DEVICE float load_coherent(GLOBAL const float *p)
#endif
{
    coherent_words u;
    for (unsigned int k = 0; k < sizeof(u.words) / 4; ++k)
        u.words[k] = atomic_or((volatile GLOBAL uint *)p + k, 0u);
    return u.value;
}
#define LOAD_COHERENT(p) load_coherent(p)
#define F32_FN(name) name
typedef long int64_type;
typedef ulong uint64_type;

typedef half half_storage;

#define LOAD_HALF(p, i) vload_half((i), (p))
#define STORE_HALF(p, i, v) vstore_half((float)(v), (i), (p))

/* Packs of VEC elements (storage.h) through vloadn/vstoren into a private array. */
#define PACK_ACCESS_OPENCL 1
