/* Portability prelude, CUDA side (NVRTC).  The kernel files are written once over these
 * macros; prelude_opencl.h defines the same names for OpenCL C.  No system header is needed:
 * float16 is stored as its bit pattern and converted with PTX cvt instructions. */
#define KERNEL extern "C" __global__
#define DEVICE __device__ __forceinline__
#define GLOBAL
#define SHARED __shared__
#define SHARED_PTR   /* address space of a pointer into SHARED: generic in CUDA */
#define BARRIER() __syncthreads()
#define THREAD_ID ((unsigned int)threadIdx.x)
#define BLOCK_ID ((unsigned int)blockIdx.x)
#define BLOCK_SIZE ((unsigned int)blockDim.x)
#define GRID_SIZE ((unsigned int)gridDim.x)
/* Caps registers so that MIN_BLOCKS blocks of MAX_THREADS fit on a multiprocessor. */
/* Loops over packs and lanes are unrolled so that their arrays stay in registers (an
 * array indexed in a loop the compiler keeps would live in local memory). */
#define UNROLLED _Pragma("unroll")
#define ROLLED _Pragma("unroll 1")   /* per-channel tails: code size, registers */
#define LAUNCH_BOUNDS(max_threads, min_blocks) __launch_bounds__(max_threads, min_blocks)
/* Inter-block hand-off of the reductions (channel_reduce.cuh, channel_tile.cuh), as in the
 * CUDA C++ Programming Guide, "Memory Fence Functions": a block writes its partials, each
 * writer fences, then one thread counts the block in (release; __threadfence() is fence.sc.gpu,
 * so each writer's fence is ordered before the reader's); the thread that sees the last count
 * fences before the block reads (acquire), and the partials are read with LOAD_COHERENT,
 * which L1 never answers (ld.volatile.global: LDG.E.STRONG.SYS, from L2).
 * Not __ldcg (ld.global.cg): the finish then hoists the loads, and the kernel's register
 * count, hence the streaming loop's occupancy, grows (sm_90: up to 11 more, measured). */
#define FENCE_GLOBAL() __threadfence()
#define ATOMIC_INC(p) atomicAdd((p), 1u)
template <typename T> DEVICE T load_coherent(const T *p) { return *(const volatile T *)p; }
#define LOAD_COHERENT(p) load_coherent(p)
#define F32_FN(name) name##f
typedef long long int64_type;
typedef unsigned long long uint64_type;

typedef unsigned short half_storage;

DEVICE float half_to_float(half_storage h)
{
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

DEVICE half_storage float_to_half(float f)
{
    half_storage h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

#define LOAD_HALF(p, i) half_to_float((p)[i])
#define STORE_HALF(p, i, v) ((p)[i] = float_to_half((float)(v)))

/* 16-byte packs (storage.h): one LDG.128/STG.128 moves VEC elements. */
#define PACK_ACCESS_CUDA 1
