"""The ``abtest`` command. Each subcommand imports its heavy dependencies only when it runs."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from pathlib import Path

from abtest_api.errors import UserError

# What `pip install abtest[evaluator]` adds; the control plane runs without them.
DATA_PLANE_MODULES = {
    "torch",
    "torchvision",
    "timm",
    "numpy",
    "scipy",
    "statsmodels",
    "sklearn",
    "pyarrow",
    "safetensors",
    "PIL",
}


def add_evaluate(sub) -> None:
    from abtest_api import evaluate

    p = sub.add_parser("evaluate", help="evaluate one model on one dataset (what each model Job runs)")
    evaluate.add_arguments(p)
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    from abtest_api.evaluate import from_args
    from abtest_evaluator import kernels

    if not args.nondeterministic:
        kernels.pin()  # before torch loads: the same predictions on any x86-64 CPU
    from abtest_evaluator.evaluate import evaluate

    metrics = evaluate(from_args(args))
    print(
        f"{metrics['model']}: accuracy {metrics['accuracy']:.4f} on {metrics['n']} samples, "
        f"{metrics['throughput']:.1f} img/s ({metrics['compute_throughput']:.1f} computing, {metrics['loader_wait_fraction'] * 100:.0f}% "
        f"waiting for data), p50 {metrics['latency']['batch_ms']['p50']:.2f} ms/batch -> {args.out}"
    )
    return 0


def add_analyze(sub) -> None:
    from abtest_api import analyze

    p = sub.add_parser("analyze", help="McNemar/Cochran's Q analysis of evaluated models (what the analysis Job runs)")
    analyze.add_arguments(p)
    p.set_defaults(func=cmd_analyze)


def cmd_analyze(args) -> int:
    from abtest_api.analyze import from_args

    config = from_args(args).check()
    # scipy, statsmodels with pandas load ~1M long-lived objects: collecting while they load is wasted work (~0.1 s),
    # and frozen afterwards they are left out of every later collection, the interpreter's exit included.
    gc.disable()
    from abtest_api.result import status_result, status_sequential
    from abtest_evaluator import analysis
    from abtest_evaluator.analysis import publish
    from abtest_evaluator.analysis.report import text_table

    gc.freeze()
    gc.enable()

    def on_look(result: dict) -> None:
        seq = result["sequential"]
        print(
            f"look {seq['look']}/{seq['looks']}: n = {seq['samples_used']}, boundary {seq['boundary']:.3f}, "
            + ", ".join(f"{c['a']} vs {c['b']} z = {c['z']:+.3f}" for c in result["comparisons"]),
            flush=True,
        )
        if config.abtest and not (seq["stopped_early"] or seq["look"] == seq["looks"]):
            publish.publish_look(config.abtest, status_sequential(result), uid=config.abtest_uid)

    result = analysis.run(config, on_look=on_look)
    print(text_table(result))
    if config.abtest:
        sequential = status_sequential(result) if result.get("sequential") else None
        publish.publish_result(config.abtest, status_result(result), uid=config.abtest_uid, sequential=sequential)
        print(f"status of ABTest {config.abtest} updated")
    return 0


def add_run(sub) -> None:
    p = sub.add_parser("run", help="run an ABTest manifest locally: every model in parallel, then the analysis")
    p.add_argument("file", help="ABTest YAML (the same file you would kubectl apply)")
    p.add_argument("--out", help="results folder (default ./abtest-results/<name>)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override spec.device")
    p.set_defaults(func=cmd_run)


def cmd_run(args) -> int:
    from abtest_evaluator.analysis.report import text_table
    from abtest_operator.local import run_local

    result, out = run_local(args.file, args.out, args.device)
    print(text_table(result))
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

    from abtest_operator import policy
    from abtest_operator.manifests import render_all
    from abtest_operator.settings import config_from_env
    from abtest_operator.spec import load_manifest, parse_abtest

    manifest = load_manifest(args.file)
    if args.namespace:
        manifest.setdefault("metadata", {}).setdefault("namespace", args.namespace)
    cfg = config_from_env()
    if args.image:
        cfg = dataclasses.replace(cfg, image=args.image)
    spec = parse_abtest(manifest)
    policy.check(spec, cfg)
    print(yaml.safe_dump_all(render_all(spec, cfg), sort_keys=False), end="")
    return 0


def add_operator(sub) -> None:
    p = sub.add_parser("operator", help="run the kopf operator (in a cluster, or against your kubeconfig)")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[], help="watch this namespace (repeatable)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)")
    p.add_argument("--metrics-port", type=int, default=8080, help="operator /metrics port (default 8080)")
    p.add_argument("--health-port", type=int, default=8081, help="liveness endpoint /healthz port (default 8081)")
    p.add_argument("--peering", help="kopf peering name for several replicas (default: standalone)")
    p.add_argument(
        "--priority",
        type=int,
        default=None,
        help="peering priority: the highest live one is active (default: random, so two replicas never tie and pause each other)",
    )
    p.set_defaults(func=cmd_operator)


def cmd_operator(args) -> int:
    import secrets

    import kopf

    from abtest_operator import handlers  # noqa: F401 (registers the handlers)
    from abtest_operator.metrics import OperatorMetrics
    from abtest_operator.state import operator_state

    metrics = OperatorMetrics()
    metrics.serve(args.metrics_port)
    # The operator's heap is mostly small acyclic dicts (the watched objects, kopf's per-object memories), which
    # reference counting frees. A full cyclic collection walks all of them and fires each time the heap grows by a
    # quarter, i.e. repeatedly in a burst of ABTests, stalling every thread (its cost: docs/benchmarks.md).
    # What is loaded by now (the client's thousand model classes) is never garbage: frozen out of every collection;
    # young collections run 70x less often. abtest_operator_gc_pause_seconds shows what is left.
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)
    metrics.time_gc()
    memo = kopf.Memo(state=operator_state(metrics=metrics))
    priority = args.priority if args.priority is not None else secrets.randbelow(2**31 - 1) + 1
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=not args.peering,
        peering_name=args.peering,
        priority=priority,
        liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz",
        memo=memo,
    )
    return 0


IMAGENET_CLASSES = 1000  # what the hubs' pretrained classifiers output


def add_cache_weights(sub) -> None:
    p = sub.add_parser(
        "cache-weights",
        help="download the pretrained weights of an ABTest's models into a folder for spec.weightsCache (needs the hubs' network)",
    )
    p.add_argument("file", help="ABTest YAML")
    p.add_argument("--dir", default="weights", help="the cache folder to fill (default: ./weights); copy it to the volume")
    p.set_defaults(func=cmd_cache_weights)


def cmd_cache_weights(args) -> int:
    from abtest_api.constants import weights_cache_env
    from abtest_operator.spec import load_manifest, parse_abtest

    spec = parse_abtest(load_manifest(args.file))
    root = Path(args.dir).resolve()
    os.environ.update(weights_cache_env(str(root), offline=False))  # before the hubs' libraries read it, at import
    from abtest_evaluator.models import PretrainedUnavailable, build_model

    wanted = [m for m in spec.models if m.settings.get("pretrained")]
    if not wanted:
        raise UserError(f"{args.file}: no model sets pretrained: true; there is nothing to cache")
    for model in wanted:
        try:  # the hubs' files hold the ImageNet head; the ABTest's own head is fitted when its pod loads them
            build_model(model.architecture, IMAGENET_CLASSES, model.settings.get("in_chans", 3), pretrained=True)
        except PretrainedUnavailable:
            raise UserError(
                f"could not fetch pretrained weights for {model.architecture}; abtest cache-weights needs network access to the model hubs: "
                "run it where they are reachable"
            ) from None
        print(f"{model.name}: {model.architecture} -> {root}")
    print(f"mount {root} (copied to a volume) as spec.weightsCache; its pods read it offline at /weights")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="abtest", description="Statistically rigorous A/B tests of image classifiers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    add_evaluate(sub)
    add_analyze(sub)
    add_run(sub)
    add_render(sub)
    add_cache_weights(sub)
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
            print(
                f"error: abtest {args.command} needs the data plane ({err.name} is missing); pip install 'abtest[evaluator]'",
                file=sys.stderr,
            )
            return 2
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
