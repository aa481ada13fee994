"""`lmforge ui`: a dashboard over a runs folder, server-rendered HTML plus one small script.

Pages: the runs list (status and key figures), a run (live curves pushed as server-sent events while
it trains, stop and resume, its report, a chat or completion playground for LM runs and a text box
for classifiers) and a launch form. The playgrounds call the same OpenAI-compatible API as
`lmforge serve`, mounted here under /v1 over every trained run in the folder. Nothing is loaded
from the network: the script and style sheet ship in lmforge/serve/static.
"""

from __future__ import annotations

import asyncio
import html
import json
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, StreamingResponse

from lmforge.errors import LmforgeError
from lmforge.report.runinfo import key_figures, metrics_files, run_kind, run_status
from lmforge.serve.api import install_error_handlers, router
from lmforge.serve.jobs import Jobs, LaunchForm
from lmforge.serve.models import ApiError, Registry
from lmforge.trainer.metrics import read_metrics

STATIC = Path(__file__).parent / "static"
POLL_S = 0.4  # how often a run's metrics files are checked for new records


def _e(v) -> str:
    return html.escape(str(v), quote=True)


def _num(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{_e(title)} - lmforge</title>"
        "<link rel='stylesheet' href='/static/style.css'></head><body>"
        "<header><a class='brand' href='/'>lmforge</a><nav><a href='/'>runs</a><a href='/launch'>launch a run</a>"
        f"</nav></header><main>{body}</main><script src='/static/app.js'></script></body></html>")


class Dashboard:
    def __init__(self, runs_dir: Path, presets_dir: Path | None = None):
        self.runs_dir = Path(runs_dir)
        self.presets_dir = Path(presets_dir) if presets_dir else None
        self.jobs = Jobs(self.runs_dir)

    # --- what the pages show -------------------------------------------------------------------

    def runs(self) -> list[dict]:
        names = set(self.jobs.jobs)
        if self.runs_dir.is_dir():
            names |= {p.name for p in self.runs_dir.iterdir()
                      if p.is_dir() and not p.is_symlink() and run_kind(p) is not None}
        rows = [self.describe(n) for n in names]
        return sorted(rows, key=lambda r: -r["updated"])

    def describe(self, name: str) -> dict:
        run = self.runs_dir / name
        kind = run_kind(run)
        job = self.jobs.jobs.get(name)
        status = run_status(run) if kind else "starting"
        if job is not None:
            state = job.state()
            if state == "running":
                status = "training" if kind else "starting"
            elif state != "finished":
                status = state  # stopped, or failed (exit N)
            elif not kind:
                status = "failed (no run folder)"
        files = [run / "config.yaml", *metrics_files(run)] if kind else []
        updated = max((f.stat().st_mtime for f in files if f.exists()), default=job.started if job else 0.0)
        figures = key_figures(run) if kind else {"kind": None}
        return {"name": name, "kind": kind or "-", "status": status, "updated": updated, "figures": figures,
                "chat": kind == "lm" and _has_chat(run), "job": job is not None}

    def presets(self) -> list[Path]:
        if self.presets_dir is None or not self.presets_dir.is_dir():
            return []
        return sorted(self.presets_dir.rglob("*.yaml"))

    def run_or_404(self, name: str) -> Path:
        run = self.runs_dir / name
        if "/" in name or name.startswith(".") or (run_kind(run) is None and name not in self.jobs.jobs):
            raise ApiError(404, f"no run named {name!r} in {self.runs_dir}", code="run_not_found")
        return run


def _has_chat(run: Path) -> bool:
    try:
        meta = json.loads((run / "data" / "tokenizer.json").read_text(encoding="utf-8")).get("lmforge", {})
    except (OSError, ValueError):
        return False
    return bool(meta.get("chat_template"))


# --- pages ---------------------------------------------------------------------------------------


def runs_page(d: Dashboard) -> str:
    rows = []
    for r in d.runs():
        f = r["figures"]
        if f.get("kind") == "classify":
            figs = f"accuracy {_num(f.get('accuracy'))} ({f.get('split')}), macro F1 {_num(f.get('macro_f1'))}"
        elif f.get("kind") == "lm":
            figs = (f"step {_num(f.get('steps'))}, val loss {_num(f.get('val_loss'))}, bpb {_num(f.get('val_bpb'))}, "
                    f"{_num(f.get('tokens_per_s'))} tok/s")
        else:
            figs = "-"
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["updated"])) if r["updated"] else "-"
        rows.append(f"<tr data-run='{_e(r['name'])}'><td><a href='/runs/{_e(r['name'])}'>{_e(r['name'])}</a></td>"
                    f"<td>{_e(r['kind'])}{' (chat)' if r['chat'] else ''}</td>"
                    f"<td><span class='status {_e(r['status'].split()[0])}'>{_e(r['status'])}</span></td>"
                    f"<td>{_e(figs)}</td><td>{_e(f.get('wall_s') and _num(f.get('wall_s'), 1))}</td><td>{when}</td></tr>")
    table = ("<table id='runs'><tr><th>run</th><th>task</th><th>status</th><th>key figures</th><th>wall s</th>"
             "<th>updated</th></tr>" + "".join(rows) + "</table>") if rows else \
        f"<p id='runs'>No runs in {_e(d.runs_dir)} yet. <a href='/launch'>Launch one</a>.</p>"
    return f"<h1>Runs <small>in {_e(d.runs_dir)}</small></h1>{table}"


