"""The GPU proof up to where a GPU is needed: the script's syntax, the commands it asks
for, every driver step's CPU path (or a clean "needs a GPU"), bundling and unpacking, the
model fit on synthetic times, and the PyTorch-based baselines (the same layer where PyTorch
is installed, a recorded reason where it is not; PyTorch is never needed here)."""
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cupy_abn.chainer")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import fit_model  # noqa: E402
import gpu_proof  # noqa: E402
import kernels  # noqa: E402

# The proof drives its own processes: independent of the tox environment's versions.
pytestmark = pytest.mark.once


@pytest.fixture
def work(tmp_path, monkeypatch):
    """Driver state (work folders, site, carried folder) under tmp_path."""
    monkeypatch.setattr(gpu_proof, "WORK", tmp_path / "work")
    monkeypatch.setattr(gpu_proof, "SITE", tmp_path / "work" / "site")
    monkeypatch.setattr(gpu_proof, "BUILT", tmp_path / "work" / "built")
    monkeypatch.setattr(gpu_proof, "CARRY", tmp_path / "carry")
    return tmp_path


def test_script_is_valid_bash_and_prints_usage():
    script = ROOT / "scripts" / "gpu_proof.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    p = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    assert p.returncode == 2 and "part1" in p.stderr and "unpack" in p.stderr


def test_device_calls_fit_the_tool():
    calls = gpu_proof.run_calls()
    assert [c["command"] for c in calls] == ["bash scripts/gpu_proof.sh part1",
                                             "bash scripts/gpu_proof.sh part2"]
    for c in calls:
        assert len(c["command"]) <= 2000 and len(c["carry"]) <= 8 and c["timeout_s"] <= 600
    # the carried folder must be ignored by git (it travels only through `carry`)
    ignored = subprocess.run(["git", "check-ignore", "-q", ".gpu_carry/wheels/x.whl"],
                             cwd=ROOT)
    assert ignored.returncode == 0
    # each part ends well inside the tool's 10 minutes
    assert gpu_proof.PART_BUDGET_S <= 560


@pytest.mark.parametrize("part", sorted(gpu_proof.PLAN))
def test_dry_run_prints_every_step(part, capsys):
    got = gpu_proof.run_part(part, Path("unused"), gpu=True, dry_run=True)
    out = capsys.readouterr().out
    assert got["steps"] == list(gpu_proof.PLAN[part])
    for name in gpu_proof.PLAN[part]:
        assert name in out
    if "tests" in gpu_proof.PLAN[part]:
        assert "-m gpu" in out


def test_without_a_gpu_the_gpu_run_stops_cleanly(work):
    out = work / "out"
    summary = gpu_proof.run_part("part1", out, gpu=True, budget_s=120)
    assert summary["steps"]["environment"]["status"] == "needs_gpu"
    assert "tests" not in summary["steps"] and not summary["ok"]
    saved = json.loads((out / "gpu_proof_part1_cpu.json").read_text())
    assert saved["device"]["name"] == "CPU"


def test_cpu_path_of_the_benchmark_steps_bundles_and_unpacks(work, monkeypatch):
    """environment, kernels (every baseline asked for) and memory on the CPU, then the
    bundle returned and unpacked with the device in every file name."""
    monkeypatch.setitem(gpu_proof.PLAN, "part2", ("environment", "kernels", "memory", "fit"))
    out = work / "out"
    summary = gpu_proof.run_part("part2", out, gpu=False, budget_s=300)
    steps = summary["steps"]
    assert all(steps[s]["status"] == "ok" for s in ("environment", "kernels", "memory")), steps
    assert steps["fit"]["status"] in ("ok", "skipped")
    assert sorted(p.name for p in out.iterdir()) == ["gpu_proof_part2_cpu.json",
                                                     "gpu_proof_part2_cpu.tar.gz"]
    with tarfile.open(out / "gpu_proof_part2_cpu.tar.gz") as tar:
        names = tar.getnames()
        kern = json.load(tar.extractfile("kernels_cpu.json"))
    assert {"kernels.log", "kernels_cpu.png", "memory_cpu.json", "environment.json"} <= set(names)
    assert kern["gpu_proof_device"]["name"] == "CPU"
    assert set(kern["impls"]) == set(kernels.IMPLS + kernels.OPTIONAL)
    timed = {r["impl"] for r in kern["rows"]}
    for impl in kernels.OPTIONAL:       # timed, or skipped with its reason
        assert impl in timed or any(s["impl"] == impl and s["reason"] for s in kern["skipped"])

    (out / "inplace_abn-1.1.0-cp312-cp312-linux_x86_64.whl").write_bytes(b"stand-in")
    results = work / "results"
    written = gpu_proof.unpack(out, results, work / "carry")
    assert (results / "kernels_cpu_cpu.json").exists()
    assert (results / "memory_cpu_cpu.png").exists()
    assert (results / "gpu_proof_cpu" / "kernels.log").exists()
    assert (work / "carry" / "built" / "inplace_abn-1.1.0-cp312-cp312-linux_x86_64.whl") in written


