"""The ``roiops`` command: ``explain``, ``bench``, ``experiment`` and ``warmup``."""

from __future__ import annotations

import argparse
import platform
import sys

import torch


def _explain(args: argparse.Namespace) -> int:
    from roiops.explain import Example, explain_text

    ex = Example(args.image_size, args.box_size, args.stride, args.output_size, args.sampling_ratio)
    print(explain_text(ex))
    if args.out:
        from roiops.figures import write_figures

        print("\nFigures:")
        for path in write_figures(ex, args.out):
            print(f"  {path}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    import numba

    from roiops import bench

    if args.calls < 1:
        raise SystemExit(f"roiops bench: --calls must be at least 1, got {args.calls}")
    dtype = {"float32": torch.float32, "float16": torch.float16}[args.dtype]
    rows = bench.run(args.device, dtype, quick=args.quick, repeat=args.repeat, calls=args.calls)
    if args.device.startswith("cuda"):
        machine = torch.cuda.get_device_name(torch.device(args.device))
    else:
        machine = platform.processor() or platform.machine()
    title = (
        f"roiops vs torchvision on {args.device} ({machine}, "
        f"{numba.get_num_threads()} Numba threads, torch {torch.get_num_threads()} threads), "
        f"{args.dtype}, median of >= {args.repeat}"
        + (f", {args.calls} calls back to back a sample" if args.calls > 1 else "")
    )
    print(bench.format_table(rows, title))
    if args.json:
        meta = {
            "device": args.device,
            "machine": machine,
            "dtype": args.dtype,
            "repeat": args.repeat,
            "calls": args.calls,
            "torch": torch.__version__,
            "threads": numba.get_num_threads(),
        }
        with open(args.json, "w") as f:
            f.write(bench.to_json(rows, meta))
    return 0


def _experiment(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from roiops import experiment

    settings = experiment.Settings.quick() if args.quick else experiment.Settings()
    if args.seeds:
        settings = replace(settings, seeds=args.seeds)
    if args.steps:
        settings = replace(settings, steps=args.steps)
    result = experiment.run_study(settings, args.out)
    print(experiment.results_markdown(result))
    print(f"Written to {args.out}/: results.md, results.json, box_ap_by_size.png, "
          "mask_iou_by_size.png")  # fmt: skip
    return 0


def _warmup(args: argparse.Namespace) -> int:
    from roiops.warmup import warm_up

    dtypes = [getattr(torch, name) for name in args.dtype]
    total = warm_up(dtypes, lambda what, seconds: print(f"  {what:<51} {seconds:6.2f} s"),
                    serial=not args.no_serial)  # fmt: skip
    print(f"every CPU kernel compiled or loaded from Numba's cache in {total:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="roiops", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("explain", help="the article's worked example, computed by the library")
    p.add_argument("--image-size", type=int, default=800)
    p.add_argument("--box-size", type=float, default=665.0)
    p.add_argument("--stride", type=int, default=32)
    p.add_argument("--output-size", type=int, default=7)
    p.add_argument("--sampling-ratio", type=int, default=2)
    p.add_argument(
        "--out", default="roiops-explain", help="folder for the PNG figures ('' for none)"
    )
    p.set_defaults(func=_explain)

    p = sub.add_parser("bench", help="speed-up vs torchvision, forward and backward")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--quick", action="store_true", help="3 cases, for a demo")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--calls", type=int, default=1,
                   help="calls back to back a sample, timed with one synchronisation (> 1: "
                        "the GPU's time per call rather than a caller's latency)")  # fmt: skip
    p.add_argument("--json", help="also write the results as JSON to this path")
    p.set_defaults(func=_bench)

    p = sub.add_parser("experiment", help="RoIPool vs RoIAlign by object size (synthetic data)")
    p.add_argument("--quick", action="store_true", help="a 1-minute smoke run")
    p.add_argument("--out", default="roiops-experiment")
    p.add_argument("--seeds", type=int, help="seeds per variant (default 3)")
    p.add_argument("--steps", type=int, help="training steps per run")
    p.set_defaults(func=_experiment)

    p = sub.add_parser(
        "warmup", help="compile every CPU kernel into Numba's cache now, not at first use"
    )
    p.add_argument("--dtype", nargs="+", choices=["float32", "float64"],
                   default=["float32", "float64"])  # fmt: skip
    p.add_argument("--no-serial", action="store_true",
                   help="not the serial twins that forked workers (DataLoader) run")  # fmt: skip
    p.set_defaults(func=_warmup)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
