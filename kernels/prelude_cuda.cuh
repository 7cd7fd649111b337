/* Portability prelude, CUDA side (NVRTC).  The kernel files are written once over these
 * macros; prelude_opencl.h defines the same names for OpenCL C.  No system header is needed:
 * float16 is stored as its bit pattern and converted with PTX cvt instructions. */
#define KERNEL extern "C" __global__
#define DEVICE __device__ __forceinline__
#define GLOBAL
#define SHARED __shared__
#define BARRIER() __syncthreads()
#define THREAD_ID ((unsigned int)threadIdx.x)
#define BLOCK_ID ((unsigned int)blockIdx.x)
#define BLOCK_SIZE ((unsigned int)blockDim.x)
#define GRID_SIZE ((unsigned int)gridDim.x)
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
