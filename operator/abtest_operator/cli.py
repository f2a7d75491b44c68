"""The ``abtest`` command. Each subcommand imports its heavy dependencies only when it runs."""

from __future__ import annotations

import argparse
import logging
import sys

from abtest_operator.errors import UserError


# What `pip install abtest[evaluator]` adds; the control plane runs without them.
DATA_PLANE_MODULES = {"torch", "torchvision", "timm", "numpy", "scipy", "statsmodels", "sklearn", "pyarrow", "matplotlib", "safetensors", "PIL"}


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate one model on one dataset (what each model Job runs)")
    p.add_argument("--model", required=True, help="timm/NAME or torchvision/NAME")
    p.add_argument("--dataset", required=True, help="digits | imagefolder | cifar10 | cifar100 | torchvision")
    p.add_argument("--path", help="dataset directory (all but digits)")
    p.add_argument("--dataset-class", help="torchvision.datasets class name, with --dataset torchvision")
    p.add_argument("--split", default="test", help="test (default) or train")
    p.add_argument("--limit", type=int, help="evaluate only the first N samples")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", help="state dict file (.pth or .safetensors)")
    weights.add_argument("--pretrained", action="store_true", help="hub weights (needs network access)")
    p.add_argument("--num-classes", type=int, help="classifier outputs (default: the dataset's class count)")
    p.add_argument("--in-chans", type=int, default=3, help="input channels (1 for grey models)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--threads", type=int, help="CPU threads (default: the container's CPU limit)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--warmup-batches", type=int, default=3, help="untimed passes before the timed loop")
    p.add_argument("--amp", action="store_true", help="autocast (float16 on GPU, bfloat16 on CPU)")
    p.add_argument("--amp-dtype", default="float16", choices=["float16", "bfloat16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--input-size", type=int, help="image side in pixels (default: the model's pretrained config)")
    p.add_argument("--interpolation", help="resize interpolation (default: the model's)")
    p.add_argument("--mean", type=_floats, help="normalisation mean, comma-separated")
    p.add_argument("--std", type=_floats, help="normalisation std, comma-separated")
    p.add_argument("--crop-pct", type=float, help="centre-crop fraction (1.0: no crop)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port while running")
    p.add_argument("--metrics-addr", default="0.0.0.0", help="address for /metrics (in a pod: its IP, from the downward API)")
    p.add_argument("--pushgateway", help="push final metrics to this Pushgateway URL")
    p.add_argument("--abtest", default="", help="ABTest name (metric label)")
    p.add_argument("--namespace", default="", help="ABTest namespace (metric label)")
    p.add_argument("--name", default="", help="the model's name in the ABTest (metric label, default: --model)")
    p.add_argument("--progress", default="auto", choices=["auto", "bar", "json", "none"])
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    from abtest_evaluator.config import EvalConfig
    from abtest_evaluator.evaluate import evaluate

    fields = {k: v for k, v in vars(args).items() if k in EvalConfig.__dataclass_fields__}
    metrics = evaluate(EvalConfig(**fields))
    print(f"{metrics['model']}: accuracy {metrics['accuracy']:.4f} on {metrics['n']} samples, "
          f"{metrics['throughput']:.1f} img/s, p50 {metrics['latency']['batch_ms']['p50']:.2f} ms/batch -> {args.out}")
    return 0


def add_analyze(sub) -> None:
    p = sub.add_parser("analyze", help="McNemar/Cochran's Q analysis of evaluated models (what the analysis Job runs)")
    p.add_argument("dir", help="folder holding one sub-folder per evaluated model")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    p.add_argument("--test", default="auto", choices=["auto", "exact", "chi2"], help="McNemar variant (default auto)")
    p.add_argument("--models", help="comma-separated model folders in A, B, … order (default: every folder, by name)")
    p.add_argument("--abtest", help="NAMESPACE/NAME: also write the verdict into that ABTest's status")
    p.set_defaults(func=cmd_analyze)


def cmd_analyze(args) -> int:
    from pathlib import Path

    from abtest_evaluator.analysis import run_analysis, status_summary, summary_table

    result = run_analysis(Path(args.dir), args.alpha, args.test, args.models.split(",") if args.models else None)
    print(summary_table(result))
    if args.abtest:
        from abtest_evaluator.publish import publish_result

        publish_result(args.abtest, status_summary(result))
        print(f"status of ABTest {args.abtest} updated")
    return 0


def add_run(sub) -> None:
    p = sub.add_parser("run", help="run an ABTest manifest locally: every model in parallel, then the analysis")
    p.add_argument("file", help="ABTest YAML (the same file you would kubectl apply)")
    p.add_argument("--out", help="results folder (default ./abtest-results/<name>)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override spec.device")
    p.set_defaults(func=cmd_run)


def cmd_run(args) -> int:
    from abtest_evaluator.analysis import summary_table
    from abtest_operator.local import run_local

    result, out = run_local(args.file, args.out, args.device)
    print(summary_table(result))
    print(f"results: {out / 'result.json'}, report: {out / 'report.html'}")
    return 0


def add_render(sub) -> None:
    p = sub.add_parser("render", help="print every Kubernetes object the operator would create for an ABTest (dry run)")
    p.add_argument("file", help="ABTest YAML")
    p.add_argument("--image", help="evaluator image (default: $ABTEST_EVALUATOR_IMAGE or the release image)")
    p.add_argument("--namespace", help="namespace when the manifest has none (default: default)")
    p.set_defaults(func=cmd_render)


def cmd_render(args) -> int:
    import dataclasses

    import yaml

    from abtest_operator.handlers import config_from_env
    from abtest_operator.manifests import render_all
    from abtest_operator.spec import load_manifest, parse_abtest

    manifest = load_manifest(args.file)
    if args.namespace:
        manifest.setdefault("metadata", {}).setdefault("namespace", args.namespace)
    cfg = config_from_env()
    if args.image:
        cfg = dataclasses.replace(cfg, image=args.image)
    print(yaml.safe_dump_all(render_all(parse_abtest(manifest), cfg), sort_keys=False), end="")
    return 0


def add_operator(sub) -> None:
    p = sub.add_parser("operator", help="run the kopf operator (in a cluster, or against your kubeconfig)")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[], help="watch this namespace (repeatable)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)")
    p.add_argument("--metrics-port", type=int, default=8080, help="operator /metrics port (default 8080)")
    p.add_argument("--health-port", type=int, default=8081, help="liveness endpoint /healthz port (default 8081)")
    p.add_argument("--peering", help="kopf peering name for several replicas (default: standalone)")
    p.set_defaults(func=cmd_operator)


def cmd_operator(args) -> int:
    import kopf

    from abtest_operator import handlers  # registers the handlers
    from abtest_operator.metrics import OperatorMetrics

    metrics = OperatorMetrics()
    metrics.serve(args.metrics_port)
    memo = kopf.Memo(clients=handlers.Clients.connect(), config=handlers.config_from_env(), metrics=metrics)
    kopf.run(clusterwide=not args.namespace, namespaces=args.namespace, standalone=not args.peering, peering_name=args.peering,
             liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz", memo=memo)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="abtest", description="Statistically rigorous A/B tests of image classifiers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    add_evaluate(sub)
    add_analyze(sub)
    add_run(sub)
    add_render(sub)
    add_operator(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except UserError as err:
        if args.verbose:
            raise
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] in DATA_PLANE_MODULES:
            print(f"error: abtest {args.command} needs the data plane ({err.name} is missing); pip install 'abtest[evaluator]'", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
