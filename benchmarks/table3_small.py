"""The paper's Table 3, small: TPS without and with quantization, and the score change, S and Q mode.

With `--model DIR` (a trained checkpoint with its tokenizer) the prompts come from a task and are
scored; without it a randomly initialised ~29M-parameter model is built (as in decode_speed.py) and
the prompts are random token ids, so the table has speed figures and output agreement only.

    .venv/bin/python benchmarks/table3_small.py --out outputs/table3_random
    .venv/bin/python benchmarks/table3_small.py --model outputs/sft/model --task sum --out outputs/table3_sft

It also writes the FP8 checkpoint of the model (the stored, portable format) and reports its size.
Everything else is `run_benchmark` with conf/bench/table3.yaml; extra `--set key=value` overrides apply.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.bench import BenchConfig, run_benchmark  # noqa: E402
from components.config import CONF_DIR, load_config  # noqa: E402
from components.quantize import QuantizeConfig, run_quantize  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="trained checkpoint folder; default: build a random 29M model")
    ap.add_argument("--task", default="sum", help="task for --model (conf/task/<name>.yaml)")
    ap.add_argument("--out", default="outputs/table3_small")
    ap.add_argument("--gen-length", type=int, default=128)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if args.model is None:
        import decode_speed

        ns = argparse.Namespace(vocab=4096, hidden=512, intermediate=1536, layers=8, heads=8, kv_heads=4,
                                head_dim=64, seed=0, init="peaked", head_scale=3.0)
        model_dir = out / "random_model"
        if not (model_dir / "model.safetensors").is_file():
            decode_speed.build_model(ns).save_pretrained(model_dir)
        overrides = ["prompts.task=null"]
    else:
        model_dir = Path(args.model)
        overrides = [f"prompts.task={args.task}"]
    overrides += [f"prompts.num_prompts={args.prompts}", f"decode.gen_length={args.gen_length}",
                  f"repeats={args.repeats}", f"threads={args.threads}", *args.overrides]
    fp8 = run_quantize(QuantizeConfig(method="fp8"), model_dir, out / "fp8_model")
    print(f"FP8 checkpoint: {fp8['bytes_in'] / 2**20:.1f} MiB -> {fp8['bytes_out'] / 2**20:.1f} MiB, "
          f"max relative weight error {fp8['weight_rel_error_max']:.4f}")
    cfg = load_config(BenchConfig, CONF_DIR / "bench" / "table3.yaml", overrides=overrides)
    result = run_benchmark(cfg, model_dir, out / "bench")
    print((out / "bench" / "results.md").read_text())
    print((out / "bench" / "table3.md").read_text())
    summary = {"fp8_checkpoint": fp8, "files": result["files"]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
