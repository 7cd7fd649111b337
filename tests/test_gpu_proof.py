"""The GPU proof without a GPU: the budget and its skips, the test step's plugin, offline
installs, the output folder and its unpacking, the model fit on synthetic times and on its
device, and the PyTorch-based baselines (the same layer where PyTorch is installed, a
recorded reason where it is not), and the whole dry run (every step's CPU path)."""
import json
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cupy_abn.chainer")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import fit_model  # noqa: E402
import kernels  # noqa: E402
from benchmarks.gpu_proof import (child, plan, proof, steps, testrecord,  # noqa: E402
                                  unpack, wheels)

# The proof drives its own processes: independent of the tox environment's versions.
pytestmark = pytest.mark.once


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


# ---------------------------------------------------------------- the budget
def test_shares_give_cumulative_deadlines():
    clock = FakeClock()
    b = plan.Budget(480, clock=clock)
    assert sum(s.share for s in plan.STEPS) + plan.RESERVE == pytest.approx(1.0)
    assert [s.name for s in plan.STEPS][:5] == ["environment", "tests", "kernels", "memory",
                                                "fit"]
    assert b.left("environment") == pytest.approx(480 * 0.06)
    clock.t += 5                         # the environment ends early: the tests get the rest
    assert b.left("tests") == pytest.approx(480 * 0.48 - 5)
    assert b.remaining() == pytest.approx(475)


def test_skip_reasons():
    clock = FakeClock()
    b = plan.Budget(480, clock=clock)
    tests = plan.step("tests")
    assert "no CUDA device" in plan.skip_reason(tests, b, gpu=False, dry_run=False)
    assert plan.skip_reason(tests, b, gpu=False, dry_run=True) is None
    assert plan.skip_reason(plan.step("fit"), b, gpu=False, dry_run=False) is None
    clock.t += 480 * 0.48 - 10           # 10 s left of the tests' deadline: under 30 s
    why = plan.skip_reason(tests, b, gpu=True, dry_run=False)
    assert why.startswith("budget spent: 10 s left") and "share is 202 s" in why


def _fake_proof(tmp_path, durations, gpu=True):
    """A proof whose steps only advance a fake clock by ``durations[name]``."""
    clock = FakeClock()
    p = proof.Proof(tmp_path / "out", 480, work=tmp_path / "work",
                    wheel_dir=tmp_path / "none", clock=clock)

    def fake(name):
        def run(limit):
            clock.t += durations.get(name, 1.0)       # may overrun, as a hung child can
            if name == "environment":
                p.gpu = gpu
                p.summary["device"] = {"name": "Fake GPU", "slug": "fake-gpu", "gpu": gpu}
                (p.results / "kernels_gpu.json").write_text("{}")
                (p.results / "kernels_gpu.png").write_bytes(b"png")
            return {"status": "timeout" if durations.get(name, 1) >= limit else "ok"}
        return run

    for s in plan.STEPS:
        setattr(p, f"_{s.name}", fake(s.name))
    return p


def test_a_step_over_its_share_skips_later_steps_with_their_reasons(tmp_path):
    # the tests overrun into the kernels' and the memory's shares: those are skipped, the
    # fit and the inplace_abn slot still get theirs
    p = _fake_proof(tmp_path, {"tests": 399.0})
    summary = p.run()
    st = summary["steps"]
    assert [st[n]["status"] for n in st] == ["ok", "timeout", "skipped", "skipped", "ok", "ok"]
    assert st["kernels"]["reason"].startswith("budget spent")
    assert st["tests"]["seconds"] == pytest.approx(399.0)
    assert st["kernels"]["share_s"] == pytest.approx(480 * 0.24)
    assert not summary["ok"] and "tests" in summary["why_not_ok"]
    assert summary["seconds"] <= 480
    out = tmp_path / "out"
    files = sorted(q.name for q in out.iterdir())
    assert files == ["gpu_proof.json", "gpu_proof.log", "gpu_proof.tar.gz", "kernels_gpu.png"]
    assert all(q.is_file() for q in out.iterdir()) and len(files) <= proof.MAX_FILES
    saved = json.loads((out / "gpu_proof.json").read_text())
    assert saved["device"]["name"] == "Fake GPU" and saved["files"] == sorted(files)
    with tarfile.open(out / "gpu_proof.tar.gz") as tar:
        assert {"gpu_proof.json", "gpu_proof.log", "kernels_gpu.json"} <= set(tar.getnames())
    assert json.loads((p.results / "kernels_gpu.json").read_text())["gpu_proof_device"][
        "name"] == "Fake GPU"


