"""How much of the batched decoder's speed does the model server deliver to concurrent clients?

For each number of clients C (default 1, 4, 16), C clients each send `--requests` /v1/completions requests
one after another to `draftedit serve model`'s app (uvicorn in a thread of this process, the server's own
cross-request batching), and the served tokens/s (completion tokens over the run's wall time) stands
beside the offline batched decoder's on the very same prompts in batches of C (`model.generate` with
max_batch_size=C, no HTTP). Every served answer must equal the offline one, token for token (exit 1
otherwise). Repeats are interleaved (served, offline, served, ...) so that load from other processes hits
both alike; the table shows the median with the spread (min-max) over repeats.

    python -m benchmarks.serve_load                          # 1, 4, 16 clients, the default tiny model
    python -m benchmarks.serve_load --clients 1 16 --repeats 5 --json out.json

The model is a random network (the default init: one token per forward, so every request does the same
work) with a small BPE tokenizer trained on the task families' prompts; prompts are held-out examples of
`--families` in the SFT chat format, sent as token ids.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

from benchmarks.common import encode_prompts, heldout_examples
from components.bench.machine import describe_machine


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve_load", description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16], help="concurrent clients per row")
    p.add_argument("--requests", type=int, default=2, help="requests each client sends, one after another")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--preset", default="speedy")
    p.add_argument("--gen-length", type=int, default=64, help="max_tokens of every request")
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--families", nargs="+", default=["sum", "sort"])
    p.add_argument("--vocab", type=int, default=512, help="BPE vocabulary (the model's vocabulary)")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--intermediate", type=int, default=768)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads (server and offline alike)")
    p.add_argument("--serve-set", action="append", default=[], metavar="KEY=VALUE",
                   help="server setting (conf/serve/default.yaml), repeatable; max_batch_prompts defaults to the "
                        "largest --clients")
    p.add_argument("--json", type=Path, default=None, help="also write the rows and every answer check here")
    return p


def build_model(args, folder: Path):
    """The served pyfunc model over a random checkpoint written to `folder` (tokenizer included)."""
    from types import SimpleNamespace

    from components.data.bpe import train_bpe_tokenizer
    from components.tracking.pyfunc import DraftEditModel
    from model import DiffusionLM, ModelConfig

    examples = heldout_examples(args.families, 200, seed=0)
    tok = train_bpe_tokenizer([f"{e.prompt}\n{e.answer}" for e in examples], vocab_size=args.vocab)
    cfg = ModelConfig.tiny(vocab_size=tok.vocab_size, hidden_size=args.hidden, intermediate_size=args.intermediate,
                           num_hidden_layers=args.layers, num_attention_heads=args.heads,
                           num_key_value_heads=args.kv_heads, head_dim=args.head_dim, max_position_embeddings=1024,
                           mask_token_id=tok.mask_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    torch.manual_seed(0)
    DiffusionLM(cfg).save_pretrained(folder)
    tok.save(folder)
    served = DraftEditModel()
    served.load_context(SimpleNamespace(model_config={"checkpoint_path": str(folder), "preset": args.preset},
                                        artifacts=None))
    return served


def run_clients(url: str, prompts: list[list[int]], clients: int, requests: int, body: dict) -> tuple[float, list]:
    """(wall seconds, answers in prompt order) of `clients` threads sending their requests one by one;
    client k sends prompts k, k + clients, ... so each round of requests arrives together."""
    import httpx

    answers: list = [None] * len(prompts)
    errors: list = []
    https = [httpx.Client(base_url=url, timeout=600) for _ in range(clients)]  # made before the clock starts
    ready = threading.Barrier(clients + 1)

    def client(k: int) -> None:
        ready.wait()
        for j in range(requests):
            i = j * clients + k
            resp = https[k].post("/v1/completions", json={**body, "prompt": prompts[i]})
            if resp.status_code != 200:
                errors.append(resp.text)
                return
            answers[i] = resp.json()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    ready.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    for http in https:
        http.close()
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed; first: {errors[0][:300]}")
    return wall, answers


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} [{min(values):.1f}-{max(values):.1f}]"


def main(argv=None) -> int:
    from components.config import load_config
    from components.serving import ModelServer, ServeConfig, serving_in_thread
    from flows.serve import SERVE_CONFIG

    args = parser().parse_args(argv)
    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    overrides = list(args.serve_set)
    if not any(o.startswith("max_batch_prompts=") for o in overrides):
        overrides.append(f"max_batch_prompts={max(args.clients)}")
    if not any(o.startswith("max_waiting=") for o in overrides):
        overrides.append(f"max_waiting={max(args.clients)}")
    limits = load_config(ServeConfig, SERVE_CONFIG, overrides)
    rows, all_identical = [], True
    machine = describe_machine()  # with the benchmark's torch threads
    try:
        with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
            model = build_model(args, Path(tmp))
            tok = model.tokenizer
            n = max(args.clients) * args.requests
            prompts = encode_prompts(tok, heldout_examples(args.families, -(-n // len(args.families))))[:n]
            cfg = model.preset_config(args.preset, gen_length=args.gen_length, block_length=args.block_length)
            body = {"model": "bench", "max_tokens": args.gen_length, "preset": args.preset,
                    "block_length": args.block_length}
            server = ModelServer(model, limits, model_name="bench")
            with serving_in_thread(server) as url:
                run_clients(url, prompts[:1], 1, 1, body)  # warm-up: lazy imports, first allocations
                model.generate(prompts[:2], cfg)
                for clients in args.clients:
                    mine = prompts[:clients * args.requests]
                    served, offline, batches = [], [], []
                    for _ in range(args.repeats):
                        server.batcher.batches = []
                        wall, answers = run_clients(url, mine, clients, args.requests, body)
                        batches.extend(server.batcher.batches)
                        served.append(sum(a["usage"]["completion_tokens"] for a in answers) / wall)
                        with torch.inference_mode():
                            res = model.generate(mine, dataclasses.replace(cfg, max_batch_size=clients))
                        offline.append(res.num_tokens / res.wall_seconds)
                        texts = [tok.decode(s, skip_special_tokens=True) for s in res.sequences]
                        identical = [a["choices"][0]["text"] for a in answers] == texts and [
                            a["usage"]["completion_tokens"] for a in answers] == [len(s) for s in res.sequences]
                        all_identical &= identical
                    rows.append({"clients": clients, "requests": len(mine), "served_tps": served,
                                 "offline_tps": offline, "ratio": statistics.median(served) / statistics.median(offline),
                                 "mean_batch": statistics.mean(batches) if batches else 0.0,
                                 "identical": identical})
    finally:
        torch.set_num_threads(previous)

    print(f"served vs offline tokens/s ({args.preset}, gen_length {args.gen_length}, block {args.block_length}, "
          f"{args.requests} requests per client, {args.repeats} repeats, torch threads {args.threads}; "
          f"median [min-max])")
    print("| clients = batch | served tok/s | offline tok/s | served / offline | mean served batch | identical |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clients']} | {spread(r['served_tps'])} | {spread(r['offline_tps'])} | {r['ratio']:.2f} | "
              f"{r['mean_batch']:.1f} | {'yes' if r['identical'] else 'NO'} |")
    if args.json:
        from model.files import atomic_write

        record = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                  "machine": machine, "rows": rows, "all_identical": all_identical}
        atomic_write(args.json, json.dumps(record, indent=2) + "\n")
    return 0 if all_identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