def test_demo_options_of_both_modes_parse():
    from cupy_abn.demo.__main__ import _parse
    for gpu in (True, False):
        argv = gpu_proof._step_argv("demo", gpu, Path("w"))
        args = _parse([str(a) for a in argv[3:]])
        assert args.device == ("gpu" if gpu else "cpu") and args.steps >= 6


def test_setup_patch_of_the_inplace_abn_sdist(tmp_path):
    # the four lines the patch rewrites, as they stand in inplace-abn 1.1.0's setup.py
    (tmp_path / "setup.py").write_text(
        "from torch.utils.cpp_extension import BuildExtension, CUDAExtension, CppExtension\n"
        "if torch.has_cuda:\n    pass\nsetuptools.setup(\n"
        '    use_scm_version={"root": ".", "relative_to": __file__, '
        '"write_to": "inplace_abn/_version.py"},\n'
        '    setup_requires=["setuptools_scm"],\n)\n')
    assert len(gpu_proof._patch_setup(tmp_path)) == 4
    text = (tmp_path / "setup.py").read_text()
    assert "has_cuda" not in text and "setuptools_scm" not in text
    assert 'version="1.1.0"' in text and "CUDA_HOME is not None" in text
    compile(text, "setup.py", "exec")
    with pytest.raises(RuntimeError, match="another sdist"):
        gpu_proof._patch_setup(tmp_path)


def test_missing_sdist_is_a_recorded_skip(tmp_path):
    got = gpu_proof.build_inplace_abn(tmp_path / "none.tar.gz", tmp_path, 10, tmp_path / "l")
    assert got["status"] == "skipped" and "prepare" in got["reason"]


def test_steps_import_chainer_without_numpy_distutils_and_pkg_resources():
    """As on the GPU machine (Python 3.12, NumPy 2, maybe no setuptools): the environment
    probe imports Chainer through cupy_abn.chainer's stand-ins, with the steps' environment
    (no start-up shim)."""
    from tests.test_chainer_standins import HIDE
    env = gpu_proof.child_env()
    assert not [p for p in env["PYTHONPATH"].split(os.pathsep) if "_gpu_proof_site" in p]
    p = subprocess.run([sys.executable, "-c", HIDE + gpu_proof._ENV_PROBE], env=env,
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    info = json.loads(p.stdout.strip().splitlines()[-1])
    assert (info["chainer"] or {}).get("version") == "7.8.1", info.get("chainer_error")


@pytest.mark.parametrize("installed", [True, False])
def test_install_takes_the_carried_chainer_only_where_none_is_installed(work, monkeypatch,
                                                                        installed):
    """Chainer is located, not imported (that needs cupy_abn.chainer first); nothing else is
    carried."""
    calls = []

    def run(argv, **kwargs):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0 if installed else 1)

    monkeypatch.setattr(gpu_proof.subprocess, "run", run)
    wheels = work / "carry" / "wheels"
    wheels.mkdir(parents=True)
    (wheels / "chainer-7.8.1-py3-none-any.whl").write_bytes(b"stand-in")
    got = gpu_proof.install(work / "carry")
    assert "find_spec('chainer')" in calls[0][-1]
    if installed:
        assert got == {"status": "ok", "installed": [], "missing": []} and len(calls) == 1
    else:
        assert got["installed"] == ["chainer-7.8.1-py3-none-any.whl"] and len(calls) == 2
        assert calls[1][-1] == str(wheels / "chainer-7.8.1-py3-none-any.whl")