def test_without_a_gpu_the_gpu_steps_are_skipped(tmp_path):
    summary = _fake_proof(tmp_path, {}, gpu=False).run()
    st = summary["steps"]
    for name in ("tests", "kernels", "memory", "inplace_abn"):
        assert st[name]["status"] == "skipped" and "no CUDA device" in st[name]["reason"]
    assert st["fit"]["status"] == "ok" and not summary["ok"]
    assert "no CUDA device" in summary["why_not_ok"]


def test_the_output_folder_is_new_empty_or_an_earlier_runs(tmp_path):
    proof.check_out(tmp_path / "new")
    (tmp_path / "gpu_proof.json").write_text("{}")
    (tmp_path / "kernels_gpu.png").write_bytes(b"")
    proof.check_out(tmp_path)
    (tmp_path / "kernels_cpu.json").write_text("{}")       # e.g. benchmarks/results
    with pytest.raises(SystemExit, match="kernels_cpu.json"):
        proof.check_out(tmp_path)


def test_command_line():
    from benchmarks.gpu_proof.__main__ import _parse
    args = _parse(["--out", "d", "--dry-run"])
    assert args.cmd is None and args.budget_s == plan.DEFAULT_BUDGET_S and args.dry_run
    assert _parse(["unpack", "d"]).src == "d"
    with pytest.raises(SystemExit):
        _parse([])                       # --out or a subcommand


# ---------------------------------------------------------------- child processes
def test_child_env_uses_every_core_and_the_installed_wheels(tmp_path):
    env = child.child_env(tmp_path / "site")
    assert env["PYTHONPATH"].split(os.pathsep)[:2] == [str(tmp_path / "site"), str(ROOT)]
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        assert env[var] == str(os.cpu_count())
    assert "CUPY_ABN_ONLY_GPU_SKIPS" not in env


def test_run_logged_kills_at_its_limit(tmp_path):
    res = child.run_logged([sys.executable, "-c", "import time; print('hi'); time.sleep(60)"],
                           tmp_path / "x.log", 1.5, child.child_env())
    assert res["status"] == "timeout" and res["seconds"] < 10 and "hi" in res["tail"]


# ---------------------------------------------------------------- the test step's plugin
class _Item:
    def __init__(self, nodeid):
        self.nodeid = nodeid


def test_tests_run_breadth_first():
    ids = ["a.py::f[1]", "a.py::f[2]", "a.py::f[3]", "a.py::g", "b.py::h[1]", "b.py::h[2]"]
    got = [i.nodeid for i in testrecord.order_items([_Item(i) for i in ids])]
    assert got == ["a.py::f[1]", "a.py::g", "b.py::h[1]", "a.py::f[2]", "b.py::h[2]",
                   "a.py::f[3]"]


