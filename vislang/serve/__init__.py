"""`vislang serve`: the search index over HTTP (FastAPI under uvicorn) and a one-page web UI.

    app.py       create_app: the endpoints, a thin layer over vislang.search, and their JSON errors
    worker.py    ModelWorker: the one thread that runs the model and the index; concurrent searches batched
    uploads.py   an uploaded photo -> a PIL image, within the limits (size, pixels, content sniffed)
    limits.py    Limits: what a request may ask for; ApiError: a refusal with its HTTP status
    images.py    catalog images and thumbnails, by item id only
    run.py       serve(): load the index and its model once, then run uvicorn
    static/      index.html, style.css, app.js: the page at `/`, plain files, no build step
"""