def run_page(d: Dashboard, name: str) -> str:
    r = d.describe(name)
    run = d.runs_dir / name
    f = r["figures"]
    job = d.jobs.jobs.get(name)
    controls = []
    if job is not None and job.state() == "running":
        controls.append(f"<form method='post' action='/runs/{_e(name)}/stop'><button id='stop'>Stop</button></form>")
    elif r["kind"] != "-" and (r["status"] == "stopped" or r["status"].startswith("failed")):
        controls.append(f"<form method='post' action='/runs/{_e(name)}/resume'><button id='resume'>Resume</button></form>")
    if (run / "report.html").is_file() or r["status"] == "finished":
        controls.append(f"<a class='button' id='report' href='/runs/{_e(name)}/report'>Report</a>")
    facts = "".join(f"<tr><th>{_e(k.replace('_', ' '))}</th><td>{_e(_num(v))}</td></tr>"
                    for k, v in f.items() if k != "kind" and v not in (None, ""))
    playground = _playground(name, r)
    log = f"<h2>Output</h2><pre id='log'>{_e(job.tail())}</pre>" if job else ""
    return (f"<h1>{_e(name)} <span id='status' class='status {_e(r['status'].split()[0])}'>{_e(r['status'])}</span>"
            f"</h1><div class='controls'>{''.join(controls)}</div>"
            f"<div class='grid'><section><h2>Loss</h2><div id='chart' data-run='{_e(name)}' data-points='0'></div>"
            f"<p class='muted' id='last'></p></section><section><h2>Key figures</h2><table id='facts'>{facts}</table>"
            f"</section></div>{playground}{log}")


def _playground(name: str, r: dict) -> str:
    if r["kind"] == "classify" and r["status"] == "finished":
        return (f"<section><h2>Classify</h2><form id='classify' data-model='{_e(name)}'><textarea name='text' "
                "rows='3' placeholder='a text to classify'></textarea><button>Classify</button></form>"
                "<div id='classification'></div></section>")
    if r["kind"] == "lm" and r["status"] in ("finished", "stopped"):
        mode = "chat" if r["chat"] else "complete"
        hint = "Say something to the model" if r["chat"] else "Text for the model to continue"
        return (f"<section><h2>{'Chat' if r['chat'] else 'Complete'}</h2><div id='conversation'></div>"
                f"<form id='playground' data-model='{_e(name)}' data-mode='{mode}'>"
                f"<textarea name='text' rows='2' placeholder='{hint}'></textarea>"
                "<label>temperature <input name='temperature' type='number' step='0.1' min='0' max='2' value='0.8'>"
                "</label><label>max tokens <input name='max_tokens' type='number' min='1' max='2048' value='120'>"
                "</label><button>Send</button></form></section>")
    return ""


def launch_page(d: Dashboard, error: str = "", form: LaunchForm | None = None) -> str:
    form = form or LaunchForm(name=time.strftime("%Y%m%d-%H%M%S"), task="lm", time="2m")
    presets = "".join(f"<option value='{_e(p)}'{' selected' if str(p) == form.mode else ''}>"
                      f"preset {_e(p.relative_to(d.presets_dir))}</option>" for p in d.presets())
    err = f"<p class='error' id='form-error'>{_e(error)}</p>" if error else ""
    sel = {t: " selected" if form.task == t else "" for t in ("lm", "classify")}
    return (f"<h1>Launch a run</h1>{err}<form method='post' action='/launch' id='launch' class='stack'>"
            f"<label>run name <input name='name' value='{_e(form.name)}' required></label>"
            f"<label>task <select name='task'><option value='lm'{sel['lm']}>language model</option>"
            f"<option value='classify'{sel['classify']}>text classifier</option></select></label>"
            f"<label>data path <input name='data' value='{_e(form.data)}' placeholder="
            "'file, folder or glob; empty: the embedded Shakespeare plays (language model)'></label>"
            f"<label>time budget <input name='time' value='{_e(form.time)}' placeholder='e.g. 90s, 5m'></label>"
            f"<label>settings <select name='mode'><option value='auto'>auto (plan for the time budget)</option>"
            f"{presets}</select></label><button id='start'>Start</button></form>"
            f"<p class='muted'>Runs are written to {_e(d.runs_dir)}/NAME.</p>")


