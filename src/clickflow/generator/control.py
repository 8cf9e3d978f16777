"""HTTP control of running generators (port 8002): read and change rate, mode and mix."""

from __future__ import annotations

from typing import Literal

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from clickflow.generator.controls import GeneratorControls
from clickflow.generator.modes import parse_schedule
from clickflow.generator.options import Mix
from clickflow.health import health_router


class MixUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    broken_share: float | None = Field(None, ge=0, le=1)
    duplicate_share: float | None = Field(None, ge=0, le=1)


class ControlRequest(BaseModel):
    """Any subset; ``rate`` switches to the fixed mode at that rate."""

    model_config = ConfigDict(extra="forbid")
    domain: str | None = Field(None, description="which generator (default: all)")
    mode: Literal["regular", "burst", "night", "fixed"] | None = None
    rate: float | None = Field(None, gt=0, le=10_000_000, description="events/s")
    schedule: str | None = Field(None, description='e.g. "regular:60,burst:30,night:30"')
    mix: MixUpdate | None = None


def create_control_app(engines: dict[str, GeneratorControls]) -> FastAPI:
    app = FastAPI(title="clickflow generator control", version="0.1.0")
    app.include_router(health_router("generator", {}))

    @app.get("/control", summary="Current mode, rate, mix and counters of each generator")
    def get_control() -> dict:
        return {name: e.state() for name, e in engines.items()}

    @app.post("/control", summary="Change rate, mode, schedule or mix while running")
    def post_control(req: ControlRequest) -> dict:
        if req.domain is not None and req.domain not in engines:
            raise HTTPException(
                404, detail={"field": "domain", "reason": f"no generator for {req.domain!r}"}
            )
        targets = [engines[req.domain]] if req.domain else list(engines.values())
        # Validate everything before changing anything.
        schedule = None
        if req.schedule is not None:
            try:
                schedule = parse_schedule(req.schedule)
            except ValueError as e:
                raise HTTPException(422, detail={"field": "schedule", "reason": str(e)}) from None
        mixes = []
        if req.mix is not None:
            for e in targets:
                current = e.state()["mix"]
                merged = {**current, **req.mix.model_dump(exclude_none=True)}
                try:
                    mixes.append(Mix(**merged))
                except ValueError as err:
                    raise HTTPException(422, detail={"field": "mix", "reason": str(err)}) from None
        for i, e in enumerate(targets):
            if req.mode is not None:
                e.set_mode(req.mode)
            if req.rate is not None:
                e.set_rate(req.rate)
            if schedule is not None:
                e.set_schedule(schedule)
            if mixes:
                e.set_mix(mixes[i])
        return {name: e.state() for name, e in engines.items()}

    return app
