"""Command line: ``python -m fastopt {demo,bench,info,rules}``."""
import argparse
import os
import sys


def _info(args):
    from fastopt import show_config
    show_config()
    return 0


def _rules(args):
    from fastopt.rules import readme_table
    print(readme_table())
    return 0


def main(argv=None):
    from fastopt.course import demo
    from fastopt.harness import bench

    parser = argparse.ArgumentParser(
        prog="python -m fastopt",
        description="fastopt: fused optimizer update rules for NumPy.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("demo", help="train the seed's moons classifier with "
                       "GD, momentum, RMSProp and Adam and print the table",
                       description=demo.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_arguments(p)
    p.set_defaults(func=demo.main)

    p = sub.add_parser("bench", help="measure every rule against the memory "
                       "bandwidth, the NumPy reference and torch.optim",
                       description=bench.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_arguments(p)
    p.set_defaults(func=bench.main)

    p = sub.add_parser("info", help="print version, build flags, CPU "
                       "features, SIMD level and threads")
    p.set_defaults(func=_info)

    p = sub.add_parser("rules", help="print the table of rules: source, "
                       "conformance test, bytes per element (Markdown)")
    p.set_defaults(func=_rules)

    args = parser.parse_args(argv)
    # the command line as given, for reports that name the command they ran
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except BrokenPipeError:
        # the reader went away (`python -m fastopt info | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
