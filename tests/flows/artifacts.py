"""Read a flow run's markdown artifact back from the Prefect API, as a user's client would."""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, TaskRunFilter
from prefect.client.schemas.sorting import ArtifactSort


async def newest_artifact_markdown(key: str) -> str:
    # Every argument explicit: this server (with fastapi 0.153) refuses the client's nulls for defaults.
    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            flow_run_filter=FlowRunFilter(),
            task_run_filter=TaskRunFilter(),
            sort=ArtifactSort.CREATED_DESC,
            limit=10,
        )
    (newest, *_) = [a for a in artifacts if a.key == key]
    return str(newest.data)