def _session(tmp_path, source, **env):
    """A real pytest session on ``source`` with the plugin; its record's counts, output."""
    (tmp_path / "test_x.py").write_text(textwrap.dedent(source))
    record = tmp_path / "record.jsonl"
    record.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUPY_ABN_PROOF_RECORD=str(record),
               **{f"CUPY_ABN_PROOF_{k}": str(v) for k, v in env.items()})
    p = subprocess.run([sys.executable, "-m", "pytest", "-p",
                        "benchmarks.gpu_proof.pytest_plugin", "-p", "no:cacheprovider",
                        "-p", "no:timeout", "-q", f"--junitxml={tmp_path / 'j.xml'}",
                        str(tmp_path / "test_x.py")],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    lines = [json.loads(ln) for ln in record.read_text().splitlines()]
    assert (tmp_path / "j.xml").exists()
    return testrecord.counts(lines), p.stdout


def test_plugin_per_test_timeout(tmp_path):
    """A hanging test fails at the per-test timeout and the next one runs."""
    got, out = _session(tmp_path, """
        import time, pytest
        def test_hangs():
            time.sleep(60)
        def test_ok():
            pass
        def test_skip():
            pytest.skip("no")
        """, TEST_TIMEOUT=1)
    assert (got["failed"], got["passed"], got["skipped"], got["not_run"]) == (1, 1, 1, 0)
    assert "PerTestTimeout" in out


def test_plugin_deadline_cuts_and_stops(tmp_path):
    """The test running at the deadline is cut (not failed), the session stops, its reports
    are written, and the rest count as not run."""
    import time
    got, out = _session(tmp_path, """
        import time
        def test_long():
            time.sleep(60)
        def test_after():
            pass
        """, DEADLINE=time.time() + 3, TEST_TIMEOUT=100)
    assert (got["collected"], got["cut"], got["not_run"], got["failed"]) == (2, 1, 1, 0), out


def test_counts_of_errors_and_collection_failures():
    lines = [{"collected": 3}, {"collect_error": "tests/test_bad.py"},
             {"collect_skip": "tests/test_x.py", "reason": "no cupy"},
             {"test": "a", "when": "setup", "outcome": "failed"},
             {"test": "b", "when": "setup", "outcome": "passed"},
             {"test": "b", "when": "call", "outcome": "passed"},
             {"test": "b", "when": "teardown", "outcome": "failed"}]
    got = testrecord.counts(lines)
    assert got == {"collected": 3, "passed": 0, "failed": 0, "skipped": 0, "errors": 2,
                   "cut": 0, "not_run": 1, "collect_errors": 1, "modules_skipped": 1}


# ---------------------------------------------------------------- wheels and installs
def test_prepared_wheels_are_ignored_by_git():
    from benchmarks.gpu_proof import WHEELS
    rel = WHEELS.relative_to(ROOT) / "x.whl"
    assert subprocess.run(["git", "check-ignore", "-q", str(rel)], cwd=ROOT).returncode == 0


def test_only_missing_modules_are_installed(tmp_path, monkeypatch):
    folder = tmp_path / "wheels"
    folder.mkdir()
    for name in ("chainer-7.8.1-py3-none-any.whl", "six-1.17.0-py2.py3-none-any.whl",
                 "tqdm-4.67.1-py3-none-any.whl"):
        (folder / name).write_bytes(b"stand-in")
    found = {m: True for m in wheels.MODULES.values()}
    found.update(chainer=False, six=False, pytest=False)
    monkeypatch.setattr(wheels, "importable", lambda mods, site: {m: found[m] for m in mods})
    got_wheels = []
    monkeypatch.setattr(wheels, "install_wheels", lambda ws, site: got_wheels.extend(ws))
    got = wheels.install_missing(folder, tmp_path / "site")
    assert [w.name for w in got_wheels] == got["installed"] == [
        "chainer-7.8.1-py3-none-any.whl", "six-1.17.0-py2.py3-none-any.whl"]
    assert got["missing"] == ["pytest"] and "tqdm" in got["present"]


def test_only_wheels_this_interpreter_takes_are_chosen():
    cp = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    assert wheels.compatible(Path("six-1.17.0-py2.py3-none-any.whl"))
    assert wheels.compatible(Path(f"hypothesis-6.1-{cp}-{cp}-manylinux2014_x86_64."
                                  "manylinux_2_17_x86_64.whl")) == (
        __import__("platform").machine() == "x86_64")
    assert not wheels.compatible(Path("hypothesis-6.1-cp39-cp39-manylinux2014_x86_64.whl"))
    assert not wheels.compatible(Path("x-1.0-py3-none-win_amd64.whl"))


def test_wheels_unzip_without_pip(tmp_path, monkeypatch):
    import zipfile
    whl = tmp_path / "demo_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("demo_pkg/__init__.py", "X = 1\n")
    real = subprocess.run
    monkeypatch.setattr(wheels.subprocess, "run", lambda argv, **kw: subprocess.CompletedProcess(
        argv, 1) if argv[-1] == "--version" else real(argv, **kw))
    wheels.install_wheels([whl], tmp_path / "site")
    assert (tmp_path / "site" / "demo_pkg" / "__init__.py").read_text() == "X = 1\n"


def test_setup_patch_of_the_inplace_abn_sdist(tmp_path):
    # the four lines the patch rewrites, as they stand in inplace-abn 1.1.0's setup.py
    (tmp_path / "setup.py").write_text(
        "from torch.utils.cpp_extension import BuildExtension, CUDAExtension, CppExtension\n"
        "if torch.has_cuda:\n    pass\nsetuptools.setup(\n"
        '    use_scm_version={"root": ".", "relative_to": __file__, '
        '"write_to": "inplace_abn/_version.py"},\n'
        '    setup_requires=["setuptools_scm"],\n)\n')
    assert len(wheels.patch_setup(tmp_path)) == 4
    text = (tmp_path / "setup.py").read_text()
    assert "has_cuda" not in text and "setuptools_scm" not in text
    assert 'version="1.1.0"' in text and "CUDA_HOME is not None" in text
    compile(text, "setup.py", "exec")
    with pytest.raises(RuntimeError, match="another sdist"):
        wheels.patch_setup(tmp_path)


def test_missing_sdist_is_a_recorded_skip(tmp_path):
    got = wheels.build_inplace_abn(tmp_path / "none.tar.gz", tmp_path, 10, tmp_path / "l")
    assert got["status"] == "skipped" and "prepare" in got["reason"]


def test_steps_import_chainer_without_numpy_distutils_and_pkg_resources(tmp_path):
    """As on a machine with Python 3.12, NumPy 2 and maybe no setuptools: the version probe
    imports Chainer through cupy_abn.chainer's stand-ins, with the steps' environment."""
    from tests.test_chainer_standins import HIDE
    p = subprocess.run([sys.executable, "-c", HIDE + steps._PROBE],
                       env=child.child_env(tmp_path), capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    info = json.loads(p.stdout.strip().splitlines()[-1])
    assert (info["chainer"] or {}).get("version") == "7.8.1", info.get("chainer_error")


# ---------------------------------------------------------------- device and results
def test_device_description_and_its_model_device():
    smi = {"name": "NVIDIA H200", "driver": "570", "memory": "143771 MiB",
           "clock_max_mhz": 1980, "cuda": "13.0"}
    versions = {"cupy": {"version": "14.0", "runtime": 13000, "devices": 1,
                         "name": "NVIDIA H200", "sms": 132, "compute_cap": "9.0"}}
    dev = steps.describe_device(smi, versions)
    assert dev["slug"] == "nvidia-h200" and dev["gpu"] and dev["clock_ghz"] == 1.98
    spec = steps.device_spec(dev, None, dry_run=False)
    assert spec["name"] == "NVIDIA H200" and spec["sms"] == 132 and spec["copy_gbps"] == 4300
    mig = dict(dev, sms=66)              # a partition: its own SM count
    assert steps.device_spec(mig, None, dry_run=False)["sms"] == 66
    other = dict(dev, name="NVIDIA A40", sms=84, clock_ghz=1.74)
    spec = steps.device_spec(other, None, dry_run=False)
    assert (spec["sms"], spec["clock_ghz"], spec["copy_gbps"]) == (84, 1.74, None)
    assert "reference" in steps.device_spec(dev, None, dry_run=True)["name"]
    cpu = steps.describe_device({"error": "no nvidia-smi"}, {"cupy": {"devices": 0}})
    assert cpu["name"] == "CPU" and not cpu["gpu"]
    assert steps.device_spec(cpu, None, dry_run=False) is None
    dry = steps.describe_device(smi, versions, dry_run=True)     # a GPU there, not used
    assert (dry["name"], dry["slug"], dry["gpu"]) == ("CPU", "cpu-dry-run", False)


def test_unpack_makes_one_compact_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "gpu_proof.json").write_text(json.dumps({"device": {"name": "Fake GPU",
                                                               "slug": "fake-gpu"}}))
    (run / "tests.log").write_bytes(b"x" * (3 << 20))          # over 1 MiB: cut
    (run / "big.json").write_text(json.dumps({"a": list(range(100000))}, indent=4))
    (run / "note.txt").write_text("kept")
    with tarfile.open(run / "gpu_proof.tar.gz", "w:gz") as tar:
        for name in ("tests.log", "big.json", "note.txt"):
            tar.add(run / name, arcname=name)
            (run / name).unlink()
    written = unpack.unpack(run, tmp_path / "results")
    dest = tmp_path / "results" / "gpu_proof_fake-gpu"
    assert sorted(p.name for p in dest.iterdir()) == ["big.json", "gpu_proof.json", "note.txt",
                                                      "tests.log"]
    assert all(p.stat().st_size <= unpack.LIMIT for p in dest.iterdir())
    assert b"cut by unpack" in (dest / "tests.log").read_bytes()
    assert json.loads((dest / "big.json").read_text())["a"][-1] == 99999
    assert set(written) == set(dest.iterdir())


def test_kernels_within_a_spent_budget_write_what_they_have(tmp_path):
    got = kernels.main(["--device", "cpu", "--batch", "2", "--shapes", "4:3:3", "--dtypes",
                        "float32", "--repeat", "1", "--warmup", "0", "--budget-s", "0",
                        "--impls", "composition", "--stem", "k", "--no-progress",
                        "--out", str(tmp_path)])
    assert got["rows"] == [] and got["cases_not_run"] == 1 and got["impls"] == ["composition"]
    assert json.loads((tmp_path / "k.json").read_text())["cases_not_run"] == 1


def test_dry_run_end_to_end(tmp_path):
    """The one command's whole path on the CPU at toy sizes, then unpacked (about 30 s)."""
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "benchmarks.gpu_proof", "--dry-run", "--out",
                        str(out), "--budget-s", "300", "--work", str(tmp_path / "work"),
                        "--wheels", str(tmp_path / "no-wheels")],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    files = list(out.iterdir())
    assert len(files) <= proof.MAX_FILES and all(f.is_file() for f in files)
    summary = json.loads((out / "gpu_proof.json").read_text())
    assert summary["ok"] and summary["seconds"] <= 300
    st = summary["steps"]
    assert [st[n]["status"] for n in ("environment", "tests", "kernels", "memory", "fit")] \
        == ["ok"] * 5
    assert st["inplace_abn"]["status"] == "skipped" and st["inplace_abn"]["reason"]
    assert summary["tests"]["collected"] > 100 and summary["tests"]["failed"] == 0
    assert st["fit"]["predicted_for"] == summary["device_spec"]["name"]
    assert set(st["kernels"]["timed"]) == set(kernels.IMPLS)
    assert {"kernels_cpu.png", "memory_cpu.png"} <= {f.name for f in files}
    unpack.unpack(out, tmp_path / "results")
    dest = tmp_path / "results" / f"gpu_proof_{summary['device']['slug']}"
    names = {f.name for f in dest.iterdir()}
    assert {"kernels_cpu.json", "tests_gpu.xml", "static_fit_synthetic.json",
            "gpu_proof.log"} <= names
    assert all(f.stat().st_size <= unpack.LIMIT for f in dest.iterdir())


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
                          "--device-spec", "name=Test,sms=132,clock_ghz=1.5",
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


