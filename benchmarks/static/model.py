"""An analytic time model of one kernel launch: bandwidth, instruction issue and memory latency.

For one launch (a *record* of the static report, see ``benchmarks/static/__init__.py``):

    t_bandwidth = bytes / bandwidth
    t_issue     = elements * instructions_per_element / 32          (warp instructions)
                  / (4 schedulers * clock * sms)                     (one per scheduler per cycle)
    t_latency   = load_bytes / (sms * resident_threads_per_sm * bytes_in_flight_per_thread
                                / latency)                           (Little's law)
    t           = max(t_bandwidth, t_issue, t_latency) * quantization + launch

Wave quantization, for a grid of w = n + f waves (n whole, 0 <= f < 1) with w > 1: the n
whole waves take n/w of the unquantized time, and the last, partial wave takes
max(f/w * t_bandwidth, f/w * t_issue, t_latency / w): it moves f/w of the bytes, but its
blocks run as long as a whole wave's when they are latency-bound (each block's serial loop
is as long; fewer blocks are in flight).  For a latency-bound launch this is exactly
``ceil(w) / w`` (1.03 waves cost nearly two); a bandwidth-bound partial wave costs only its
share of the bytes.  Below one wave the resident threads are fewer, which the latency term
sees.  Launches without a streaming loop (the per-channel kernels) cost their small traffic
and the launch.

Defaults are an H100 SXM: 132 SMs, clock 1.755 GHz (boost), copy bandwidth 3000 GB/s (what a
device-to-device copy measures, about 90% of the 3.35 TB/s HBM3 peak), memory latency 700 ns:
global-load latency measured on Hopper by pointer chasing is about 500-600 ns idle and grows
under load towards the bandwidth limit; 700 ns is the middle of the 600-800 ns range used in
the issue.  Launch cost 2 µs per kernel (launch gap plus ramp-up and tail of back-to-back
kernels).  The latency and bandwidth are the two free parameters a GPU run fits.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable

SMS = 132
CLOCK_GHZ = 1.755
SCHEDULERS = 4
WARP = 32
COPY_BANDWIDTH_GBPS = 3000.0
LATENCY_NS = 700.0
LAUNCH_US = 2.0


def terms_us(record: dict, latency_ns: float = LATENCY_NS,
             bandwidth_GBps: float = COPY_BANDWIDTH_GBPS,
             clock_GHz: float = CLOCK_GHZ) -> Dict[str, float]:
    """The three limits of one launch, in µs, before quantization and launch cost.

    Parameters
    ----------
    record : dict
        One launch: ``bytes``, ``load_bytes``, ``elements``, ``instructions_per_element``,
        ``bytes_in_flight_per_thread``, ``resident_threads_per_sm``, ``waves``, ``sms``.
    latency_ns, bandwidth_GBps : float
        Memory latency and achievable bandwidth.
    clock_GHz : float
        The SM clock of the instruction-issue limit (the device's maximum boost clock).

    Returns
    -------
    dict with ``bandwidth``, ``issue``, ``latency`` (µs) and ``quantization`` (factor).
    """
    sms = record.get("sms", SMS)
    t_bw = record["bytes"] / (bandwidth_GBps * 1e3)          # bytes / (GB/s) -> µs
    warp_instr = record["elements"] * record["instructions_per_element"] / WARP
    t_issue = warp_instr / (SCHEDULERS * clock_GHz * 1e3 * sms)
    inflight = sms * record["resident_threads_per_sm"] * record["bytes_in_flight_per_thread"]
    t_lat = (record["load_bytes"] * latency_ns * 1e-3 / inflight
             if inflight > 0 and record["load_bytes"] > 0 else 0.0)
    w = record.get("waves", 1.0)
    worst = max(t_bw, t_issue, t_lat)
    quant = 1.0
    if w > 1.0 and worst > 0:
        n = math.floor(w + 1e-9)
        f = w - n
        tail = max(f / w * t_bw, f / w * t_issue, t_lat / w) if f > 1e-9 else 0.0
        quant = (n / w * worst + tail) / worst
    return {"bandwidth": t_bw, "issue": t_issue, "latency": t_lat, "quantization": quant}


def predict_us(record: dict, latency_ns: float = LATENCY_NS,
               bandwidth_GBps: float = COPY_BANDWIDTH_GBPS,
               launch_us: float = LAUNCH_US, clock_GHz: float = CLOCK_GHZ) -> float:
    """Predicted time of one launch in µs (see the module docstring).

    Parameters
    ----------
    record : dict
        One launch record of ``static_report.json`` (``passes[...].launches[...]``).
    latency_ns : float
        Global memory latency under load.
    bandwidth_GBps : float
        Achievable (copy) bandwidth.
    launch_us : float
        Fixed cost per launch.
    clock_GHz : float
        The SM clock (see :func:`terms_us`).

    Returns
    -------
    float
    """
    t = terms_us(record, latency_ns, bandwidth_GBps, clock_GHz)
    return max(t["bandwidth"], t["issue"], t["latency"]) * t["quantization"] + launch_us


def bound(record: dict, latency_ns: float = LATENCY_NS,
          bandwidth_GBps: float = COPY_BANDWIDTH_GBPS) -> str:
    """Which term limits a launch: "bandwidth", "issue", "latency" (or "launch")."""
    t = terms_us(record, latency_ns, bandwidth_GBps)
    best = max(("bandwidth", "issue", "latency"), key=lambda k: t[k])
    return best if t[best] > 0 else "launch"


def predict_pass_us(records: Iterable[dict], latency_ns: float = LATENCY_NS,
                    bandwidth_GBps: float = COPY_BANDWIDTH_GBPS,
                    launch_us: float = LAUNCH_US) -> float:
    """Sum of ``predict_us`` over the launches of one pass."""
    return sum(predict_us(r, latency_ns, bandwidth_GBps, launch_us) for r in records)


def copy_fraction(minimal_bytes: float, time_us: float,
                  bandwidth_GBps: float = COPY_BANDWIDTH_GBPS) -> float:
    """Achieved fraction of copy bandwidth: minimal traffic / time / copy bandwidth."""
    return minimal_bytes / (time_us * 1e-6) / (bandwidth_GBps * 1e9)
