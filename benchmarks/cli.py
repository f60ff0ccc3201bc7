"""``awm bench``: list benchmarks and score folders of images (mounted by the platform CLI).

Image folders hold files named ``{prompt_index:05d}_{sample_index:02d}.png`` where
``prompt_index`` is the 0-based line of the prompt file; every prompt needs at least one image
(``--allow-partial`` scores a subset and records ``prompts_scored``/``prompts_total`` in the
summary).  Results go to ``OUT/samples.jsonl`` (one record per image) and ``OUT/summary.json``,
written atomically; ``OUT`` is checked before scoring.
Heavy imports (PIL, numpy, the scorers) happen inside the commands.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(help="Benchmarks: list them, score image folders.", no_args_is_help=True, add_completion=False)

IMAGE_NAME_RE = re.compile(r"^(?P<prompt>\d{5,})_(?P<sample>\d{2,})\.png$")


def _fail(msg: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {msg}", err=True)
    return typer.Exit(code)


def parse_options(opts: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; VALUE parsed as JSON when possible (numbers, true/false, null), else a string."""
    out: dict[str, Any] = {}
    for item in opts or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"--opt expects KEY=VALUE with KEY a Python identifier, got {item!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def scan_image_dir(images: Path, n_prompts: int | None) -> list[tuple[int, int, Path]]:
    """-> sorted ``(prompt_index, sample_index, path)``; bad names / out-of-range indices raise BenchmarkError."""
    from benchmarks.errors import BenchmarkError

    if not images.is_dir():
        raise BenchmarkError(f"image folder not found: {images}")
    found = []
    for p in sorted(images.iterdir()):
        if p.name.startswith(".") or p.is_dir():
            continue
        m = IMAGE_NAME_RE.match(p.name)
        if not m:
            raise BenchmarkError(
                f"{p}: bad image file name; expected {{prompt_index:05d}}_{{sample_index:02d}}.png, e.g. 00012_03.png"
            )
        pi, si = int(m["prompt"]), int(m["sample"])
        if n_prompts is not None and pi >= n_prompts:
            raise BenchmarkError(f"{p}: prompt index {pi} is not in the prompt file ({n_prompts} prompts, 0-based)")
        found.append((pi, si, p))
    if not found:
        raise BenchmarkError(f"{images}: no images named {{prompt_index:05d}}_{{sample_index:02d}}.png")
    return sorted(found)


def _load_image(path: Path):
    from PIL import Image

    from benchmarks.errors import BenchmarkError

    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except Exception as e:  # noqa: BLE001 - any decoder error means "unreadable file"
        raise BenchmarkError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None