# ---------------------------------------------------------------- the model's device
def test_device_specs():
    h200 = fit_model.resolve_device(None, {"gpu_proof_device": {"name": "NVIDIA H200"}})
    assert (h200.sms, h200.clock_ghz, h200.copy_gbps) == (132, 1.98, 4300.0)
    ref = fit_model.resolve_device("reference", {})
    assert "reference" in ref.name and ref.sms == 132
    given = fit_model.resolve_device("name=X,sms=84,clock_ghz=1.7", {"copy_gbps": 600.0})
    assert (given.sms, given.clock_ghz, given.copy_gbps) == (84, 1.7, 600.0)
    reported = fit_model.resolve_device(None, {"gpu_proof_device": {
        "name": "Y", "sms": 108, "clock_ghz": 1.41}})
    assert reported.sms == 108 and "report" in reported.source
    with pytest.raises(ValueError, match="unknown device"):
        fit_model.resolve_device(None, {"device": "Z"})


def test_records_seen_on_another_sm_count():
    rec = {"sms": 132, "waves": 2.0, "resident_threads_per_sm": 1024}
    assert fit_model.for_sms(rec, 132) is rec
    assert fit_model.for_sms(rec, 66)["waves"] == 4.0
    small = {"sms": 132, "waves": 0.5, "resident_threads_per_sm": 512}
    got = fit_model.for_sms(small, 264)          # fewer blocks per SM
    assert got["waves"] == 0.25 and got["resident_threads_per_sm"] == 256
    assert fit_model.for_sms(small, 33)["resident_threads_per_sm"] == 1024   # capped: full


