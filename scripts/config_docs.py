"""Writes docs/configuration.md from the config schema (deeplab.config.SCHEMA).

    python scripts/config_docs.py            # rewrite docs/configuration.md
    python scripts/config_docs.py --check    # exit 1 if the committed file is stale

tests/engine/test_config.py runs the check, so the page never drifts from the code.
"""
import argparse
import os
import sys

from deeplab.config import SCHEMA, _range_text, flat_items

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
OUT = os.path.join(ROOT, "docs", "configuration.md")

INTRO = """# Configuration

Every key a config file or `--set` may set, with its type, default and meaning. A config file is
YAML that sets some of these keys, optionally on top of another file named by `_base_`;
`--set KEY=VALUE [KEY=VALUE ...]` overrides any of them on the command line of `train`, `eval`,
`predict`, `export`, `bench` and `k8s render` (values are YAML: `--set eval.scales=[0.5,1.0]
train.lr=1e-3`).
Unknown keys, wrong types and values out of range are refused with the key named (exit code 2).

Generated from `deeplab.config.SCHEMA` by `python scripts/config_docs.py`; do not edit by hand.
"""

TYPES = {"int": "integer", "float": "number", "bool": "true/false", "str": "string",
         "path": "path or null", "floats": "list of numbers", "ints": "list of integers",
         "octal": "octal mask (string)",
         "?int": "integer or null", "?float": "number or null",
         "?strs": "list of names or null", "?colours": "list of `[r, g, b]` or null",
         "group": "`all` \\| `node` \\| integer"}


def _type(key):
    if key.tag.startswith("choice:"):
        return " \\| ".join("`%s`" % c for c in key.tag[len("choice:"):].split("|"))
    text = TYPES[key.tag]
    if key.lo is not None or key.hi is not None:
        text += ", %s" % _range_text(key)
    return text


def _default(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).replace(" ", "")


def render():
    lines = [INTRO]
    for section in SCHEMA:
        lines += ["## %s" % section, "", "| key | type | default | meaning |",
                  "|---|---|---|---|"]
        for name, key in flat_items(SCHEMA[section], section + "."):
            lines.append("| `%s` | %s | `%s` | %s |" % (name, _type(key), _default(key.default),
                                                     key.doc.replace("|", "\\|")))
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="fail if %s is stale" % OUT)
    args = p.parse_args(argv)
    text = render()
    if args.check:
        current = open(OUT).read() if os.path.exists(OUT) else ""
        if current != text:
            print("%s is stale: run python scripts/config_docs.py" % OUT, file=sys.stderr)
            return 1
        return 0
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
