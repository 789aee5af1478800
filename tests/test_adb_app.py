"""``edgeq profile --device adb:...`` through the android-demo app's benchmark mode.

There is no Android device here: a fake ``adb`` (a Python script on PATH) plays the device.
It answers ``devices``, ``shell getprop``, ``shell pm path``, ``shell run-as PKG rm|ls|cat``,
``shell unzip -p APK ENTRY``, ``shell am start ...`` and ``shell pidof`` from files in a temp
dir, and its "app" behaves as BenchmarkActivity + BundleStore do: it copies the bundle from
the "APK" (a real bundle written by ``edgeq bundle`` for a tiny exported model) into
``files/edgeq/<id>/`` and writes ``files/benchmark_results.json`` (after a few polls) or
``files/benchmark_error.txt``. So the whole path runs end to end through the real CLI; what
a real device and the real app print is not exercised.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import sys
from pathlib import Path

import pytest

from edgeq.profiling.remote import ANDROID_APP, AdbDevice, DeviceError, parse_device
from tests.conftest import run_cli

SERIAL = "emulator-5554"

FAKE_ADB = r'''#!{python}
import json, shlex, shutil, statistics, sys
from pathlib import Path

STATE = Path({state!r})
conf = json.loads((STATE / "config.json").read_text())
args = sys.argv[1:]
with open(STATE / "calls.log", "a") as log:
    log.write(json.dumps(args) + "\n")
if args == ["devices"]:
    sys.stdout.write("List of devices attached\n{serial}\tdevice\n\n")
    sys.exit(0)
if args[:2] != ["-s", "{serial}"] or args[2:3] != ["shell"]:
    sys.exit("fake adb: unexpected call: " + " ".join(args))
line = " ".join(args[3:])
if line.startswith("getprop"):
    print("Google\nPixel 8\nTensor G3\narm64-v8a\n14\n12-01 11:00:00")
    sys.exit(0)
cmd = shlex.split(line)
PKG = "dev.edgeq.demo"
APK = "/data/app/~~Zm9v==/dev.edgeq.demo-YmFy==/base.apk"
files = STATE / "files"

def finish_pending():
    pending = STATE / "pending.json"
    if pending.exists():
        left = int((STATE / "polls_left").read_text()) - 1
        (STATE / "polls_left").write_text(str(left))
        if left <= 0:
            pending.rename(files / "benchmark_results.json")

if cmd[:2] == ["pm", "path"]:
    if conf["installed"] and cmd[2] == PKG:
        print("package:" + APK)
        sys.exit(0)
    sys.exit(1)
if cmd[:1] == ["run-as"]:
    if cmd[1] != PKG:
        sys.exit(f"run-as: unknown package: {{cmd[1]}}")
    if not conf["debuggable"]:
        sys.exit(f"run-as: package not debuggable: {{PKG}}")
    sub = cmd[2:]
    if sub[:2] == ["rm", "-f"]:
        for rel in sub[2:]:
            (STATE / rel).unlink(missing_ok=True)
        sys.exit(0)
    if sub == ["ls", "files"]:
        finish_pending()
        if not files.is_dir():
            sys.exit("ls: files: No such file or directory")
        print("\n".join(sorted(p.name for p in files.iterdir())))
        sys.exit(0)
    if sub[:1] == ["cat"]:
        path = STATE / sub[1]
        if not path.is_file():
            sys.exit(f"cat: {{sub[1]}}: No such file or directory")
        sys.stdout.buffer.write(path.read_bytes())
        sys.exit(0)
    if sub == ["true"]:
        sys.exit(0)
if cmd[:2] == ["unzip", "-p"]:
    if not conf["unzip"]:
        print("/system/bin/sh: unzip: inaccessible or not found", file=sys.stderr)
        sys.exit(127)
    assert cmd[2] == APK, cmd
    entry = STATE / "apk" / cmd[3]
    if not entry.is_file():
        sys.exit(f"unzip: no entry {{cmd[3]}}")
    sys.stdout.buffer.write(entry.read_bytes())
    sys.exit(0)
if cmd[:1] == ["pidof"]:
    if (STATE / "running").exists():
        print("12345")
        sys.exit(0)
    sys.exit(1)
if cmd[:2] == ["am", "start"]:
    component = cmd[cmd.index("-n") + 1]
    if conf["app"] == "no_activity":
        print(f"Error: Activity class {{{{{{component}}}}}} does not exist.")
        sys.exit(0)
    extras = {{}}
    for i, word in enumerate(cmd):
        if word == "--es":
            extras[cmd[i + 1]] = cmd[i + 2]
        elif word == "--ei":
            extras[cmd[i + 1]] = int(cmd[i + 2])
    print(f"Starting: Intent {{{{ cmp={{component}} (has extras) }}}}\nStatus: ok\nLaunchState: COLD\nWaitTime: 412\nComplete")
    files.mkdir(exist_ok=True)
    (STATE / "running").touch()
    mode = conf["app"]
    if mode == "crash":
        (STATE / "running").unlink()
        sys.exit(0)
    if mode == "hang":
        sys.exit(0)
    bundle_id = extras["bundle"]
    src = STATE / "apk" / "assets" / "edgeq" / bundle_id
    if not (src / "edgeq_bundle.json").is_file():  # BundleStore.open: the asset does not exist
        (files / "benchmark_error.txt").write_text(f"error: edgeq/{{bundle_id}}/edgeq_bundle.json\n")
        sys.exit(0)
    dest = files / "edgeq" / bundle_id
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(src, dest)
    if "ran_description" in conf:  # the app's copy differs from what the APK held
        (dest / "edgeq_bundle.json").write_text(conf["ran_description"])
    if mode == "error":
        (files / "benchmark_error.txt").write_text("error: golden check failed: max abs diff 0.5\n")
        sys.exit(0)
    desc = json.loads((dest / "edgeq_bundle.json").read_text())
    runs, warmup = extras.get("runs", 20), extras.get("warmup", 3)
    samples = [3.0 + 0.25 * (i % 7) for i in range(runs)]
    ordered = sorted(samples)
    results = {{
        "runner_version": 1, "runner": "edgeq android-demo", "artifact": f"/data/user/0/{{PKG}}/files/edgeq/{{bundle_id}}",
        "bundle_id": bundle_id, "model": desc["model_name"], "model_file": desc["model_file"], "format": desc["format"],
        "runtime": "onnxruntime-android 1.31.0", "delegates": desc["delegates"], "inputs": desc["inputs"],
        "host": {{"device": "Google Pixel 8 (Android 14, arm64-v8a)"}},
        "threads": {{"requested": desc["threads"], "used": extras.get("threads", 4), "source": "bundle"}},
        "warmup": warmup, "runs": runs, "load_ms": 41.5,
        "latency_ms": {{"min": ordered[0], "p50": statistics.median(samples), "p90": ordered[int(0.9 * (runs - 1))],
                       "max": ordered[-1], "mean": statistics.fmean(samples),
                       "stdev": statistics.stdev(samples) if runs > 1 else 0.0}},
        "samples_ms": samples,
        "memory": {{"available": True, "baseline_rss_bytes": 50000000, "peak_rss_bytes": 81000000,
                   "model_attributable_bytes": 31000000, "final_rss_bytes": 80000000, "peak_reset": False,
                   "source": "Debug.getPss (proportional set size, KB x 1024)"}},
        "golden": {{"ok": True, "max_abs_diff": 1e-6, "cosine": 1.0, "tolerance_max_abs": 1e-3,
                   "tolerance_min_cosine": 0.999}},
        "mode": "device", "estimate": False,
    }}
    text = json.dumps(results)
    if mode == "malformed":
        text = text[: len(text) // 2]
    elif mode == "not_object":
        text = json.dumps([results])
    elif mode == "wrong_runs":
        text = json.dumps({{**results, "runs": runs + 1}})
    elif mode == "huge":
        text = " " * (9 << 20) + text
    (STATE / "pending.json").write_text(text)
    (STATE / "polls_left").write_text(str(conf.get("polls", 2)))
    sys.exit(0)
sys.exit("fake adb: unexpected shell command: " + line)
'''


@pytest.fixture(scope="module")
def bundled(tmp_path_factory) -> tuple[Path, Path, str]:
    """A tiny exported ONNX artifact and the android-demo assets `edgeq bundle` made of it."""
    root = tmp_path_factory.mktemp("adb-app")
    artifact = root / "onnx"
    proc = run_cli("export", "tests.tiny_models:tiny_mlp", "-t", "x86", "-p", "fp32", "-o", str(artifact), "-q")
    assert proc.returncode == 0, proc.stderr
    app = root / "app-project"
    app.mkdir()
    proc = run_cli("bundle", str(artifact), str(app))
    assert proc.returncode == 0, proc.stderr
    assets = app / "app/src/main/assets/edgeq"
    (bundle_id,) = [b["id"] for b in json.loads((assets / "index.json").read_text())["bundles"]]
    return artifact, assets, bundle_id


def _device(tmp_path: Path, assets: Path, **conf) -> dict[str, str]:
    """The fake device's state dir and an env whose PATH finds the fake adb first."""
    state = tmp_path / "device"
    (state / "apk" / "assets").mkdir(parents=True)
    shutil.copytree(assets, state / "apk" / "assets" / "edgeq")
    (state / "config.json").write_text(json.dumps({"installed": True, "debuggable": True, "unzip": True, "app": "ok",
                                                   **conf}))
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    adb = bindir / "adb"
    adb.write_text(FAKE_ADB.format(python=sys.executable, state=str(state), serial=SERIAL))
    adb.chmod(adb.stat().st_mode | stat.S_IXUSR)
    return {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "EDGEQ_ANDROID_RUNNER": "",
            "EDGEQ_ANDROID_APP_TIMEOUT": "5"}