def test_the_device_clock_reaches_the_model_and_is_restored():
    predict = fit_model.load_predict()
    g = predict.__globals__
    before = g["CLOCK_GHZ"]
    spec = fit_model.DeviceSpec("X", 132, 2 * before)
    rec = {"bytes": 0, "load_bytes": 0, "elements": 1e9, "instructions_per_element": 10,
           "bytes_in_flight_per_thread": 16, "resident_threads_per_sm": 2048, "waves": 1.0,
           "sms": 132}
    slow = predict(rec, 700.0, 3000.0)
    fast = fit_model.on_device(predict, spec)
    assert fast(rec, 700.0, 3000.0) - 2.0 == pytest.approx((slow - 2.0) / 2)
    assert g["CLOCK_GHZ"] == before


def test_synthetic_fit_on_the_static_report_finds_the_parameters_again():
    """The whole fit on the committed report, on an H200: the model's own times at known
    parameters are fitted back (the dry run's fit step)."""
    report = fit_model.load_report(fit_model.REPORT)
    predict = fit_model.load_predict()
    spec = fit_model.KNOWN_DEVICES["NVIDIA H200"]
    measured = fit_model.synthetic_measurement(report, predict, spec, 650.0, 4100.0)
    got = fit_model.run_fit(measured, report, predict, spec=spec)
    assert got["predicted_for"] == "NVIDIA H200" and got["device_spec"]["sms"] == 132
    assert got["cases"] >= 50 and got["rms_log_error"] < 1e-6
    assert got["latency_ns"] == pytest.approx(650.0, rel=1e-3)
    assert got["bandwidth_GBps"] == pytest.approx(4100.0, rel=1e-3)
    assert got["prior"]["bandwidth_GBps"] == 4300.0
    assert all("prior_us" in p for p in got["passes"])
