# ruff: noqa: N802 - the RPC handlers carry the gRPC method names
"""A local Modal control plane: the RPCs of modal_proto's ModalClient that deploy, look up, list,
stop and log an app, with the lifecycles and errors Modal's client expects.

Built from the modal 1.6.4 client (what it sends and how it reads answers) and Modal's docs
(modal.com/docs: deploy, lookup, stop, logs, memory snapshots). Every RPC checks the client's token metadata
(UNAUTHENTICATED otherwise) and is recorded in `requests` for tests to assert on. RPCs outside
this set answer UNIMPLEMENTED, so a client that starts using a new one fails loudly.

Lifecycle: AppCreate (initializing) -> objects -> AppPublish (deployed: containers start for
web functions) -> AppStop (stopped: containers stop; the name becomes free). AppClientDisconnect
stops an app that is still initializing (a failed deploy), as Modal does.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets as _random
import string
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.empty_pb2 import Empty
from grpclib import GRPCError, Status
from modal_proto import api_pb2
from modal_proto.api_grpc import ModalClientBase

IMAGE_BUILDER_VERSIONS = ("2023.12", "2024.04", "2024.10", "2025.06", "2026.10")
DEFAULT_ENVIRONMENT = "main"
# GPU types Modal accepts in FunctionCreate (docs: modal.com/docs/guide/gpu), and per-type limits.
VALID_GPU_TYPES = {"T4", "L4", "A10", "A10G", "L40S", "A100", "A100-40GB", "A100-80GB", "RTX-PRO-6000",
                   "H100", "H100!", "H200", "B200", "B200+"}
MAX_GPUS = {"A10": 4, "A10G": 4}
_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    """A Modal-shaped object id: prefix + '-' + 22 base62 characters."""
    return prefix + "-" + "".join(_random.choice(_ALPHABET) for _ in range(22))


@dataclass
class AppRecord:
    app_id: str
    description: str
    environment: str
    state: int = api_pb2.APP_STATE_INITIALIZING
    name: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    deployed_at: float = 0.0
    stopped_at: float = 0.0
    version: int = 0
    function_ids: dict[str, str] = field(default_factory=dict)
    class_ids: dict[str, str] = field(default_factory=dict)
    definition_keys: dict[str, bytes] = field(default_factory=dict)


@dataclass
class FunctionRecord:
    function_id: str
    app_id: str
    tag: str
    definition: api_pb2.Function | None = None
    handle: api_pb2.FunctionHandleMetadata | None = None


@dataclass
class NamedObject:
    object_id: str
    name: str
    environment: str
    created_at: float = field(default_factory=time.time)
    env_dict: dict[str, str] = field(default_factory=dict)  # secrets only


Handler = Callable[[Any, Any], Awaitable[Any]]


def rpc(method: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, Any], Awaitable[None]]:
    """Wrap a unary handler `(self, request) -> response`: auth, fault injection, recording."""

    async def handler(self: ModalControlPlane, stream: Any) -> None:
        request = await stream.recv_message()
        name = method.__name__
        self._check_token(stream.metadata, name)
        with self.lock:
            self.requests.append((name, request))
            self.metadata.append((name, {str(k): str(v) for k, v in dict(stream.metadata or {}).items()}))
        fault = self._take_fault(name)
        if fault is not None:
            raise fault
        response = await method(self, request)
        hold, lost = self._take_after(name)
        if hold:
            await asyncio.sleep(hold)  # acted; the answer is late (or never arrives: the client died)
        if lost is not None:
            raise lost  # acted; the client sees an error instead of the answer
        await stream.send_message(response)

    handler.__name__ = method.__name__
    return handler


class ModalControlPlane(ModalClientBase):
    """The servicer. State is guarded by `lock` (tests read it from another thread)."""

    def __init__(self, *, tokens: tuple[str, str], on_publish: Callable[[AppRecord], None],
                 on_stop: Callable[[AppRecord], None], web_url: Callable[[str, str], str],
                 logs: Callable[[str], list[tuple[float, str]]], running_tasks: Callable[[str], int]) -> None:
        self.lock = threading.RLock()
        self.tokens = tokens
        self._on_publish, self._on_stop, self._web_url, self._logs = on_publish, on_stop, web_url, logs
        self._running_tasks = running_tasks
        self.requests: list[tuple[str, Any]] = []
        self.metadata: list[tuple[str, dict[str, str]]] = []  # (rpc, request metadata), for secret scans
        self.faults: dict[str, list[GRPCError]] = {}
        self.after_faults: dict[str, list[tuple[float, GRPCError | None]]] = {}  # act, then (hold, fail)
        self.environments: dict[str, str] = {DEFAULT_ENVIRONMENT: new_id("en")}
        self.apps: dict[str, AppRecord] = {}
        self.deployed: dict[tuple[str, str], str] = {}  # (environment, name) -> app id
        self.recently_stopped: dict[tuple[str, str], str] = {}
        self.functions: dict[str, FunctionRecord] = {}
        self.classes: dict[str, api_pb2.ClassCreateRequest] = {}
        self.secrets: dict[str, NamedObject] = {}  # id -> secret (named or anonymous)
        self.volumes: dict[str, NamedObject] = {}
        self.mounts: dict[str, dict[str, str]] = {}  # id -> {remote filename: sha256}
        self.named_mounts: dict[tuple[str, int], str] = {}
        self.blobs: dict[str, bytes] = {}  # sha256 -> content
        self.images: dict[str, api_pb2.Image] = {}

    # -- plumbing ------------------------------------------------------------------------

    def _check_token(self, metadata: Any, method: str) -> None:
        token = (metadata.get("x-modal-token-id"), metadata.get("x-modal-token-secret"))
        if token != self.tokens:
            raise GRPCError(Status.UNAUTHENTICATED, "Token ID or secret is invalid. Run `modal token new`.")

    def fail_next(self, method: str, status: Status, message: str, *, retry_after: float | None = None) -> None:
        """Make the next call of `method` fail with `status`/`message` (fault injection). With
        `retry_after`, the error carries Modal's RPCRetryPolicy detail, as Modal's throttling does
        (the client waits that long and retries)."""
        details = [api_pb2.RPCRetryPolicy(retry_after_secs=retry_after)] if retry_after is not None else None
        with self.lock:
            self.faults.setdefault(method, []).append(GRPCError(status, message, details))

    def answer_late(self, method: str, seconds: float = 0.0, *, status: Status | None = None,
                    message: str = "") -> None:
        """Do the work of the next call of `method`, then hold the answer `seconds`, and with
        `status` answer that error instead (the effect happened, the answer is lost)."""
        error = GRPCError(status, message) if status is not None else None
        with self.lock:
            self.after_faults.setdefault(method, []).append((seconds, error))

    def pending_faults(self) -> int:
        """Injected faults (before or after acting) not yet used up."""
        with self.lock:
            return sum(len(q) for q in self.faults.values()) + sum(len(q) for q in self.after_faults.values())

    def clear_faults(self) -> None:
        """Forget injected faults not yet used up (an outage is over)."""
        with self.lock:
            self.faults.clear()
            self.after_faults.clear()

    def _take_fault(self, method: str) -> GRPCError | None:
        with self.lock:
            queue = self.faults.get(method)
            return queue.pop(0) if queue else None

    def _take_after(self, method: str) -> tuple[float, GRPCError | None]:
        with self.lock:
            queue = self.after_faults.get(method)
            return queue.pop(0) if queue else (0.0, None)

    def _env(self, name: str | None) -> str:
        return name or DEFAULT_ENVIRONMENT

    def _app(self, app_id: str) -> AppRecord:
        app = self.apps.get(app_id)
        if app is None:
            raise GRPCError(Status.NOT_FOUND, f"App {app_id!r} not found")
        return app

    def _lifecycle(self, app: AppRecord) -> api_pb2.AppLifecycle:
        return api_pb2.AppLifecycle(app_state=app.state, created_at=app.created_at, created_by="emulator",
                                    deployed_at=app.deployed_at, deployed_by="emulator" if app.deployed_at else "",
                                    version=app.version, stopped_at=app.stopped_at,
                                    stopped_by="emulator" if app.stopped_at else "")

    # -- environments ---------------------------------------------------------------------

    @rpc
    async def EnvironmentGetOrCreate(self, request: api_pb2.EnvironmentGetOrCreateRequest) -> Any:
        name = self._env(request.deployment_name)
        with self.lock:
            if name not in self.environments:
                if request.object_creation_type != api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING:
                    raise GRPCError(Status.NOT_FOUND, f"Environment '{name}' not found")
                self.environments[name] = new_id("en")
            settings = api_pb2.EnvironmentSettings(image_builder_version=IMAGE_BUILDER_VERSIONS[-1],
                                                   webhook_suffix="modal.run")
            return api_pb2.EnvironmentGetOrCreateResponse(
                environment_id=self.environments[name],
                metadata=api_pb2.EnvironmentMetadata(name=name, settings=settings))

    # -- apps -----------------------------------------------------------------------------

    @rpc
    async def AppGetByDeploymentName(self, request: api_pb2.AppGetByDeploymentNameRequest) -> Any:
        key = (self._env(request.environment_name), request.name)
        with self.lock:
            app_id = self.deployed.get(key, "")
            previous = "" if app_id else self.recently_stopped.get(key, "")
            app = self.apps.get(app_id or previous)
            return api_pb2.AppGetByDeploymentNameResponse(
                app_id=app_id, previous_app_id=previous, environment_name=key[0],
                lifecycle=self._lifecycle(app) if app else None)

    @rpc
    async def AppCreate(self, request: api_pb2.AppCreateRequest) -> Any:
        env = self._env(request.environment_name)
        with self.lock:
            if env not in self.environments:
                raise GRPCError(Status.NOT_FOUND, f"Environment '{env}' not found")
            app = AppRecord(new_id("ap"), request.description, env, tags=dict(request.tags))
            self.apps[app.app_id] = app
        return api_pb2.AppCreateResponse(app_id=app.app_id, app_page_url=f"https://modal.com/apps/{app.app_id}",
                                         app_logs_url=f"https://modal.com/logs/{app.app_id}")

    @rpc
    async def AppGetLayout(self, request: api_pb2.AppGetLayoutRequest) -> Any:
        with self.lock:
            app = self._app(request.app_id)
            objects = [api_pb2.Object(object_id=fid, function_handle_metadata=self.functions[fid].handle)
                       for fid in app.function_ids.values() if fid in self.functions]
            objects += [api_pb2.Object(object_id=cid, class_handle_metadata=api_pb2.ClassHandleMetadata())
                        for cid in app.class_ids.values()]
            layout = api_pb2.AppLayout(objects=objects, function_ids=app.function_ids, class_ids=app.class_ids)
            return api_pb2.AppGetLayoutResponse(app_layout=layout)

    @rpc
    async def AppHeartbeat(self, request: api_pb2.AppHeartbeatRequest) -> Any:
        with self.lock:
            if self._app(request.app_id).state == api_pb2.APP_STATE_STOPPED:
                raise GRPCError(Status.FAILED_PRECONDITION, "App is stopped")
        return Empty()

    @rpc
    async def AppPublish(self, request: api_pb2.AppPublishRequest) -> Any:
        with self.lock:
            app = self._app(request.app_id)
            if app.state == api_pb2.APP_STATE_STOPPED:
                raise GRPCError(Status.FAILED_PRECONDITION, f"App {app.app_id} is stopped")
            for tag, fid in request.function_ids.items():
                if fid not in self.functions or self.functions[fid].definition is None:
                    raise GRPCError(Status.INVALID_ARGUMENT, f"Function {tag!r} ({fid}) was never created")
            keys = {tag: self.functions[fid].definition.SerializeToString(deterministic=True)
                    for tag, fid in request.function_ids.items()}
            unchanged = (app.state == api_pb2.APP_STATE_DEPLOYED and keys == app.definition_keys
                         and dict(request.class_ids) == app.class_ids)
            app.function_ids, app.class_ids = dict(request.function_ids), dict(request.class_ids)
            app.definition_keys = keys
            app.tags |= dict(request.tags)
            if request.app_state == api_pb2.APP_STATE_DEPLOYED:
                name_key = (app.environment, request.name)
                other = self.deployed.get(name_key)
                if other and other != app.app_id:
                    raise GRPCError(Status.ALREADY_EXISTS, f"App name {request.name!r} is taken by {other}")
                self.deployed[name_key] = app.app_id
                self.recently_stopped.pop(name_key, None)
                app.name, app.state = request.name, api_pb2.APP_STATE_DEPLOYED
                if not unchanged:
                    app.version += 1
                    app.deployed_at = time.time()
            else:
                app.state = request.app_state or app.state
        if request.app_state == api_pb2.APP_STATE_DEPLOYED:
            await asyncio.to_thread(self._on_publish, app)
        url = f"https://modal.com/apps/emulator/{app.environment}/deployed/{request.name}"
        return api_pb2.AppPublishResponse(url=url, deployed_at=0.0 if unchanged else app.deployed_at)

    @rpc
    async def AppClientDisconnect(self, request: api_pb2.AppClientDisconnectRequest) -> Any:
        with self.lock:
            app = self._app(request.app_id)
            if app.state == api_pb2.APP_STATE_INITIALIZING:
                app.state, app.stopped_at = api_pb2.APP_STATE_STOPPED, time.time()
        return Empty()

    @rpc
    async def AppGetOrCreate(self, request: api_pb2.AppGetOrCreateRequest) -> Any:
        env = self._env(request.environment_name)
        with self.lock:
            if request.app_name.startswith("ap-"):
                app = self._app(request.app_name)
                return api_pb2.AppGetOrCreateResponse(app_id=app.app_id)
            app_id = self.deployed.get((env, request.app_name))
            if app_id is None:
                if request.object_creation_type != api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING:
                    raise GRPCError(Status.NOT_FOUND, f"App '{request.app_name}' not found in environment '{env}'")
                app = AppRecord(new_id("ap"), request.app_name, env, state=api_pb2.APP_STATE_DEPLOYED,
                                name=request.app_name)
                self.apps[app.app_id] = app
                self.deployed[(env, request.app_name)] = app_id = app.app_id
            return api_pb2.AppGetOrCreateResponse(app_id=app_id)

    @rpc
    async def AppGetLifecycle(self, request: api_pb2.AppGetLifecycleRequest) -> Any:
        with self.lock:
            return api_pb2.AppGetLifecycleResponse(lifecycle=self._lifecycle(self._app(request.app_id)))

    @rpc
    async def AppList(self, request: api_pb2.AppListRequest) -> Any:
        env = self._env(request.environment_name)
        with self.lock:
            items = [api_pb2.AppListResponse.AppListItem(
                app_id=a.app_id, description=a.description, name=a.name, state=a.state, created_at=a.created_at,
                stopped_at=a.stopped_at, n_running_tasks=self._running_tasks(a.app_id))
                for a in self.apps.values() if a.environment == env]
        return api_pb2.AppListResponse(apps=items)

    @rpc
    async def AppStop(self, request: api_pb2.AppStopRequest) -> Any:
        with self.lock:
            app = self._app(request.app_id)
            if app.state != api_pb2.APP_STATE_STOPPED:
                app.state, app.stopped_at = api_pb2.APP_STATE_STOPPED, time.time()
                key = (app.environment, app.name)
                if self.deployed.get(key) == app.app_id:
                    del self.deployed[key]
                    self.recently_stopped[key] = app.app_id
        await asyncio.to_thread(self._on_stop, app)  # containers are gone when AppStop answers
        return Empty()

    @rpc
    async def AppFetchLogs(self, request: api_pb2.AppFetchLogsRequest) -> Any:
        with self.lock:
            self._app(request.app_id)
        since = request.since.ToNanoseconds() / 1e9 if request.HasField("since") else 0.0
        until = request.until.ToNanoseconds() / 1e9 if request.HasField("until") else float("inf")
        entries = [(ts, line) for ts, line in self._logs(request.app_id) if since <= ts <= until]
        if request.search_text:
            entries = [(ts, line) for ts, line in entries if request.search_text in line]
        if request.limit:
            entries = entries[-request.limit:]
        items = [api_pb2.TaskLogs(data=line + "\n", timestamp=ts, timestamp_ns=int(ts * 1e9),
                                  file_descriptor=api_pb2.FILE_DESCRIPTOR_STDERR) for ts, line in entries]
        return api_pb2.AppFetchLogsResponse(batches=[api_pb2.TaskLogsBatch(items=items)] if items else [])

    # -- functions and classes ------------------------------------------------------------

    @rpc
    async def FunctionPrecreate(self, request: api_pb2.FunctionPrecreateRequest) -> Any:
        with self.lock:
            self._app(request.app_id)
            fid = request.existing_function_id or new_id("fu")
            record = self.functions.get(fid) or FunctionRecord(fid, request.app_id, request.function_name)
            self.functions[fid] = record
            handle = api_pb2.FunctionHandleMetadata(
                function_name=request.function_name, function_type=request.function_type,
                function_schema=request.function_schema, app_id=request.app_id,
                method_handle_metadata={
                    name: api_pb2.FunctionHandleMetadata(function_name=m.function_name, function_type=m.function_type,
                                                         is_method=True, use_method_name=name, app_id=request.app_id)
                    for name, m in request.method_definitions.items()})
            if request.webhook_config.type:
                handle.web_url = self._web_url(request.app_id, request.function_name)
            for name, handle_ in handle.method_handle_metadata.items():
                if request.method_definitions[name].webhook_config.type:
                    handle_.web_url = self._web_url(request.app_id, name)
            return api_pb2.FunctionPrecreateResponse(function_id=fid, handle_metadata=handle)

    @rpc
    async def FunctionCreate(self, request: api_pb2.FunctionCreateRequest) -> Any:
        fn = api_pb2.Function()
        if request.function_data.ranked_functions:  # a list of GPU types: one Function per rank
            fn.CopyFrom(request.function_data.ranked_functions[0].function)
        else:
            fn.CopyFrom(request.function)
        self._validate_function(fn)
        with self.lock:
            self._app(request.app_id)
            fid = request.existing_function_id or new_id("fu")
            if fn.webhook_config.type:
                fn.web_url = self._web_url(request.app_id, fn.function_name)
            for name, method in fn.method_definitions.items():
                if method.webhook_config.type:
                    method.web_url = self._web_url(request.app_id, name)
            handle = self._handle(fid, request.app_id, fn)
            self.functions[fid] = FunctionRecord(fid, request.app_id, fn.function_name, fn, handle)
        # Modal answers with FunctionData (ranked functions), which the client parses.
        return api_pb2.FunctionCreateResponse(function_id=fid, function_data=function_data(fn), handle_metadata=handle)

    def _validate_function(self, fn: api_pb2.Function) -> None:
        """What Modal's server rejects that its client lets through."""
        gpu = fn.resources.gpu_config
        if gpu.count:
            if gpu.gpu_type.upper() not in VALID_GPU_TYPES:
                raise GRPCError(Status.INVALID_ARGUMENT, f"Unknown GPU type: {gpu.gpu_type!r}")
            most = MAX_GPUS.get(gpu.gpu_type.upper(), 8)
            if gpu.count > most:
                raise GRPCError(Status.INVALID_ARGUMENT, f"{gpu.gpu_type} supports at most {most} GPUs per container")
        if fn.checkpointing_enabled and fn.experimental_options.get("enable_gpu_snapshot") == "True" and gpu.count > 1:
            raise GRPCError(Status.INVALID_ARGUMENT, "GPU memory snapshots support a single GPU")
        if fn.timeout_secs and not 1 <= fn.timeout_secs <= 86400:
            raise GRPCError(Status.INVALID_ARGUMENT, "timeout must be between 1 and 86400 seconds")
        with self.lock:
            for sid in fn.secret_ids:
                if sid not in self.secrets:
                    raise GRPCError(Status.NOT_FOUND, f"Secret {sid} not found")
            for mount in fn.volume_mounts:
                if mount.volume_id not in self.volumes:
                    raise GRPCError(Status.NOT_FOUND, f"Volume {mount.volume_id} not found")
            for mid in fn.mount_ids:
                if mid not in self.mounts:
                    raise GRPCError(Status.NOT_FOUND, f"Mount {mid} not found")
            if fn.image_id not in self.images:
                raise GRPCError(Status.NOT_FOUND, f"Image {fn.image_id} not found")

    def _handle(self, fid: str, app_id: str, fn: api_pb2.Function) -> api_pb2.FunctionHandleMetadata:
        return api_pb2.FunctionHandleMetadata(
            function_name=fn.function_name, function_type=fn.function_type, web_url=fn.web_url,
            is_method=fn.is_method, function_schema=fn.function_schema, class_parameter_info=fn.class_parameter_info,
            definition_id="de-" + hashlib.sha256(fn.SerializeToString(deterministic=True)).hexdigest()[:22],
            app_id=app_id,
            method_handle_metadata={
                name: api_pb2.FunctionHandleMetadata(
                    function_name=m.function_name, function_type=m.function_type, web_url=m.web_url, is_method=True,
                    use_method_name=name, function_schema=m.function_schema, app_id=app_id)
                for name, m in fn.method_definitions.items()})

    @rpc
    async def ClassCreate(self, request: api_pb2.ClassCreateRequest) -> Any:
        with self.lock:
            self._app(request.app_id)
            cid = request.existing_class_id or new_id("cs")
            self.classes[cid] = request
        return api_pb2.ClassCreateResponse(class_id=cid)

    def _deployed_object(self, app_name: str, env: str, tag: str) -> tuple[AppRecord, str]:
        app_id = self.deployed.get((env, app_name))
        if app_id is None:
            raise GRPCError(Status.NOT_FOUND, f"Lookup failed for App '{app_name}' in environment '{env}'")
        app = self.apps[app_id]
        object_id = app.function_ids.get(tag) or app.class_ids.get(tag)
        if object_id is None:
            raise GRPCError(Status.NOT_FOUND, f"Lookup failed for '{tag}' in App '{app_name}'")
        return app, object_id

    @rpc
    async def FunctionGet(self, request: api_pb2.FunctionGetRequest) -> Any:
        with self.lock:
            _, fid = self._deployed_object(request.app_name, self._env(request.environment_name), request.object_tag)
            record = self.functions[fid]
            return api_pb2.FunctionGetResponse(function_id=fid, handle_metadata=record.handle,
                                               function=function_data(record.definition))

    @rpc
    async def ClassGet(self, request: api_pb2.ClassGetRequest) -> Any:
        with self.lock:
            app, cid = self._deployed_object(request.app_name, self._env(request.environment_name), request.object_tag)
            service = app.function_ids.get(f"{request.object_tag}.*")
            metadata = None
            if service and request.only_class_function:
                record = self.functions[service]
                metadata = api_pb2.ClassHandleMetadata(class_function_id=service, class_function_metadata=record.handle)
            return api_pb2.ClassGetResponse(class_id=cid, handle_metadata=metadata)

    @rpc
    async def FunctionBindParams(self, request: api_pb2.FunctionBindParamsRequest) -> Any:
        with self.lock:
            record = self.functions.get(request.function_id)
            if record is None or record.handle is None:
                raise GRPCError(Status.NOT_FOUND, f"Function {request.function_id} not found")
            # A class without parameters binds to itself.
            return api_pb2.FunctionBindParamsResponse(bound_function_id=request.function_id,
                                                      handle_metadata=record.handle)

    # -- objects the app refers to --------------------------------------------------------

    def _named(self, table: dict[str, NamedObject], name: str, env: str) -> NamedObject | None:
        return next((o for o in table.values() if o.name == name and o.environment == env), None)

    @rpc
    async def SecretGetOrCreate(self, request: api_pb2.SecretGetOrCreateRequest) -> Any:
        env, kind, name = self._env(request.environment_name), request.object_creation_type, request.deployment_name
        with self.lock:
            if kind in (api_pb2.OBJECT_CREATION_TYPE_ANONYMOUS_OWNED_BY_APP, api_pb2.OBJECT_CREATION_TYPE_EPHEMERAL):
                secret = NamedObject(new_id("st"), "", env, env_dict=dict(request.env_dict))
                self.secrets[secret.object_id] = secret
            else:
                secret = self._named(self.secrets, name, env)
                if kind == api_pb2.OBJECT_CREATION_TYPE_UNSPECIFIED and secret is None:
                    raise GRPCError(Status.NOT_FOUND, f"Secret '{name}' not found in environment '{env}'")
                if kind == api_pb2.OBJECT_CREATION_TYPE_CREATE_FAIL_IF_EXISTS and secret is not None:
                    raise GRPCError(Status.ALREADY_EXISTS, f"Secret '{name}' already exists")
                if secret is None:
                    secret = NamedObject(new_id("st"), name, env, env_dict=dict(request.env_dict))
                    self.secrets[secret.object_id] = secret
                elif kind == api_pb2.OBJECT_CREATION_TYPE_CREATE_OVERWRITE_IF_EXISTS:
                    secret.env_dict = dict(request.env_dict)
                missing = [k for k in request.required_keys if k not in secret.env_dict]
                if missing:
                    raise GRPCError(Status.NOT_FOUND, f"Secret '{name}' is missing keys: {', '.join(missing)}")
            metadata = api_pb2.SecretMetadata(name=secret.name, environment_name=env, keys=sorted(secret.env_dict),
                                              creation_info=api_pb2.CreationInfo(created_at=secret.created_at))
            return api_pb2.SecretGetOrCreateResponse(secret_id=secret.object_id, metadata=metadata)

    @rpc
    async def SecretList(self, request: api_pb2.SecretListRequest) -> Any:
        env = self._env(request.environment_name)
        with self.lock:
            page = _page([s for s in self.secrets.values() if s.name and s.environment == env], request.pagination)
            items = [api_pb2.SecretListItem(
                label=s.name, secret_id=s.object_id, created_at=s.created_at, environment_name=env,
                metadata=api_pb2.SecretMetadata(name=s.name, environment_name=env, keys=sorted(s.env_dict),
                                                creation_info=api_pb2.CreationInfo(created_at=s.created_at)))
                for s in page]
        return api_pb2.SecretListResponse(items=items, environment_name=env)

    @rpc
    async def SecretUpdate(self, request: api_pb2.SecretUpdateRequest) -> Any:
        with self.lock:
            secret = self.secrets.get(request.secret_id)
            if secret is None:
                raise GRPCError(Status.NOT_FOUND, f"Secret {request.secret_id} not found")
            for update in request.updates:
                secret.env_dict[update.key] = update.value
        return Empty()

    @rpc
    async def SecretDelete(self, request: api_pb2.SecretDeleteRequest) -> Any:
        with self.lock:
            if self.secrets.pop(request.secret_id, None) is None:
                raise GRPCError(Status.NOT_FOUND, f"Secret {request.secret_id} not found")
        return Empty()

    @rpc
    async def VolumeGetOrCreate(self, request: api_pb2.VolumeGetOrCreateRequest) -> Any:
        env, kind, name = self._env(request.environment_name), request.object_creation_type, request.deployment_name
        with self.lock:
            volume = self._named(self.volumes, name, env)
            if volume is None:
                if kind not in (api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING,
                                api_pb2.OBJECT_CREATION_TYPE_CREATE_FAIL_IF_EXISTS):
                    raise GRPCError(Status.NOT_FOUND, f"Volume '{name}' not found in environment '{env}'")
                volume = NamedObject(new_id("vo"), name, env)
                self.volumes[volume.object_id] = volume
            elif kind == api_pb2.OBJECT_CREATION_TYPE_CREATE_FAIL_IF_EXISTS:
                raise GRPCError(Status.ALREADY_EXISTS, f"Volume '{name}' already exists")
            version = request.version or api_pb2.VOLUME_FS_VERSION_V2
            metadata = api_pb2.VolumeMetadata(name=name, version=version,
                                              creation_info=api_pb2.CreationInfo(created_at=volume.created_at))
            return api_pb2.VolumeGetOrCreateResponse(volume_id=volume.object_id, version=version, metadata=metadata)

    @rpc
    async def VolumeList(self, request: api_pb2.VolumeListRequest) -> Any:
        env = self._env(request.environment_name)
        with self.lock:
            page = _page([v for v in self.volumes.values() if v.environment == env], request.pagination)
            items = [api_pb2.VolumeListItem(
                label=v.name, volume_id=v.object_id, created_at=v.created_at,
                metadata=api_pb2.VolumeMetadata(name=v.name,
                                                creation_info=api_pb2.CreationInfo(created_at=v.created_at)))
                for v in page]
        return api_pb2.VolumeListResponse(items=items, environment_name=env)

    @rpc
    async def MountBatchedCheckExistence(self, request: api_pb2.MountBatchedCheckExistenceRequest) -> Any:
        with self.lock:
            missing = [h for h in request.sha256_hex_hashes if h not in self.blobs]
        return api_pb2.MountBatchedCheckExistenceResponse(missing_sha256_hex_hashes=missing)

    @rpc
    async def MountPutFile(self, request: api_pb2.MountPutFileRequest) -> Any:
        if request.WhichOneof("data_oneof") != "data":
            return api_pb2.MountPutFileResponse(exists=False)  # blob uploads are not emulated
        if hashlib.sha256(request.data).hexdigest() != request.sha256_hex:
            raise GRPCError(Status.INVALID_ARGUMENT, "sha256_hex does not match the data")
        with self.lock:
            self.blobs[request.sha256_hex] = request.data
        return api_pb2.MountPutFileResponse(exists=True)

    @rpc
    async def MountGetOrCreate(self, request: api_pb2.MountGetOrCreateRequest) -> Any:
        with self.lock:
            named = request.deployment_name and request.namespace == api_pb2.DEPLOYMENT_NAMESPACE_GLOBAL
            key = (request.deployment_name, request.namespace)
            if named and key in self.named_mounts:
                mount_id = self.named_mounts[key]
            else:
                for file in request.files:
                    if file.sha256_hex not in self.blobs:
                        raise GRPCError(Status.FAILED_PRECONDITION, f"File {file.filename} was never uploaded")
                files = {f.filename: f.sha256_hex for f in request.files}
                # content-addressed: the same files make the same mount, so an unchanged redeploy
                # sends an unchanged function definition
                mount_id = next((m for m, known in self.mounts.items() if known == files), None) or new_id("mo")
                self.mounts[mount_id] = files
                if named:  # Modal publishes its own global mounts (client, python-build-standalone)
                    self.named_mounts[key] = mount_id
            checksum = hashlib.sha256(repr(sorted(self.mounts[mount_id].items())).encode()).hexdigest()
        return api_pb2.MountGetOrCreateResponse(
            mount_id=mount_id, handle_metadata=api_pb2.MountHandleMetadata(content_checksum_sha256_hex=checksum))

    @rpc
    async def ImageGetOrCreate(self, request: api_pb2.ImageGetOrCreateRequest) -> Any:
        if request.builder_version not in IMAGE_BUILDER_VERSIONS:
            raise GRPCError(Status.INVALID_ARGUMENT, f"Unsupported image builder version {request.builder_version!r}")
        with self.lock:
            for base in request.image.base_images:
                if base.image_id not in self.images:
                    raise GRPCError(Status.NOT_FOUND, f"Base image {base.image_id} not found")
            blob = request.image.SerializeToString(deterministic=True)
            same = (i for i, known in self.images.items() if known.SerializeToString(deterministic=True) == blob)
            image_id = next(same, None)
            if image_id is None:
                image_id = new_id("im")
                self.images[image_id] = request.image
        return api_pb2.ImageGetOrCreateResponse(
            image_id=image_id,
            result=api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS),
            metadata=api_pb2.ImageMetadata(image_builder_version=request.builder_version))

    # -- helpers for the emulator ---------------------------------------------------------

    def image_layers(self, image_id: str) -> list[api_pb2.Image]:
        """The image and its bases, base first."""
        with self.lock:
            image = self.images[image_id]
            layers: list[api_pb2.Image] = []
            for base in image.base_images:
                layers += self.image_layers(base.image_id)
            return layers + [image]

    def image_env(self, image_id: str) -> dict[str, str]:
        """ENV values from the image's dockerfile commands (`ENV K=V` / `ENV K V`), base first."""
        env: dict[str, str] = {}
        for layer in self.image_layers(image_id):
            for command in layer.dockerfile_commands:
                if command.startswith("ENV "):
                    _parse_env(command[4:], env)
        return env

    def source_files(self, mount_ids: list[str]) -> dict[str, str]:
        """Remote filename -> text, for every uploaded file of these mounts."""
        with self.lock:
            files = {}
            for mid in mount_ids:
                for name, sha in self.mounts.get(mid, {}).items():
                    if sha in self.blobs:
                        files[name] = self.blobs[sha].decode(errors="replace")
            return files


