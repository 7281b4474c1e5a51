"""Per-round test accuracy (and aux-head accuracy where logged) of several heronsfl runs, as one
markdown table: a round a run has not reached yet shows `-`.

    python per_round.py --run LABEL RUN_DIR [--run LABEL RUN_DIR ...]
"""

from __future__ import annotations

import argparse

from heronsfl.report import load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", nargs=2, action="append", required=True, metavar=("LABEL", "DIR"))
    args = parser.parse_args()
    columns = []  # (header, {round: value})
    for label, run_dir in args.run:
        run = load_run(run_dir)
        for key, header in (("test/accuracy", label), ("aux/accuracy", f"{label} aux")):
            rounds, values = run.series(key)
            if rounds:
                columns.append((header, dict(zip(rounds, values, strict=True))))
    last = max(max(c) for _, c in columns)
    print("| round | " + " | ".join(h for h, _ in columns) + " |")
    print("|---:|" + "---:|" * len(columns))
    for n in range(1, last + 1):
        cells = [f"{c[n]:.4f}" if n in c else "-" for _, c in columns]
        print(f"| {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
