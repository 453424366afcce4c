"""Routes for the chat page: ``/`` (the page), ``/page/*`` (its script and style) and ``/info``.

The page (``page/index.html``, ``chat.js``, ``chat.css``) is static: it reads ``/info`` for the model's
name, quantization and context length, and streams answers from ``/v1/chat/completions`` like any
OpenAI client, so what a person sees in the browser is what the API serves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PAGE_DIR = Path(__file__).with_name("page")


def add_page_routes(app: Any, info: dict[str, Any]) -> None:
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles

    async def page() -> FileResponse:
        return FileResponse(PAGE_DIR / "index.html", media_type="text/html",
                            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    async def model_info() -> JSONResponse:
        return JSONResponse(info)

    app.add_api_route("/", page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/info", model_info, methods=["GET"], summary="The served model: name, quantization, context")
    app.mount("/page", StaticFiles(directory=PAGE_DIR), name="page")