# ---------------------------------------------------------------- the model fit
def _synthetic_predict(rec, latency_ns, bandwidth_gbps):
    """A stand-in with the static model's form: a latency chain per wave, bytes over the
    bandwidth, a fixed launch cost."""
    return (rec["waves"] * rec["chain"] * latency_ns * 1e-3 + rec["bytes"]
            / (bandwidth_gbps * 1e3) + 2.0)


def _synthetic(latency, bandwidth, nested, noise=0.0):
    rs = np.random.RandomState(0)
    items, rows = [], []
    for shape in ((32, 64, 112, 112), (32, 512, 28, 28), (32, 2048, 7, 7), (2, 64, 8, 8)):
        for dtype in ("float32", "float16"):
            size = int(np.prod(shape)) * np.dtype(dtype).itemsize
            for name, k in kernels.MODEL_BYTES.items():
                for mode in ("inplace", "standard"):
                    launches = [{"bytes": size * k / 2, "waves": 1 + i, "chain": 8 + 4 * i}
                                for i in range(2)]
                    key = {"pass": name, "shape": list(shape), "dtype": dtype, "mode": mode}
                    if nested:
                        items.append(dict(key, major=13, launches=launches))
                        items.append(dict(key, major=12, launches=[]))   # another CUDA
                    else:
                        items += [dict(key, arch="sm_90", **r) for r in launches]
                        items += [dict(key, arch="sm_80", **launches[0])]
                    us = sum(_synthetic_predict(r, latency, bandwidth) for r in launches)
                    rows.append({"impl": f"cupy-abn {mode}", "pass": name, "shape": list(shape),
                                 "dtype": dtype, "ms": us * np.exp(noise * rs.randn()) / 1e3,
                                 "model_bytes": k * size})
            rows.append(dict(rows[-1], impl="chainer", ms=1.0))   # baselines are not fitted
    measured = {"rows": rows, "copy_gbps": 3000.0, "environment": {"cuda_runtime": 13000},
                "gpu_proof_device": {"compute_cap": "9.0"}}
    return measured, ({"passes": items} if nested else {"launches": items})


@pytest.mark.parametrize("nested", [True, False], ids=["passes", "flat"])
def test_fit_recovers_known_parameters(nested):
    measured, report = _synthetic(650.0, 2900.0, nested)
    got = fit_model.run_fit(measured, report, _synthetic_predict)
    assert got["cases"] == 4 * 2 * 3 * 2
    assert got["record_filter"] == ({"major": 13} if nested else {"arch": "sm_90"})
    assert got["latency_ns"] == pytest.approx(650.0, rel=1e-6)
    assert got["bandwidth_GBps"] == pytest.approx(2900.0, rel=1e-6)
    assert got["rms_log_error"] < 1e-8
    for p in got["passes"]:
        assert p["ratio"] == pytest.approx(1.0, rel=1e-6)
        assert 0 < p["predicted_fraction_of_copy"] < 1


def test_fit_with_noise_stays_close_and_reports_errors():
    measured, report = _synthetic(650.0, 2900.0, True, noise=0.03)
    got = fit_model.run_fit(measured, report, _synthetic_predict)
    assert got["latency_ns"] == pytest.approx(650.0, rel=0.1)
    assert got["bandwidth_GBps"] == pytest.approx(2900.0, rel=0.05)
    assert 0.01 < got["rms_log_error"] < 0.05
    assert all(0 < e < 0.2 for e in got["log_std_error"].values())


def test_fit_command_line_with_a_stand_in_model(tmp_path):
    measured, report = _synthetic(900.0, 2500.0, True)
    (tmp_path / "m.json").write_text(json.dumps(measured))
    (tmp_path / "r.json").write_text(json.dumps(report))
    got = fit_model.main(["--measured", str(tmp_path / "m.json"), "--report",
                          str(tmp_path / "r.json"), "--model",
                          "tests.test_gpu_proof:_synthetic_predict",
                          "--out", str(tmp_path / "fit.json")])
    assert json.loads((tmp_path / "fit.json").read_text())["cases"] == got["cases"] == 48
    assert got["latency_ns"] == pytest.approx(900.0, rel=1e-6)


