"""`specmoe measurements import|tables aiconfigurator`: public measured kernel tables -> traces,
or -> the compact extracts predictions interpolate (hwprofiles/tables/<gpu>-<backend>.npz)."""
from __future__ import annotations

from specmoe.app.cli.flags import output_path
from specmoe.costs.tables import Tables
from specmoe.errors import SpecMoEError
from specmoe.measure import aiconfigurator as aic


def add_measurements(sub) -> None:
    p = sub.add_parser("measurements", help="import public measured kernel tables as traces")
    msub = p.add_subparsers(dest="measurements_cmd", required=True)
    q = msub.add_parser("import", help="write specmoe.trace/1 microbenchmark traces of a source's "
                                       "tables (aiconfigurator: needs the `tables` extra)")
    q.add_argument("source", choices=("aiconfigurator",),
                   help="where the tables come from: aiconfigurator (NVIDIA's aiconfigurator-core "
                        "package, Apache-2.0)")
    q.add_argument("--gpu", action="append", required=True,
                   help="aiconfigurator system name, e.g. h100_sxm (repeat; 'all' for every one)")
    q.add_argument("--backend", action="append", default=None, choices=aic.BACKENDS + ("all",),
                   help="repeat; default all three")
    q.add_argument("--version", default=None, help="backend version (default: its `current`)")
    q.add_argument("-o", "--out", required=True, help="directory for <gpu>-<backend>.jsonl.gz")
    q.set_defaults(func=cmd_import)
    t = msub.add_parser("tables", help="write the compact table extracts predictions interpolate "
                                       "(hwprofiles/tables/<gpu>-<backend>.npz; needs the `tables` "
                                       "extra)")
    t.add_argument("source", choices=("aiconfigurator",), help="where the tables come from")
    t.add_argument("--gpu", action="append", required=True,
                   help="aiconfigurator system name, e.g. h100_sxm (repeat; 'all' for every one)")
    t.add_argument("--backend", default="vllm", choices=aic.BACKENDS,
                   help="the kernels' serving stack (default vllm: the calibrated profiles "
                        "predictions prefer are vLLM's too)")
    t.add_argument("-o", "--out", required=True, help="directory, e.g. hwprofiles/tables")
    t.set_defaults(func=cmd_tables)


def cmd_import(args) -> int:
    out = output_path(args.out, "--out", directory=True)
    gpus = aic.available_gpus() if "all" in args.gpu else args.gpu
    backends = aic.BACKENDS if not args.backend or "all" in args.backend else args.backend
    for gpu in gpus:
        for backend in backends:
            try:
                trace = aic.import_tables(gpu, backend, args.version)
            except SpecMoEError as e:
                print(f"skip {gpu}/{backend}: {e}")
                continue
            path = aic.write(trace, out / f"{gpu}-{backend}.jsonl.gz")
            tables = trace.header["provenance"]["tables"]
            counts = {k: v["rows_imported"] for k, v in tables.items()}
            print(f"wrote {path}: {counts}")
    return 0


def cmd_tables(args) -> int:
    out = output_path(args.out, "--out", directory=True)
    gpus = aic.available_gpus() if "all" in args.gpu else args.gpu
    for gpu in gpus:
        profile = aic.GPU_PROFILES.get(gpu)
        if profile is None:
            print(f"skip {gpu}: no specmoe GPU profile (hwprofiles/gpus/) for it")
            continue
        try:
            trace = aic.import_tables(gpu, args.backend)
        except SpecMoEError as e:
            print(f"skip {gpu}/{args.backend}: {e}")
            continue
        prov = trace.header["provenance"]
        tables = Tables.from_traces([trace], source=f"aiconfigurator:{gpu}:{args.backend}")
        tables.meta = {"gpu": profile, "system": gpu, "device": trace.header["device"]["name"],
                       "backend": args.backend, "backend_version": prov["backend_version"],
                       "package": prov["package"], "package_version": prov["package_version"],
                       "license": prov["license"], "attribution": prov["attribution"],
                       "method": prov["method"], "replay": True,
                       "rows": {op: v["rows_imported"] for op, v in prov["tables"].items()}}
        path = tables.save(out / f"{profile}-{args.backend}.npz")
        print(f"wrote {path}: {tables.rows()} measured points, {path.stat().st_size // 1024} KiB")
    return 0
