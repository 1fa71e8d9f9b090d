"""edgepack targets: list the hardware targets and what each supports."""
from __future__ import annotations

from edgepack.cli import common


def register(subparsers):
    parser = common.add_command(subparsers, "targets", "list hardware targets (targets/*.toml)")
    parser.add_argument("target", nargs="?", metavar="T", help="show one target (name or .toml path)")
    parser.add_argument("--host", action="store_true",
                        help="say which CPU target fits this machine (from /proc/cpuinfo's int8 flags)")
    common.add_json(parser)
    return parser


def run(args) -> int:
    from edgepack.targets import list_targets, load_target

    if args.host:
        from edgepack.cpu import host_target, int8_dot_saturates, int8_summary

        name, why = host_target()
        report = {"target": name, "why": why, "cpu_flags": int8_summary(), "int8_saturates": int8_dot_saturates()}
        common.emit(args, report, f"{name}: {why} (int8 flags: {report['cpu_flags']})")
        return 0
    targets = [load_target(args.target)] if args.target else list_targets()
    rows = [f"{'name':<20} {'backend':<12} {'precisions':<15} {'TensorRT':<9} {'JetPack':<8} {'DLA':>3} "
            f"{'2:4':>4}  activations"]
    for t in targets:
        rows.append(f"{t.name:<20} {t.backend:<12} {','.join(t.precisions):<15} {t.tensorrt_version or '-':<9} "
                    f"{t.jetpack or '-':<8} {t.dla_cores:>3} {'yes' if t.sparsity else 'no':>4}  {t.qdq.activations}")
    if args.target:
        rows += ["", targets[0].description, f"file: {targets[0].path}"]
        allows = targets[0].allows()
        if allows:
            rows.append("TensorRT allows: " + ", ".join(f"{k.replace('_', ' ')} {'yes' if v else 'no'}"
                                                         for k, v in allows.items()))
    common.emit(args, [t.summary() for t in targets], "\n".join(rows))
    return 0
