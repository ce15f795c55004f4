"""Which JSON Schema validator the gateway uses for `request_schema` and `query_schema`.

    .venv/bin/pip install 'jsonschema==4.26.*' 'fastjsonschema==2.22.*' 'jsonschema-rs==0.60.*'
    taskset -c 0 .venv/bin/python bench/validator_cost.py [--runs 3000]

For a realistic cart schema (draft 2020-12: ``$defs``/``$ref``, ``enum``, ``pattern``,
``additionalProperties``, bounds), each library's:

- import: wall time and objects the garbage collector tracks afterwards (a fresh
  interpreter each; the collector walks them in every collection of a busy worker);
- compile: check the schema against its metaschema and build the validator, microseconds;
- validate: a valid cart of 5 items, a valid cart of 100 items, an invalid cart of 5 items
  (its first error with path and keyword), microseconds per instance;
- what its first error says for four typical mistakes, and whether it honours draft 2020-12
  keywords (``prefixItems``, ``dependentRequired``, ``unevaluatedProperties``).

Each figure is the median of ``--runs`` single calls timed with ``perf_counter_ns`` after a
warm-up, the libraries interleaved call by call (as in ``jwt_cost.py``).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import fastjsonschema
import jsonschema
import jsonschema_rs

CART_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["items", "currency"],
    "additionalProperties": False,
    "properties": {
        "currency": {"enum": ["EUR", "USD", "GBP", "CHF"]},
        "coupon": {"type": "string", "pattern": "^[A-Z0-9]{4,12}$"},
        "items": {
            "type": "array",
            "minItems": 1,
            "maxItems": 100,
            "items": {"$ref": "#/$defs/item"},
        },
        "shipping": {"$ref": "#/$defs/address"},
        "gift": {"type": "boolean"},
        "note": {"type": "string", "maxLength": 500},
    },
    "$defs": {
        "item": {
            "type": "object",
            "required": ["sku", "qty"],
            "additionalProperties": False,
            "properties": {
                "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
                "qty": {"type": "integer", "minimum": 1, "maximum": 99},
                "options": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "address": {
            "type": "object",
            "required": ["country", "postcode"],
            "properties": {
                "country": {"type": "string", "minLength": 2, "maxLength": 2},
                "postcode": {"type": "string", "maxLength": 16},
                "lines": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
            },
        },
    },
}
# fastjsonschema knows drafts 4, 6 and 7 only: the same schema, said to be draft 7
CART_SCHEMA_DRAFT7 = {**CART_SCHEMA, "$schema": "http://json-schema.org/draft-07/schema#"}


def cart(items: int) -> dict[str, Any]:
    return {
        "currency": "EUR",
        "coupon": "WINTER24",
        "gift": False,
        "shipping": {"country": "DE", "postcode": "10115", "lines": ["Invalidenstr. 1"]},
        "items": [
            {"sku": f"ABC-{i:04d}", "qty": 1 + i % 9, "options": {"colour": "blue"}}
            for i in range(items)
        ],
    }


VALID_5 = cart(5)
VALID_100 = cart(100)
INVALID_5 = copy.deepcopy(VALID_5)
INVALID_5["items"][3]["qty"] = 0

MISTAKES: dict[str, Callable[[dict[str, Any]], None]] = {
    "items[3].qty = 0": lambda c: c["items"][3].__setitem__("qty", 0),
    "items[1].sku missing": lambda c: c["items"][1].pop("sku"),
    "unknown key 'coupons'": lambda c: c.__setitem__("coupons", "X"),
    "shipping.country = 'DEU'": lambda c: c["shipping"].__setitem__("country", "DEU"),
}


def first_error_rs(validator: Any, instance: Any) -> str:
    for error in validator.iter_errors(instance):
        return f"{list(error.instance_path)} {error.schema_path[-1]}: {error.message}"
    return "valid"


def first_error_js(validator: Any, instance: Any) -> str:
    for error in validator.iter_errors(instance):
        return f"{error.json_path} {error.validator}: {error.message}"
    return "valid"


def first_error_fast(validate: Callable[[Any], Any], instance: Any) -> str:
    try:
        validate(instance)
    except fastjsonschema.JsonSchemaValueException as exc:
        return f"{exc.path} {exc.rule}: {exc.message}"
    return "valid"


def compile_rs() -> Any:
    jsonschema_rs.meta.validate(CART_SCHEMA)
    return jsonschema_rs.validator_for(CART_SCHEMA, offline=True)


def compile_js() -> Any:
    jsonschema.Draft202012Validator.check_schema(CART_SCHEMA)
    return jsonschema.Draft202012Validator(CART_SCHEMA)


def compile_fast() -> Callable[[Any], Any]:
    # compile() checks the definition as it generates code
    return fastjsonschema.compile(CART_SCHEMA_DRAFT7)


COMPILERS: dict[str, Callable[[], Any]] = {
    "jsonschema-rs": compile_rs,
    "jsonschema": compile_js,
    "fastjsonschema": compile_fast,
}
FIRST_ERROR: dict[str, Callable[[Any, Any], str]] = {
    "jsonschema-rs": first_error_rs,
    "jsonschema": first_error_js,
    "fastjsonschema": first_error_fast,
}
IMPORTS = {
    "jsonschema-rs": "jsonschema_rs",
    "jsonschema": "jsonschema",
    "fastjsonschema": "fastjsonschema",
}


def medians_us(calls: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    """Median microseconds per call of each, interleaved one of each per round."""
    samples: dict[str, list[int]] = {name: [] for name in calls}
    for round_ in range(runs + 100):  # the first 100 rounds warm up
        for name, call in calls.items():
            start = time.perf_counter_ns()
            call()
            if round_ >= 100:
                samples[name].append(time.perf_counter_ns() - start)
    return {name: statistics.median(values) / 1000 for name, values in samples.items()}


def import_cost(module: str) -> tuple[float, int]:
    """Milliseconds to import ``module`` in a fresh interpreter (median of 5), and the
    objects the collector tracks after it, less those before."""
    probe = (
        "import gc, time; gc.collect(); before = len(gc.get_objects()); "
        f"t = time.perf_counter(); import {module}; t = time.perf_counter() - t; "
        "gc.collect(); print(t * 1000, len(gc.get_objects()) - before)"
    )
    times, objects = [], 0
    for _ in range(5):
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
        ms, objects_text = out.stdout.split()
        times.append(float(ms))
        objects = int(objects_text)
    return statistics.median(times), objects


def draft_2020_12(name: str) -> str:
    """Which of three 2020-12 keywords the library enforces (an instance that breaks each
    must fail)."""
    cases = {
        "prefixItems": ({"prefixItems": [{"type": "string"}]}, [3]),
        "dependentRequired": ({"dependentRequired": {"a": ["b"]}}, {"a": 1}),
        "unevaluatedProperties": (
            {"properties": {"a": {}}, "unevaluatedProperties": False},
            {"a": 1, "b": 2},
        ),
    }
    enforced = []
    for keyword, (schema, instance) in cases.items():
        schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
        if name == "jsonschema-rs":
            ok = jsonschema_rs.validator_for(schema).is_valid(instance)
        elif name == "jsonschema":
            ok = jsonschema.Draft202012Validator(schema).is_valid(instance)
        else:
            schema["$schema"] = "http://json-schema.org/draft-07/schema#"
            ok = first_error_fast(fastjsonschema.compile(schema), instance) == "valid"
        enforced.append(f"{keyword} {'ignored' if ok else 'enforced'}")
    return ", ".join(enforced)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--runs", type=int, default=3000)
    runs = parser.parse_args().runs
    print(f"Python {sys.version.split()[0]}")
    for name, module in IMPORTS.items():
        ms, objects = import_cost(module)
        print(f"import {name}: {ms:.1f} ms, +{objects} objects tracked by the collector")
    compile_us = medians_us(COMPILERS, max(runs // 10, 100))
    validators = {name: compile_() for name, compile_ in COMPILERS.items()}
    for name, validator in validators.items():
        assert FIRST_ERROR[name](validator, VALID_5) == "valid", name
        assert FIRST_ERROR[name](validator, VALID_100) == "valid", name
        assert FIRST_ERROR[name](validator, INVALID_5) != "valid", name
    rs, js, fast = (validators[n] for n in ("jsonschema-rs", "jsonschema", "fastjsonschema"))
    per_instance = {
        label: medians_us(
            {
                "jsonschema-rs": (lambda i=instance: rs.is_valid(i) or first_error_rs(rs, i)),
                "jsonschema": (lambda i=instance: js.is_valid(i) or first_error_js(js, i)),
                "fastjsonschema": (lambda i=instance: first_error_fast(fast, i)),
            },
            runs,
        )
        for label, instance in (
            ("valid, 5 items", VALID_5),
            ("valid, 100 items", VALID_100),
            ("invalid, 5 items", INVALID_5),
        )
    }
    print()
    print("| library | compile us | " + " | ".join(f"{k} us" for k in per_instance) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in per_instance) + " |")
    for name in COMPILERS:
        cells = " | ".join(f"{row[name]:.1f}" for row in per_instance.values())
        print(f"| {name} | {compile_us[name]:.0f} | {cells} |")
    print()
    for mistake, apply in MISTAKES.items():
        instance = copy.deepcopy(VALID_5)
        apply(instance)
        print(f"{mistake}:")
        for name, validator in validators.items():
            print(f"  {name:15} {FIRST_ERROR[name](validator, instance)}")
    print()
    for name in COMPILERS:
        print(f"draft 2020-12, {name}: {draft_2020_12(name)}")


if __name__ == "__main__":
    main()
