"""`trajforge models`: the registry, benchmarks, Ollama import, activation."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from trajforge.cli.common import DbOption, ModelId, console, err, print_json, progress_bar, store_at
from trajforge.cli.options import request_options
from trajforge.errors import TrajforgeError
from trajforge.evaluate import BenchmarkRequest
from trajforge.ollama import ImportRequest
from trajforge.records import iso_ms

app = typer.Typer(
    help="Fine-tuned models: list, benchmark, import into Ollama, activate.", no_args_is_help=True
)


@app.command("list")
def models_list(
    db: DbOption = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="Rows")] = 50,
) -> None:
    """List fine-tuned models, newest first."""
    with store_at(db) as store:
        items = store.list_models(limit=limit)
    table = Table(title=f"{len(items)} models")
    for col in ("id", "base", "backend", "steps", "loss", "benchmark", "ollama", "active", "created"):
        table.add_column(col, overflow="fold", no_wrap=col == "id")
    for m in items:
        ev = m.evaluation or {}
        bench = (
            f"{ev['baseScore']:.3f} → {ev['trainedScore']:.3f}"
            if ev.get("status") == "completed"
            else ev.get("status", "")
        )
        loss = m.metrics.get("finalLoss")
        table.add_row(
            m.id,
            m.base_model,
            m.backend,
            str(m.metrics.get("steps", "")),
            f"{loss:.4f}" if isinstance(loss, float) else "",
            bench,
            m.ollama_name or "",
            f"✓ {m.provider_model}" if m.active else "",
            iso_ms(m.created_at),
        )
    console.print(table)


@app.command("show")
def models_show(model_id: ModelId, db: DbOption = None) -> None:
    """Show one model (lineage, metrics, benchmark) as JSON."""
    from trajforge import models

    with store_at(db) as store:
        print_json(models.wire(models.get(store, model_id)))


@app.command("benchmark")
@request_options(BenchmarkRequest, "req")
def models_benchmark(
    req: BenchmarkRequest,
    model_id: ModelId,
    db: DbOption = None,
) -> None:
    """Run base and trained on the same held-out items here, and store the result on the model."""
    from trajforge import evaluate

    request = req.given()
    with store_at(db) as store, progress_bar() as progress:
        bar = progress.add_task(model_id, total=1.0)

        def report(p: float, phase: str, message: str) -> None:
            progress.update(bar, completed=p)
            progress.console.print(f"[dim]{phase}[/dim] {message}")

        try:
            result = evaluate.benchmark(store, model_id, request, report)
        except TrajforgeError:
            raise
        except Exception as exc:
            err.print(f"[red]benchmark failed (recorded on the model):[/red] {type(exc).__name__}: {exc}")
            raise typer.Exit(1) from exc
    pct = f" ({result['deltaPct']:+.1f}%)" if result["deltaPct"] is not None else ""
    console.print(
        f"{result['metric']} on {result['n']} items: base {result['baseScore']:.3f} → "
        f"trained {result['trainedScore']:.3f}, delta {result['delta']:+.3f}{pct}"
    )


@app.command("import-ollama")
@request_options(ImportRequest, "req")
def models_import_ollama(
    req: ImportRequest,
    model_id: ModelId,
    db: DbOption = None,
) -> None:
    """Upload the adapter to a local Ollama and create a model from it."""
    from trajforge import ollama

    with store_at(db) as store:
        result = ollama.import_model(
            store,
            model_id,
            req.model_name,
            req.base_model,
            req.ollama_url,
            system=req.system,
            report=lambda p, m: console.print(f"  {m}"),
        )
    if result.get("baseModelDefaulted"):
        console.print(f"  --base defaulted to {result['baseModel']} (the registry's base of {model_id})")
    console.print(
        f"imported [bold]{result['modelName']}[/bold] into {result['ollamaUrl']} ({result['mode']})"
    )


@app.command("activate")
def models_activate(
    model_id: ModelId,
    provider_model: Annotated[
        str | None,
        typer.Option("--provider-model", help="e.g. ollama/my-agent (default: ollama/<its Ollama name>)"),
    ] = None,
    db: DbOption = None,
) -> None:
    """Make the agent use this model (trajforge.active_model() returns it)."""
    from trajforge import models

    with store_at(db) as store:
        model = models.activate(store, model_id, provider_model)
    console.print(f"{model.id} is active as [bold]{model.provider_model}[/bold]")


@app.command("active")
def models_active(db: DbOption = None) -> None:
    """Print the active model's provider name (nothing, exit 1, when none is active)."""
    with store_at(db) as store:
        model = store.active_model()
    if model is None:
        err.print("no model is active")
        raise typer.Exit(1)
    console.print(f"{model.provider_model}  ({model.id})")
