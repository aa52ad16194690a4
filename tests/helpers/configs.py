"""Configs built for tests from tests/data/tiny_config.yaml."""

from __future__ import annotations

import copy

import yaml

from fedscape.core.config import ConfigError, load_schema
from fedscape.plan.workflow import check_config
from helpers.workflow import ROOT, TINY_CONFIG

SCHEMA = load_schema(ROOT / "workflow" / "schemas" / "config.schema.yaml")
TINY = yaml.safe_load(TINY_CONFIG.read_text())
DEFAULT = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def tiny_config(**hessian) -> dict:
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["hessian"] = {**config.get("hessian", {}), **hessian}
    return config


def config_with(inits: dict, experiments: list[dict] | None = None, **extra) -> dict:
    config = copy.deepcopy(TINY)
    config["inits"] = {"random": {"kind": "random", "seed": 0}, **inits}
    config["experiments"] = experiments if experiments is not None else [{"alpha": "iid"}, {"alpha": 0.5}]
    config.update(extra)
    return config


def problems_of(config: dict) -> str:
    """check_config's problems with `config` ('' for a valid config)."""
    try:
        check_config(copy.deepcopy(config), SCHEMA)
    except ConfigError as exc:
        return str(exc)
    return ""
