"""Where one optimiser step of a trained head goes on this machine, before and after a change.

Run: ``python -m benchmarks.fit_profile [--base /path/to/old/checkout] [--threads 1] [--rounds 2]
[--steps 40] [--md results/performance.md --label X] -- sweep --methods semclip,anomalyclip
--shots 1,20 --seeds 0 --categories line_space --wandb disabled``.

1. Capture: the ``python -m semclip_bench`` command after ``--`` runs once in a child process
   with this checkout's code, its fits cut to one epoch; every trained episode's method (before
   its fit), support set, training settings and Trainer arguments are saved as they reach
   ``fit_method``.
2. Profile: each captured episode is fitted by the real ``fit_method`` (Lightning), its budget
   cut to about ``--steps`` optimiser steps (the same batch size; K = 1 keeps one step per epoch),
   in a child process per code version (this checkout, and ``--base`` when given, both loading
   the same captured episodes), with ``--threads`` torch threads, best of ``--rounds``. Timers
   around the method's ``training_loss`` (forward and loss), ``LightningModule.backward``,
   ``AdamW.step`` (the optimiser's own part is its time less the closure's), the support
   batches' gather and ``training_step`` (less the loss: Lightning's ``self.log`` and the
   step's bookkeeping) split each step; what remains of the loop is Lightning's. The time before
   the first batch and after the last step is the fit's fixed part (set-up, per-fit features).

On a CPU other jobs share, absolute times depend on their load (run before and after close in
time, and compare ratios); the step split is the point. With ``--md`` the table is written as a
keyed section of that Markdown file (``results/performance.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve()
PARTS = ("fwd_loss", "backward", "optimizer", "data", "log_and_glue", "lightning_rest")


def _capture(folder: Path, command: list[str]) -> int:
    """Child: run the command, saving every fit's inputs and training each for one epoch."""
    import copy
    import dataclasses

    import torch

    import semclip_bench.models.lightning as lt
    import semclip_bench.runner.execute.engine as engine
    import semclip_bench.runner.execute.episode as episode
    from semclip_bench.cli import main

    original, original_fit = lt.fit_method, episode.fit

    def labelled(members, **kwargs):  # the variant's label (semclip_plus is a semclip)
        for member in members:
            member.method._profile_label = member.variant.label
        return original_fit(members, **kwargs)

    def saving(method, support, config=None, seed=0, **kwargs):
        count = len(list(folder.glob("*.pt")))
        label = getattr(method, "_profile_label", method.name)
        name = f"{count:03d}-{label}-n{len(support.labels)}-s{seed}.pt"
        state = dict(method=copy.deepcopy(method), support=support, config=config, seed=seed)
        torch.save(dict(state, kwargs=kwargs), folder / name)
        short = dataclasses.replace(config, epochs=1, min_steps=0) if config else config
        return original(method, support, short, seed, **kwargs)

    lt.fit_method = saving
    episode.fit = engine.fit = labelled
    return main(command)


def _profile(folder: Path, steps_wanted: int, rounds: int) -> int:
    """Child: the step split of every captured episode with the code on PYTHONPATH (JSON)."""
    import copy
    import dataclasses
    import time

    import lightning as L
    import torch

    from semclip_bench.models import lightning as lt

    acc: dict[str, float] = {}
    marks: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            marks.setdefault("first_" + name, start)
            try:
                return fn(*args, **kwargs)
            finally:
                end = time.perf_counter()
                acc[name] = acc.get(name, 0.0) + end - start
                marks["last_" + name] = end

        return wrapper

    lt._SupportFeatures.__getitems__ = timed("data", lt._SupportFeatures.__getitems__)
    L.LightningModule.backward = timed("backward", L.LightningModule.backward)
    torch.optim.AdamW.step = timed("opt", torch.optim.AdamW.step)
    lt.FewShotModule.training_step = timed("step", lt.FewShotModule.training_step)
    out = {}
    for path in sorted(folder.glob("*.pt")):
        saved = torch.load(path, weights_only=False)
        n, config = len(saved["support"].labels), saved["config"]
        per_epoch = config.steps_per_epoch(n)
        epochs = max(1, round(steps_wanted / per_epoch))
        short = dataclasses.replace(config, epochs=epochs, min_steps=0)
        steps = epochs * per_epoch
        best = None
        for _ in range(rounds):
            method = copy.deepcopy(saved["method"])
            method.training_loss = timed("fwd_loss", method.training_loss)
            acc.clear()
            marks.clear()
            start = time.perf_counter()
            lt.fit_method(method, saved["support"], short, seed=saved["seed"], **saved["kwargs"])
            end = time.perf_counter()
            loop = marks["last_opt"] - marks["first_data"]
            ms = {
                "fwd_loss": acc["fwd_loss"],
                "backward": acc["backward"],
                "optimizer": acc["opt"] - acc["step"] - acc["backward"],
                "data": acc["data"],
                "log_and_glue": acc["step"] - acc["fwd_loss"],
                "lightning_rest": loop - acc["opt"] - acc["data"],
            }
            row = {k: 1000 * v / steps for k, v in ms.items()}
            row.update(
                step=1000 * loop / steps,
                fixed_s=(marks["first_data"] - start) + (end - marks["last_opt"]),
                support=n,
                batch=config.batch_for(n),
                steps=steps,
                full_steps=config.epochs_for(n) * per_epoch,
                variant=path.stem.split("-", 1)[1],
            )
            if best is None or row["step"] < best["step"]:
                best = row
        out[path.stem] = best
    print("FIT_PROFILE " + json.dumps(out))
    return 0


