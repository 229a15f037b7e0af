"""The deployments in prefect.yaml, served from one process: `w2v serve` reads the same file `prefect deploy`
does, so a single-machine user and a work-pool user run the same deployments with the same parameters.

Only what serving needs is read: name, entrypoint, description, tags, parameters, schedules (cron and
timezone) and concurrency_limit. `{{ $VAR }}` is replaced from the environment, else from `defaults`.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prefect import Flow, serve
from prefect.client.orchestration import get_client
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron, Schedule

from flows.tasks import TRAINING_TAG
from w2v.errors import W2VError
from w2v.storage import refuse_credentials

PROJECT_DIR = Path(__file__).resolve().parents[1]
PREFECT_YAML = PROJECT_DIR / "prefect.yaml"
_TEMPLATE = re.compile(r"\{\{\s*\$([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


@dataclass(frozen=True)
class CronSchedule:
    cron: str
    timezone: str = "UTC"


@dataclass(frozen=True)
class DeploymentSpec:
    name: str
    entrypoint: str  # flows/pretrain.py:pretrain_flow
    description: str = ""
    tags: tuple[str, ...] = ()
    parameters: Mapping[str, Any] = field(default_factory=dict)
    schedules: tuple[CronSchedule, ...] = ()
    concurrency_limit: int | None = None


def default_variables(environment: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables prefect.yaml uses: the environment's, else these defaults."""
    environment = os.environ if environment is None else environment
    data = environment.get("W2V_DATA") or str(Path("w2v-data").resolve())
    defaults = {
        "W2V_DATA": data,
        "W2V_TIMEZONE": "UTC",
        "W2V_UPLOAD_TO": f"{data}/bucket/nightly",
        "W2V_PROJECT_DIR": str(PROJECT_DIR),
    }
    return {**defaults, **environment}


def render(value: Any, variables: Mapping[str, str]) -> Any:
    """`{{ $NAME }}` in every string of a YAML value replaced by variables[NAME]."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in variables:
                raise W2VError(f"prefect.yaml: {{{{ ${name} }}}} is not set; export {name}")
            return variables[name]

        return _TEMPLATE.sub(substitute, value)
    if isinstance(value, list):
        return [render(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: render(v, variables) for k, v in value.items()}
    return value


def read_specs(path: Path = PREFECT_YAML, variables: Mapping[str, str] | None = None) -> list[DeploymentSpec]:
    """The deployments of a prefect.yaml, templates filled from `variables` (default: environment over defaults)."""
    variables = default_variables() if variables is None else variables
    try:
        document = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise W2VError(f"{path}: cannot read the deployments ({error})") from error
    specs = []
    for raw in document.get("deployments") or []:
        entry = render(raw, variables)
        try:
            schedules = tuple(
                CronSchedule(str(s["cron"]), str(s.get("timezone") or "UTC")) for s in entry.get("schedules") or []
            )
            specs.append(
                DeploymentSpec(
                    name=str(entry["name"]),
                    entrypoint=str(entry["entrypoint"]),
                    description=str(entry.get("description") or ""),
                    tags=tuple(entry.get("tags") or ()),
                    parameters=dict(entry.get("parameters") or {}),
                    schedules=schedules,
                    concurrency_limit=entry.get("concurrency_limit"),
                )
            )
        except (KeyError, TypeError) as error:
            raise W2VError(f"{path}: deployment {raw.get('name', '?')!r} is missing {error}") from error
        options = specs[-1].parameters.get("storage_options")
        refuse_credentials(options if isinstance(options, Mapping) else None, f"{path}: {specs[-1].name}")
    return specs


def load_flow(entrypoint: str) -> Flow[Any, Any]:
    """flows/pretrain.py:pretrain_flow → the flow object, imported as a module (works from any folder)."""
    path, _, name = entrypoint.partition(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    found = getattr(module, name, None)
    if not isinstance(found, Flow):
        raise W2VError(f"prefect.yaml: {entrypoint} is not a flow")
    return found


def runner_deployment(spec: DeploymentSpec) -> RunnerDeployment:
    schedules: list[Schedule] = [Cron(s.cron, timezone=s.timezone) for s in spec.schedules]
    deployment = load_flow(spec.entrypoint).to_deployment(
        name=spec.name,
        description=spec.description or None,
        tags=list(spec.tags),
        parameters=dict(spec.parameters),
        schedules=schedules or None,
        concurrency_limit=spec.concurrency_limit,
    )
    assert isinstance(deployment, RunnerDeployment)  # called from synchronous code
    return deployment


def limit_trainings(tag: str = TRAINING_TAG, limit: int = 1) -> None:
    """A task concurrency limit on the training tag: one training at a time on this Prefect server's machine."""
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=tag, concurrency_limit=limit)


def serve_deployments(specs: list[DeploymentSpec], limit: int | None = None) -> None:
    """Register every deployment with the Prefect API and run their flow runs from this process until stopped."""
    limit_trainings()
    serve(*[runner_deployment(spec) for spec in specs], limit=limit)
