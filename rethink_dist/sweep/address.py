"""Whether Ray can use a cluster address, found out in a few seconds and before a sweep writes anything.

``ray.init(address=...)`` retries an address for minutes, prints Ray's warnings while it does, and
ends in a traceback; a sweep would have written its plan and opened its MLflow experiment by then.
:func:`probe_ray_address` asks the address the way Ray's own client would, each step with a short
timeout, and turns every refusal into one line:

1. the address parses as Ray parses it (``HOST:PORT``, the port a number);
2. something listens there (a TCP connection);
3. it answers as a Ray cluster's GCS: one call of the GCS's key-value service (the cluster's
   metadata), over the channel Ray's client opens (its TLS setting and its token, when
   ``RAY_AUTH_MODE=token``), so a token that is missing or wrong is refused here;
4. the cluster runs this machine's Ray and Python versions (Ray refuses a driver of another).

A ``ray://`` address (Ray Client) gets steps 1 and 2.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys

from rethink_dist.errors import SweepError

# How long each step waits for the cluster to answer (seconds).
TIMEOUT_ENV, TIMEOUT_DEFAULT = "RETHINK_RAY_TIMEOUT", 3.0
TOKEN_HELP = ("RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token; `ray get-auth-token` on the head "
              "prints it")
GCS_HELP = "give the head's GCS address: HOST:PORT, the port of its `ray start --head --port` (6379 by default)"


def explicit_address(ray_address: str | None) -> tuple[str, str] | None:
    """(address, where it came from) when the sweep is to join a given cluster: ``--ray-address``, else
    ``$RAY_ADDRESS``; None for a local Ray and for ``auto`` (the cluster this node belongs to)."""
    for address, source in ((ray_address, "--ray-address"), (os.environ.get("RAY_ADDRESS"), "RAY_ADDRESS")):
        if address:
            return (address, source) if address not in ("auto", "local") else None
    return None


def _timeout() -> float:
    try:
        value = float(os.environ.get(TIMEOUT_ENV, TIMEOUT_DEFAULT))
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value > 0):
        raise SweepError(f"${TIMEOUT_ENV} must be a number of seconds > 0, got {os.environ[TIMEOUT_ENV]!r}")
    return value


def _host_port(address: str, shown: str) -> tuple[str, int]:
    """``address`` (HOST:PORT) as ray.init parses it."""
    from ray._common.network_utils import parse_address

    parsed = parse_address(address)
    if parsed is None or not parsed[0]:
        raise SweepError(f"{shown} is not a Ray address: expected HOST:PORT (the head's GCS port: "
                         "its `ray start --head --port`, 6379 by default), ray://HOST:PORT, 'auto' (this node's "
                         "cluster) or 'local'")
    host, port = parsed
    if not (port.isdigit() and 0 < int(port) < 65536):
        raise SweepError(f"{shown} is not a Ray address: its port {port!r} is not a number from 1 to 65535")
    return host, int(port)


def _listens(host: str, port: int, shown: str, timeout: float) -> None:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except socket.gaierror as e:
        raise SweepError(f"{shown}: the host {host!r} is not known ({e.strerror or e}); fix the address") from None
    except TimeoutError:
        raise SweepError(f"nothing answers at {shown} within {timeout:g} s: start the cluster or fix the "
                         f"address (${TIMEOUT_ENV} sets the wait)") from None
    except OSError as e:
        raise SweepError(f"nothing answers at {shown} ({e.strerror or e}): start the cluster "
                         "(ray start --head) or fix the address") from None


def _token_sent(shown: str) -> bool:
    """Whether Ray's client sends a token (``RAY_AUTH_MODE=token``); refuses that mode without one."""
    from ray._private.authentication.authentication_utils import is_token_auth_enabled
    from ray._raylet import AuthenticationTokenLoader
    from ray.exceptions import AuthenticationError

    if not is_token_auth_enabled():
        return False
    try:
        found = AuthenticationTokenLoader.instance().has_token()
    except AuthenticationError as e:  # none found, or RAY_AUTH_TOKEN_PATH names no file
        found, why = False, str(e).split(". ")[0]
        if "couldn't find" in why:
            why = "none found"
    else:
        why = "none found"
    if not found:
        raise SweepError(f"RAY_AUTH_MODE=token, but the token for the cluster at {shown} is missing "
                         f"({why}): set {TOKEN_HELP}")
    return True