# --- live metrics ----------------------------------------------------------------------------------


async def metric_events(d: Dashboard, name: str, request: Request):
    """SSE: 'metrics' events with each file's new records, 'status' events when the status changes."""
    run = d.runs_dir / name
    sent: dict[Path, int] = {}
    last_status = None
    while True:
        out = []
        for f in metrics_files(run):
            records = read_metrics(f)
            if len(records) < sent.get(f, 0):
                sent[f] = 0  # truncated by a resume: send the file again
            if len(records) > sent.get(f, 0):
                label = "train" if f.parent == run else f.parent.name
                out.append(f"event: metrics\ndata: {json.dumps({'series': label, 'records': records[sent.get(f, 0):], 'reset': sent.get(f, 0) == 0})}\n\n")
                sent[f] = len(records)
        status = d.describe(name)["status"]
        if status != last_status:
            out.append(f"event: status\ndata: {json.dumps({'status': status})}\n\n")
            last_status = status
        if out:
            yield "".join(out)
        else:
            yield ": keep-alive\n\n"
        if await request.is_disconnected():
            return
        await asyncio.sleep(POLL_S)


def create_ui(runs_dir: Path, presets_dir: Path | None = None, device: str = "cpu") -> FastAPI:
    from contextlib import asynccontextmanager

    d = Dashboard(runs_dir, presets_dir)
    registry = Registry(runs_dir=runs_dir, device=device, keep=2)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        d.jobs.close()
        registry.close()

    app = FastAPI(title="lmforge dashboard", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.dashboard = d
    install_error_handlers(app)
    app.include_router(router(registry))
    _page_routes(app, d)
    _action_routes(app, d)
    return app


def _page_routes(app: FastAPI, d: Dashboard) -> None:
    @app.get("/", response_class=HTMLResponse)
    def index():
        return page("runs", runs_page(d))

    @app.get("/runs/{name}", response_class=HTMLResponse)
    def show(name: str):
        d.run_or_404(name)
        return page(name, run_page(d, name))

    @app.get("/runs/{name}/events")
    async def events(name: str, request: Request):
        d.run_or_404(name)
        return StreamingResponse(metric_events(d, name, request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @app.get("/runs/{name}/report")
    def report(name: str):
        run = d.run_or_404(name)
        if not (run / "report.html").is_file():
            from lmforge.report.card import write_report

            write_report(run)
        return FileResponse(run / "report.html", media_type="text/html")

    @app.get("/static/{file}")
    def static(file: str):
        path = STATIC / file
        if file not in ("app.js", "style.css") or not path.is_file():
            raise ApiError(404, f"no static file {file}")
        return FileResponse(path, media_type="text/javascript" if file.endswith(".js") else "text/css")


def _action_routes(app: FastAPI, d: Dashboard) -> None:
    @app.post("/runs/{name}/stop")
    def stop(name: str):
        d.run_or_404(name)
        d.jobs.stop(name)
        return RedirectResponse(f"/runs/{name}", status_code=303)

    @app.post("/runs/{name}/resume")
    def resume(name: str):
        d.run_or_404(name)
        d.jobs.resume(name)
        return RedirectResponse(f"/runs/{name}", status_code=303)

    @app.get("/api/runs")
    def api_runs():
        return {"runs": d.runs()}

    @app.get("/launch", response_class=HTMLResponse)
    def launch_form():
        return page("launch", launch_page(d))

    @app.post("/launch")
    async def launch(request: Request):
        # A plain urlencoded form, read here (FastAPI's Form needs another package for this).
        from urllib.parse import parse_qs

        fields = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
        form = LaunchForm(name=fields.get("name", "").strip(), task=fields.get("task", "lm"),
                          data=fields.get("data", "").strip(), time=fields.get("time", "").strip(),
                          mode=fields.get("mode", "auto"))
        try:
            d.jobs.launch(form)
        except LmforgeError as e:
            return HTMLResponse(page("launch", launch_page(d, str(e), form)).body, status_code=400)
        return RedirectResponse(f"/runs/{form.name}", status_code=303)


def ui(runs_dir: str | Path = "runs", host: str = "127.0.0.1", port: int = 8080, presets: str | Path | None = None,
       device: str = "cpu") -> int:
    from lmforge.console import console
    from lmforge.serve.server import run_uvicorn

    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    if presets is None and Path("configs").is_dir():
        presets = Path("configs")
    app = create_ui(runs_dir, Path(presets) if presets else None, device)
    stopped_by = run_uvicorn(app, host, port, banner=f"lmforge: dashboard for {runs_dir} at http://{host}:{port}/")
    console.print(f"lmforge: dashboard stopped{f' ({stopped_by})' if stopped_by else ''}", markup=False)
    return 0
