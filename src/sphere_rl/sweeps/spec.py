"""What a sweep is: presets x a grid of dotted overrides x seeds, expanded into jobs with stable ids.

A spec comes from a YAML or TOML file or from the short CLI form
(``--preset demo --grid reg.name=none,sphere --seeds 0-4``). Every job is one fully resolved,
validated :class:`~sphere_rl.config.Config`; its id is a hash of that config (seed included, the
output location and console settings excluded), so the same job gets the same id in every launch
and on every machine, and re-running a sweep finds the runs it already has.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import tomllib
from pathlib import Path
from typing import Any

from sphere_rl.config import PRESETS, Config, ConfigError, preset

__all__ = ["SweepSpec", "Job", "SpecError", "parse_seeds", "parse_grid_arg", "load_spec", "IDENTITY_EXCLUDED"]

IDENTITY_EXCLUDED = (("run", "out_dir"), ("run", "name"), ("run", "progress"))
"""Config fields that do not change a run's numbers and so are not part of a job's identity."""

_SPEC_KEYS = {"name", "preset", "presets", "overrides", "grid", "seeds"}

MAX_JOBS = 10_000
"""Jobs a sweep may have (presets x grid cells x seeds); more is a typo (e.g. seeds 0-99999) or several sweeps."""


class SpecError(ConfigError):
    """A malformed sweep spec (exit code 2 from the CLI, like every config error)."""


def parse_seeds(value: Any) -> tuple[int, ...]:
    """``"0-4"``, ``"0,2,7"``, ``"0-2,10"``, an int or a list of ints -> sorted unique seeds."""
    if isinstance(value, bool):
        raise SpecError(f"seeds: expected integers or ranges like 0-4, got {value!r}")
    if isinstance(value, int):
        items: list[Any] = [value]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    elif isinstance(value, str):
        items = [part.strip() for part in value.split(",") if part.strip()]
    else:
        raise SpecError(f"seeds: expected integers or ranges like 0-4, got {value!r}")
    seeds: set[int] = set()
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            if item < 0:
                raise SpecError(f"seeds: {item} is negative")
            seeds.add(item)
            continue
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", str(item))
        if not match:
            raise SpecError(f"seeds: cannot read {item!r}; use integers and ranges like 0-4")
        lo, hi = int(match.group(1)), int(match.group(2) or match.group(1))
        if hi < lo:
            raise SpecError(f"seeds: empty range {item!r}")
        if hi >= 2**31 or hi - lo >= 100_000:
            raise SpecError(f"seeds: range {item!r} is too large (seeds < 2**31, at most 100000 per range)")
        seeds.update(range(lo, hi + 1))
    if not seeds:
        raise SpecError("seeds: no seed given")
    if max(seeds) >= 2**31:
        raise SpecError(f"seeds: {max(seeds)} is too large (seeds must be < 2**31)")
    return tuple(sorted(seeds))


def _split_top_level(text: str) -> list[str]:
    """Split at commas that are not inside brackets: ``[64,64],[128,128]`` -> two values."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    parts.append("".join(current).strip())
    return parts


def parse_grid_arg(text: str) -> tuple[str, tuple[Any, ...]]:
    """``reg.name=none,sphere`` -> ("reg.name", ("none", "sphere")); list values stay whole."""
    if "=" not in text:
        raise SpecError(f"--grid {text!r} must look like section.field=value1,value2")
    key, raw = (s.strip() for s in text.split("=", 1))
    values = tuple(v for v in _split_top_level(raw) if v != "")
    if not key or not values:
        raise SpecError(f"--grid {text!r}: needs a field and at least one value")
    return key, values


@dataclasses.dataclass(frozen=True)
class Job:
    """One run of a sweep: its id, where its values come from, and its resolved config."""

    job_id: str
    preset: str
    cell: dict[str, Any]
    seed: int
    config: Config

    @property
    def label(self) -> str:
        """``preset reg.name=sphere seed=3``: what a person reads in progress lines."""
        values = " ".join(f"{k}={v}" for k, v in self.cell.items())
        return f"{self.preset} {values} seed={self.seed}".replace("  ", " ")

    def to_index(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "preset": self.preset, "cell": self.cell, "seed": self.seed,
                "run_dir": f"runs/{self.job_id}"}


def identity(config: Config) -> dict[str, Any]:
    """The config as a dict without the fields that do not change a run's numbers."""
    data = json.loads(config.to_json())
    for section, field in IDENTITY_EXCLUDED:
        data.get(section, {}).pop(field, None)
    return data