def _calls(env: dict[str, str]) -> list[str]:
    """The shell commands edgeq sent to the fake device, in order."""
    state = Path(env["PATH"].split(os.pathsep)[0]).parent / "device"
    calls = [json.loads(line) for line in (state / "calls.log").read_text().splitlines()]
    return [" ".join(c[3:]) for c in calls if c[:1] == ["-s"]]


def _starts(env: dict[str, str]) -> list[str]:
    return [c for c in _calls(env) if c.startswith("am start ")]


def _profile(artifact: Path, device: str, env: dict[str, str], *extra: str):
    return run_cli("profile", str(artifact), "--device", device, *extra, env=env)


def _one_error_line(proc) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout.strip() == ""
    return lines[0]


# --- the path end to end -----------------------------------------------------------------


@pytest.mark.parametrize("device", [f"adb:{SERIAL}", f"adb:{SERIAL}?app={ANDROID_APP}", "adb:?app=dev.edgeq.demo"])
def test_profile_drives_the_benchmark_activity(bundled, tmp_path, device):
    artifact, assets, bundle_id = bundled
    env = _device(tmp_path, assets)
    proc = _profile(artifact, device, env, "--runs", "7", "--warmup", "2", "--threads", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    results = json.loads((tmp_path / "device" / "files" / "benchmark_results.json").read_text())

    # The figures are the app's, unchanged; nothing is added that the app did not measure.
    assert report["samples_ms"] == results["samples_ms"] and len(report["samples_ms"]) == 7
    assert report["latency_ms"] == results["latency_ms"] and report["load_ms"] == results["load_ms"]
    assert report["memory"] == results["memory"] and report["golden"] == results["golden"]
    assert (report["runs"], report["warmup"]) == (7, 2)
    assert report["threads"] == {"requested": 2, "used": 2, "source": "--threads"}
    assert report["mode"] == "device" and report["device"] == device and report["estimate"] is False
    assert report["artifact"] == str(artifact) and report["format"] == "onnx" and report["model_file"] == "model.onnx"
    # What the device is, from getprop, as the runner-binary path reports it.
    assert report["host"] == {"hostname": "Google Pixel 8", "machine": "arm64-v8a", "system": "Android 14",
                              "cpu_model": "Tensor G3"}
    assert report["remote"]["app"] == ANDROID_APP and report["remote"]["bundle"] == bundle_id
    assert report["remote"]["activity"] == "dev.edgeq.demo/dev.edgeq.demo.BenchmarkActivity"
    assert any("proportional set size" in n for n in report["notes"])
    assert any("per-op profiling is not available" in n for n in report["notes"])

    calls = _calls(env)
    start = _starts(env)
    assert start == [f"am start -W -S -n {ANDROID_APP}/dev.edgeq.demo.BenchmarkActivity "
                     f"--es bundle {bundle_id} --ei runs 7 --ei warmup 2 --ei threads 2"]
    # Stale results removed before the start; the bundle checked in the APK before, in the app's copy after;
    # results polled until they appeared (the fake writes them on the second poll).
    assert calls.index(f"run-as {ANDROID_APP} rm -f files/benchmark_results.json files/benchmark_error.txt") \
        < calls.index(start[0])
    unzip = [i for i, c in enumerate(calls) if shlex.split(c) == [
        "unzip", "-p", "/data/app/~~Zm9v==/dev.edgeq.demo-YmFy==/base.apk", f"assets/edgeq/{bundle_id}/edgeq_bundle.json"]]
    assert unzip and unzip[0] < calls.index(start[0])
    assert calls.count(f"run-as {ANDROID_APP} ls files") == 2
    assert calls.index(f"run-as {ANDROID_APP} cat files/edgeq/{bundle_id}/edgeq_bundle.json") > calls.index(start[0])


def test_table_output_and_default_threads(bundled, tmp_path):
    artifact, assets, _ = bundled
    env = _device(tmp_path, assets)
    proc = _profile(artifact, f"adb:{SERIAL}", env, "--runs", "3", "--no-ops")
    assert proc.returncode == 0, proc.stderr
    assert "p50" in proc.stdout and "Tensor G3" in proc.stdout
    (start,) = _starts(env)
    assert "--ei runs 3 " in start and "threads" not in start  # the bundle's threads: nothing passed


def test_without_unzip_the_bundle_is_checked_after_the_run(bundled, tmp_path):
    artifact, assets, _ = bundled
    env = _device(tmp_path, assets, unzip=False)
    proc = _profile(artifact, f"adb:{SERIAL}", env, "--runs", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    assert any("has no unzip" in n for n in json.loads(proc.stdout)["notes"])


# --- errors: one line, exit 2, what to do --------------------------------------------------


def _other_model(assets: Path, bundle_id: str) -> str:
    desc = json.loads((assets / bundle_id / "edgeq_bundle.json").read_text())
    desc["files"]["model.onnx"]["sha256"] = "0" * 64  # as a bundle of another export would say
    return json.dumps(desc)


def test_not_installed(bundled, tmp_path):
    artifact, assets, _ = bundled
    env = _device(tmp_path, assets, installed=False)
    line = _one_error_line(_profile(artifact, f"adb:{SERIAL}?app={ANDROID_APP}", env))
    assert line.startswith(f"error: {ANDROID_APP} is not installed on {SERIAL} (build android-demo")
    # Without ?app= and without a runner binary: both ways out are named.
    line = _one_error_line(_profile(artifact, f"adb:{SERIAL}", env))
    assert line.startswith(f"error: no runner binary for the Android device, and the android-demo app "
                           f"({ANDROID_APP}) is not installed on {SERIAL}")
    assert "onnxruntime_perf_test" in line and "EDGEQ_ANDROID_RUNNER" in line


def test_bundle_not_in_the_app(bundled, tmp_path):
    artifact, assets, bundle_id = bundled
    env = _device(tmp_path, assets)
    line = _one_error_line(_profile(artifact, f"adb:{SERIAL}?bundle=minilm", env))
    assert line.startswith(f"error: bundle 'minilm' is not in {ANDROID_APP} on {SERIAL} (it holds {bundle_id})")
    assert "edgeq bundle" in line and "rebuild and reinstall" in line
    assert _calls(env) and not _starts(env)  # nothing was started
    # Without unzip the app itself finds the bundle missing, and its error is what the user sees.
    env = _device(tmp_path / "no-unzip", assets, unzip=False)
    line = _one_error_line(_profile(artifact, f"adb:{SERIAL}?bundle=minilm", env))
    assert line.startswith(f"error: the benchmark failed in {ANDROID_APP} on {SERIAL}: edgeq/minilm/edgeq_bundle.json")


def test_bundle_of_another_artifact(bundled, tmp_path):
    artifact, assets, bundle_id = bundled
    env = _device(tmp_path, assets)
    (tmp_path / "device/apk/assets/edgeq" / bundle_id / "edgeq_bundle.json").write_text(_other_model(assets, bundle_id))
    line = _one_error_line(_profile(artifact, f"adb:{SERIAL}", env))
    assert line.startswith(f"error: bundle '{bundle_id}' in {ANDROID_APP}'s APK on {SERIAL} is not this artifact: "
                           "its model.onnx has sha256 000000000000")
    # Found only in the copy the app ran (no unzip): still an error, and no figure is printed.
    env = _device(tmp_path / "no-unzip", assets, unzip=False, ran_description=_other_model(assets, bundle_id))
    line = _one_error_line(_profile(artifact, f"adb:{SERIAL}", env))
    assert line.startswith(f"error: bundle '{bundle_id}' in the copy {ANDROID_APP} ran on {SERIAL} is not this artifact")


def test_not_debuggable(bundled, tmp_path):
    artifact, assets, _ = bundled
    line = _one_error_line(_profile(artifact, f"adb:{SERIAL}", _device(tmp_path, assets, debuggable=False)))
    assert line.startswith(f"error: cannot read {ANDROID_APP}'s files on {SERIAL} "
                           f"(run-as: package not debuggable: {ANDROID_APP})")
    assert "debug APK" in line


@pytest.mark.parametrize("mode,expected", [
    ("error", f"the benchmark failed in {ANDROID_APP} on {SERIAL}: golden check failed: max abs diff 0.5"),
    ("crash", f"{ANDROID_APP} stopped on {SERIAL} without writing results (it crashed?)"),
    ("no_activity", f"'am start' of {ANDROID_APP}/dev.edgeq.demo.BenchmarkActivity failed on {SERIAL}: "
                    "Error: Activity class"),
    ("malformed", f"{ANDROID_APP}'s files/benchmark_results.json on {SERIAL} is not valid JSON"),
    ("not_object", f"{ANDROID_APP}'s files/benchmark_results.json on {SERIAL} is not a JSON object"),
    ("wrong_runs", f"{ANDROID_APP}'s files/benchmark_results.json on {SERIAL} has 4 runs after 3 warm-up, "
                   "not the 3 after 3 asked for"),
    ("huge", f"{ANDROID_APP}'s files/benchmark_results.json on {SERIAL} is larger than 8388608 bytes"),
])
def test_app_failures(bundled, tmp_path, mode, expected):
    artifact, assets, _ = bundled
    proc = _profile(artifact, f"adb:{SERIAL}", _device(tmp_path, assets, app=mode), "--runs", "3")
    assert _one_error_line(proc).startswith(f"error: {expected}")


def test_timeout(bundled, tmp_path):
    artifact, assets, _ = bundled
    env = {**_device(tmp_path, assets, app="hang"), "EDGEQ_ANDROID_APP_TIMEOUT": "0.4"}
    line = _one_error_line(_profile(artifact, f"adb:{SERIAL}", env))
    assert line.startswith(f"error: {ANDROID_APP} wrote no results on {SERIAL} within 0.4 s")
    assert "EDGEQ_ANDROID_APP_TIMEOUT=SECONDS" in line
    line = _one_error_line(_profile(artifact, f"adb:{SERIAL}", {**env, "EDGEQ_ANDROID_APP_TIMEOUT": "soon"}))
    assert line.startswith("error: EDGEQ_ANDROID_APP_TIMEOUT='soon' is not a number of seconds")


# --- device strings --------------------------------------------------------------------------


def test_parse_adb_app_strings():
    assert parse_device("adb:R58M?app=com.example.bench&bundle=minilm") == AdbDevice(
        "adb:R58M?app=com.example.bench&bundle=minilm", "R58M", "com.example.bench", "minilm")
    assert parse_device("adb:?bundle=minilm") == AdbDevice("adb:?bundle=minilm", None, ANDROID_APP, "minilm")
    assert parse_device("adb:192.168.1.5:5555?app=dev.edgeq.demo").serial == "192.168.1.5:5555"
    assert parse_device("adb:R58M").app is None  # the runner binary if one is given, else the app
    for bad, message in [("adb:R58M?ap=dev.edgeq.demo", "did you mean 'app'?"),
                         ("adb:R58M?app=not a package", "not an Android package name"),
                         ("adb:R58M?app=dev.edgeq.demo&bundle=../x", "not a bundle id"),
                         ("adb:R58M?app=;rm", "not an Android package name")]:
        with pytest.raises(DeviceError, match=message):
            parse_device(bad)
