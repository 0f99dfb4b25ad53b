"""`wanrt serve`: prebuilt engines behind the OpenAI-compatible `/v1/videos` job API, on Ray Serve (the commands,
with `wanrt pack` and `wanrt verify`, are in commands/serve.py).

    limits     Limits (every bound a request is checked against) and ApiError (the OpenAI error shape)
    stacks     LoRA stacks: footprints (a LoRA's modules and ranks, a branch's), fit, a stack's key and label
    catalog    what a bundle can run; routing a LoRA stack to the engine whose branch it fits
    fit        `wanrt pack`'s check that each library LoRA fits some engine, and the footprints it records
    requests   request body -> VideoRequest / predict inputs, range-checked before anything is allocated
    bodies     JSON / multipart bodies -> fields, every name and text checked (wanrt.text) before a job exists
    job_store  JobStore: durable jobs (SQLite index + atomically written files), recovery, TTL expiry
    bundle     `wanrt pack` / `wanrt verify`: engines + LoRA library, sha256 of every file, confined paths
    worker     VideoWorker: a bundle's engines, LoRA stack swap, one job at a time (no Ray)
    scheduler  Scheduler: the bounded queue, grouping by LoRA stack, dispatch, progress, cancel, metrics
    app        the FastAPI app (auth, body caps, timeouts, routes) around a Scheduler
    front      the bounded HTTP/1.1 front before Ray's proxy (request head size, count and arrival time)
    ray_app    the Ray Serve deployments (ingress + engine replicas) and cluster start-up

The HTTP/validation/store layers import neither Ray nor torch, so they run (and are tested) in one process; Ray is
only the transport between the ingress and the engine replicas.
"""