def test_fit_needs_matched_passes():
    measured, _ = _synthetic(650.0, 2900.0, True)
    with pytest.raises(ValueError, match="at least 2"):
        fit_model.run_fit(measured, {"passes": []}, _synthetic_predict)


# ---------------------------------------------------------------- the new baselines
def test_optional_baselines_compute_the_same_layer_or_say_why_not(monkeypatch):
    """Where PyTorch (and inplace_abn) are installed, the same layer as the composition
    (float64); where not, a recorded reason and no row: the run never fails for them."""
    monkeypatch.setattr(kernels, "SLOPE", 0.1)
    rs = np.random.RandomState(0)
    x = 1.0 + 2.0 * rs.standard_normal((3, 5, 4, 3))
    dz = rs.standard_normal(x.shape)

    def outputs(impl):
        got = [kernels._prepare(impl, np, x.copy(), dz)[n]() for n in kernels.PASSES]
        return [np.array(g.detach().numpy() if hasattr(g, "detach") else
                         getattr(g, "array", g)) for g in got]

    want = outputs("composition")
    for impl in kernels.OPTIONAL:
        try:
            got = outputs(impl)
        except kernels._baselines.Unavailable as e:
            assert "not installed" in str(e)
            continue
        for name, w, g in zip(kernels.PASSES, want, got):
            np.testing.assert_allclose(g, w, rtol=1e-7, atol=1e-7, err_msg=f"{impl} {name}")

    skipped = []
    from _timing import Clock
    rows = kernels.run(np, [(2, 3, 4, 4)], ["float32"], Clock(np, 0, 1), False,
                       kernels.OPTIONAL, skipped)
    assert {r["impl"] for r in rows} | {s["impl"] for s in skipped} == set(kernels.OPTIONAL)
    assert all(s["reason"] for s in skipped)


def test_baselines_run_by_default_on_a_gpu_only():
    assert kernels.impls_for("auto", gpu=False) == kernels.IMPLS
    assert kernels.impls_for("auto", gpu=True) == kernels.IMPLS + kernels.OPTIONAL
    assert kernels.impls_for("all", gpu=False) == kernels.IMPLS + kernels.OPTIONAL
    assert kernels.impls_for("none", gpu=True) == kernels.IMPLS


def test_fit_with_the_static_model_on_its_own_record_fields():
    """The real ``predict_us`` (a max of three limits: not smooth) on launch records shaped
    like the static report's, passes of another CUDA major left out."""
    predict = fit_model.load_predict()
    rs = np.random.RandomState(1)
    measured, report = _synthetic(650.0, 2900.0, True)
    for item in report["passes"]:
        size = int(np.prod(item["shape"])) * np.dtype(item["dtype"]).itemsize
        k = kernels.MODEL_BYTES[item["pass"]]
        item["arch"] = "sm_90"
        item["launches"] = [{"arch": "sm_90", "bytes": k * size / 2,
                             "load_bytes": 0.35 * k * size, "elements": size,
                             "instructions_per_element": 6 + 3 * i,
                             "bytes_in_flight_per_thread": int(rs.choice([4, 16, 64])),
                             "resident_threads_per_sm": int(rs.choice([512, 1024, 2048])),
                             "waves": float(rs.choice([0.6, 1.0, 2.0, 3.5, 8.0]))}
                            for i in range(2)] if item["major"] == 13 else []
    by_key = {(p["pass"], tuple(p["shape"]), p["dtype"], p["mode"]): p["launches"]
              for p in report["passes"] if p["major"] == 13}
    for r in measured["rows"]:
        if r["impl"].startswith("cupy-abn"):
            key = (r["pass"], tuple(r["shape"]), r["dtype"], r["impl"].split()[1])
            r["ms"] = sum(predict(x, 820.0, 3100.0) for x in by_key[key]) / 1e3
    got = fit_model.run_fit(measured, report, predict)
    assert got["record_filter"] == {"arch": "sm_90", "major": 13}
    assert got["latency_ns"] == pytest.approx(820.0, rel=1e-4)
    assert got["bandwidth_GBps"] == pytest.approx(3100.0, rel=1e-4)
