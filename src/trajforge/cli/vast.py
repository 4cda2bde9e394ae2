"""`trajforge vast`: the Vast.ai offers a `jobs start --backend vast` job can rent."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from trajforge.cli.common import console, fail, print_json
from trajforge.cli.options import request_options
from trajforge.errors import TrajforgeError
from trajforge.train.vast import OffersQuery

app = typer.Typer(help="Vast.ai GPUs for `jobs start --backend vast`.", no_args_is_help=True)


@app.command("offers")
@request_options(OffersQuery, "query")
def vast_offers(
    query: OffersQuery,
    as_json: Annotated[bool, typer.Option("--json", help="Print the offers as JSON")] = False,
) -> None:
    """List the offers matching the filters, cheapest first (needs TRAJFORGE_VAST_API_KEY).

    Start a job on one with `trajforge jobs start --backend vast --offer-id ID --max-cost DOLLARS`."""
    from trajforge.train import vast

    try:
        found = vast.offers(query)
    except TrajforgeError as exc:
        fail(exc)
    if as_json:
        print_json({"offers": found})
        return
    table = Table(title=f"{len(found)} offers")
    for col in ("id", "gpu", "GPU RAM (GB)", "$/h", "reliability", "where"):
        table.add_column(col, no_wrap=col == "id")
    for o in found:
        table.add_row(
            str(o["id"]),
            f"{o['numGpus']}x {o['gpuName']}",
            f"{o['gpuRamGb']:g}",
            f"{o['dphTotal']:.4f}",
            f"{o['reliability']:.3f}",
            str(o.get("geolocation") or ""),
        )
    console.print(table)
