"""The ``edgeq`` command line: parse, call the library, render with rich.

Library errors (``EdgeqError``) become one line on stderr and exit code 2; a traceback
is shown only with ``--debug``.
"""

from __future__ import annotations

import json
import signal
import sys
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgeq.errors import EdgeqError

app = typer.Typer(
    help="Quantize, lower, verify and profile PyTorch models for edge devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
targets_app = typer.Typer(help="List, show and validate deployment targets and device profiles.", no_args_is_help=True)
app.add_typer(targets_app, name="targets")

def _finite(value: float | None) -> float | None:
    import math

    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


Target = Annotated[str, typer.Option("--target", "-t", help="Built-in target name (see 'edgeq targets list') or path to a target YAML.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors (and --json output).")]
Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
Budget = Annotated[Optional[str], typer.Option("--budget", help="Storage budget: the artifact's size, e.g. 20MB (overrides the target's budgets.storage_mb).")]
Calib = Annotated[Optional[Path], typer.Option("--calib", help="Your calibration data: a .txt (one sample per line), a directory of .txt files or images, or a .npz of model inputs.")]
MemoryBudget = Annotated[Optional[str], typer.Option("--memory-budget", help="Runtime-memory budget: the model's predicted peak memory in its runtime, e.g. 48MB (overrides the target's budgets.runtime_memory_mb).")]
LatencyBudget = Annotated[Optional[str], typer.Option("--latency-budget", help="Latency budget: the plan's predicted whole-model p50, e.g. 8ms or 0.5s (overrides the target's budgets.latency_ms; layers are timed on this host).")]
MaxDrop = Annotated[Optional[float], typer.Option("--max-drop", help="Smallest plan whose predicted error stays within this (1 - cosine, or KL).", min=0, callback=_finite)]
Algorithms = Annotated[Optional[str], typer.Option("--algorithms", help="Calibrated algorithms offered besides RTN, comma-separated (default: all the format stores, e.g. gptq; 'rtn': RTN only). Planned mixes take them as candidates; a decoder LLM's export also searches the activation-aware scales named (smoothquant, awq) and, in ExecuTorch, tries rotation of the residual stream (rotation); an ONNX encoder's MatMulInteger linears take a searched input division (smoothquant).")]
Rules = Annotated[Optional[list[str]], typer.Option("--rule", help="Pin layers: REGEX=SCHEME (repeatable), e.g. 'attention.output=int8'.")]


def _names(text: str | None) -> list[str] | None:
    """``"rtn,gptq"`` → ``["rtn", "gptq"]`` (lower-cased; checked by the planner)."""
    return None if text is None else [n.strip().lower() for n in text.split(",") if n.strip()][:16]


def parse_duration(text: str, option: str = "--latency-budget") -> float:
    """``8ms`` / ``0.5s`` / ``8`` (ms) → milliseconds."""
    import math
    import re

    from edgeq.errors import ConfigError

    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*(MS|S|US)?\s*", text.upper())
    value = float(found.group(1)) * {None: 1, "MS": 1, "S": 1e3, "US": 1e-3}[found.group(2)] if found else math.nan
    if not math.isfinite(value) or value <= 0 or value > 1e9:
        raise ConfigError(f"cannot read {option} '{text}'", "write it like 8ms, 0.5s or 250us (more than 0)")
    return value


def parse_size(text: str) -> int:
    """``48MB`` / ``1.5GB`` / ``300KB`` / ``1000000`` → bytes (decimal units)."""
    import re

    from edgeq.errors import ConfigError

    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMG]?B?)\s*", text.upper())
    if not found or float(found.group(1)) <= 0:
        raise ConfigError(f"cannot read budget '{text}'", "write it like 48MB, 1.5GB or 300KB")
    scale = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9}[found.group(2)]
    return int(float(found.group(1)) * scale)


def _print_version(value: bool) -> None:
    if value:
        from edgeq import __version__

        print(f"edgeq {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and library warnings (any position).")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                          callback=_print_version)] = False,
) -> None:
    """Quantize, lower, verify and profile PyTorch models for edge devices."""


