"""The report's next steps, measured one change at a time from the default configuration.

Run from the project root after a full `kedro run` (so MNIST and the digit classifier exist):

    .venv/bin/python benchmarks/ablations.py            # or: make ablations
    .venv/bin/python benchmarks/ablations.py --only default beta_1

Every variant is a real `kedro run --env ablation --params ...` (conf/ablation keeps its
models and results apart from the default run's, and each run is logged to MLflow), one
after the other so that their wall times compare. After each run its metrics.csv row is
appended, with the variant's name, change and wall time, to
data/08_reporting/ablations.csv, and the table so far is printed as Markdown. On a
2-core machine two runs of it may go side by side, each with one thread
(`OMP_NUM_THREADS=1`), the second with `--env ablation_b` (results in
data/08_reporting/ablations_ablation_b.csv).

`prior_*` variants reuse the network trained by `default` (training.resume=true: a
finished run is not retrained, only its prior is fitted again): they run right after `default`.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

# name -> (what changes, --params); each is one change from conf/base/parameters.yml
VARIANTS: dict[str, tuple[str, str]] = {
    "default": ("nothing (the default configuration)", ""),
    "seed_2": ("seed 2", "seed=2"),
    "seed_3": ("seed 3", "seed=3"),
    "no_swap": ("no swap critic (swap_weight 0)", "training.swap_weight=0.0"),
    "previous_default": ("no swap critic, label at the decoder's input only", "training.swap_weight=0.0,model.decoder_conditioning=input"),
    "input_conditioning": ("label at the decoder's input only (no FiLM)", "model.decoder_conditioning=input"),
    "swap_1": ("swap critic weight 1, not 2", "training.swap_weight=1.0"),
    "adversary_3": ("a label adversary on mu (weight 3), no swap critic", "training.adversary_weight=3.0,training.swap_weight=0.0"),
    "prior_flow": ("prior: the conditional flow", "prior.kind=flow,training.resume=true"),
    "prior_mixture_20": ("prior: 20 Gaussians per class, not 10", "prior.components=20,training.resume=true"),
    "prior_standard_normal": ("prior N(0, I), as the report", "prior.kind=standard_normal,training.resume=true"),
    "prior_5": ("prior: 5 Gaussians per class, not 10", "prior.components=5,training.resume=true"),
    "prior_pseudo_500": (
        "prior: 0.2 x the mixture + 0.8 x the posteriors of 500 training images per class",
        "prior.pseudo_inputs=500,training.resume=true",
    ),
    "prior_pseudo_500_half": (
        "prior: 0.5 x the mixture + 0.5 x the posteriors of 500 training images per class",
        "prior.pseudo_inputs=500,prior.pseudo_weight=0.5,training.resume=true",
    ),
    "beta_1": ("beta 1.0 (the report's KL weight)", "training.beta=1.0"),
    "kl_warmup": ("KL warm-up over the first epoch", "training.kl_warmup_epochs=1"),
    "embedding": ("a learned 16-dimensional label embedding, not one-hot", "model.conditioning=embedding"),
    "augmentation": ("augmentation: rotations +-10 deg, shifts +-2 px", "training.augment_rotation=10,training.augment_shift=2"),
    "latent_200": ("latent_dim 200", "model.latent_dim=200"),
    "constant_lr": ("a constant learning rate of 0.001, the report's", "training.lr_schedule=constant,training.lr=0.001"),
    "batch_norm": ("batch norm and a residual block on each side", "model.normalization=batch,model.residual_blocks=1"),
    "fp32": ("fp32 training (mixed_precision off)", "training.mixed_precision=false"),
    "epochs_16": ("16 epochs (twice as many)", "training.epochs=16"),
}  # fmt: skip

FIGURES = ("label_swap", "generated_digits")  # copied per variant to data/08_reporting/<env>/variants/
SHOWN = {  # column -> decimals shown
    "label_swap_accuracy": 3, "bce_per_image": 2, "mse_per_image": 3, "ssim": 4, "psnr": 2,
    "kl_per_image": 2, "iw_nll": 2, "cond_accuracy": 4, "fid": 2, "nearest_train_ratio": 2,
}  # fmt: skip


def run(name: str, params: str, env: str) -> dict[str, str]:
    command = [str(Path(sys.executable).with_name("kedro")), "run", "--env", env]
    if params:
        command += ["--params", params]
    print(f"\n== {name}: {' '.join(command)}", flush=True)
    started = time.perf_counter()
    result = subprocess.run(command, check=False, env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"})
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"Error: the variant {name} failed (exit {result.returncode}); see the log above.")
    reporting = Path("data/08_reporting") / env
    with (reporting / "metrics.csv").open() as handle:
        (row,) = csv.DictReader(handle)
    kept = reporting / "variants"  # each variant's figures, for a side-by-side look
    kept.mkdir(exist_ok=True)
    for figure in FIGURES:
        shutil.copyfile(reporting / f"{figure}.png", kept / f"{name}_{figure}.png")
    return {
        "variant": name,
        "change": VARIANTS[name][0],
        "params": params,
        "wall_seconds": f"{seconds:.0f}",
        **row,
    }


def markdown(rows: list[dict[str, str]]) -> str:
    header = ["variant", "change", *SHOWN, "wall time"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        values = [  # rows measured before a column existed show a dash
            f"{float(row[key]):.{decimals}f}" if row.get(key) else "—" for key, decimals in SHOWN.items()
        ]
        wall = f"{int(row['wall_seconds']) // 60} min {int(row['wall_seconds']) % 60} s"
        lines.append("| " + " | ".join([row["variant"], row["change"], *values, wall]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(VARIANTS),
        help="run these variants only, in this order (the others' rows are kept)",
    )
    parser.add_argument(
        "--env",
        default="ablation",
        help="Kedro environment whose globals.yml puts the results under data/08_reporting/<env>/ "
        "(default ablation; conf/ablation_b lets a second run of this script go beside the first)",
    )
    args = parser.parse_args()
    results_file = Path("data/08_reporting") / (
        "ablations.csv" if args.env == "ablation" else f"ablations_{args.env}.csv"
    )
    names = args.only or list(VARIANTS)
    if "default" in names:  # prior_* variants resume the network the last training run left: default's
        refits = [name for name in names if name.startswith("prior_")]
        others = [name for name in names if name not in refits]
        at = others.index("default") + 1
        names = others[:at] + refits + others[at:]
    results: dict[str, dict[str, str]] = {}
    if args.only and results_file.exists():  # keep the variants not run again
        with results_file.open() as handle:
            results = {row["variant"]: row for row in csv.DictReader(handle) if row["variant"] in VARIANTS}
    results_file.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        results[name] = run(name, VARIANTS[name][1], args.env)
        rows = [results[variant] for variant in VARIANTS if variant in results]
        with results_file.open(
            "w", newline=""
        ) as handle:  # rewritten after every variant: never half a table
            writer = csv.DictWriter(handle, fieldnames=list(results[name]))
            writer.writeheader()
            writer.writerows(rows)
        print(
            f"\nAblations so far ({date.today()}), written to {results_file}:\n{markdown(rows)}", flush=True
        )


if __name__ == "__main__":
    main()
