"""The Modal backend: one generated Modal app per deployment, deployed through the Modal SDK.

`render` produces `modal/<name>/app.py` (templates/modal_app.py.j2): the image (CUDA base, pinned
vLLM), the HF-cache and vLLM-cache Volumes, the Secrets, the GPU, autoscaling, and a web server
on vLLM's port. `apply` stores the endpoint key in the Modal Secret `dplr-<name>-key` (the only
place the key goes), writes the file (and beside it the key guard the image adds: every route
but GET /health needs the key) under DEPLOYER_HOME, imports it and deploys it in-process
with `modal.runner.deploy_app`, then looks up the web URL. The core waits for readiness.

Resources in state: `secret` (by name) and `app` (first its name as intent, then the app id).
`destroy` stops the app by name and by every recorded id, verifies Modal reports it stopped,
and deletes the Secrets it created. The cache Volumes are shared and stay.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from deployer.errors import InputError, ProviderError
from deployer.keys import existing_key, key_location
from deployer.provider import (
    NAME_PREFIX,
    REDACTED,
    Artifacts,
    Deployment,
    Endpoint,
    Owned,
    Recorder,
    Request,
    Resource,
    Secrets,
    StatusReport,
    deployment_of,
    resource_name,
)
from deployer.settings import Settings
from deployer.spec import Spec
from deployer.vllm_command import GUARD_FILE, guard_source

from . import render, sizing, validate
from . import settings as modal_settings

LOG_TAIL = 200


class Provider:
    name = "modal"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.knobs = modal_settings.load_settings()

    # -- render ---------------------------------------------------------------------------

    def render(self, spec: Spec, secrets: Secrets) -> Artifacts:
        """The app file and the control-plane calls a deploy makes. Pure; never holds a secret."""
        plan = render.plan_app(spec, has_hf_token=secrets.hf_token is not None)
        text = render.render_app(spec, plan)
        env = modal_settings.environment_name(spec.options("modal").environment)
        base = modal_settings.server_url().rstrip("/") + "/modal.client.ModalClient"
        requests = [Request("gRPC", f"{base}/SecretGetOrCreate",
                            {"deployment_name": plan.key_secret, "environment_name": env or "",
                             "env_dict": {"VLLM_API_KEY": REDACTED}})]
        if plan.creates_hf_secret:
            requests.append(Request("gRPC", f"{base}/SecretGetOrCreate",
                                    {"deployment_name": plan.hf_secret, "environment_name": env or "",
                                     "env_dict": {"HF_TOKEN": REDACTED}}))
        requests.append(Request("modal.runner.deploy_app", f"{base}/AppPublish",
                                {"name": plan.app_name, "environment_name": env or "",
                                 "file": render.file_path(spec.name)}))
        files = {render.file_path(spec.name): text, render.guard_path(spec.name): guard_source()}
        return Artifacts(files=files, requests=requests, notes=self._notes(spec, plan))

    def _notes(self, spec: Spec, plan: render.AppPlan) -> list[str]:
        if plan.snapshot:
            server, label = f"method {render.CLASS_NAME}.{render.WEB_FUNCTION}", f"{render.CLASS_NAME.lower()}-serve"
        else:
            server, label = f"function {render.WEB_FUNCTION}", render.WEB_FUNCTION
        notes = [f"Modal app {plan.app_name}: web server {server} on {plan.gpu}; "
                 f"URL https://<workspace>--{plan.app_name}-{label}.modal.run/v1",
                 f"auth: every route but GET /health requires the API key ({key_location(spec, self.settings)}), "
                 f"stored in the Modal Secret {plan.key_secret} and sent by clients as a Bearer token"]
        if plan.snapshot:
            notes.append("GPU memory snapshots (alpha): the first few cold starts load the model and take the "
                         f"snapshot; later ones restore it. Host memory {plan.memory_mib} MiB holds the weights "
                         "while vLLM sleeps.")
        elif spec.startup.fast_boot and spec.resources.count > 1:
            notes.append(f"plain mode: GPU memory snapshots need one GPU and this spec uses {spec.resources.count}")
        if plan.hf_secret is None:
            notes.append("no Hugging Face token: gated models (e.g. Llama) will not download; set "
                         f"${spec.secrets.hf_token_env} or providers.modal.hf_secret")
        notes.append(f"container startup timeout {plan.startup_timeout}s; deploy waits up to "
                     f"{self.readiness_timeout(spec):.0f}s (a first deploy builds the image)")
        return notes

    # -- apply ----------------------------------------------------------------------------

    def apply(self, spec: Spec, secrets: Secrets, current: Deployment | None, record: Recorder) -> Endpoint:
        """Store the Secrets, deploy the app (updating the deployed app of the same name in place),
        look up its web URL. Blocks until Modal has published the app; raises ProviderError."""
        from . import sdk

        plan = render.plan_app(spec, has_hf_token=secrets.hf_token is not None)
        text = render.render_app(spec, plan)
        path = self.settings.path(*render.file_path(spec.name).split("/"))
        path.write_text(text)
        path.with_name(GUARD_FILE).write_text(guard_source())  # the app adds it to the image from there
        env = modal_settings.environment_name(spec.options("modal").environment)
        module_name = f"_deployer_modal_{spec.name.replace('-', '_')}"
        with sdk.open_client() as client:
            record("secret", plan.key_secret, environment=env, holds="VLLM_API_KEY")
            sdk.upsert_secret(client, plan.key_secret, {"VLLM_API_KEY": secrets.api_key}, env)
            if plan.creates_hf_secret:
                assert secrets.hf_token is not None
                record("secret", plan.hf_secret, environment=env, holds="HF_TOKEN")
                sdk.upsert_secret(client, plan.hf_secret, {"HF_TOKEN": secrets.hf_token}, env)
            record("app", plan.app_name, environment=env, intent=True)
            app = sdk.load_app(path, module_name)
            try:
                app_id = sdk.deploy(client, app, plan.app_name, env)
            finally:
                sdk.forget_app(module_name)
            record("app", app_id, app_name=plan.app_name, environment=env, mode=plan.mode, gpu=plan.gpu)
            url = sdk.web_url(client, plan.app_name, env, cls=render.CLASS_NAME if plan.snapshot else None,
                              function=render.WEB_FUNCTION)
        return Endpoint(
            url=url.rstrip("/") + "/v1", api_key=secrets.api_key, model=spec.model.served,
            key_source=f"the deployment's API key ({key_location(spec, self.settings)}), checked by vLLM; "
                      f"Modal holds it in the Secret {plan.key_secret}",
        )

    def readiness_timeout(self, spec: Spec) -> float:
        return sizing.readiness_timeout_s(spec, validate.startup_timeout(spec))

    def probe_timeout(self) -> float:
        return self.knobs.probe_timeout

    def client_key(self, deployment: Deployment) -> str | None:
        return existing_key(deployment.spec, self.settings)

    def probe(self, deployment: Deployment) -> str | None:
        """None while the app is deployed (Modal starts containers on demand); the reason once it is stopped."""
        from . import sdk

        app = self._app_id(deployment)
        if app is None:
            return None
        with sdk.open_client() as client:
            state = sdk.app_state(client, app.id, app.extra.get("environment"))
        if state is None:
            return f"Modal no longer knows the app {app.id}"
        if state.stopped_at is not None:
            return f"the Modal app {app.id} was stopped at {state.stopped_at:%Y-%m-%d %H:%M:%S} UTC"
        return None

    def not_ready(self, deployment: Deployment, reason: str) -> str:
        """The app's last log lines. With warm containers (min_replicas > 0) that never answered, the
        app is stopped so it stops billing; otherwise it stays (idle containers scale to zero)."""
        from . import sdk

        app = self._app_id(deployment)
        if app is None:
            return ""
        env = app.extra.get("environment")
        lines: list[str] = []
        with sdk.open_client() as client:
            try:
                lines = [m for _, m in sdk.log_tail(client, app.id, env, 20)]
            except ProviderError as exc:
                lines = [f"(no logs: {exc.message})"]
            warm = deployment.spec.scaling.min_replicas if deployment.spec is not None else 0
            if warm:
                sdk.stop_app(client, app.id, env)
        tail = "\n".join(lines[-20:]) or "(no log lines yet: no container has started; GPUs may be scarce)"
        action = (f"the app kept {warm} warm container(s) that never served, so deployer stopped it "
                  f"(app {app.id})" if warm else
                  f"the app {app.id} stays deployed; idle containers scale to zero, so it bills nothing "
                  f"while unused (`deployer destroy {deployment.name}` removes it)")
        return f"last Modal log lines:\n{tail}\n{action}"

    # -- cold starts (deployer bench --cold) ----------------------------------------------

    def make_cold(self, deployment: Deployment, record: Recorder, timeout: float) -> str:
        """Wait, changing nothing, until Modal lists the deployed app with no running container
        (the scale-down window, scaling.idle_timeout, passed without requests), so the next
        request starts one. Polls every poll_interval for up to `timeout` s. Idempotent. Raises
        InputError when warm containers are configured (min_replicas, buffer_containers),
        ProviderError when the app is stopped or gone, or still runs containers at the end."""
        from . import sdk

        spec = deployment.spec
        if spec is not None and (spec.scaling.min_replicas or spec.options("modal").buffer_containers):
            raise InputError(
                f"{deployment.name} keeps warm Modal containers (scaling.min_replicas or providers.modal."
                "buffer_containers), so it never scales to zero: no request pays a cold start",
                hint=f"run `deployer bench {deployment.name}` without --cold, or deploy with both at 0")
        app = self._app_id(deployment)
        if app is None:
            raise ProviderError(self.name, f"no Modal app is recorded for {deployment.name}",
                                hint=f"`deployer deploy` it first; `deployer status {deployment.name}` shows where it is")
        env = app.extra.get("environment")
        began = time.monotonic()
        with sdk.open_client() as client:
            while True:
                state = sdk.app_state(client, app.id, env)
                if state is None or state.stopped_at is not None:
                    raise ProviderError(self.name, f"the Modal app {app.id} is {'gone' if state is None else 'stopped'}",
                                        hint=f"`deployer deploy` {deployment.name} again")
                waited = time.monotonic() - began
                if state.containers == 0:
                    return f"Modal listed app {app.id} with no running container after {waited:.1f} s"
                if waited >= timeout:
                    raise ProviderError(
                        self.name, f"the Modal app {app.id} still runs {state.containers} container(s) after "
                        f"{timeout:.0f} s", hint="its scale-down window (scaling.idle_timeout) must pass without "
                        "requests: stop other traffic to it and retry")
                time.sleep(self.knobs.poll_interval)

    # -- status / destroy -----------------------------------------------------------------

    def status(self, deployment: Deployment) -> StatusReport:
        """From Modal's view of the app: ready (deployed; containers start on demand), stopped, or gone."""
        from . import sdk

        with sdk.open_client() as client:
            app = self._resolve(client, deployment)
            if app is None:
                return StatusReport("gone", {"app": resource_name(deployment.name)})
            env = app.extra.get("environment")
            state = sdk.app_state(client, app.id, env)
        details: dict[str, Any] = {"app_id": app.id, "app": resource_name(deployment.name),
                                   "environment": env or "(default)", "mode": app.extra.get("mode"),
                                   "gpu": app.extra.get("gpu")}
        if state is None:
            return StatusReport("gone", details)
        details |= {"version": state.version, "deployed_at": state.deployed_at, "containers": state.containers}
        if state.stopped_at is not None:
            return StatusReport("stopped", details | {"stopped_at": state.stopped_at})
        if state.containers == 0:
            details["note"] = "scaled to zero: the next request starts a container (a cold start)"
        return StatusReport("ready" if state.deployed else "starting", details)

    def destroy(self, deployment: Deployment) -> None:
        """Stop the app (every recorded id, and whatever is deployed under its name), verify Modal
        reports each stopped, then delete the Secrets deployer created. Idempotent: an app or
        Secret Modal does not know counts as gone. Raises ProviderError if an app stays up."""
        from . import sdk

        name = resource_name(deployment.name)
        recorded = {r.id: r.extra.get("environment") for r in deployment.resources
                    if r.kind == "app" and r.id.startswith("ap-")}
        envs = {r.extra.get("environment") for r in deployment.resources} or {None}
        with sdk.open_client() as client:
            targets = dict(recorded)
            for env in envs:
                found = sdk.lookup_app_id(client, name, env)
                if found:
                    targets.setdefault(found, env)
            for app_id, env in targets.items():
                sdk.stop_app(client, app_id, env)
                self._wait_stopped(client, app_id, env)
            for env in envs:
                if sdk.lookup_app_id(client, name, env):
                    raise ProviderError(self.name, f"the app {name} is still deployed after stopping it",
                                        hint=f"run `modal app stop {name}` and retry")
            for secret in [r for r in deployment.resources if r.kind == "secret"]:
                sdk.delete_secret(client, secret.id, secret.extra.get("environment"))

    def _wait_stopped(self, client: Any, app_id: str, env: str | None) -> None:
        """Poll until Modal reports the app stopped (or unknown), asking again to stop it each time."""
        from . import sdk

        deadline = time.monotonic() + self.knobs.stop_timeout
        while True:
            state = sdk.app_state(client, app_id, env)
            if state is None or state.stopped_at is not None:
                return
            if time.monotonic() > deadline:
                raise ProviderError(self.name, f"the app {app_id} was not stopped after {self.knobs.stop_timeout:.0f}s",
                                    hint=f"check `modal app list`; stop it with `modal app stop {app_id}`")
            time.sleep(self.knobs.poll_interval)
            sdk.stop_app(client, app_id, env)

    def list_owned(self) -> list[Owned]:
        """Deployed apps and Secrets named dplr-..., and the cache Volumes (shared: no deployment)."""
        from . import sdk

        env = modal_settings.environment_name()
        owned: list[Owned] = []
        with sdk.open_client() as client:
            for app in sdk.deployed_apps(client, env):
                if app.name.startswith(NAME_PREFIX):
                    owned.append(Owned(self.name, "app", app.app_id, deployment_of(app.name),
                                       {"name": app.name, "containers": app.containers}))
            for secret in sdk.secret_names(client, env):
                for suffix in ("-key", "-hf"):
                    if secret.startswith(NAME_PREFIX) and secret.endswith(suffix):
                        owned.append(Owned(self.name, "secret", secret, deployment_of(secret[: -len(suffix)])))
            for volume in sdk.volume_names(client, env):
                if volume.startswith(NAME_PREFIX):
                    owned.append(Owned(self.name, "volume", volume, None, {"shared": True}))
        return owned

    def logs(self, deployment: Deployment, follow: bool = False) -> Iterator[str]:
        """The app's recent log lines; with `follow`, new ones every 2 s until interrupted."""
        from . import sdk

        last: Any = None
        with sdk.open_client() as client:
            app = self._resolve(client, deployment)
            if app is None:
                return
            env = app.extra.get("environment")
            while True:
                entries = sdk.log_tail(client, app.id, env, LOG_TAIL)
                for stamp, message in entries:
                    if last is None or stamp > last:
                        yield message
                if entries:
                    last = max(last or entries[-1][0], entries[-1][0])
                if not follow:
                    return
                time.sleep(2.0)

    def has_credentials(self) -> bool:
        return modal_settings.has_credentials()

    # -- helpers --------------------------------------------------------------------------

    def _app_id(self, deployment: Deployment) -> Resource | None:
        """The newest recorded app id (not a name-only intent)."""
        ids = [r for r in deployment.resources if r.kind == "app" and r.id.startswith("ap-")]
        return ids[-1] if ids else None

    def _resolve(self, client: Any, deployment: Deployment) -> Resource | None:
        """The recorded app id, else the app deployed under the deployment's name (a deploy that
        ended before its id was recorded), else None."""
        from . import sdk

        app = self._app_id(deployment)
        if app is not None:
            return app
        env = next((r.extra.get("environment") for r in deployment.resources if r.kind == "app"), None)
        found = sdk.lookup_app_id(client, resource_name(deployment.name), env)
        return Resource("app", found, {"environment": env}) if found else None