@app.command()
def export(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Hugging Face model dir, hub id (org/name), package.module:factory, or a .pt2 file.")],
    target: Target,
    precision: Annotated[Optional[str], typer.Option("--precision", "-p", help="fp32|fp16|int8|int4 for every layer (default: the target's).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Artifact directory (default: dist/<model>-<target>).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output directory.")] = False,
    task: Annotated[Optional[str], typer.Option("--task", help="Override the detected task: sentence-embedding, sequence-classification, image-classification, causal-lm, custom.")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Fail instead of falling back when a delegate is unavailable.")] = False,
    seq_len: Annotated[Optional[int], typer.Option("--seq-len", help="Static sequence length for text models (default: the target's).", min=1)] = None,
    samples: Annotated[int, typer.Option("--samples", help="Held-out inputs to verify numerics on.", min=1)] = 32,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Allow the model's own Python code from its directory or the hub.")] = False,
    plan_file: Annotated[Optional[Path], typer.Option("--plan", help="Use a per-layer plan YAML written by 'edgeq plan'.")] = None,
    budget: Budget = None,
    memory_budget: MemoryBudget = None,
    max_drop: MaxDrop = None,
    latency_budget: LatencyBudget = None,
    rule: Rules = None,
    calib: Calib = None,
    algorithms: Algorithms = None,
    max_context: Annotated[Optional[int], typer.Option("--max-context", help="Causal LMs: KV-cache positions (default: the target's runtime.max_context).", min=2)] = None,
    eval_text: Annotated[Optional[Path], typer.Option("--eval-text", help="Causal LMs: a UTF-8 text file whose perplexity the manifest records (default: edgeq's held-out text, Python's language reference).")] = None,
    eval_tokens: Annotated[Optional[int], typer.Option("--eval-tokens", help="Causal LMs: tokens of held-out text scored (default 511: one window of 512; 0: none).", min=0)] = None,
    quiet: Quiet = False,
    as_json: Json = False,
) -> None:
    """Quantize MODEL for TARGET, lower it with the target's delegates, verify it, write an artifact."""
    from edgeq.export import export as run_export

    result = run_export(
        model, target, precision=precision, output=output, force=force, task=task, strict=strict,
        seq_len=seq_len, samples=samples, trust_remote_code=trust_remote_code,
        show_progress=not (quiet or as_json), plan_file=plan_file,
        budget_bytes=parse_size(budget) if budget else None,
        memory_budget_bytes=parse_size(memory_budget) if memory_budget else None, max_drop=max_drop,
        rules=rule or None, calib=calib, max_context=max_context, algorithms=_names(algorithms),
        latency_budget_ms=parse_duration(latency_budget) if latency_budget else None,
        eval_text=eval_text, eval_tokens=eval_tokens,
    )
    if as_json:
        print(json.dumps(result.manifest.model_dump(mode="json"), indent=2))
    elif not quiet:
        from edgeq.export_report import print_export_summary

        print_export_summary(result)


@app.command("plan")
def plan_cmd(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Model source, as for 'edgeq export'.")],
    target: Target,
    budget: Budget = None,
    memory_budget: MemoryBudget = None,
    max_drop: MaxDrop = None,
    latency_budget: LatencyBudget = None,
    rule: Rules = None,
    calib: Calib = None,
    algorithms: Algorithms = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the plan YAML here.")] = None,
    seq_len: Annotated[Optional[int], typer.Option("--seq-len", help="Static sequence length for text models (default: the target's).", min=1)] = None,
    proxy: Annotated[Optional[str], typer.Option("--proxy", help="'sqnr': score weights alone (fast, no forward passes).")] = None,
    samples: Annotated[Optional[int], typer.Option("--samples", help="Calibration inputs for sensitivity (default 32; 4 token sequences for causal LMs).", min=1)] = None,
    max_context: Annotated[Optional[int], typer.Option("--max-context", help="Causal LMs: KV-cache positions the memory budget counts (default: as export).", min=2)] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Re-measure sensitivity even if cached.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing plan file (only one edgeq wrote).")] = False,
    quiet: Quiet = False,
    as_json: Json = False,
) -> None:
    """Show the per-layer plan that fits TARGET's budget; optionally write it as YAML."""
    from edgeq.planning.planfile import check_plan_output
    from edgeq.plans import plan_model
    from edgeq.progress import Steps

    if proxy not in (None, "sqnr"):
        from edgeq.errors import ConfigError

        raise ConfigError(f"unknown proxy '{proxy}'", "the only proxy is 'sqnr'")
    if output is not None:
        check_plan_output(output, force)  # before the slow part
    result = plan_model(
        model, target, budget_bytes=parse_size(budget) if budget else None,
        memory_budget_bytes=parse_size(memory_budget) if memory_budget else None, max_drop=max_drop,
        rules=rule or None, seq_len=seq_len, calib=calib, proxy=proxy, calib_samples=samples, use_cache=not no_cache,
        steps=Steps(show=not (quiet or as_json)), max_context=max_context, algorithms=_names(algorithms),
        latency_budget_ms=parse_duration(latency_budget) if latency_budget else None,
    )
    if output is not None:
        from edgeq.atomic import write_text_atomic

        write_text_atomic(output, result.to_yaml())
    if as_json:
        import yaml

        print(json.dumps(yaml.safe_load(result.to_yaml()), indent=2))
    elif not quiet:
        from edgeq.export_report import print_plan

        print_plan(result, output)


@app.command("profile")
def profile_cmd(
    artifacts: Annotated[list[Path], typer.Argument(metavar="ARTIFACT...", help="Artifact directories (two or more: compared side by side).")],
    mode: Annotated[Optional[str], typer.Option("--mode", "-m", help="host (measure here; default), emulated (ESTIMATE for a device profile), device (measure on --device).")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="Measure on a device: ssh://user@host[:port] (Linux board), adb:SERIAL (Android, with a runner binary) or 'adb:SERIAL?app=PKG[&bundle=ID]' (the android-demo app); implies --mode device.")] = None,
    runs: Annotated[Optional[int], typer.Option("--runs", "-n", help="Timed runs after the warm-up (default 20; LLM artifacts: 3 generations).")] = None,
    warmup: Annotated[Optional[int], typer.Option("--warmup", help="Untimed runs before the timed ones (default 3; LLM artifacts: 1 generation).")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", help="Threads for the runtime (default: the target's, at most this machine's cores).")] = None,
    no_ops: Annotated[bool, typer.Option("--no-ops", help="Skip the per-op profiling pass.")] = False,
    device_profile: Annotated[Optional[str], typer.Option("--device-profile", help="Device profile for --mode emulated / --with-estimate (default: the artifact target's device; for --with-estimate in host mode: this machine's CPU class).")] = None,
    with_estimate: Annotated[bool, typer.Option("--with-estimate", help="Beside each measurement, the emulated ESTIMATE for the same device class (estimated vs measured).")] = False,
    html: Annotated[Optional[Path], typer.Option("--html", help="Also write a self-contained HTML report with plots here.")] = None,
    prompt_tokens: Annotated[Optional[int], typer.Option("--prompt-tokens", help="LLM artifacts: prompt length of each timed generation (default 64, at most half the context).")] = None,
    new_tokens: Annotated[Optional[int], typer.Option("--new-tokens", help="LLM artifacts: tokens generated after the prompt (default 64, within the context).")] = None,
    as_json: Json = False,
) -> None:
    """Measure latency, load time, peak memory and per-op time of artifacts (or estimate them for a device).

    LLM artifacts: prefill and decode tokens/s, time to first token and peak RSS of generation in
    the artifact's runtime; --mode emulated estimates decode tokens/s for every built-in device."""
    from edgeq.profiling import profile_artifacts

    if html is not None:
        from edgeq.profiling.report import check_html_path

        check_html_path(html)  # before anything is measured
    reports = profile_artifacts(artifacts, mode=mode, device=device, runs=runs, warmup=warmup, threads=threads,
                                ops=not no_ops, device_profile=device_profile, with_estimate=with_estimate,
                                prompt_tokens=prompt_tokens, new_tokens=new_tokens)
    if html is not None:
        from edgeq.profiling.report import write_html

        write_html(reports, html)
    if as_json:
        if len(reports) == 1:
            print(json.dumps(reports[0], indent=2))
        else:
            from edgeq.profiling import compare

            print(json.dumps({"reports": reports, "comparison": compare(reports)}, indent=2))
        return
    from edgeq.profiling.report import print_profiles

    print_profiles(reports)
    if html is not None:
        print(f"HTML report: {html}")


@app.command("bundle")
def bundle_cmd(
    artifact: Annotated[Path, typer.Argument(help="Artifact directory written by 'edgeq export' (.pte or ONNX).")],
    app_dir: Annotated[Path, typer.Argument(help="Android app project root (e.g. android-demo); the bundle goes to app/src/main/assets/edgeq/<id>/.")],
    bundle_id: Annotated[Optional[str], typer.Option("--id", help="Bundle name in the app (default: <model>-<target>).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing bundle with this id.")] = False,
    as_json: Json = False,
) -> None:
    """Copy a verified artifact into an app with edgeq_bundle.json and a golden check; list it in index.json."""
    from edgeq.bundle import bundle

    result = bundle(artifact, app_dir, bundle_id=bundle_id, force=force)
    if as_json:
        print(json.dumps({"bundle_dir": str(result.bundle_dir), "index": str(result.index_path),
                          "bundle": result.description}, indent=2))
        return
    desc = result.description
    golden = desc["golden"]
    check = (f"golden output {golden['output']['shape']}, max_abs {golden['tolerance']['max_abs']:.3g}"
             if "output" in golden else golden["skipped"])
    print(f"bundled {desc['model_name']} ({desc['format']}, {desc['runtime']['android_package']}) into {result.bundle_dir}")
    print(f"  {len(desc['files'])} files, {sum(f['bytes'] for f in desc['files'].values()) / 1e6:.2f} MB; {check}")
    print(f"  listed in {result.index_path}")


@app.command("check")
def check_cmd(
    artifacts: Annotated[list[Path], typer.Argument(metavar="ARTIFACT...", help="Artifact directories, e.g. dist/*.")],
    target: Annotated[Optional[str], typer.Option("--target", "-t", help="Judge against this target (default: the one each artifact was exported for).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Source model to re-measure fidelity against (default: the manifest's, when it is a local path).")] = None,
    baseline: Annotated[Optional[Path], typer.Option("--baseline", help="Baseline file to check for regressions against.")] = None,
    update_baseline: Annotated[Optional[Path], typer.Option("--update-baseline", help="Write (or update) a baseline file with these artifacts' figures.")] = None,
    measure: Annotated[bool, typer.Option("--measure", help="Also measure peak RSS and latency in fresh processes here.")] = False,
    latency_budget: Annotated[Optional[float], typer.Option("--latency-budget", help="Latency budget in ms (overrides the target's budgets.latency_ms).", callback=_finite)] = None,
    rounds: Annotated[int, typer.Option("--rounds", help="Fresh-process rounds for latency regression and baselines (2-100).")] = 8,
    junit: Annotated[Optional[Path], typer.Option("--junit", help="Write a JUnit XML report here (one test case per gate per artifact).")] = None,
    as_json: Json = False,
    github: Annotated[bool, typer.Option("--github", help="Print GitHub Actions annotations; append a Markdown summary to $GITHUB_STEP_SUMMARY.")] = False,
) -> None:
    """Gate artifacts in CI: integrity, fit, fidelity, delegation, latency, regression (exit 1 if a gate fails)."""
    from edgeq.check import CheckOptions, check_artifacts, exit_code, to_json
    from edgeq.check.render import junit_xml, print_table, write_github

    from edgeq.errors import ConfigError

    if not 2 <= rounds <= 100:
        raise ConfigError(f"--rounds must be between 2 and 100, got {rounds}", "the default, 8, suits most runners")
    if latency_budget is not None and not latency_budget > 0:
        raise ConfigError(f"--latency-budget must be more than 0 ms, got {latency_budget:g}", "pass e.g. --latency-budget 20")
    if junit is not None:
        from edgeq.check.baseline import check_writable

        check_writable(junit, "--junit")
    options = CheckOptions(target=target, model=model, baseline=baseline, update_baseline=update_baseline,
                           measure=measure, latency_budget_ms=latency_budget, rounds=rounds)
    results = check_artifacts(list(artifacts), options)
    if junit is not None:
        from edgeq.atomic import write_text_atomic

        write_text_atomic(junit, junit_xml(results))
    if as_json:
        print(json.dumps(to_json(results), indent=2))
    else:
        print_table(results)
    if github:
        if as_json:
            import contextlib

            with contextlib.redirect_stdout(sys.stderr):  # keep stdout parseable JSON
                write_github(results)
        else:
            write_github(results)
    code = exit_code(results)
    if code:
        raise typer.Exit(code)  # 1: a gate failed (main() passes the code on)


@app.command("run")
def run_cmd(
    artifact: Annotated[Path, typer.Argument(metavar="ARTIFACT", help="An artifact directory exported from a causal LM.")],
    prompt: Annotated[str, typer.Option("--prompt", help="The prompt text.")],
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Stop after this many new tokens (or at EOS).", min=1, max=1_000_000)] = 128,
    chat: Annotated[bool, typer.Option("--chat", help="Wrap the prompt in the artifact's chat template as a user turn.")] = False,
    temperature: Annotated[float, typer.Option("--temperature", help="0 (default) is greedy; above 0 samples.", min=0, callback=_finite)] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p", help="Sample from the smallest set of tokens whose probability reaches P.", callback=_finite)] = 1.0,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed for sampling (same seed, same text).")] = None,
) -> None:
    """Generate text with an LLM artifact in its runtime: text on stdout, speed and memory on stderr."""
    from edgeq.llm.generate import GenerationConfig
    from edgeq.llm.run import check_sampling, open_artifact, peak_rss_bytes, run_prompt

    check_sampling(temperature, top_p, seed)
    config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    config.check()
    lm = open_artifact(artifact)
    try:
        _, result = run_prompt(lm, prompt, config, chat=chat,
                               on_text=lambda piece: (sys.stdout.write(piece), sys.stdout.flush()))
    finally:
        lm.close()
    print(flush=True)
    print(f"prompt {result.prompt_tokens} tokens, generated {len(result.tokens)} (stopped by {result.stopped_by}); "
          f"prefill {result.prefill_tokens_per_s:.1f} tokens/s, decode {result.decode_tokens_per_s:.1f} tokens/s, "
          f"time to first token {result.time_to_first_token_s * 1000:.0f} ms, "
          f"peak RSS {peak_rss_bytes() / 1e6:.0f} MB ({lm.session.runtime})", file=sys.stderr)


