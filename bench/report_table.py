"""The report's numbers over several runs as mean ± sample standard deviation (the values in brackets),
one Markdown row per number: the table of docs/results.md.

    python bench/report_table.py RUN/report/report.json [RUN/report/report.json ...]
"""

import json
import statistics
import sys

NUMBERS = (
    ("sample_quality", "frechet_distance"),
    ("sample_quality", "frechet_floor"),
    ("sample_quality", "classifier_test_accuracy"),
    ("sample_quality", "sample_class_evenness"),
    ("latents", "active_units"),
    ("latents", "linear_probe_accuracy"),
    ("latents", "knn_accuracy"),
    ("likelihood", "test_loss"),
    ("likelihood", "test_nll"),
    ("likelihood", "ood_auroc"),
)


def main(paths: list[str]) -> None:
    reports = [json.load(open(path)) for path in paths]
    print("| number | mean ± sd | values |\n|---|---|---|")
    for section, name in NUMBERS:
        values = [r[section][name] for r in reports if name in r.get(section, {})]
        if not values:
            continue
        spread = f"{statistics.stdev(values):.4g}" if len(values) > 1 else "(one run)"
        shown = ", ".join(str(v) for v in values)
        print(f"| {section}/{name} | {statistics.mean(values):.4g} ± {spread} | {shown} |")


if __name__ == "__main__":
    main(sys.argv[1:])
