"""The service's HTTP API, one ``APIRouter`` per resource; each module's ``router(access)`` builds it for an auth
mode (:class:`~reidserve.service.dependencies.Access`).

* :mod:`.embed` -- ``POST /v1/embed``;
* :mod:`.gallery` -- ``POST /v1/gallery``, ``GET`` / ``DELETE /v1/gallery/{item_id}``;
* :mod:`.search` -- ``POST /v1/search`` (and the answer the JSON fast path gives for it);
* :mod:`.ops` -- ``GET /v1/stats``, ``/metrics``, ``/healthz``, ``/readyz``.
"""
