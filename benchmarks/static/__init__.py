"""A GPU-free performance report of the kernels: ``python -m benchmarks.static``.

What it does, for this working tree and (``--before REV``, default f788f24) an older revision
in a temporary ``git worktree``, in one run:

1. compiles every variant of ``cupy_abn._kernel_source.all_variants()`` exactly as CuPy 14
   does at run time (``cupy_abn._nvrtc``), with NVRTC 12 and NVRTC 13: cubins for sm_80 and
   sm_90, PTX for the newest architecture each NVRTC knows;
2. reads registers, stack, shared memory and spills of every cubin (``cuobjdump -res-usage``);
3. records the launches of every benchmark pass (N=32 x (C,H,W) in (64,112,112),
   (256,56,56), (512,28,28), (2048,7,7); float32 and float16; training forward, evaluation
   forward, backward; modes inplace, inplace_v1, standard) by running the library's own
   stages on the real ``KernelBackend`` over a recording stub runtime (``launches.py``), with
   occupancy from the cubins (``cupy_abn._occupancy``, sm_90 limits, 132 SMs);
4. reads the SASS of the sm_90 cubins those launches use (``sass.py``): hot loops, their
   instructions, ``LDG``/``STG`` widths, division sequences;
5. predicts µs per launch and per pass on an H100 (``model.py``) and the fraction of copy
   bandwidth: minimal traffic (training forward 3 S, evaluation forward 2 S, backward 5 S;
   with the fused residual add, mode inplace, 4 S and 8 S; S = bytes of one tensor) /
   predicted time / copy bandwidth;
6. writes ``benchmarks/results/static_report.json`` and ``static_report.png`` and prints the
   before/after table.

``--check`` instead checks the committed report against this tree (``check.py``: the inputs'
hash of ``inputs.py``, the passes replayed, the facts of ``facts.py``, a recompiled sample).

On disk the report is compact (``schema: 2``, ``compact.py``: one line per variant, per SASS
read and per pass, with the inputs' hash); ``compact.expand`` rebuilds from it the document
below (variants and passes with their launch records), which is what ``collect`` produces for
one tree and what ``benchmarks/fit_model.py`` reads:

    schema, generated, elapsed_s
    model      {sms, clock_GHz, schedulers, copy_bandwidth_GBps, latency_ns, launch_us,
                primary: {nvrtc_major, arch}}     the defaults predicted_us used
    goal       {copy_fraction: 0.85, copy_fraction_7x7: 0.60}
    tree       {commit, subject, dirty_kernels}
    nvrtc      {"12"|"13": {version, targets}}
    inputs     {hash, parts}          what the facts follow from (inputs.py)
    variants   [{major, target ("sm_80", "sm_90", "compute_121"), kind ("cubin"|"ptx"),
                 family, defines, size,
                 kernels: {entry: {registers, stack, shared, local,
                                   [instructions, fp64_instructions, loops]}}}]
                 loops (sm_90 cubins the passes launch): [{start, end, instructions,
                 loads {width: count}, stores {width: count}, load_bytes, store_bytes,
                 divisions {fp32|fp64|int|call: count}, widest_load_bytes}]
                 widths: "128", "64", "32", "U16", "S16", "U8", "S8" (bits / 16-bit / 8-bit)
    passes     [{major, arch, shape [N,C,H,W], dtype, mode, pass ("forward_train",
                 "forward_eval", "backward"), n_launches, minimal_bytes,
                 minimal_bytes_per_element, global_bytes_per_element (SASS, summed over the
                 streaming launches), predicted_us, copy_fraction,
                 launches: [record, ...]}]
    table      [{major, pass, shape, dtype, mode, goal, after: {...}, before: {...}}]
               (the stored pass rows)
    before     {revision, commit, subject} of the older revision, or null

A launch *record* (what ``model.predict_us`` reads; names are stable):

    arch, family, entry, defines, grid, block      the launch as the backend made it
    registers, shared_bytes, local_bytes           ptxas (cuobjdump -res-usage)
    blocks_per_sm, occupancy_limiter, occupancy    cupy_abn._occupancy, sm_90 limits
    resident_threads_per_sm                        min(blocks_per_sm, ceil(grid/sms)) * block
    waves, wave_efficiency, sms                    grid / (blocks_per_sm * sms)
    elements                                       elements streamed (0: per-channel kernel)
    itemsize, tensors_read, tensors_written        streamed tensors of ``elements``
    load_bytes, bytes                              DRAM bytes read / moved (tensors + the
                                                   per-channel arrays)
    minimal_bytes                                  (read + written tensors) * elements * itemsize
    instructions_per_element                       hot-loop SASS instructions / elements
    bytes_in_flight_per_thread                     streamed-tensor load bytes of one iteration
    vector_loads                                   hot loop loads 64 or 128 bits at once
    loop                                           the hot loop read (as in variants, plus
                                                   elements_per_iteration, *_per_element)
    predicted_us, bound                            model.predict_us with the defaults, and
                                                   which term limits ("bandwidth", "issue",
                                                   "latency", "launch")

Elements per iteration of a hot loop: store bytes / (tensors written x itemsize) when the
loop stores (one output element per element and written tensor: two in a residual add's
elementwise backward, dx and dL/dr), else load bytes / (tensors read x itemsize).
"""
