"""The web application (Starlette, Jinja2 templates with autoescaping): raters join with the round's
invite link, rate items at their own secret link, and the organiser reads results and exports at
the admin link. Nothing else is served: no route reaches the database file, and an unknown or
wrong token is a plain 404.

Model text is only ever inserted into templates as escaped text, and every response carries a
Content-Security-Policy that allows scripts from this server's /static/ only, so a response
holding <script> shows as characters and could not run even if it were not escaped.
"""

from __future__ import annotations

import os
import secrets
from typing import Optional

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from jaxlm.humaneval import export
from jaxlm.humaneval.assign import next_item, remaining
from jaxlm.humaneval.errors import HumanEvalError
from jaxlm.humaneval.report import TIE_RULES, from_rows, summarize
from jaxlm.humaneval.store import CHOICES, Store

HERE = os.path.dirname(os.path.abspath(__file__))
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                 b"form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),  # rater links carry secrets; never hand them to other sites
    (b"cache-control", b"no-store"),
]


class SecurityHeaders:
    """ASGI middleware adding SECURITY_HEADERS to every HTTP response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = dict(message, headers=list(message.get("headers", [])) + SECURITY_HEADERS)
            await send(message)

        await self.app(scope, receive, send_with_headers if scope["type"] == "http" else send)


def make_app(store: Store, per_rater: Optional[int] = None, instructions: str = "") -> Starlette:
    """The app for the round in `store`; `per_rater` caps how many items one rater is given."""
    settings = store.settings()
    invite, admin, seed = settings["invite"], settings["admin"], settings["seed"]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(os.path.join(HERE, "templates")), autoescape=True)
    templates = Jinja2Templates(env=env)

    def page(request: Request, name: str, status: int = 200, **context) -> Response:
        return templates.TemplateResponse(request, name, context, status_code=status)

    def not_found(request: Request) -> Response:
        return page(request, "message.html", 404, title="Not found",
                    message="This link is not valid. Ask the round's organiser for your link.")

    async def home(request: Request) -> Response:
        return page(request, "message.html", title="Blind comparison",
                    message="A rating round runs here. Open the link you were given to take part.")

    async def join(request: Request) -> Response:
        if not secrets.compare_digest(request.path_params["invite"], invite):
            return not_found(request)
        if request.method == "POST":
            name = str((await request.form()).get("name", "")).strip()
            if not name or len(name) > 60:
                return page(request, "join.html", 400, invite=invite, instructions=instructions,
                            error="Give a name of 1 to 60 characters.")
            rater = await run_in_threadpool(store.add_rater, name)
            return RedirectResponse(f"/r/{rater.token}", status_code=303)
        return page(request, "join.html", invite=invite, instructions=instructions)

    def rate_page(request: Request) -> Response:  # sync: Starlette runs it in a worker thread
        rater = store.rater(request.path_params["token"])
        if rater is None:
            return not_found(request)
        item = next_item(store, rater.id, seed, per_rater)
        rated = store.rated_count(rater.id)
        if item is None:
            return page(request, "done.html", rater=rater.name, rated=rated)
        view = store.item_view(rater.id, item)
        return page(request, "rate.html", rater=rater.name, token=rater.token, item=item, rated=rated,
                    left=remaining(store, rater.id, per_rater), prompt=view["prompt"], messages=view["messages"],
                    left_text=view["left"], right_text=view["right"], instructions=instructions)

    async def rate(request: Request) -> Response:
        token = request.path_params["token"]
        rater = await run_in_threadpool(store.rater, token)
        if rater is None:
            return not_found(request)
        form = await request.form()
        choice, comment = str(form.get("choice", "")), str(form.get("comment", ""))[:4000]
        try:
            item = int(str(form.get("item", "")))
            if choice == "skip":
                await run_in_threadpool(store.skip, rater.id, item)
            elif choice in CHOICES:
                await run_in_threadpool(store.add_rating, rater.id, item, choice, comment.strip())
            else:
                raise HumanEvalError(f"unknown choice {choice!r}")
        except (ValueError, HumanEvalError):
            return page(request, "message.html", 400, title="Rating not recorded",
                        message="That form was not one this server gave you. Go back to your link and rate again.")
        return RedirectResponse(f"/r/{token}", status_code=303)

    def results(request: Request) -> Response:
        if not secrets.compare_digest(request.path_params["admin"], admin):
            return not_found(request)
        ties = request.query_params.get("ties", "half")
        ties = ties if ties in TIE_RULES else "half"
        report = summarize(store.systems(), from_rows(store.ratings()), ties)
        return page(request, "results.html", report=report, counts=store.counts(), admin=admin,
                    tie_rule=TIE_RULES[ties][0].upper() + TIE_RULES[ties][1:])

    def ratings_file(request: Request) -> Response:
        if not secrets.compare_digest(request.path_params["admin"], admin):
            return not_found(request)
        fmt = request.path_params["fmt"]
        if fmt not in ("csv", "json"):
            return not_found(request)
        rows = store.ratings()
        body = export.to_csv(rows) if fmt == "csv" else export.to_json(rows)
        return Response(body, media_type="text/csv" if fmt == "csv" else "application/json",
                        headers={"content-disposition": f'attachment; filename="ratings.{fmt}"'})

    async def missing(request: Request, exc) -> Response:
        return not_found(request)

    routes = [
        Route("/", home),
        Route("/join/{invite}", join, methods=["GET", "POST"]),
        Route("/r/{token}", rate_page),
        Route("/r/{token}/rate", rate, methods=["POST"]),
        Route("/results/{admin}", results),
        Route("/results/{admin}/ratings.{fmt}", ratings_file),
        Mount("/static", StaticFiles(directory=os.path.join(HERE, "static")), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={404: missing, 405: missing})
    app.add_middleware(SecurityHeaders)
    return app
