"""One request to the API server, and a paginated list: the client's `call_api` with a deadline, every error
mapped to the kube module's exception tree, every request told to the metrics (`RequestObserver`)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from triptych_operator.kube.errors import BODY_LIMIT, Unavailable, status_error
from triptych_operator.kube.paths import operation_of, resource_of

REQUEST_TIMEOUT = (5.0, 30.0)  # (connect, read) seconds: no request may hang a reconcile forever

# Told of every request: (operation, resource, seconds). main hands the operator's metrics in.
RequestObserver = Callable[[str, str, float], None]


def selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


class Listing(list[dict[str, Any]]):
    """The items of a list request, with the snapshot's resourceVersion (what a cache fed by watches needs
    to tell an object created after the listing from one deleted before it)."""

    resource_version: str = ""


class ApiTransport:
    """Requests over one API client; thread-safe (urllib3's pool is)."""

    def __init__(self, api_client: client.ApiClient, *, observe: RequestObserver | None = None) -> None:
        self._api = api_client
        self._observe = observe

    def close(self) -> None:
        self._api.close()  # type: ignore[no-untyped-call]

    def _request(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = "application/json",
        what: str,
        operation: str = "",
    ) -> Any:
        started = time.perf_counter()
        try:
            return self._send(method, path, query=query, body=body, content_type=content_type, what=what)
        finally:
            if self._observe is not None:
                self._observe(
                    operation or operation_of(method, content_type),
                    resource_of(path),
                    time.perf_counter() - started,
                )

    def _send(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]],
        body: Any,
        content_type: str,
        what: str,
    ) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        _, url, headers, body, _ = self._api.param_serialize(
            method=method,
            resource_path=path,
            query_params=list(query),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self._api.call_api(
                method, url, header_params=headers, body=body, _request_timeout=REQUEST_TIMEOUT
            )
            data = response.read()  # type: ignore[no-untyped-call]
        except ApiException as exc:
            raise status_error(
                int(exc.status or 0),
                str(exc.reason or ""),
                str(exc.body or ""),
                what,
                dict(exc.headers or {}),
            ) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Unavailable(f"{what}: {type(exc).__name__}: {str(exc)[:BODY_LIMIT]}") from exc
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data or "")
        if not 200 <= response.status <= 299:
            raise status_error(response.status, str(response.reason), text, what, dict(response.headers))
        return json.loads(text) if text else None

    def _list(self, path: str, selector: str, what: str) -> Listing:
        items = Listing()
        token = ""
        while True:  # paginated so a large namespace does not make one huge response
            query = [("labelSelector", selector), ("limit", "500")]
            if token:
                query.append(("continue", token))
            page = self._request("GET", path, query=query, what=what, operation="list")
            items.extend(page.get("items") or [])
            meta = page.get("metadata") or {}
            if not token:  # the first page's: later pages continue the same snapshot
                items.resource_version = str(meta.get("resourceVersion") or "")
            token = meta.get("continue") or ""
            if not token:
                return items


__all__ = ["REQUEST_TIMEOUT", "ApiTransport", "Listing", "RequestObserver", "selector"]
