"""notify: posts a JSON message about the run to a webhook.

A shiphat plugin in Python, built with componentize-py (see README.md). It sends one POST
through `wasi:http/outgoing-handler` to a host the step's `allow.http` grants, with a bearer
token read from a secret the step's `allow.secrets` grants. Nothing else is reachable.
"""

import json
from urllib.parse import urlsplit

import wit_world
from componentize_py_types import Err
from wit_world.imports import host, outgoing_handler
from wit_world.imports.shiphat_plugin_types import (
    Failure,
    PluginInfo,
    StepError_Failed,
    StepError_InvalidConfig,
    StepError_Transient,
    StepInput,
    StepOutput,
)
from wit_world.imports.wasi_http_types import (
    ErrorCode_HttpRequestDenied,
    Fields,
    Method_Post,
    OutgoingBody,
    OutgoingRequest,
    Scheme_Http,
    Scheme_Https,
)
from wit_world.imports.streams import StreamError_Closed

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "url": {"type": "string", "x-shiphat-grant": "http", "description": "The webhook, http:// or https://."},
        "release": {"type": "string", "description": "The release the run is about."},
        "status": {
            "type": "string",
            "description": "The status of the run so far, e.g. `${{ steps.deploy.status }}`.",
        },
        "steps": {
            "type": "object",
            "description": "Statuses of earlier steps by id, e.g. `{deploy: '${{ steps.deploy.status }}'}`.",
        },
        "token_secret": {
            "type": "string",
            "description": "The secret holding the bearer token sent as `authorization`.",
        },
        "message": {"type": "string", "description": "A line for people, sent as `text`."},
    },
    "required": ["url"],
    "additionalProperties": False,
}


def log(level, message):
    host.log(level, message)


class WitWorld(wit_world.WitWorld):
    def describe(self) -> PluginInfo:
        return PluginInfo(
            name="notify",
            version="0.1.0",
            description="Posts a JSON message about the run to a webhook.",
            config_schema=json.dumps(SCHEMA),
        )

    def run(self, input: StepInput) -> StepOutput:
        config = json.loads(input.config)
        ctx = input.context
        url = config["url"]
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise Err(StepError_InvalidConfig(f"`url` must be http(s)://host/path, not `{url}`"))
        message = {
            "workflow": ctx.workflow,
            "run_id": ctx.run_id,
            "release": config.get("release"),
            "status": config.get("status"),
            "steps": config.get("steps", {}),
            "text": config.get("message")
            or f"{ctx.workflow}: release {config.get('release')} {config.get('status', 'done')}",
        }
        body = json.dumps(message).encode()
        headers = [("content-type", b"application/json"), ("content-length", str(len(body)).encode())]
        name = config.get("token_secret")
        if name:
            token = host.secret(name)
            if token is None:
                raise Err(
                    StepError_InvalidConfig(
                        f"secret `{name}` is not granted or has no value; add it to the step's `allow.secrets`"
                    )
                )
            headers.append(("authorization", f"Bearer {token}".encode()))
        if ctx.dry_run:
            log(host.Level.INFO, f"dry run: would post {len(body)} bytes to {parts.netloc}")
            return StepOutput(outputs=json.dumps({"sent": False}), summary="dry run: not sent")
        status = post(parts, headers, body)
        outputs = json.dumps({"sent": 200 <= status < 300, "http_status": status})
        if status >= 500:
            raise Err(StepError_Transient(f"webhook {parts.netloc} answered {status}"))
        if status >= 300:
            raise Err(StepError_Failed(Failure(f"webhook {parts.netloc} answered {status}", outputs)))
        log(host.Level.INFO, f"posted to {parts.netloc}: {status}")
        return StepOutput(outputs=outputs, summary=f"notified {parts.netloc} ({status})")


def post(parts, headers, body: bytes) -> int:
    """Sends one POST and returns the status: the blocking form of the WASI HTTP dance."""
    request = OutgoingRequest(Fields.from_list(headers))
    request.set_method(Method_Post())
    request.set_scheme(Scheme_Https() if parts.scheme == "https" else Scheme_Http())
    request.set_authority(parts.netloc)
    path = parts.path or "/"
    request.set_path_with_query(path + (f"?{parts.query}" if parts.query else ""))
    # The body is written and finished before the request is sent: the message is small
    # enough for the host's buffer, and a refused request then fails in one place (the
    # response future) instead of in the middle of a write to a closed stream.
    outgoing = request.body()
    stream = outgoing.write()
    for i in range(0, len(body), 4096):
        stream.blocking_write_and_flush(body[i : i + 4096])
    stream.__exit__(None, None, None)
    OutgoingBody.finish(outgoing, None)
    try:
        future = outgoing_handler.handle(request, None)
    except Err as e:
        raise Err(http_error(parts.netloc, e.value))
    while True:
        result = future.get()
        if result is not None:
            break
        future.subscribe().block()
    response = result.value  # Ok(Ok(resp)) / Ok(Err(code)): the outer result is "taken twice"
    if isinstance(response, Err):
        raise Err(http_error(parts.netloc, response.value))
    response = response.value
    status = response.status()
    # Drain the body so the connection closes cleanly.
    incoming = response.consume()
    reader = incoming.stream()
    while True:
        try:
            reader.blocking_read(65536)
        except Err as e:
            if isinstance(e.value, StreamError_Closed):
                break
            raise
    return status


def http_error(host_name, code):
    if isinstance(code, ErrorCode_HttpRequestDenied):
        return StepError_Failed(
            Failure(
                f"HTTP-request-denied: `{host_name}` is not granted; add it to the step's `allow.http`",
                "",
            )
        )
    return StepError_Transient(f"request to `{host_name}` failed: {type(code).__name__}")