@targets_app.command("list")
def targets_list(as_json: Json = False) -> None:
    """List built-in targets and device profiles."""
    from edgeq.targets import builtin_names, load_profile, load_target

    rows = []
    for name in builtin_names("targets"):
        t = load_target(name).target
        rows.append({"name": name, "device": t.device, "format": t.format, "delegates": t.delegates,
                     "default_precision": t.default_precision, "runtime_memory_mb": t.budgets.runtime_memory_mb,
                     "storage_mb": t.budgets.storage_mb, "description": t.description})
    profiles = [load_profile(n) for n in builtin_names("profiles")]
    if as_json:
        print(json.dumps({"targets": rows, "profiles": [p.model_dump() for p in profiles]}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Targets", title_justify="left")
    for col in ("name", "device", "format", "delegates", "precision", "memory MB", "storage MB"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["device"], r["format"], " → ".join(r["delegates"]), r["default_precision"],
                      f"{r['runtime_memory_mb']:g}", f"{r['storage_mb']:g}")
    devices = Table(title="Device profiles", title_justify="left")
    for col in ("name", "device", "CPU", "RAM GB", "app share", "GB/s", "accelerators"):
        devices.add_column(col)
    for p in profiles:
        cpu = f"{p.cpu.cores}× {p.cpu.arch}"
        accel = ", ".join(a.name for a in p.accelerators) or "-"
        devices.add_row(p.name, p.display_name, cpu, f"{p.memory.ram_gb:g}", f"{p.memory.app_share:.0%}",
                        f"{p.memory.bandwidth_gbps:g}", accel)
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(table)
    console.print(devices)


@targets_app.command("show")
def targets_show(name: Annotated[str, typer.Argument(metavar="NAME", help="Target name or YAML path.")], as_json: Json = False) -> None:
    """Show a target, resolved through 'extends:', with its device profile."""
    from edgeq.targets import load_target

    resolved = load_target(name)
    data = {"target": resolved.target.model_dump(), "device": resolved.profile.model_dump(), "source": str(resolved.source)}
    if as_json:
        print(json.dumps(data, indent=2))
        return
    import yaml

    print(f"# {resolved.source}")
    print(yaml.safe_dump(data["target"], sort_keys=False).rstrip())
    print(f"# device profile: {resolved.profile.name}")
    print(yaml.safe_dump(data["device"], sort_keys=False).rstrip())


@targets_app.command("validate")
def targets_validate(files: Annotated[list[Path], typer.Argument(metavar="FILE...", help="Target or device-profile YAML files.")]) -> None:
    """Validate target or device-profile YAML files (exit 2 on the first problem)."""
    from edgeq.targets import validate_file

    for f in files:
        validate_file(f)
        print(f"{f}: ok")


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; exit 0 on success, 2 for bad input or usage, 1 for an internal error,
    130 / 143 when interrupted by SIGINT / SIGTERM (never 0 for a failed or interrupted command)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    end = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:end]
    argv = [a for i, a in enumerate(argv) if not (i < end and a == "--debug")]  # accepted in any position
    if debug:
        import os

        os.environ["EDGEQ_DEBUG"] = "1"
    else:
        from edgeq.progress import quiet_libraries

        quiet_libraries()
    _handle_signals()
    code = _run(argv, debug)
    if code in (130, 143):
        # Interrupted: the clean-up ran while unwinding. A library's worker thread or exit
        # hook (still inside a long native call) must not keep the process alive.
        import os

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _run(argv: list[str], debug: bool) -> int:
    from typer._click import exceptions as click_exc

    from edgeq.errors import Interrupted, OutputError, disk_full

    try:
        returned = app(args=argv, prog_name="edgeq", standalone_mode=False)
    except Interrupted as exc:
        return _fail("interrupted" if exc.signum == signal.SIGINT else "terminated", exc.exit_code,
                     "partial output was removed")
    except EdgeqError as exc:
        if debug:
            traceback.print_exc()
        if disk_full(exc) and not isinstance(exc, OutputError):
            return _fail("no space left on device", 2, "free some disk space, or write elsewhere")
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    except click_exc.NoArgsIsHelpError as exc:
        print(exc.ctx.get_help(), file=sys.stderr)
        return _fail("missing command", 2, "pick one of the commands listed above")
    except click_exc.UsageError as exc:
        if exc.ctx is not None:
            print(exc.ctx.get_usage(), file=sys.stderr)
        where = exc.ctx.command_path if exc.ctx is not None else "edgeq"
        return _fail(exc.format_message(), 2, f"run '{where} --help' for usage")
    except click_exc.ClickException as exc:
        return _fail(exc.format_message(), 2, "run 'edgeq --help' for usage")
    except (KeyboardInterrupt, typer.Abort):
        return _fail("interrupted", 130, "partial output was removed")
    except SystemExit as exc:  # our commands never raise it: user code (a factory, remote model code) did
        return _fail(f"the model's code called sys.exit({exc.code!r})", 2,
                     "edgeq stopped there; fix the model code so it returns instead of exiting")
    except MemoryError:
        if debug:
            traceback.print_exc()
        return _fail("out of memory", 2, "use a smaller model, --seq-len or --samples, or a machine with more RAM")
    except Exception as exc:
        if debug:
            traceback.print_exc()
        if disk_full(exc):
            where = f" writing {exc.filename}" if getattr(exc, "filename", None) else ""
            return _fail(f"no space left on device{where}", 2, "free some disk space, or write elsewhere")
        return _internal(exc)
    if isinstance(returned, int) and returned != 0:  # typer turns a KeyboardInterrupt into a returned 130
        if returned == 130:
            return _fail("interrupted", 130, "partial output was removed")
        return returned
    return 0


def _fail(message: str, code: int, hint: str = "") -> int:
    text = " ".join(message.rstrip(".").split())
    print(f"error: {text}" + (f" ({hint})" if hint else ""), file=sys.stderr)
    return code


def _internal(exc: BaseException) -> int:
    from edgeq.errors import describe

    return _fail(f"internal error {describe(exc, 300)}", 1, "re-run with --debug for the traceback and report it")


def _handle_signals() -> None:
    """SIGINT and SIGTERM raise ``Interrupted`` in the main thread, so every ``finally``
    (staging directories, temporary files) runs; a second signal during that clean-up is
    ignored so the clean-up finishes."""
    from edgeq.errors import Interrupted

    def handler(signum: int, _frame: object) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        raise Interrupted(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


if __name__ == "__main__":
    main()