def job_id_of(config: Config) -> str:
    from sphere_rl.runs.run_dir import config_hash

    return config_hash(identity(config), length=12)


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """Presets x grid x seeds plus overrides shared by every job."""

    presets: tuple[str, ...]
    grid: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    seeds: tuple[int, ...] = (0,)
    overrides: tuple[str, ...] = ()
    name: str = ""

    def __post_init__(self) -> None:
        if not self.presets:
            raise SpecError("preset: give at least one preset")
        for name in self.presets:
            if not isinstance(name, str) or name not in PRESETS:
                raise SpecError(f"preset: unknown preset {name!r}; presets: {', '.join(sorted(PRESETS))}")
        keys = [k for k, _ in self.grid]
        if len(set(keys)) != len(keys):
            raise SpecError(f"grid: a field appears twice: {keys}")
        for key, values in self.grid:
            if key == "seed":
                raise SpecError("grid: use seeds (--seeds 0-4) for the seed, not a grid axis")
            if not values:
                raise SpecError(f"grid: {key} has no values")
            if len({json.dumps(v, sort_keys=True, default=str) for v in values}) != len(values):
                raise SpecError(f"grid: {key} repeats a value: {list(values)}")
        if self.n_cells * len(self.seeds) > MAX_JOBS:  # every job's config is built and validated up front
            raise SpecError(f"grid x seeds: {self.n_cells} cells x {len(self.seeds)} seeds = "
                            f"{self.n_cells * len(self.seeds)} jobs, more than {MAX_JOBS}; split the sweep")
        if self.name and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            raise SpecError(f"name: {self.name!r} must be letters, digits, '.', '_' or '-' (it names a directory)")

    @property
    def n_cells(self) -> int:
        n = len(self.presets)
        for _, values in self.grid:
            n *= len(values)
        return n

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.default_name, "presets": list(self.presets),
                "grid": {k: list(v) for k, v in self.grid}, "seeds": list(self.seeds),
                "overrides": list(self.overrides)}

    @property
    def default_name(self) -> str:
        """The spec's name, else ``<preset>-<hash of the spec>`` (stable, so a re-run finds its directory)."""
        if self.name:
            return self.name
        from sphere_rl.runs.run_dir import config_hash

        body = {"presets": list(self.presets), "grid": {k: list(v) for k, v in self.grid},
                "seeds": list(self.seeds), "overrides": list(self.overrides)}
        return f"{'+'.join(self.presets)}-{config_hash(body, length=8)}"

    def jobs(self) -> list[Job]:
        """Every job, validated: a bad value fails here, before anything runs or is written."""
        jobs: list[Job] = []
        seen: dict[str, Job] = {}
        axes = [k for k, _ in self.grid]
        # seed-major order: the first jobs to finish cover every cell once, so partial results compare
        shared: dict[str, Any] = {}
        for item in self.overrides:
            if not isinstance(item, str) or "=" not in item:
                raise SpecError(f"overrides: {item!r} must look like section.field=value")
            key, value = item.split("=", 1)
            shared[key.strip()] = value.strip()
        for seed, preset_name, combo in itertools.product(
                self.seeds, self.presets, itertools.product(*(values for _, values in self.grid))):
            cell = dict(zip(axes, combo))
            try:
                config = preset(preset_name, {**shared, **cell, "seed": seed})
            except ConfigError as err:
                where = " ".join(f"{k}={v}" for k, v in cell.items())
                where = where if where.isprintable() else repr(where)  # one line, whatever the grid holds
                raise SpecError(f"{err} (preset {preset_name}{' ' + where if where else ''})") from None
            job = Job(job_id_of(config), preset_name, cell, seed, config)
            if job.job_id in seen:  # two grid points that resolve to the same config
                raise SpecError(f"jobs {seen[job.job_id].label!r} and {job.label!r} resolve to the same "
                                "config; remove the duplicate grid value")
            seen[job.job_id] = job
            jobs.append(job)
        return jobs


def spec_from_mapping(data: dict[str, Any], source: str = "spec") -> SweepSpec:
    """Build a spec from the mapping of a YAML/TOML file (unknown keys are an error)."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping with keys {sorted(_SPEC_KEYS)}")
    unknown = set(data) - _SPEC_KEYS
    if unknown:
        raise SpecError(f"{source}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_SPEC_KEYS)}")
    presets = data.get("presets", data.get("preset", "default"))
    if not isinstance(presets, (str, list, tuple)):
        raise SpecError(f"{source}: preset(s) must be a preset name or a list of names, got {presets!r}")
    presets = (presets,) if isinstance(presets, str) else tuple(presets)
    grid_data = data.get("grid") or {}
    if not isinstance(grid_data, dict):
        raise SpecError(f"{source}: grid must map a dotted field to a list of values")
    grid = tuple((str(k), tuple(v) if isinstance(v, (list, tuple)) else (v,)) for k, v in grid_data.items())
    overrides = data.get("overrides") or []
    if isinstance(overrides, dict):
        overrides = [f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}" for k, v in overrides.items()]
    if not isinstance(overrides, (list, tuple)) or not all(isinstance(o, str) for o in overrides):
        raise SpecError(f"{source}: overrides must be a list of 'section.field=value' or a mapping")
    return SweepSpec(presets=presets, grid=grid, seeds=parse_seeds(data.get("seeds", 0)),
                     overrides=tuple(overrides), name=str(data.get("name", "") or ""))


def load_spec(path: str | Path) -> SweepSpec:
    """Read a sweep spec from ``.yaml``/``.yml`` or ``.toml``."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"sweep spec {str(path)!r} does not exist or is not a file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif path.suffix == ".toml":
            data = tomllib.loads(text)
        else:
            raise SpecError(f"sweep spec {str(path)!r}: use a .yaml, .yml or .toml file")
    except SpecError:
        raise
    except Exception as err:  # yaml.YAMLError, tomllib.TOMLDecodeError
        raise SpecError(f"sweep spec {str(path)!r} cannot be parsed: {err}".splitlines()[0]) from None
    return spec_from_mapping(data, source=str(path))
