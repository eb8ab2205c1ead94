"""The listing API (``skuvid serve --role api``): what a product listing plays, on-demand renders, campaign status.

One concern per module:

* ``models`` — the HTTP request and response bodies (the OpenAPI document is generated from them);
* ``index`` — the video index: per SKU its daily and promo variants, videos and refusals (plain Python);
* ``selection`` — the deterministic A/B choice between a SKU's variants (``experiments.assignment``);
* ``ondemand`` — ``POST /v1/videos`` bodies -> ``VideoRequested`` through the same safety gate and parameters;
* ``feed`` — the Kafka consumer that builds the index from the beginning of every partition;
* ``planned`` — reads one held request back from ``video.planned`` by its offset (render on first view);
* ``progress`` — the renderers' committed offsets on the on-demand lane (queued vs rendering);
* ``service`` — the index plus its effects (first-view enqueue, rate limit, idempotent submit);
* ``errors`` — machine-readable error bodies, the body size limit, the exception handlers;
* ``app`` — the FastAPI routes; ``openapi`` — the checked-in OpenAPI document.

Nothing here imports torch: the API process loads the prompt engine (safety gate) only.
"""
