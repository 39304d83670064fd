"""{{name}}: a shiphat plugin. `describe` says what it is; `run` runs one attempt of a step."""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.shiphat_plugin_types import (
    PluginInfo,
    StepError_InvalidConfig,
    StepInput,
    StepOutput,
)

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {"name": {"type": "string", "description": "Who to greet."}},
    "additionalProperties": False,
}


class WitWorld(wit_world.WitWorld):
    def describe(self) -> PluginInfo:
        return PluginInfo(
            name="{{name}}",
            version="0.1.0",
            description="Greets someone.",
            config_schema=json.dumps(SCHEMA),
        )

    def run(self, input: StepInput) -> StepOutput:
        try:
            config = json.loads(input.config)
        except ValueError as e:
            raise Err(StepError_InvalidConfig(str(e)))
        name = config.get("name", "world")
        host.log(host.Level.INFO, f"hello, {name}")
        return StepOutput(outputs=json.dumps({"greeted": name}), summary=f"greeted {name}")
