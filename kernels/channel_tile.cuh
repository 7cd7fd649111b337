/* Channels-last tensors: x viewed as (M, C) with the channel the fastest axis, P = C / VEC
 * packs per row.  A block is a tile of tile_x threads along a row's packs (a power of two, at
 * most 32: a warp reads consecutive packs) by BLOCK_SIZE / tile_x rows; block b of tile t
 * (BLOCK_ID = t * parts + b) takes rows b * rows + ly, then every parts * rows further rows.
 * A thread keeps one pack column p, so its VEC channels' constants and sums stay in registers
 * and no index is divided per element.  Needs: storage.h (idx_t), channel_reduce.cuh. */

typedef struct { idx_t i, di; unsigned int p, ly, b, tile; int active; } tile_walk_t;

/* The walk of this thread: first element pack i (row b * rows + ly, column p) and the step di
 * between its rows; row r = i / packs is never formed. */
DEVICE tile_walk_t tile_start(unsigned int packs, unsigned int tile_x, unsigned int parts,
                              idx_t *first_row, idx_t *row_step)
{
    tile_walk_t w;
    const unsigned int rows = BLOCK_SIZE / tile_x;
    w.tile = BLOCK_ID / parts;
    w.b = BLOCK_ID - w.tile * parts;
    w.ly = THREAD_ID / tile_x;
    w.p = w.tile * tile_x + (THREAD_ID & (tile_x - 1));
    w.active = w.p < packs;
    *first_row = (idx_t)w.b * rows + w.ly;
    *row_step = (idx_t)parts * rows;
    w.i = *first_row * packs + w.p;
    w.di = *row_step * packs;
    return w;
}

/* Called by every thread of a block after the row-0 threads published their columns'
 * partials: true in the one block of the tile that arrives last (then every partial of the
 * tile's channels may be collected), false everywhere when finish == 0.  `arrivals` (one per
 * tile) is zeroed by the host.  CUDA C++ Programming Guide, "Memory Fence Functions", and
 * the PTX memory model's release and acquire patterns: each writer fences after its partials,
 * then (after the barrier) thread 0 counts the block in; if last, thread 0 fences before the
 * barrier that tells the block (a fence after it would not follow the count in thread 0's
 * program order), and the readers use LOAD_COHERENT.  The barriers are unconditional: OpenCL
 * allows a barrier in a branch only when every work-item takes it, and PoCL miscompiles one
 * that it cannot prove. */
DEVICE int tile_arrived_last(GLOBAL unsigned int *arrivals, unsigned int tile,
                             unsigned int parts, int finish, SHARED_PTR int *s_last)
{
    FENCE_GLOBAL();   /* release: this thread's partials before the count */
    BARRIER();
    if (THREAD_ID == 0) {
        const int last = finish && (parts == 1 || ATOMIC_INC(arrivals + tile) == parts - 1);
        if (last) FENCE_GLOBAL();   /* acquire: the others' partials after the count */
        *s_last = last;
    }
    BARRIER();
    return *s_last;
}