def _page(objects: list[NamedObject], pagination: api_pb2.ListPagination) -> list[NamedObject]:
    """Newest first, created before `created_before` (when set), at most `max_objects` (when set)."""
    found = sorted(objects, key=lambda o: o.created_at, reverse=True)
    if pagination.created_before:
        found = [o for o in found if o.created_at < pagination.created_before]
    return found[: pagination.max_objects] if pagination.max_objects else found


def function_data(fn: api_pb2.Function) -> api_pb2.FunctionData:
    """`fn` as FunctionData: the fields both messages share, and `fn` as the only ranked function."""
    data = api_pb2.FunctionData()
    shared = {f.name for f in api_pb2.Function.DESCRIPTOR.fields}
    for field_ in api_pb2.FunctionData.DESCRIPTOR.fields:
        name = field_.name
        if name not in shared or name == "ranked_functions":
            continue
        source, target = getattr(fn, name), getattr(data, name)
        if field_.message_type is not None and field_.message_type.GetOptions().map_entry:
            for key, value in source.items():
                if hasattr(value, "CopyFrom"):
                    target[key].CopyFrom(value)
                else:
                    target[key] = value
        elif field_.is_repeated:
            if field_.message_type is not None:
                for value in source:
                    target.add().CopyFrom(value)
            else:
                target.extend(source)
        elif field_.message_type is not None:
            if fn.HasField(name):
                target.CopyFrom(source)
        else:
            setattr(data, name, source)
    data.ranked_functions.add(rank=0).function.CopyFrom(fn)
    return data


def _parse_env(text: str, into: dict[str, str]) -> None:
    import shlex

    parts = shlex.split(text)
    if len(parts) == 2 and "=" not in parts[0]:
        into[parts[0]] = parts[1]
        return
    for part in parts:
        key, _, value = part.partition("=")
        into[key] = value


def fill_unimplemented(cls: type) -> type:
    """Every abstract RPC not implemented above answers UNIMPLEMENTED."""

    def unimplemented(name: str) -> Any:
        async def handler(self: Any, stream: Any) -> None:
            await stream.recv_message()
            with self.lock:
                self.requests.append((name, None))
            raise GRPCError(Status.UNIMPLEMENTED, f"{name} is not implemented by the local Modal emulator")

        return handler

    for name in list(getattr(cls, "__abstractmethods__", ())):
        setattr(cls, name, unimplemented(name))
    cls.__abstractmethods__ = frozenset()
    return cls


fill_unimplemented(ModalControlPlane)