@app.command("list")
def list_cmd(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Registered benchmarks: version, engine, prompt counts, model availability."""
    from benchmarks.registry import get_benchmark, list_benchmarks

    rows = []
    for name in list_benchmarks():
        row: dict[str, Any] = {"name": name}
        try:
            b = get_benchmark(name)
            row["version"] = b.version
            row["engine"] = b.engine
            row["prompts"] = {k: len(v) for k, v in b.prompt_sets().items()}
            st = b.check_models()
            row["models_available"] = bool(st.available)
            row["models_detail"] = st.detail
        except Exception as e:  # noqa: BLE001 - one broken benchmark must not hide the others
            row.update(version="?", engine="?", prompts={}, models_available=False,
                       models_detail=f"cannot build: {type(e).__name__}: {e}")
        rows.append(row)
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title="benchmarks")
    for col in ("name", "version", "engine", "prompts", "models"):
        t.add_column(col, overflow="fold")
    for r in rows:
        prompts = ", ".join(f"{k}: {v}" for k, v in r["prompts"].items()) or "-"
        models = ("yes" if r["models_available"] else "NO") + f" ({r['models_detail']})"
        t.add_row(r["name"], r["version"], r["engine"], prompts, models)
    Console(width=max(120, Console().width)).print(t)


@app.command("score")
def score_cmd(
    name: Annotated[str, typer.Argument(help="Benchmark name (see `awm bench list`).")],
    out: Annotated[Path, typer.Option("--out", help="Output folder for samples.jsonl and summary.json.")],
    images: Annotated[Path | None, typer.Option("--images", help="Folder of {prompt:05d}_{sample:02d}.png.")] = None,
    prompts: Annotated[Path | None, typer.Option(
        "--prompts", help="Prompt file: one prompt per line (ocr, pickscore) or GenEval metadata JSONL.")] = None,
    detections: Annotated[Path | None, typer.Option(
        "--detections", help="GenEval only: score precomputed detections (JSONL) instead of images.")] = None,
    engine: Annotated[str | None, typer.Option("--engine", help="Scoring engine (e.g. ocr: rapidocr|paddleocr|tesseract).")] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="Worker processes (CPU-bound scorers).")] = None,
    opt: Annotated[list[str] | None, typer.Option("--opt", help="Benchmark option KEY=VALUE (repeatable), e.g. model_path=/w.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per scoring call.")] = 32,
    seed: Annotated[int, typer.Option("--seed", help="Bootstrap seed.")] = 0,
    n_boot: Annotated[int, typer.Option("--n-boot", min=1, help="Bootstrap resamples (over prompts).")] = 1000,
    allow_partial: Annotated[bool, typer.Option(
        "--allow-partial", help="Score even if some prompts have no image (the summary records the coverage).")] = False,
) -> None:
    """Score a folder of images (or GenEval detections) and write samples.jsonl + summary.json."""
    from benchmarks.base import write_results
    from benchmarks.errors import BenchmarkError

    try:
        options = parse_options(opt)
    except ValueError as e:
        raise _fail(str(e)) from None
    blocking = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:  # checked before scoring: the work would be lost at the write
        raise _fail(f"--out {out}: {blocking} is a file; give a folder for samples.jsonl and summary.json")
    if engine is not None:
        options["engine"] = engine
    if workers is not None:
        options["workers"] = workers
    try:
        if detections is not None:
            if name != "geneval":
                raise BenchmarkError("--detections is only supported for the geneval benchmark")
            if images is not None:
                raise BenchmarkError("give either --images or --detections, not both")
            from benchmarks.geneval.benchmark import score_detections_file

            records, summary = score_detections_file(detections, prompts, seed=seed, n_boot=n_boot, **options)
        else:
            if images is None or prompts is None:
                raise BenchmarkError("--images and --prompts are required (or --detections FILE for geneval)")
            records, summary = score_folder(name, images, prompts, options, batch_size=batch_size,
                                            seed=seed, n_boot=n_boot, allow_partial=allow_partial)
        samples_path, summary_path = write_results(out, records, summary)
    except BenchmarkError as e:
        raise _fail(str(e)) from None
    except OSError as e:
        raise _fail(f"--out {out}: cannot write the results: {e.strerror or e}") from None
    typer.echo(json.dumps(summary.to_dict()))
    typer.echo(f"wrote {samples_path} ({len(records)} records) and {summary_path}", err=True)


def score_folder(name: str, images: Path, prompts: Path, options: dict, *, batch_size: int = 32,
                 seed: int = 0, n_boot: int = 1000, allow_partial: bool = False):
    """Library form of ``awm bench score`` (images route) -> ``(records, summary)``. A folder with
    images for only some prompts raises BenchmarkError unless ``allow_partial`` (then the summary
    records ``prompts_scored`` / ``prompts_total``)."""
    from benchmarks.errors import BenchmarkError, ModelUnavailableError
    from benchmarks.registry import get_benchmark

    bench = get_benchmark(name, **options)
    try:
        if not Path(prompts).is_file():
            raise BenchmarkError(f"prompt file not found: {prompts}")
        prompt_list, meta_list = bench.load_prompt_file(prompts)
        files = scan_image_dir(Path(images), len(prompt_list))
        covered = {pi for pi, _, _ in files}
        missing = [i for i in range(len(prompt_list)) if i not in covered]
        if missing:
            shown = ", ".join(str(i) for i in missing[:5]) + (", ..." if len(missing) > 5 else "")
            msg = (f"{images}: images for only {len(covered)} of {len(prompt_list)} prompts in {prompts} "
                   f"(none for prompt index {shown})")
            if not allow_partial:
                raise BenchmarkError(f"{msg}; pass --allow-partial to score only those")
            print(f"warning: {msg}; scoring only those (--allow-partial)", file=sys.stderr, flush=True)
        records = []
        for s in range(0, len(files), batch_size):
            chunk = files[s : s + batch_size]
            ims = [_load_image(p) for _, _, p in chunk]
            pis = [pi for pi, _, _ in chunk]
            try:
                recs = bench.score_records(ims, [prompt_list[i] for i in pis], [meta_list[i] for i in pis],
                                           pis, [si for _, si, _ in chunk])
            except ModelUnavailableError:
                raise
            except BenchmarkError as e:
                # name the offending file: re-score the batch one image at a time
                for (pi, si, path), im in zip(chunk, ims):
                    try:
                        bench.score_records([im], [prompt_list[pi]], [meta_list[pi]], [pi], [si])
                    except ModelUnavailableError:
                        raise
                    except BenchmarkError as e1:
                        raise BenchmarkError(f"{path}: {e1}") from None
                raise BenchmarkError(f"{e} (files {chunk[0][2]} .. {chunk[-1][2]})") from None
            records.extend(recs)
            print(f"scored {len(records)}/{len(files)}", file=sys.stderr, flush=True)
        summary = bench.aggregate(records, n_boot=n_boot, seed=seed)
        summary.extra.setdefault("images", str(images))
        summary.extra.setdefault("prompts", str(prompts))
        summary.extra.setdefault("prompts_scored", len(covered))
        summary.extra.setdefault("prompts_total", len(prompt_list))
        return records, summary
    finally:
        bench.close()