def _cluster_metadata(address: str, shown: str, timeout: float) -> dict | None:
    """The cluster's metadata (its Ray and Python versions) from its GCS, or None when it has none."""
    import grpc

    from ray._common.usage.usage_constants import CLUSTER_METADATA_KEY
    from ray._private.grpc_utils import init_grpc_channel
    from ray._private.ray_constants import KV_NAMESPACE_CLUSTER
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    token = _token_sent(shown)
    channel = init_grpc_channel(address)  # Ray's client channel: TLS by RAY_USE_TLS, the token when in token mode
    try:
        reply = gcs_service_pb2_grpc.InternalKVGcsServiceStub(channel).InternalKVGet(
            gcs_service_pb2.InternalKVGetRequest(key=CLUSTER_METADATA_KEY, namespace=KV_NAMESPACE_CLUSTER),
            timeout=timeout)
    except grpc.RpcError as e:
        code, details = e.code(), (e.details() or "").strip().splitlines()
        if code == grpc.StatusCode.UNAUTHENTICATED:
            if token:
                raise SweepError(f"the cluster at {shown} refused the token (RAY_AUTH_MODE=token): set "
                                 f"the cluster's token ({TOKEN_HELP})") from None
            raise SweepError(f"the cluster at {shown} wants a token: set RAY_AUTH_MODE=token and the "
                             f"cluster's token ({TOKEN_HELP})") from None
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            why = f"no answer within {timeout:g} s; ${TIMEOUT_ENV} sets the wait"
        elif code == grpc.StatusCode.UNIMPLEMENTED:
            why = "it has no GCS service"
        elif "HTTP/2" in (details[0] if details else ""):
            why = "it does not speak gRPC"
        else:
            why = f"{code.name.lower()}: {details[0]}" if details else code.name.lower()
        raise SweepError(f"{shown} does not answer as a Ray cluster ({why}): {GCS_HELP}") from None
    finally:
        channel.close()
    if reply.status.code != 0 or not reply.value:  # a cluster that never wrote it: Ray checks nothing either
        return None
    try:
        return json.loads(reply.value.decode())
    except ValueError:
        return None


def _check_versions(metadata: dict, shown: str) -> None:
    """Ray's own rule (``check_version_info``): the same Ray, and Python to the patch level unless
    ``RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL=minor``."""
    import ray

    ray_version, python_version = metadata.get("ray_version"), metadata.get("python_version")
    if not (isinstance(ray_version, str) and isinstance(python_version, str)):
        return
    mine = ".".join(map(str, sys.version_info[:3]))
    parts = 2 if os.environ.get("RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL") == "minor" else 3
    if ray_version != ray.__version__ or python_version.split(".")[:parts] != mine.split(".")[:parts]:
        raise SweepError(f"the cluster at {shown} runs Ray {ray_version} on Python {python_version}, this "
                         f"machine Ray {ray.__version__} on Python {mine}: Ray joins only a cluster of its own "
                         "versions; install those, or run the sweep on the head (ray submit, ray job submit)")


def probe_ray_address(address: str, source: str = "--ray-address") -> None:
    """Raise :class:`SweepError` (one line naming ``address``, why, and what to do) unless Ray can
    join the cluster at ``address``; ``source`` names where the address came from. Takes at most a
    few seconds (``$RETHINK_RAY_TIMEOUT`` per step)."""
    timeout = _timeout()
    shown = f"RAY_ADDRESS={address}" if source == "RAY_ADDRESS" else f"{source} {address}"
    scheme, client, host_port = address.rpartition("://")
    if client and scheme != "ray":  # another client's scheme: Ray's own plugins know it
        return
    host, port = _host_port(host_port, shown)
    _listens(host, port, shown, timeout)
    if not client:
        metadata = _cluster_metadata(address, shown, timeout)
        if metadata:
            _check_versions(metadata, shown)