def _child(mode: list[str], code: Path, threads: int | None) -> str:
    env = dict(os.environ, PYTHONPATH=str(code))
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.run(
        [sys.executable, str(HERE), *mode],
        env=env,
        cwd=code,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"fit_profile child failed ({' '.join(mode[:1])}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def section_body(results: dict[str, dict], argv: list[str], command: list[str], threads) -> str:
    labels = list(results)
    lines = [
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- device: CPU ({platform.machine()}, {threads or 'default'} torch thread(s)), "
        "code versions run one after the other",
        "- captured from: python -m semclip_bench " + " ".join(map(shlex.quote, command)),
        "- benchmark: python -m benchmarks.fit_profile " + " ".join(map(shlex.quote, argv)),
        "",
        "Milliseconds per optimiser step of the real Lightning fit, best of the rounds; "
        "`fixed s`: the fit's time before its first batch and after its last step.",
        "",
        "| episode | code | support / batch | steps (full fit) | step ms | forward + loss | "
        "backward | optimiser | batch gather | log + step glue | Lightning rest | fixed s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in results[labels[0]]:
        for label in labels:
            r = results[label].get(name)
            if r is None:
                continue
            parts = " | ".join(f"{r[p]:.1f}" for p in PARTS)
            lines.append(
                f"| {r['variant']} | {label} | {r['support']} / {r['batch']} | {r['steps']} "
                f"({r['full_steps']}) | {r['step']:.1f} | {parts} | {r['fixed_s']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--_capture"]:
        return _capture(Path(argv[1]), argv[3:])
    if argv[:1] == ["--_profile"]:
        return _profile(Path(argv[1]), int(argv[2]), int(argv[3]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, help="checkout of the old code")
    parser.add_argument("--base-label", default="before")
    parser.add_argument("--label", default="", help="added to the section key")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40, help="optimiser steps per profiled fit")
    parser.add_argument("--md", type=Path, default=None, help="write a section to this file")
    own, _sep, command = (
        (argv[: argv.index("--")], "--", argv[argv.index("--") + 1 :])
        if ("--" in argv)
        else (argv, "", [])
    )
    args = parser.parse_args(own)
    if not command:
        parser.error("give the semclip_bench command after --")
    here = HERE.parents[1]
    with tempfile.TemporaryDirectory(prefix="fit_profile-") as tmp:
        folder = Path(tmp) / "episodes"
        folder.mkdir()
        full = [*command, "--out", str(Path(tmp) / "out")]
        _child(["--_capture", str(folder), "--", *full], here, args.threads)
        results: dict[str, dict] = {}
        versions = ([(args.base_label, args.base)] if args.base else []) + [("after", here)]
        for label, code in versions:
            text = _child(["--_profile", str(folder), str(args.steps), str(args.rounds)], code,
                          args.threads)  # fmt: skip
            line = next(x for x in text.splitlines() if x.startswith("FIT_PROFILE "))
            results[label] = json.loads(line[len("FIT_PROFILE ") :])
    body = section_body(results, argv, command, args.threads)
    print(body)
    if args.md:
        from benchmarks._sections import write_section

        key = f"fit_profile | CPU ({platform.machine()}, {args.threads or 'default'} thread(s)) | "
        key += " ".join(command) + (f" | {args.label}" if args.label else "")
        write_section(args.md, key, body)
        print(f"written: {args.md}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] not in (["--_capture"], ["--_profile"]) and __package__ in (None, ""):
        sys.path.insert(0, str(HERE.parents[1]))  # script mode: make ``benchmarks`` importable
    raise SystemExit(main())
